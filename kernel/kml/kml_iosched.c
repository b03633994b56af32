// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: per-request features, in-kernel inference, the
 * sample ring, statistics and model swaps.  See docs/kml-iosched.md.
 *
 * Hot paths (insert, dispatch, finish) allocate nothing: per-request state
 * comes from a pool allocated with the scheduler, samples go into a ring
 * allocated at boot, and the model is read under RCU.  Everything that can
 * sleep (loading a model, the kernel trainer) runs in process context and
 * never under the scheduler's lock.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/blkdev.h>
#include <linux/blk-mq.h>
#include <linux/kdev_t.h>
#include <linux/ktime.h>
#include <linux/sched/clock.h>
#include <linux/jiffies.h>
#include <linux/math64.h>
#include <linux/rcupdate.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/vmalloc.h>
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>
#include <linux/log2.h>
#include "kml_internal.h"
#include "kml_iosched.h"
#include "kml_dd.h"
#include "kml_dd_fpu.h"

/* ------------------------------------------------------------ parameters */

static unsigned int ring_capacity = 4096;
module_param(ring_capacity, uint, 0444);
MODULE_PARM_DESC(ring_capacity, "sample ring records (power of two, boot only)");

static const char * const kml_dd_ring_modes[] = { "block", "drop" };
static const char * const kml_dd_filters[] = { "all", "uncertain" };

enum { KML_DD_FILTER_ALL = 0, KML_DD_FILTER_UNCERTAIN = 1 };

static int kml_dd_sample_filter;

static int kml_dd_param_index(const char *val, const char * const *names,
			      int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (sysfs_streq(val, names[i]))
			return i;
	return -EINVAL;
}

static int ring_mode_set(const char *val, const struct kernel_param *kp)
{
	int mode = kml_dd_param_index(val, kml_dd_ring_modes, 2);

	if (mode < 0)
		return mode;
	/* producers read the mode once per push; a torn switch is harmless */
	WRITE_ONCE(kml_dd.ring.mode, mode);
	WRITE_ONCE(kml_dd.ring.sh->mode, mode);
	return 0;
}

static int ring_mode_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n",
			  kml_dd_ring_modes[READ_ONCE(kml_dd.ring.mode) & 1]);
}

static const struct kernel_param_ops ring_mode_ops = {
	.set = ring_mode_set,
	.get = ring_mode_get,
};
module_param_cb(ring_mode, &ring_mode_ops, NULL, 0644);
MODULE_PARM_DESC(ring_mode, "full sample ring: block (bounded spin) or drop");

static int sample_filter_set(const char *val, const struct kernel_param *kp)
{
	int f = kml_dd_param_index(val, kml_dd_filters, 2);

	if (f < 0)
		return f;
	WRITE_ONCE(kml_dd_sample_filter, f);
	return 0;
}

static int sample_filter_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n",
			  kml_dd_filters[READ_ONCE(kml_dd_sample_filter) & 1]);
}

static const struct kernel_param_ops sample_filter_ops = {
	.set = sample_filter_set,
	.get = sample_filter_get,
};
module_param_cb(sample_filter, &sample_filter_ops, NULL, 0644);
MODULE_PARM_DESC(sample_filter,
		 "all, or uncertain: only samples the model got wrong or was unsure of");

/*
 * Decision threshold: a request is predicted to meet its deadline when its
 * predicted issue time is at most deadline * decision_permille / 1000.
 * Trainers calibrate it for balanced accuracy on recent samples, so the
 * issue-time model itself stays unbiased (its error is what it is).
 */
static unsigned int kml_dd_decision_permille = 1000;

#define KML_DD_PERMILLE_MAX	64000

/* The kernel trainer's calibration; the caller keeps it in range. */
void kml_dd_set_decision_permille(unsigned int permille)
{
	WRITE_ONCE(kml_dd_decision_permille,
		   clamp(permille, 1U, KML_DD_PERMILLE_MAX));
}

