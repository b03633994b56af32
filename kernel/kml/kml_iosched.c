// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: the hooks.  Per-request features and in-kernel
 * inference at insert, the queue's running averages at dispatch, and the
 * sample at completion, which goes to the core (kml_dd_core.c) with the
 * model, the ring and the statistics; under policy cost, what a dispatch
 * and a completion teach its service-time model (kml_dd_cost.c).  See
 * docs/kml-iosched.md.
 *
 * Hot paths (insert, dispatch, finish) allocate nothing: per-request state
 * comes from a pool allocated with the scheduler, samples go into a ring
 * allocated at boot, and the model is read under RCU.  Everything that can
 * sleep (loading a model, the kernel trainer) runs in process context and
 * never under the scheduler's lock.
 */
#include <linux/module.h>
#include <linux/blkdev.h>
#include <linux/blk-mq.h>
#include <linux/kdev_t.h>
#include <linux/sched/clock.h>
#include <linux/timekeeping.h>
#include <linux/jiffies.h>
#include <linux/math64.h>
#include <linux/rcupdate.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include "kml_internal.h"
#include "kml_iosched.h"
#include "kml_dd.h"
#include "kml_dd_fpu.h"

/* ------------------------------------------------------------ features */

/*
 * @rq at its insert, started at @start, due @expire jiffies after it, and
 * what its queue holds then, into @ctx->in: what its features are
 * computed from (kml_dd_feat.c), and what KML keeps of the request.
 * Written in place: a struct built on the stack and copied is a string
 * move, one counted instruction per four bytes under QEMU's instruction
 * counting.
 */
static __always_inline void kml_dd_take_in(struct kml_dd_queue *kq,
					   struct kml_dd_ctx *ctx,
					   struct request *rq,
					   struct request *fifo_head,
					   u64 start, unsigned long expire,
					   bool same_dir, unsigned int op)
{
	struct kml_dd_ctx *head = fifo_head ? kml_dd_ctx(fifo_head) : NULL;
	struct kml_dd_feat_in *in = &ctx->in;

	in->insert_ns = start;
	in->sector = blk_rq_pos(rq);
	in->deadline_ns = kml_dd_jiffies_to_ns(expire);
	in->head_insert_ns = head ? head->in.insert_ns : 0;
	in->bytes = blk_rq_bytes(rq);
	in->queued[0] = atomic_read(&kq->queued[0]);
	in->queued[1] = atomic_read(&kq->queued[1]);
	in->inflight = atomic_read(&kq->inflight);
	in->op = op;
	in->same_dir = same_dir;
	in->has_head = !!head;
}

/*
 * The disk's capacity, into @ctx's features' inputs: read where they are
 * computed, not at the insert, so that a request predicted lazily, or
 * never, does not pay for it.  A disk resized in between is seen resized.
 */
static __always_inline void kml_dd_take_capacity(struct kml_dd_queue *kq,
						 struct kml_dd_ctx *ctx)
{
	ctx->in.capacity = kq->q->disk ? get_capacity(kq->q->disk) : 0;
}

/* ------------------------------------------------------------ inference */

/*
 * Predicted issue time in ns, or a negative errno.  A compiled model is a
 * few dot products here; other Q16 models run the library's integer path,
 * float ones an FPU section (counted).
 */