static int decision_permille_set(const char *val,
				 const struct kernel_param *kp)
{
	unsigned int v;
	int ret;

	ret = kstrtouint(val, 0, &v);
	if (ret)
		return ret;
	if (v < 1 || v > KML_DD_PERMILLE_MAX)
		return -ERANGE;
	kml_dd_set_decision_permille(v);
	return 0;
}

static const struct kernel_param_ops decision_permille_ops = {
	.set = decision_permille_set,
	.get = param_get_uint,
};
module_param_cb(decision_permille, &decision_permille_ops,
		&kml_dd_decision_permille, 0644);
MODULE_PARM_DESC(decision_permille,
		 "predict a miss above deadline * N / 1000 (1..64000)");

/* ------------------------------------------------------------ state */

struct kml_dd_global kml_dd;

static const char * const kml_dd_stat_names[KML_DD_NR_STATS] = {
	[KML_DD_S_INFERENCES] = "inferences",
	[KML_DD_S_PREDICTIONS] = "predictions",
	[KML_DD_S_MET_PRED_MET] = "met_pred_met",
	[KML_DD_S_MET_PRED_MISS] = "met_pred_miss",
	[KML_DD_S_MISS_PRED_MET] = "miss_pred_met",
	[KML_DD_S_MISS_PRED_MISS] = "miss_pred_miss",
	[KML_DD_S_ISSUE_ABS_ERR_US] = "issue_abs_err_us_sum",
	[KML_DD_S_SAMPLES] = "samples",
	[KML_DD_S_SAMPLES_MET] = "samples_met",
	[KML_DD_S_UNTRACKED] = "untracked",
	[KML_DD_S_RING_PRODUCED] = "ring_produced",
	[KML_DD_S_RING_DROPPED] = "ring_dropped",
	[KML_DD_S_RING_FULL_WAITS] = "ring_full_waits",
	[KML_DD_S_RING_FILTERED] = "ring_filtered",
	[KML_DD_S_UPDATES_APPLIED] = "updates_applied",
	[KML_DD_S_UPDATES_REFUSED] = "updates_refused",
	[KML_DD_S_UPDATES_ABORTED] = "updates_aborted",
	[KML_DD_S_FPU_SECTIONS] = "fpu_sections",
	[KML_DD_S_FPU_BUSY] = "fpu_busy",
	[KML_DD_S_URGENT] = "urgent_dispatches",
	[KML_DD_S_KTRAINER_SAMPLES] = "ktrainer_samples",
	[KML_DD_S_KTRAINER_STEPS] = "ktrainer_steps",
	[KML_DD_S_KTRAINER_SKIPPED] = "ktrainer_skipped",
	[KML_DD_S_KTRAINER_CALIBRATIONS] = "ktrainer_calibrations",
	[KML_DD_S_RING_REPAIRS] = "ring_repairs",
};

/*
 * Inference-time histogram: exact below 8 ns, then four buckets per power
 * of two, so p50/p99 are read to within 25%.
 */
static unsigned int kml_dd_hist_bucket(u64 ns)
{
	unsigned int n;

	if (ns < 8)
		return ns;
	n = fls64(ns) - 1;		/* >= 3 */
	return 8 + (n - 3) * 4 + ((ns >> (n - 2)) & 3);
}

static void kml_dd_hist_bounds(unsigned int b, u64 *lo, u64 *hi)
{
	unsigned int n, sub;

	if (b < 8) {
		*lo = b;
		*hi = b + 1;
		return;
	}
	n = (b - 8) / 4 + 3;
	sub = (b - 8) % 4;
	*lo = (u64)(4 + sub) << (n - 2);
	*hi = (u64)(5 + sub) << (n - 2);
}

/* ------------------------------------------------------------ clock */

/*
 * KML's clock.  ktime_get_ns() reads the system clocksource, which in a
 * guest without a stable TSC (QEMU TCG) is the HPET: an emulated MMIO read
 * of several microseconds per call, and the five per request made observe
 * cost a fifth of the I/O rate there.  local_clock() is the scheduler's
 * clock (the TSC, corrected per tick when the TSC is unstable): cheap
 * everywhere, exact on hardware with a stable TSC, within a tick across
 * CPUs otherwise, hence kml_dd_since() never going below zero.
 */
static u64 kml_dd_clock(void)
{
	return local_clock();
}

static u64 kml_dd_since(u64 then, u64 now)
{
	return now > then ? now - then : 0;
}

/* ------------------------------------------------------------ features */

/*
 * lg(x) = log2(1 + x) in Q16.16, integer only: the exponent from fls64()
 * and the mantissa interpolated linearly (at most 0.086 below log2).
 */
static s32 kml_dd_lg(u64 x)
{
	u64 v = x + 1, frac;
	unsigned int n;

	if (unlikely(v == 0))		/* x == U64_MAX */
		return 64 << 16;
	n = fls64(v) - 1;
	frac = v - (1ULL << n);
	frac = n > 16 ? frac >> (n - 16) : frac << (16 - n);
	return (s32)(((u64)n << 16) + frac);
}

/* The inverse of kml_dd_lg() for a model's Q16 output (lg of us). */
static u64 kml_dd_lg_q16_to_ns(s32 y)
{
	u64 n, us;

	if (y <= 0)
		return 0;
	n = (u32)y >> 16;
	if (n > 40)
		n = 40;
	us = ((65536 + ((u32)y & 0xffff)) << n) >> 16;
	return (us - 1) * NSEC_PER_USEC;
}

static void kml_dd_features(struct kml_dd_queue *kq, struct request *rq,
			    struct request *fifo_head, struct kml_dd_ctx *ctx,
			    u64 now, bool same_dir)
{
	const int dir = ctx->op;
	struct kml_dd_ctx *head = fifo_head ? kml_dd_ctx(fifo_head) : NULL;
	s32 *f = ctx->features;
	u64 cap = get_capacity(rq->q->disk);
	u64 seek;

	seek = ctx->sector > kq->last_end ? ctx->sector - kq->last_end :
					    kq->last_end - ctx->sector;
	f[KML_DD_F_OP] = dir ? KML_Q16_ONE : 0;
	f[KML_DD_F_SECTOR] = cap ? (s32)div64_u64(min(ctx->sector, cap) << 16,
						 cap) : 0;
	f[KML_DD_F_LG_BYTES] = kml_dd_lg(ctx->bytes);
	f[KML_DD_F_LG_QUEUED_SAME] = kml_dd_lg(atomic_read(&kq->queued[dir]));
	f[KML_DD_F_LG_QUEUED_OTHER] =
		kml_dd_lg(atomic_read(&kq->queued[!dir]));
	f[KML_DD_F_LG_INFLIGHT] = kml_dd_lg(atomic_read(&kq->inflight));
	f[KML_DD_F_LG_SEEK] = kml_dd_lg(seek);
	f[KML_DD_F_LG_GAP_US] = kq->last_insert_ns ?
		kml_dd_lg(div_u64(kml_dd_since(kq->last_insert_ns, now),
				  NSEC_PER_USEC)) : 0;
	f[KML_DD_F_LG_EXPIRE_US] =
		kml_dd_lg(div_u64(ctx->deadline_ns, NSEC_PER_USEC));
	f[KML_DD_F_LG_ISSUE_EWMA_US] =
		kml_dd_lg(div_u64(kq->issue_ewma_ns[dir], NSEC_PER_USEC));
	f[KML_DD_F_LG_DISPATCH_EWMA_US] =
		kml_dd_lg(div_u64(kq->dispatch_gap_ewma_ns, NSEC_PER_USEC));
	f[KML_DD_F_SAME_DIR] = same_dir ? KML_Q16_ONE : 0;
	/* in a FIFO, a new request waits about as long as the head has */
	f[KML_DD_F_LG_HEAD_AGE_US] = head ?
		kml_dd_lg(div_u64(kml_dd_since(head->insert_ns, now),
				  NSEC_PER_USEC)) : 0;
	f[KML_DD_F_MISS_EWMA] = kq->miss_ewma[dir];
}