static s64 kml_dd_model_predict(struct kml_dd_model *dm, const s32 *features)
{
	s32 yq;
	s64 ns;

	if (dm->fast)
		return kml_dd_lg_q16_to_ns(kml_dd_fast_predict(&dm->f, features));
	/* without KML_FLOAT no float model loads */
	if (!KML_HAS_FLOAT || dm->dtype == KML_Q16) {
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

/*
 * The model's prediction for @features; one call in KML_DD_TIME_EVERY is
 * timed with interrupts off, so that the histogram holds no handler's time.
 */
static __always_inline s64
kml_dd_model_predict_timed(struct kml_dd_queue *kq, struct kml_dd_model *dm,
			   const s32 *features)
{
	unsigned long flags;
	u64 t0, t1;
	s64 ns;

	if (++kq->predict_seq & (KML_DD_TIME_EVERY - 1))
		return kml_dd_model_predict(dm, features);
	/* one CPU, nothing else running: its own clock, the cheapest */
	local_irq_save(flags);
	t0 = local_clock();
	ns = kml_dd_model_predict(dm, features);
	t1 = local_clock();
	local_irq_restore(flags);
	if (ns >= 0)
		kml_dd_note_inference_time(kml_dd_since(t0, t1));
	return ns;
}

/*
 * A predicted miss steers while the model is not standing aside, but for
 * one in KML_DD_SKILL_HOLDOUT while the step-aside rule is on: that one is
 * left to run its course, so that the skill window sees what the model's
 * predicted misses really do (kml_dd.h).  The others are flagged steered
 * and left out of the window, whether or not the policy ends up moving
 * them: the holdout stands for all of them.  Under the scheduler lock.
 */
static void kml_dd_steer(struct kml_dd_queue *kq, struct kml_dd_ctx *ctx)
{
	bool active = kml_dd_active(kq);

	ctx->steer = !kml_dd_stepped_aside();
	if (!ctx->steer) {
		if (active)
			kml_dd_stat_inc(KML_DD_S_STEER_SUPPRESSED);
	} else if (active && READ_ONCE(kml_dd.skill_window) &&
		   ++kq->holdout_seq % KML_DD_SKILL_HOLDOUT == 0) {
		ctx->steer = 0;
		ctx->flags |= KML_DD_SAMPLE_HOLDOUT;
		kml_dd_stat_inc(KML_DD_S_SKILL_HOLDOUTS);
	} else if (active) {
		ctx->flags |= KML_DD_SAMPLE_STEERED;
	}
}

/*
 * Predict @ctx's issue time and make the meet/miss call.  The call is made
 * on the model's own figure; what is recorded is clamped to
 * KML_DD_PRED_MAX_FACTOR times the deadline (counted), so that a few
 * absurd predictions (a Q16 output saturates at 2^40 us) do not dominate
 * the error statistics.  A predicted miss steers only while the model is
 * not standing aside; in active mode, one that does not is counted.
 */
static __always_inline void kml_dd_predict(struct kml_dd_queue *kq,
					   struct kml_dd_ctx *ctx)
{
	struct kml_dd_model *dm;
	u64 cap;
	s64 ns;
	s32 r;

	rcu_read_lock();
	dm = kml_dd_model_rcu();
	if (dm) {
		ns = kml_dd_model_predict_timed(kq, dm, ctx->features);
		if (ns >= 0) {
			kml_dd_stat_inc(KML_DD_S_INFERENCES);
			ctx->pred_valid = 1;
			ctx->pred_met = kml_dd_meets(ns, ctx->in.deadline_ns,
						kml_dd_decision_permille());
			cap = KML_DD_PRED_MAX_FACTOR *
			      max_t(u64, ctx->in.deadline_ns, NSEC_PER_MSEC);
			if ((u64)ns > cap) {
				ns = cap;
				kml_dd_stat_inc(KML_DD_S_PRED_CLAMPED);
			}
			ctx->pred_issue_ns = ns;
			/*
			 * The AUC's score: the residual the calibration
			 * ranks, of the prediction as recorded; the
			 * deadline's lg is a feature already.
			 */
			r = __kml_dd_lg(div_u64(ns, NSEC_PER_USEC)) -
			    ctx->features[KML_DD_F_LG_EXPIRE_US];
			ctx->score = kml_dd_score_bucket(r);
			if (!ctx->pred_met)
				kml_dd_steer(kq, ctx);
		}
	}
	rcu_read_unlock();
}

/*
 * Active mode with the lazy parameter set: a request's features and
 * prediction are made when a dispatch decision first reads them
 * (kml_dd_urgent(), kml_dd_cost()), not at its insert.  Most requests of
 * a short queue are dispatched before any decision turns on them, and then
 * cost neither.  The prediction is made on the features the insert would
 * have computed (what they are computed from was copied then, but for the
 * disk's capacity, read now: kml_dd_take_capacity()), by the
 * model, threshold and standing aside of the moment.  The features are
 * computed apart and then copied over their inputs, which share their
 * space in the context.  Under the scheduler lock.
 */
void __kml_dd_predict_lazy(struct kml_dd_queue *kq, struct kml_dd_ctx *ctx)
{
	s32 f[KML_DD_NR_FEATURES];

	kml_dd_take_capacity(kq, ctx);
	kml_dd_feat_compute(&ctx->in, &ctx->seen, f);
	ctx->lazy = 0;
	memcpy(ctx->features, f, sizeof(f));
	kml_dd_predict(kq, ctx);
}
EXPORT_SYMBOL_GPL(__kml_dd_predict_lazy);

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

/*
 * Where @kq's next insert falls in observe mode's duty cycle (kml_dd.h,
 * KML_DD_OBSERVE_WINDOW), @kq in observe mode: false while nobody
 * watches, when the request goes untracked (a countdown, no division);
 * true otherwise, with *@warmup (false on entry) set in a window's first
 * KML_DD_OBSERVE_WARMUP requests.  A cycle starts with a window when the
 * mode is written.  A pause counted for another N is cut to the new N's
 * at most (N = 1 ends it).  Under the scheduler lock;
 * kml_dd_mode_store() zeroes the counters without it (marked accesses: a
 * restart lost to a concurrent insert only leaves the cycle where it
 * was).
 */
static bool kml_dd_watching(struct kml_dd_queue *kq, bool *warmup)
{
	u32 every = READ_ONCE(kml_dd_observe_every);
	u32 skip = READ_ONCE(kq->observe_skip);
	u32 pos;

	if (kq->observe_every != every) {
		/* a smaller N counts from now, not after the old, longer pause */
		skip = min(skip, (every - 1) * KML_DD_OBSERVE_WINDOW);
		WRITE_ONCE(kq->observe_skip, skip);
		kq->observe_every = every;
	}
	if (every <= 1)
		return true;
	if (skip) {
		/* kml_dd_passing()'s, for a request it left to this path */
		WRITE_ONCE(kq->observe_skip, skip - 1);
		this_cpu_inc(kml_dd_unobserved);
		return false;
	}
	pos = READ_ONCE(kq->observe_pos);
	*warmup = pos < KML_DD_OBSERVE_WARMUP;
	if (++pos == KML_DD_OBSERVE_WINDOW) {
		pos = 0;
		WRITE_ONCE(kq->observe_skip, (every - 1) * KML_DD_OBSERVE_WINDOW);
	}
	WRITE_ONCE(kq->observe_pos, pos);
	return true;
}

/*
 * The features of @ctx now, and unless it warms a window up, its
 * prediction: observe mode, and active without the lazy parameter.  Out
 * of line, so that the lazy path of kml_dd_track() makes no call and
 * saves no register.
 */
static noinline void kml_dd_track_eager(struct kml_dd_queue *kq,
					struct kml_dd_ctx *ctx)
{
	kml_dd_take_capacity(kq, ctx);
	kml_dd_feat_insert(&kq->feat, &ctx->in, ctx->features);
	if (!ctx->warmup)
		kml_dd_predict(kq, ctx);
}

/*
 * Track @rq, inserted while its queue watches: its context and features.
 * The context is published before its prediction is made, which the
 * scheduler lock, held throughout, makes the same.  Lazily this makes no
 * call and saves no register.
 */
static noinline void kml_dd_track(struct kml_dd_queue *kq, struct request *rq,
				  struct request *fifo_head,
				  unsigned long expire, bool same_dir,
				  bool warmup)
{
	const unsigned int op = rq_data_dir(rq);
	struct kml_dd_ctx *ctx;

	ctx = kml_dd_ctx_get(kq);
	if (!ctx) {
		kml_dd_stat_inc(KML_DD_S_UNTRACKED);
		return;
	}
	/*
	 * blk-mq's stamp at the allocation, in kml_dd_clock(): taken for
	 * every request with RQF_ELV, which all a scheduler inserts have (a
	 * requeue comes back at the head, to mq-deadline's dispatch list,
	 * and not through here)
	 */
	kml_dd_take_in(kq, ctx, rq, fifo_head, rq->start_time_ns, expire,
		       same_dir, op);
	ctx->dispatch_ns = 0;
	ctx->flags = 0;
	ctx->pred_valid = 0;
	ctx->score = 0;
	ctx->pred_met = 0;
	ctx->steer = 0;
	ctx->pred_issue_ns = 0;
	ctx->svc_bucket = KML_DD_SVC_NONE;
	ctx->warmup = warmup;
	ctx->lazy = 0;
	atomic_inc(&kq->queued[op]);
	rq->elv.priv[1] = ctx;
	/* a warm-up request (observe mode's) is never predicted */
	if (READ_ONCE(kml_dd.lazy) && !warmup && kml_dd_active(kq)) {
		ctx->lazy = 1;
		kml_dd_feat_take(&kq->feat, &ctx->in, &ctx->seen);
		return;
	}
	kml_dd_track_eager(kq, ctx);
}

/*
 * @ctx's request inserted again (no path in 6.1 does: a requeue goes to
 * the dispatch list, see __kml_dd_dispatch()): the first insert's
 * features and times are kept.  Out of line: in line, its registers made
 * the insert hook move its arguments about.
 */
static noinline void kml_dd_reinsert(struct kml_dd_queue *kq,
				     struct kml_dd_ctx *ctx)
{
	if (ctx->dispatch_ns) {
		atomic_dec(&kq->inflight);
		atomic_inc(&kq->queued[ctx->in.op]);
		ctx->dispatch_ns = 0;
	}
	ctx->flags |= KML_DD_SAMPLE_REQUEUED;
}

/*
 * The insert hook, past kml_dd_passing(), @mode the queue's as the caller
 * read it: a request observe mode lets pass here (the first of a pause
 * counted for another N) returns before kml_dd_track()'s work is set up,
 * and a tracked one goes there by a tail call.  (In line, the two paths
 * need callee-saved registers, which both then save.)
 */
void __kml_dd_insert(struct kml_dd_queue *kq, struct request *rq,
		     struct request *fifo_head, unsigned long expire,
		     bool same_dir, enum kml_dd_mode mode)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);
	bool warmup = false;

	if (unlikely(ctx)) {
		kml_dd_reinsert(kq, ctx);
		return;
	}
	if (mode != KML_DD_OBSERVE) {
		kml_dd_track(kq, rq, fifo_head, expire, same_dir, false);
		return;
	}
	if (kml_dd_watching(kq, &warmup))
		kml_dd_track(kq, rq, fifo_head, expire, same_dir, warmup);
}
EXPORT_SYMBOL_GPL(__kml_dd_insert);