/* ------------------------------------------------------------ inference */

/* Predicted issue time in ns, or a negative errno; counts its FPU section. */
static s64 kml_dd_model_predict(struct kml_dd_model *dm, const s32 *features)
{
	s32 yq;
	s64 ns;

	if (dm->dtype == KML_Q16) {
		kml_model_predict_nofpu(dm->model, features, 1, &yq);
		return kml_dd_lg_q16_to_ns(yq);
	}
	if (kml_fpu_begin()) {
		kml_dd_stat_inc(KML_DD_S_FPU_BUSY);
		return -EBUSY;
	}
	ns = kml_dd_predict_f32(dm->model, features);
	kml_fpu_end();
	kml_dd_stat_inc(KML_DD_S_FPU_SECTIONS);
	return ns < 0 ? -EDOM : ns;
}

static void kml_dd_predict(struct kml_dd_ctx *ctx)
{
	struct kml_dd_model *dm;
	u64 t0, t1;
	s64 ns;

	rcu_read_lock();
	dm = rcu_dereference(kml_dd.model);
	if (dm) {
		t0 = kml_dd_clock();
		ns = kml_dd_model_predict(dm, ctx->features);
		t1 = kml_dd_clock();
		if (ns >= 0) {
			ctx->pred_valid = 1;
			ctx->pred_issue_ns = ns;
			ctx->pred_met = (u64)ns <=
				mul_u64_u32_div(ctx->deadline_ns,
						READ_ONCE(kml_dd_decision_permille),
						1000);
			kml_dd_stat_inc(KML_DD_S_INFERENCES);
			atomic64_inc(&kml_dd.hist[kml_dd_hist_bucket(
				kml_dd_since(t0, t1))]);
		}
	}
	rcu_read_unlock();
}

/* ------------------------------------------------------------ hooks */

static struct kml_dd_ctx *kml_dd_ctx_get(struct kml_dd_queue *kq)
{
	struct llist_node *node = kq->free;

	if (!node) {
		/* contexts freed at completion since the last refill */
		node = llist_del_all(&kq->returned);
		if (!node)
			return NULL;
	}
	kq->free = node->next;
	return container_of(node, struct kml_dd_ctx, node);
}

void __kml_dd_insert(struct kml_dd_queue *kq, struct request *rq,
		     struct request *fifo_head, unsigned long expire,
		     bool same_dir)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);
	u64 now = kml_dd_clock();

	if (ctx) {
		/* a requeue: keep the first insert's features and times */
		if (ctx->dispatch_ns) {
			atomic_dec(&kq->inflight);
			atomic_inc(&kq->queued[ctx->op]);
			ctx->dispatch_ns = 0;
		}
		ctx->flags |= KML_DD_SAMPLE_REQUEUED;
		return;
	}
	ctx = kml_dd_ctx_get(kq);
	if (!ctx) {
		kml_dd_stat_inc(KML_DD_S_UNTRACKED);
		return;
	}
	ctx->insert_ns = now;
	ctx->dispatch_ns = 0;
	ctx->deadline_ns = jiffies_to_nsecs(expire);
	ctx->sector = blk_rq_pos(rq);
	ctx->bytes = blk_rq_bytes(rq);
	ctx->op = rq_data_dir(rq);
	ctx->flags = 0;
	ctx->pred_valid = 0;
	ctx->pred_met = 0;
	ctx->pred_issue_ns = 0;
	kml_dd_features(kq, rq, fifo_head, ctx, now, same_dir);
	kml_dd_predict(ctx);
	atomic_inc(&kq->queued[ctx->op]);
	kq->last_insert_ns = now;
	rq->elv.priv[1] = ctx;
}
EXPORT_SYMBOL_GPL(__kml_dd_insert);

/* New average = 7/8 old + 1/8 sample: follows load changes within ~8 I/Os. */
static u64 kml_dd_ewma(u64 avg, u64 sample)
{
	return avg ? avg - (avg >> 3) + (sample >> 3) : sample;
}

void __kml_dd_dispatch(struct kml_dd_queue *kq, struct request *rq)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);
	u64 now = kml_dd_clock();
	u32 missed;

	if (ctx->dispatch_ns)
		return;
	ctx->dispatch_ns = max_t(u64, now, 1);
	missed = kml_dd_since(ctx->insert_ns, now) > ctx->deadline_ns ?
		 KML_Q16_ONE : 0;
	kq->miss_ewma[ctx->op] = kq->miss_ewma[ctx->op] -
				 (kq->miss_ewma[ctx->op] >> 3) + (missed >> 3);
	atomic_dec(&kq->queued[ctx->op]);
	atomic_inc(&kq->inflight);
	kq->issue_ewma_ns[ctx->op] =
		kml_dd_ewma(kq->issue_ewma_ns[ctx->op],
			    kml_dd_since(ctx->insert_ns, now));
	if (kq->last_dispatch_ns)
		kq->dispatch_gap_ewma_ns =
			kml_dd_ewma(kq->dispatch_gap_ewma_ns,
				    kml_dd_since(kq->last_dispatch_ns, now));
	kq->last_dispatch_ns = now;
	kq->last_end = ctx->sector + (ctx->bytes >> SECTOR_SHIFT);
}
EXPORT_SYMBOL_GPL(__kml_dd_dispatch);

void kml_dd_note_urgent(struct request *rq)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);

	if (ctx)
		ctx->flags |= KML_DD_SAMPLE_URGENT;
	kml_dd_stat_inc(KML_DD_S_URGENT);
}
EXPORT_SYMBOL_GPL(kml_dd_note_urgent);

/*
 * Active learning: a sample is worth sending when there is no model, the
 * model got it wrong, or its prediction was within a factor of two of the
 * deadline (close to the decision boundary).
 */
static bool kml_dd_sample_wanted(const struct kml_dd_sample *s)
{
	if (READ_ONCE(kml_dd_sample_filter) == KML_DD_FILTER_ALL ||
	    !s->pred_valid || s->pred_met != s->met)
		return true;
	return s->pred_issue_ns * 2 > s->deadline_ns &&
	       s->pred_issue_ns < s->deadline_ns * 2;
}

static void kml_dd_account(const struct kml_dd_sample *s)
{
	u64 err;

	kml_dd_stat_inc(KML_DD_S_SAMPLES);
	if (s->met)
		kml_dd_stat_inc(KML_DD_S_SAMPLES_MET);
	if (!s->pred_valid)
		return;
	kml_dd_stat_inc(KML_DD_S_PREDICTIONS);
	if (s->met)
		kml_dd_stat_inc(s->pred_met ? KML_DD_S_MET_PRED_MET :
					      KML_DD_S_MET_PRED_MISS);
	else
		kml_dd_stat_inc(s->pred_met ? KML_DD_S_MISS_PRED_MET :
					      KML_DD_S_MISS_PRED_MISS);
	err = s->pred_issue_ns > s->issue_ns ? s->pred_issue_ns - s->issue_ns :
					       s->issue_ns - s->pred_issue_ns;
	atomic64_add(div_u64(err, NSEC_PER_USEC),
		     &kml_dd.stats[KML_DD_S_ISSUE_ABS_ERR_US]);
}

void kml_dd_push_sample(const struct kml_dd_sample *s)
{
	int ret;

	if (!kml_dd_sample_wanted(s)) {
		kml_dd_stat_inc(KML_DD_S_RING_FILTERED);
		return;
	}
	if (!kml_dd.ring_mem) {
		kml_dd_stat_inc(KML_DD_S_RING_DROPPED);
		return;
	}
	/* kml_dd_ring_repair() waits for pushes in flight with RCU */
	rcu_read_lock();
	ret = kml_ring_push(&kml_dd.ring, s);
	rcu_read_unlock();
	if (!ret)
		kml_dd_stat_inc(KML_DD_S_RING_PRODUCED);
	else if (ret == -EAGAIN)
		kml_dd_stat_inc(KML_DD_S_RING_FULL_WAITS);
	else
		kml_dd_stat_inc(KML_DD_S_RING_DROPPED);
}