/*
 * The clock is read first, so that only @kq and @rq are kept across the
 * call; a requeued request (rare) reads it for nothing.
 */
void __kml_dd_dispatch(struct kml_dd_queue *kq, struct request *rq)
{
	u64 now = kml_dd_clock();
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);

	if (ctx->dispatch_ns) {
		/*
		 * Dispatched again: requeued, which 6.1 does at the head of
		 * the dispatch list, without an insert.  Its times stay the
		 * first dispatch's.
		 */
		ctx->flags |= KML_DD_SAMPLE_REQUEUED;
		return;
	}
	/* not 0 (queued): the monotonic clock left 0 at boot, before a disk */
	ctx->dispatch_ns = now;
	atomic_dec(&kq->queued[ctx->in.op]);
	atomic_inc(&kq->inflight);
	ctx->met = __kml_dd_feat_dispatch(&kq->feat, ctx->in.op,
					  ctx->in.sector, ctx->in.bytes,
					  ctx->in.insert_ns,
					  ctx->in.deadline_ns, now);
	/* last, a tail call: the path without it keeps fewer registers */
	if (kml_dd_policy_cost(kq))
		kml_dd_cost_dispatch(kq, ctx, rq, now);
}
EXPORT_SYMBOL_GPL(__kml_dd_dispatch);