void __kml_dd_finish(struct kml_dd_queue *kq, struct request *rq)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);
	struct kml_dd_sample s;
	u64 now = kml_dd_clock();

	rq->elv.priv[1] = NULL;
	if (!ctx->dispatch_ns) {
		/* merged into another request, never dispatched on its own */
		atomic_dec(&kq->queued[ctx->op]);
		goto release;
	}
	atomic_dec(&kq->inflight);

	memset(&s, 0, sizeof(s));
	s.insert_ns = ctx->insert_ns;
	s.sector = ctx->sector;
	s.issue_ns = kml_dd_since(ctx->insert_ns, ctx->dispatch_ns);
	s.deadline_ns = ctx->deadline_ns;
	s.completion_ns = kml_dd_since(ctx->insert_ns, now);
	s.pred_issue_ns = ctx->pred_issue_ns;
	s.bytes = ctx->bytes;
	s.op = ctx->op;
	s.met = s.issue_ns <= s.deadline_ns;
	s.pred_valid = ctx->pred_valid;
	s.pred_met = ctx->pred_met;
	s.flags = ctx->flags;
	s.dev = kq->dev;
	memcpy(s.features, ctx->features, sizeof(ctx->features));

	kml_dd_account(&s);
	kml_dd_push_sample(&s);
release:
	llist_add(&ctx->node, &kq->returned);
}
EXPORT_SYMBOL_GPL(__kml_dd_finish);

/* Enough contexts for the deepest queues we test; more are "untracked". */
#define KML_DD_POOL_SIZE 1024

int kml_dd_init(struct kml_dd_queue *kq, struct request_queue *q)
{
	u32 i;

	memset(kq, 0, sizeof(*kq));
	kq->pool = kvcalloc(KML_DD_POOL_SIZE, sizeof(*kq->pool), GFP_KERNEL);
	if (!kq->pool)
		return -ENOMEM;
	kq->pool_size = KML_DD_POOL_SIZE;
	for (i = 0; i < kq->pool_size; i++) {
		kq->pool[i].node.next = kq->free;
		kq->free = &kq->pool[i].node;
	}
	init_llist_head(&kq->returned);
	if (q->disk)
		kq->dev = new_encode_dev(disk_devt(q->disk));
	return 0;
}
EXPORT_SYMBOL_GPL(kml_dd_init);

void kml_dd_exit(struct kml_dd_queue *kq)
{
	kvfree(kq->pool);
	kq->pool = NULL;
}
EXPORT_SYMBOL_GPL(kml_dd_exit);

static const char * const kml_dd_mode_names[] = {
	[KML_DD_OFF] = "off",
	[KML_DD_OBSERVE] = "observe",
	[KML_DD_ACTIVE] = "active",
};

ssize_t kml_dd_mode_show(struct kml_dd_queue *kq, char *page)
{
	int mode = READ_ONCE(kq->mode), i, len = 0;

	for (i = 0; i < ARRAY_SIZE(kml_dd_mode_names); i++)
		len += sysfs_emit_at(page, len, i == mode ? "[%s] " : "%s ",
				     kml_dd_mode_names[i]);
	page[len - 1] = '\n';
	return len;
}
EXPORT_SYMBOL_GPL(kml_dd_mode_show);

ssize_t kml_dd_mode_store(struct kml_dd_queue *kq, const char *page,
			  size_t count)
{
	int mode = kml_dd_param_index(page, kml_dd_mode_names,
				      ARRAY_SIZE(kml_dd_mode_names));

	if (mode < 0)
		return mode;
	WRITE_ONCE(kq->mode, mode);
	return count;
}
EXPORT_SYMBOL_GPL(kml_dd_mode_store);

/* ------------------------------------------------------------ model swap */

static void kml_dd_model_free_rcu(struct rcu_head *head)
{
	struct kml_dd_model *dm = container_of(head, struct kml_dd_model, rcu);

	kml_model_free(dm->model);
	kfree(dm);
}

static void kml_dd_model_replace(struct kml_dd_model *dm)
{
	struct kml_dd_model *old;

	mutex_lock(&kml_dd.model_lock);
	old = rcu_replace_pointer(kml_dd.model, dm,
				  lockdep_is_held(&kml_dd.model_lock));
	kml_dd.model_generation++;
	mutex_unlock(&kml_dd.model_lock);
	if (old)
		call_rcu(&old->rcu, kml_dd_model_free_rcu);
}

/*
 * Validate a model file and swap it in.  kml_model_load() checks the
 * format (magic, version, CRC, sizes, finite values); here we check it fits
 * the scheduler: KML_DD_NR_FEATURES inputs and one output.  Process context.
 */
int kml_dd_publish(const void *buf, size_t len)
{
	struct kml_model_cfg cfg;
	struct kml_dd_model *dm;
	struct kml_model *m;
	int ret;

	ret = kml_model_load(buf, len, &m);
	if (ret)
		goto refused;
	kml_model_get_cfg(m, &cfg);
	if (cfg.sizes[0] != KML_DD_NR_FEATURES ||
	    cfg.sizes[cfg.n_layers] != 1) {
		ret = -EPROTO;
		goto free_model;
	}
	dm = kzalloc(sizeof(*dm), GFP_KERNEL);
	if (!dm) {
		ret = -ENOMEM;
		goto free_model;
	}
	dm->model = m;
	dm->dtype = cfg.dtype;
	kml_dd_model_replace(dm);
	kml_dd_stat_inc(KML_DD_S_UPDATES_APPLIED);
	return 0;

free_model:
	kml_model_free(m);
refused:
	kml_dd_stat_inc(KML_DD_S_UPDATES_REFUSED);
	return ret;
}

void kml_dd_unload(void)
{
	kml_dd_model_replace(NULL);
}

/*
 * A consumer that wrote over the shared ring leaves it broken (pushes fail
 * fast, counted as dropped).  When that consumer is gone, make the ring
 * anew: first wait until no push that began before it broke is running.
 * Process context; the caller owns the ring (no consumer is running).
 */
void kml_dd_ring_repair(void)
{
	struct kml_ring fresh;
	u32 capacity = kml_dd.ring.mask + 1;

	if (!kml_dd.ring_mem || !kml_ring_broken(&kml_dd.ring))
		return;
	synchronize_rcu();
	/*
	 * Rewrite the shared memory through a private handle: producers keep
	 * seeing the ring broken (and stay away from it) until it is whole.
	 */
	kml_ring_init(&fresh, kml_dd.ring_mem,
		      kml_ring_bytes(capacity, sizeof(struct kml_dd_sample)),
		      capacity, sizeof(struct kml_dd_sample),
		      READ_ONCE(kml_dd.ring.mode));
	kml_dd.consumed_base = 0;
	/* pairs with the producers' read of 'broken': the ring is whole first */
	smp_store_release(&kml_dd.ring.broken, false);
	kml_dd_stat_inc(KML_DD_S_RING_REPAIRS);
	pr_info_ratelimited("kml: sample ring was corrupted by its consumer; reset\n");
}

/* ------------------------------------------------------------ debugfs */