void kml_dd_insert_head(struct request *rq)
{
	if (unlikely(!(rq->rq_flags & RQF_ELVPRIV)))
		rq->elv.priv[1] = NULL;
}
EXPORT_SYMBOL_GPL(kml_dd_insert_head);

void kml_dd_note_urgent(struct request *rq)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);

	if (ctx)
		ctx->flags |= KML_DD_SAMPLE_URGENT;
	kml_dd_stat_inc(KML_DD_S_URGENT);
}
EXPORT_SYMBOL_GPL(kml_dd_note_urgent);

/* No padding: every byte of a sample the ring takes is written below. */
static_assert(sizeof(struct kml_dd_sample) ==
	      64 + sizeof(__s32) * KML_DD_MAX_FEATURES);

/*
 * The sample of a completed request @o whose sample the ring takes: a
 * clock read, the features.  Out of line, so that the finish hook puts no
 * sample on its stack for the requests the ring does not take.
 */
static noinline void kml_dd_finish_sample(struct kml_dd_queue *kq,
					  struct kml_dd_ctx *ctx,
					  const struct kml_dd_outcome *o)
{
	struct kml_dd_sample s;

	s.insert_ns = ctx->in.insert_ns;
	s.sector = ctx->in.sector;
	s.issue_ns = o->issue_ns;
	s.deadline_ns = o->deadline_ns;
	s.completion_ns = kml_dd_since(ctx->in.insert_ns, kml_dd_clock());
	s.pred_issue_ns = o->pred_issue_ns;
	s.bytes = ctx->in.bytes;
	s.op = ctx->in.op;
	s.met = o->met;
	s.pred_valid = o->pred_valid;
	s.pred_met = o->pred_met;
	s.flags = o->flags;
	s.dev = kq->dev;
	if (ctx->lazy) {	/* never predicted: the features, for the ring */
		kml_dd_take_capacity(kq, ctx);
		kml_dd_feat_compute(&ctx->in, &ctx->seen, s.features);
	} else {
		memcpy(s.features, ctx->features, sizeof(ctx->features));
	}
	/* no stack bytes into user memory */
	memset(s.features + KML_DD_NR_FEATURES, 0,
	       sizeof(s.features) - sizeof(ctx->features));
	kml_dd_push_sample(&s);
}