static int kml_dd_stats_show(struct seq_file *m, void *v)
{
	unsigned int i;
	u64 lo, hi, n;

	seq_printf(m, "abi_version %d\n", KML_DD_ABI_VERSION);
	seq_printf(m, "model_loaded %d\n",
		   rcu_access_pointer(kml_dd.model) ? 1 : 0);
	seq_printf(m, "model_generation %llu\n",
		   READ_ONCE(kml_dd.model_generation));
	for (i = 0; i < KML_DD_NR_STATS; i++)
		seq_printf(m, "%s %lld\n", kml_dd_stat_names[i],
			   atomic64_read(&kml_dd.stats[i]));
	/* records popped since the reset that were pushed after it */
	n = kml_dd.ring_mem ?
		atomic64_read(&kml_dd.ring.sh->consumed.v) : 0;
	seq_printf(m, "ring_consumed %lld\n",
		   max_t(s64, (s64)n - kml_dd.consumed_base, 0));
	seq_printf(m, "ring_capacity %u\n", kml_dd.ring_mem ? ring_capacity : 0);
	seq_printf(m, "ring_broken %d\n",
		   kml_dd.ring_mem && kml_ring_broken(&kml_dd.ring));
	seq_printf(m, "ring_mode %s\n",
		   kml_dd_ring_modes[READ_ONCE(kml_dd.ring.mode) & 1]);
	seq_printf(m, "sample_filter %s\n",
		   kml_dd_filters[READ_ONCE(kml_dd_sample_filter) & 1]);
	seq_printf(m, "ktrainer_running %d\n", kml_dd_ktrainer_running());
	seq_printf(m, "decision_permille %u\n",
		   READ_ONCE(kml_dd_decision_permille));
	for (i = 0; i < KML_DD_HIST_BUCKETS; i++) {
		n = atomic64_read(&kml_dd.hist[i]);
		if (!n)
			continue;
		kml_dd_hist_bounds(i, &lo, &hi);
		seq_printf(m, "inference_ns_hist %llu %llu %llu\n", lo, hi, n);
	}
	return 0;
}

static int kml_dd_stats_open(struct inode *inode, struct file *file)
{
	return single_open(file, kml_dd_stats_show, NULL);
}

static ssize_t kml_dd_stats_write(struct file *file, const char __user *ubuf,
				  size_t count, loff_t *ppos)
{
	char buf[16];
	unsigned int i;

	if (count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	if (!sysfs_streq(buf, "reset"))
		return -EINVAL;
	for (i = 0; i < KML_DD_NR_STATS; i++)
		atomic64_set(&kml_dd.stats[i], 0);
	for (i = 0; i < KML_DD_HIST_BUCKETS; i++)
		atomic64_set(&kml_dd.hist[i], 0);
	if (kml_dd.ring_mem)
		kml_dd.consumed_base =
			atomic64_read(&kml_dd.ring.sh->produced.v);
	return count;
}

static const struct file_operations kml_dd_stats_fops = {
	.owner = THIS_MODULE,
	.open = kml_dd_stats_open,
	.read = seq_read,
	.llseek = seq_lseek,
	.release = single_release,
	.write = kml_dd_stats_write,
};

/* ------------------------------------------------------------ init */

static int __init kml_dd_global_init(void)
{
	size_t bytes;
	int ret;

	mutex_init(&kml_dd.model_lock);
	if (!is_power_of_2(ring_capacity) || ring_capacity < 2)
		ring_capacity = 4096;
	bytes = kml_ring_bytes(ring_capacity, sizeof(struct kml_dd_sample));
	kml_dd.ring_bytes = PAGE_ALIGN(bytes);
	/* zeroed, page aligned and mappable to user space */
	kml_dd.ring_mem = vmalloc_user(kml_dd.ring_bytes);
	if (kml_dd.ring_mem) {
		ret = kml_ring_init(&kml_dd.ring, kml_dd.ring_mem, bytes,
				    ring_capacity,
				    sizeof(struct kml_dd_sample),
				    KML_RING_DROP);
		if (ret) {
			vfree(kml_dd.ring_mem);
			kml_dd.ring_mem = NULL;
		}
	}
	if (!kml_dd.ring_mem) {
		pr_warn("kml: no sample ring; samples will be dropped\n");
		/* a valid target for ring_mode writes */
		kml_dd.ring.sh = &kml_dd.no_ring;
	}
	kml_dd.debugfs = debugfs_create_dir("kml", NULL);
	debugfs_create_file("iosched", 0600, kml_dd.debugfs, NULL,
			    &kml_dd_stats_fops);
	ret = kml_dd_dev_init();
	if (ret)
		pr_warn("kml: /dev/kml not available (%d)\n", ret);
	return 0;
}
late_initcall(kml_dd_global_init);