/*
 * The statistics of a completed request @ctx, which took @issue_ns from
 * its start to dispatch (@met: within its deadline), and its sample if the
 * ring takes it.
 */
static __always_inline void kml_dd_count_sample_of(struct kml_dd_queue *kq,
						   struct kml_dd_ctx *ctx,
						   u64 issue_ns, bool met)
{
	const struct kml_dd_outcome o = {
		.issue_ns = issue_ns,
		.deadline_ns = ctx->in.deadline_ns,
		.pred_issue_ns = ctx->pred_issue_ns,
		.flags = ctx->flags,
		.met = met,
		.pred_valid = ctx->pred_valid,
		.pred_met = ctx->pred_met,
		.score = ctx->score,
	};

	if (kml_dd_count_sample(&o))
		kml_dd_finish_sample(kq, ctx, &o);
}

/*
 * Hand @ctx back to kml_dd_ctx_get(): llist_add(), in line, as the
 * completion of most requests does nothing else (6.1's is a call).
 */
static __always_inline void kml_dd_ctx_put(struct kml_dd_queue *kq,
					   struct kml_dd_ctx *ctx)
{
	struct llist_node *first = READ_ONCE(kq->returned.first);

	do {
		ctx->node.next = first;
	} while (!try_cmpxchg(&kq->returned.first, &first, &ctx->node));
}

/* @ctx's time from its start to its dispatch, ns. */
static __always_inline u64 kml_dd_issue_ns(const struct kml_dd_ctx *ctx)
{
	return kml_dd_since(ctx->in.insert_ns, ctx->dispatch_ns);
}

/*
 * A completed request's work beyond its counts: policy cost learns its
 * service time, and one that was predicted, or whose sample a trainer
 * wants, has its outcome counted whole.  Then @ctx goes back.
 */
static noinline void kml_dd_finish_slow(struct kml_dd_queue *kq,
					struct kml_dd_ctx *ctx)
{
	if (kml_dd_policy_cost(kq))
		kml_dd_svc_learn(kq, ctx, kml_dd_clock());
	if (!ctx->warmup) {
		if (!ctx->pred_valid && kml_dd_skip_unclaimed())
			kml_dd_count_outcome(ctx->met);
		else
			kml_dd_count_sample_of(kq, ctx, kml_dd_issue_ns(ctx),
					       ctx->met);
	}
	kml_dd_ctx_put(kq, ctx);
}

/*
 * Most completions in active mode predicting lazily are of a request never
 * predicted, whose sample nobody takes: its counts, in line, and no call
 * (so are a warm-up request's, and every request's while no model is
 * loaded).  The rest go to kml_dd_finish_slow().
 */
void __kml_dd_finish(struct kml_dd_queue *kq, struct request *rq)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);

	rq->elv.priv[1] = NULL;
	if (!ctx->dispatch_ns) {
		/* merged into another request, never dispatched on its own */
		atomic_dec(&kq->queued[ctx->in.op]);
	} else {
		atomic_dec(&kq->inflight);
		if (kml_dd_policy_cost(kq))
			goto slow;
		if (!ctx->warmup) {
			if (ctx->pred_valid || !kml_dd_skip_unclaimed())
				goto slow;
			kml_dd_count_outcome(ctx->met);
		}
	}
	kml_dd_ctx_put(kq, ctx);
	return;
slow:
	kml_dd_finish_slow(kq, ctx);
}
EXPORT_SYMBOL_GPL(__kml_dd_finish);

/*
 * How many queues have kml_mode other than off: while none has, the hooks'
 * tests in mq-deadline are nops and it dispatches without KML's hooks
 * (kml_iosched.h).  A queue turned off keeps handing its contexts back at
 * completion, which tests the request and not this key; one dispatched
 * without the hooks comes back as never dispatched, and counts for
 * nothing.
 */
DEFINE_STATIC_KEY_FALSE(kml_dd_enabled);
EXPORT_SYMBOL_GPL(kml_dd_enabled);

/*
 * Set @kq's mode, counting it in kml_dd_enabled while the mode is not off.
 * Under the elevator's sysfs_lock, which orders the writes; may sleep (the
 * key patches the text).  Either order of the two writes is safe: the
 * hooks act only when the key and the mode both say so.
 */
static void kml_dd_set_mode(struct kml_dd_queue *kq, int mode)
{
	bool was_on = kq->mode != KML_DD_OFF, on = mode != KML_DD_OFF;

	WRITE_ONCE(kq->mode, mode);
	if (on && !was_on)
		static_branch_inc(&kml_dd_enabled);
	else if (!on && was_on)
		static_branch_dec(&kml_dd_enabled);
}

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
	kq->q = q;
	kq->zoned = blk_queue_is_zoned(q);
	if (q->disk)
		kq->dev = new_encode_dev(disk_devt(q->disk));
	return 0;
}
EXPORT_SYMBOL_GPL(kml_dd_init);

void kml_dd_exit(struct kml_dd_queue *kq)
{
	kml_dd_set_mode(kq, KML_DD_OFF);
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
	int mode = __sysfs_match_string(kml_dd_mode_names,
					ARRAY_SIZE(kml_dd_mode_names), page);

	if (mode < 0)
		return mode;
	kml_dd_svc_forget(kq);
	WRITE_ONCE(kq->observe_pos, 0);
	WRITE_ONCE(kq->observe_skip, 0);
	kml_dd_set_mode(kq, mode);
	return count;
}
EXPORT_SYMBOL_GPL(kml_dd_mode_store);
