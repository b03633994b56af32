// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: the hooks.  Per-request features and in-kernel
 * inference at insert, the queue's running averages at dispatch, and the
 * sample at completion, which goes to the core (kml_dd_core.c) with the
 * model, the ring and the statistics.  See docs/kml-iosched.md.
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

/* ------------------------------------------------------------ clock */

/*
 * KML's clock is the block layer's, ktime_get_ns(): blk-mq stamps every
 * request a scheduler sees with it when it allocates the request
 * (rq->start_time_ns, taken for RQF_ELV), and a request's time in the
 * scheduler counts from there, as kyber's total latency does.  That
 * leaves KML one clock read per request, at dispatch, where it used to
 * read local_clock() at the insert too; a completion whose sample the
 * ring takes, and policy cost's, read it once more.  The stamp precedes
 * the insert by the submission path (and, for a request taken from a
 * plug's cache, by its wait there: such stamps are not even in the order
 * of the inserts), so a completion in between may count as in flight at
 * the insert (docs/trace.md).  In a guest without a stable TSC (QEMU TCG
 * against the host's clock) the clocksource may be the HPET, where a
 * read is an emulated MMIO access: blk-mq makes two per request there.
 */
static u64 kml_dd_clock(void)
{
	return ktime_get_ns();
}

/* jiffies_to_nsecs(), a multiplication where HZ divides a second. */
static __always_inline u64 kml_dd_jiffies_to_ns(unsigned long j)
{
	if (NSEC_PER_SEC % HZ == 0)
		return (u64)j * (NSEC_PER_SEC / HZ);
	return jiffies_to_nsecs(j);
}

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

/* ------------------------------------------------------------ policy cost */

/*
 * Policy cost's bucket for a seek of @dist sectors (cylinders, given a
 * disk's geometry): 0, or 1 + lg2(dist).
 */
static unsigned int kml_dd_svc_bucket(u64 dist)
{
	return min_t(unsigned int, fls64(dist), KML_DD_SVC_BUCKETS - 1);
}

/*
 * A disk's geometry for policy cost, as the module parameters give it
 * (kml_dd.h); false while any part is unknown, or a track is longer than
 * a revolution in ns, when service times are learned per seek length
 * alone.  Read at each use: a change while I/O runs prices a candidate or
 * two by either geometry, and a queue learns the new one afresh when its
 * kml_mode is written (the learned values are per queue, the geometry is
 * the module's: every queue under policy cost is priced as that disk).
 */
struct kml_dd_geom {
	u32 rev_ns;			/* one revolution */
	u32 track;			/* sectors per track */
	u32 cyl;			/* sectors per cylinder */
	u32 sector_ns;			/* a sector passing under the head */
};

static bool kml_dd_geom(struct kml_dd_geom *g)
{
	g->rev_ns = READ_ONCE(kml_dd.cost_rev_ns);
	g->track = READ_ONCE(kml_dd.cost_track_sectors);
	g->cyl = READ_ONCE(kml_dd.cost_cyl_sectors);
	if (!g->rev_ns || !g->track || !g->cyl || g->track > g->rev_ns)
		return false;
	g->sector_ns = g->rev_ns / g->track;
	return true;
}

static u64 kml_dd_cyl_dist(const struct kml_dd_geom *g, u64 a, u64 b)
{
	u64 ca = div_u64(a, g->cyl), cb = div_u64(b, g->cyl);

	return ca > cb ? ca - cb : cb - ca;
}

/*
 * A flash device's channels for policy cost (cost_channels and
 * cost_stripe_sectors): false while either is unknown.  Read at each use,
 * as the disk's; every caller asks kml_dd_geom() first, so that a disk's
 * geometry, when given, wins.
 */
struct kml_dd_flash {
	u32 channels;
	u32 stripe;			/* sectors to a channel before the next */
};

static bool kml_dd_flash(struct kml_dd_flash *f)
{
	f->channels = READ_ONCE(kml_dd.cost_channels);
	f->stripe = READ_ONCE(kml_dd.cost_stripe_sectors);
	return f->channels && f->channels <= KML_DD_MAX_CHANNELS && f->stripe;
}

/* The channel that holds @pos, as the device stripes sectors over them. */
static u32 kml_dd_channel(const struct kml_dd_flash *f, u64 pos)
{
	u32 ch;

	div_u64_rem(div_u64(pos, f->stripe), f->channels, &ch);
	return ch;
}

/*
 * Learn from @ctx, served from @start to @now on a disk of geometry @g.
 * The sector after its last one passed under the head at @now, which is
 * where the platter was: the phase.  Its seek took at most the time from
 * @start to its first sector, the rest being the turn until that sector
 * came round, and more than that less a revolution: per lg2 of the
 * cylinders crossed, the least upper and the greatest lower bound seen.  A
 * choice made on the middle of the two narrows them: a sector caught lowers
 * the upper bound, one missed by a hair (a whole turn more) raises the
 * lower.  A request that started at the head streams on and teaches no
 * seek.
 */
static void kml_dd_geom_learn(struct kml_dd_queue *kq,
			      const struct kml_dd_ctx *ctx,
			      const struct kml_dd_geom *g, u64 start, u64 now)
{
	u64 xfer = (u64)ctx->svc_sectors * g->sector_ns;
	u32 leak = g->rev_ns >> KML_DD_SEEK_LEAK_SHIFT, in_track, sample;
	unsigned int b = ctx->svc_bucket;
	s64 phase = READ_ONCE(kq->svc_phase_ns), d;
	u64 end, pos_ns, hi, lo;

	/*
	 * Its last sector ended @end after sector 0's start passed; not so
	 * for a request that streamed on from an idle device, which the
	 * disk starts at once, wherever the platter is.
	 */
	div_u64_rem(ctx->svc_pos, g->track, &in_track);
	end = ((u64)in_track + ctx->svc_sectors) * g->sector_ns;
	if (now > end && !(ctx->svc_seq && start == ctx->dispatch_ns)) {
		div_u64_rem(now - end, g->rev_ns, &sample);
		if (!READ_ONCE(kq->svc_phase_known)) {
			WRITE_ONCE(kq->svc_phase_ns, sample);
			WRITE_ONCE(kq->svc_phase_known, true);
		} else {
			/* the shorter way round, an eighth of it */
			d = (s64)sample - phase;
			if (d > g->rev_ns / 2)
				d -= g->rev_ns;
			else if (d < -(s64)(g->rev_ns / 2))
				d += g->rev_ns;
			phase += d / 8;
			if (phase < 0)
				phase += g->rev_ns;
			else if (phase >= g->rev_ns)
				phase -= g->rev_ns;
			WRITE_ONCE(kq->svc_phase_ns, phase);
		}
	}
	if (ctx->svc_seq)
		return;
	pos_ns = kml_dd_since(start, now);
	if (pos_ns <= xfer)	/* no seek in it: a clock step, not a sample */
		return;
	pos_ns = min_t(u64, pos_ns - xfer, U32_MAX);
	/*
	 * The seek took at most pos_ns and more than pos_ns less a
	 * revolution.  An upper bound falls at most to its half in one
	 * sample, so that one wrong sample cannot price every shorter seek
	 * at nothing; the bounds leak apart, so that a device or workload
	 * that changes is learned again.
	 */
	hi = READ_ONCE(kq->svc_ns[b]);
	lo = READ_ONCE(kq->svc_lo_ns[b]);
	hi = hi ? max_t(u64, min_t(u64, (u64)hi + leak, pos_ns), hi / 2) :
		  pos_ns;
	lo = max_t(u64, lo > leak ? lo - leak : 0,
		   pos_ns > g->rev_ns ? pos_ns - g->rev_ns : 0);
	WRITE_ONCE(kq->svc_ns[b], max_t(u32, hi, 1));
	WRITE_ONCE(kq->svc_lo_ns[b], min_t(u32, lo, hi));
}

/*
 * Policy cost's candidates on either side of the head, per direction: more
 * given a geometry, where the cheapest request need not be the nearest.
 * Given a flash device's channels instead, *@by_age: sector order says
 * nothing of a request's cost there, and which requests lay near the head
 * was chance; the candidates are then the oldest, as many as a disk's on
 * both sides, which are those the age credit and the horizon are about.
 * Given either, cost_window_permille makes them the oldest, that share of
 * the @in_flight requests the queue holds or has on the device, rounded
 * up, at least one (*@by_age; kml_dd.h, KML_DD_COST_MAX_WINDOW_PERMILLE).
 */
unsigned int kml_dd_cost_span(bool *by_age, unsigned int in_flight)
{
	u32 permille = READ_ONCE(kml_dd.cost_window_permille);
	struct kml_dd_flash f;
	struct kml_dd_geom g;
	bool geom = kml_dd_geom(&g);

	*by_age = geom || kml_dd_flash(&f);
	if (!*by_age)
		return 1;
	if (permille)
		return max_t(u32, DIV_ROUND_UP_ULL((u64)in_flight * permille,
						   1000), 1);
	*by_age = !geom;
	return geom ? KML_DD_COST_GEOM_SPAN : 2 * KML_DD_COST_GEOM_SPAN;
}
EXPORT_SYMBOL_GPL(kml_dd_cost_span);

/*
 * Move bucket @b's mean towards @svc ns: a running mean of weight 1/16, a
 * sample counting for at most KML_DD_SVC_MAX_JUMP times the mean (a
 * request requeued past the scheduler keeps its first dispatch time).  Two
 * completions at once may lose one of the updates, which costs the mean
 * one sample and no consistency (each store is of a whole value).
 */
static void kml_dd_svc_mean(struct kml_dd_queue *kq, unsigned int b, u64 svc)
{
	s64 old = READ_ONCE(kq->svc_ns[b]);

	if (old)
		svc = min_t(u64, svc, (u64)old * KML_DD_SVC_MAX_JUMP);
	WRITE_ONCE(kq->svc_ns[b],
		   old ? old + div_s64((s64)svc - old, 16) : max_t(u64, svc, 1));
}

/*
 * Learn from @ctx, completed at @now on a flash device of channels @f: its
 * channel served it from its dispatch, or the channel's last completion if
 * later (a channel serves its commands in order), to now; a running mean
 * per direction (bucket 0 reads, 1 writes), one per direction whatever
 * the size (the figures are of 4 KiB requests).  The channel's predicted
 * end moves by this one's error, as on the disk; on a channel, which
 * serves in order, an error is then counted once for each request queued
 * behind it, which the negative errors of the next ones and an idle
 * channel (predicted from now again) undo.  Not after the table was
 * forgotten.  The learned parameters are read again here: change them,
 * then write kml_mode (as the harness does), or a request dispatched
 * under the old ones is learned as if under the new.
 */
static void kml_dd_flash_learn(struct kml_dd_queue *kq,
			       const struct kml_dd_ctx *ctx,
			       const struct kml_dd_flash *f, u64 now)
{
	u32 ch = kml_dd_channel(f, ctx->svc_pos);
	u64 start = max_t(u64, ctx->dispatch_ns,
			  READ_ONCE(kq->chan_last_done[ch]));
	u64 busy = READ_ONCE(kq->chan_busy_until[ch]);

	WRITE_ONCE(kq->chan_last_done[ch], now);
	if (busy >= ctx->svc_done_ns)
		WRITE_ONCE(kq->chan_busy_until[ch],
			   busy + (now - ctx->svc_done_ns));
	if (now > start)	/* else another CPU's later completion */
		kml_dd_svc_mean(kq, ctx->svc_bucket,
				min_t(u64, now - start, U32_MAX));
}

/*
 * Learn from @ctx, completed at @now, what a seek of its length costs.
 * blk-mq takes the next request from the scheduler while the device is
 * still busy with the last one (it waits for a tag at the driver), so a
 * request's service starts at the later of its dispatch and the completion
 * before it.  On a device that serves one request at a time that is its
 * service time; on one that serves several at once it is the gap between
 * completions, the time the request added, which does not depend on a
 * seek there, so the table comes out flat and the age credit orders the
 * requests (kml_dd_svc_mean()).  Given a geometry, kml_dd_geom_learn()
 * or kml_dd_flash_learn() instead.  Out of line: only policy cost calls it,
 * and inlined it made every completion hook's frame larger.
 */
static noinline void kml_dd_svc_learn(struct kml_dd_queue *kq,
				       const struct kml_dd_ctx *ctx, u64 now)
{
	u64 start = max_t(u64, ctx->dispatch_ns, READ_ONCE(kq->svc_last_done));
	u64 svc = min_t(u64, kml_dd_since(start, now), U32_MAX);
	struct kml_dd_flash f;
	struct kml_dd_geom g;
	u64 busy;

	WRITE_ONCE(kq->svc_last_done, now);
	/* requeued, or dispatched before policy cost was on */
	if ((ctx->flags & KML_DD_SAMPLE_REQUEUED) ||
	    ctx->svc_bucket == KML_DD_SVC_NONE)
		return;
	if (ctx->svc_done_ns && kml_dd_geom(&g)) {
		/*
		 * What was dispatched after it was predicted from its end:
		 * move the last predicted end by its error.  Mostly the error
		 * is a whole turn (a sector missed by a hair), which keeps the
		 * platter's angle and moves the time, so that the next choice
		 * is priced from the right time.  This counts an error again
		 * when the next completion's prediction carried it; a running
		 * sum of corrections that did not gave 12% fewer IOPS on the
		 * disk model (docs/kml-iosched.md), as a seek's end is where
		 * the platter brings its sector round, which a small error in
		 * its start does not move.  Not after the table was forgotten
		 * (busy_until then precedes this end), when the sum could
		 * wrap; a dispatch racing with this keeps its own prediction.
		 */
		busy = READ_ONCE(kq->svc_busy_until);
		if (busy >= ctx->svc_done_ns)
			WRITE_ONCE(kq->svc_busy_until,
				   busy + (now - ctx->svc_done_ns));
		kml_dd_geom_learn(kq, ctx, &g, start, now);
		return;
	}
	if (ctx->svc_done_ns && kml_dd_flash(&f)) {
		kml_dd_flash_learn(kq, ctx, &f, now);
		return;
	}
	/* told a geometry or channels at its dispatch, none now: nothing */
	if (!ctx->svc_done_ns)
		kml_dd_svc_mean(kq, ctx->svc_bucket, svc);
}

/*
 * The learned service time of a seek in bucket @b.  An unlearned length
 * costs as the next longer learned one (else the longest shorter one), so
 * that a table learned in part still sorts by seek length; 0 while nothing
 * is learned, when the bucket alone orders the requests.
 */
static u32 kml_dd_svc_predict(struct kml_dd_queue *kq, unsigned int b)
{
	unsigned int i;
	u32 ns;

	for (i = b; i < KML_DD_SVC_BUCKETS; i++) {
		ns = READ_ONCE(kq->svc_ns[i]);
		if (ns)
			return ns;
	}
	for (i = b; i-- > 0; ) {
		ns = READ_ONCE(kq->svc_ns[i]);
		if (ns)
			return ns;
	}
	return 0;
}

/*
 * A learned bucket's seek: the middle of what its samples left possible,
 * which a choice on it then narrows (kml_dd_geom_learn()).
 */
static u64 kml_dd_seek_mid(struct kml_dd_queue *kq, unsigned int b)
{
	u64 hi = READ_ONCE(kq->svc_ns[b]);

	return (min_t(u64, READ_ONCE(kq->svc_lo_ns[b]), hi) + hi) / 2;
}

/*
 * The learned seek over @dist cylinders.  A seek takes no less for being
 * longer, so a bucket is worth at most what any longer learned one is,
 * and an unlearned one what the next longer learned one is; a length
 * between two buckets' shortest is priced between theirs, in proportion.
 * 0 while nothing is learned.  Up to KML_DD_SVC_BUCKETS loads.
 */
static u64 kml_dd_seek_predict(struct kml_dd_queue *kq, u64 dist)
{
	unsigned int b = kml_dd_svc_bucket(dist), i;
	u64 run = U64_MAX, next = U64_MAX, edge;

	for (i = KML_DD_SVC_BUCKETS; i-- > b; ) {
		if (i == b)
			next = run;
		if (READ_ONCE(kq->svc_ns[i]))
			run = min(run, kml_dd_seek_mid(kq, i));
	}
	if (run == U64_MAX)
		return kml_dd_svc_predict(kq, b);
	if (!b || next == U64_MAX || next <= run)
		return run;
	edge = 1ULL << (b - 1);		/* bucket b holds [edge, 2 edge) */
	return run + mul_u64_u64_div_u64(next - run, dist - edge, edge);
}

/*
 * A queue whose kml_mode is written, or under policy cost after the policy
 * or its device changed (kml_dd.svc_gen), learns policy cost's service
 * times afresh, as after a boot: its device or workload may have changed.  A
 * completion racing with this may store one mean after it: one bucket
 * learned from one sample, which the next samples correct.  A dispatch
 * racing with it may write the share dispatched late back over the reset:
 * the next 64 or so dispatches bring it to the new load's.
 */
static void kml_dd_svc_forget(struct kml_dd_queue *kq)
{
	unsigned int b;

	for (b = 0; b < KML_DD_SVC_BUCKETS; b++)
		WRITE_ONCE(kq->svc_ns[b], 0);
	WRITE_ONCE(kq->svc_last_done, 0);
	for (b = 0; b < KML_DD_SVC_BUCKETS; b++)
		WRITE_ONCE(kq->svc_lo_ns[b], 0);
	WRITE_ONCE(kq->svc_phase_known, false);
	WRITE_ONCE(kq->svc_busy_until, 0);
	WRITE_ONCE(kq->svc_missed, 0);
	WRITE_ONCE(kq->head_known, false);
	WRITE_ONCE(kq->svc_gen, READ_ONCE(kml_dd.svc_gen));
	for (b = 0; b < KML_DD_MAX_CHANNELS; b++) {
		WRITE_ONCE(kq->chan_busy_until[b], 0);
		WRITE_ONCE(kq->chan_last_done[b], 0);
	}
}

/*
 * Policy cost's learned service times, for debugfs: one line per learned
 * bucket, "lo hi ns" for seeks of lo to hi sectors; given a disk's
 * geometry, of lo to hi cylinders, and ns the seek alone.
 */
void kml_dd_svc_show(struct kml_dd_queue *kq, struct seq_file *m)
{
	struct kml_dd_geom g;
	bool geom = kml_dd_geom(&g);
	unsigned int b;
	u64 ns, lo;

	for (b = 0; b < KML_DD_SVC_BUCKETS; b++) {
		ns = READ_ONCE(kq->svc_ns[b]);
		if (!ns)
			continue;
		lo = b ? 1ULL << (b - 1) : 0;
		if (geom)	/* the seek it prices, at the bucket's shortest */
			ns = kml_dd_seek_predict(kq, lo);
		seq_printf(m, "%llu %llu %llu\n", lo, b ? (1ULL << b) - 1 : 0,
			   ns);
	}
}
EXPORT_SYMBOL_GPL(kml_dd_svc_show);

/*
 * If the policy or the device changed since @kq learned (kml_dd_relearn()),
 * learn afresh.  Policy cost asks this before its choice prices the
 * candidates (kml_dd_head()) and again where a dispatch teaches it.
 */
static void kml_dd_svc_fresh(struct kml_dd_queue *kq)
{
	if (unlikely(READ_ONCE(kq->svc_gen) != READ_ONCE(kml_dd.svc_gen)))
		kml_dd_svc_forget(kq);
}

/*
 * Where the head is: the sector after the last request dispatched.  Policy
 * cost's choice asks this first: after a switch, the first choice prices
 * its candidates by what the queue learns from then on, as the ones after
 * it do, and not by what it learned under another policy or device.
 */
sector_t kml_dd_head(struct kml_dd_queue *kq)
{
	kml_dd_svc_fresh(kq);
	return kq->head;
}
EXPORT_SYMBOL_GPL(kml_dd_head);

u64 kml_dd_now(void)
{
	return kml_dd_clock();
}
EXPORT_SYMBOL_GPL(kml_dd_now);

/*
 * On a disk of geometry @g, how long @nr sectors at @pos take when the head
 * is at @head and free at @t0: the learned seek, the turn until the first
 * sector comes under the head (from the learned phase; half a revolution
 * while none is learned), and the transfer.  A request that starts at the
 * head streams on.
 */
static u64 kml_dd_geom_service(struct kml_dd_queue *kq,
			       const struct kml_dd_geom *g, sector_t head,
			       u64 pos, u32 nr, u64 t0)
{
	u64 xfer = (u64)nr * g->sector_ns, seek;
	u32 angle, in_track;
	s64 turn;

	if (pos == head)
		return xfer;
	seek = kml_dd_seek_predict(kq, kml_dd_cyl_dist(g, pos, head));
	if (!READ_ONCE(kq->svc_phase_known))
		return seek + g->rev_ns / 2 + xfer;
	div_u64_rem(t0 + seek + g->rev_ns - READ_ONCE(kq->svc_phase_ns),
		    g->rev_ns, &angle);
	div_u64_rem(pos, g->track, &in_track);
	turn = (s64)in_track * g->sector_ns - angle;
	if (turn < 0)
		turn += g->rev_ns;
	return seek + turn + xfer;
}

/*
 * Given a disk's geometry, the credit of a request that has waited @wait of
 * its @deadline, ns: from nothing at its arrival to cost_credit_permille of
 * a revolution at its deadline, in proportion, and all of it at once for
 * one a steering model predicts to miss (@late >= 0 before the deadline).
 * In revolutions, as a choice between two sectors differs by up to one.
 * In shares of its expiry, as a read due in 10 ms is more urgent than a
 * write due in 400 ms, however long each has waited; or of @horizon_ms
 * where that is sooner, as a request that waits long makes the tail
 * whatever its expiry.  Past the deadline (or the horizon), with
 * @late_permille set, it grows on at that many thousandths of its rate
 * before, for up to KML_DD_COST_STARVE more deadlines (or horizons): a
 * request that missed still gets served within a bounded time, which is
 * what the tail is made of.  Without it the credit stays whole from the
 * horizon to the deadline.
 * The caller passes cost_late_permille and cost_horizon_ms, or 0 for both
 * while the miss budget is spent (kml_dd_tail_allowed()), bounds @wait by
 * KML_DD_COST_STARVE deadlines, and past the deadline calls only with
 * @late_permille set.
 */
static s64 kml_dd_due_credit(const struct kml_dd_geom *g, s64 wait, s64 late,
			     s64 deadline, u32 late_permille, u32 horizon_ms)
{
	u64 full = div_u64((u64)g->rev_ns *
			   READ_ONCE(kml_dd.cost_credit_permille), 1000);
	u64 base = (u64)horizon_ms * NSEC_PER_MSEC, past;

	if (!base || base > deadline)
		base = max_t(u64, deadline, 1);
	if (wait >= base) {
		/* capped, so that no quotient overflows however long it waits */
		past = min_t(u64, wait - base, KML_DD_COST_STARVE * base);
		return full + mul_u64_u64_div_u64(past, full * late_permille,
						  base * 1000);
	}
	if (late >= 0)
		return full;
	return mul_u64_u64_div_u64(wait, full, base);
}

/*
 * Told a flash device's channels, the credit of a request that has waited
 * @wait of its @deadline, ns, with cost_late_permille set: the plain
 * credit, its age and its lateness (past, or as predicted by a steering
 * model) shifted right by @shift, but with its age growing, from its
 * deadline or @horizon_ms where that is sooner, at @late_permille
 * thousandths of the rate before.  1000 is the plain credit; 8000 at a
 * shift of 3 is a nanosecond of credit for each one waited until the
 * deadline (9/8 past it, with the lateness), which soon outbids any wait
 * for a channel, so that the requests past the horizon go about oldest
 * first while the younger ones keep the channels busy.
 * Continuous in @wait, and the lateness counts on both sides of the
 * horizon.  The caller bounds @wait by KML_DD_COST_STARVE deadlines;
 * mul_u64_u32_div() keeps the product whole for any expiry mq-deadline
 * takes (up to INT_MAX ms).
 */
static s64 kml_dd_flash_credit(s64 wait, s64 late, s64 deadline,
			       u32 late_permille, u32 horizon_ms, u32 shift)
{
	s64 base = (s64)horizon_ms * NSEC_PER_MSEC, age = wait;

	if (!base || base > deadline)
		base = max_t(s64, deadline, 1);
	if (wait > base)
		age = base + (s64)mul_u64_u32_div(wait - base, late_permille,
						  1000);
	return (age + max_t(s64, late, 0)) >> shift;
}

/*
 * Whether @kq may spend misses on the tail (cost_late_permille,
 * cost_horizon_ms, and on flash cost_svc_permille): while the share of
 * requests it dispatched late lately is under cost_miss_budget_permille,
 * or always with no budget set.
 */
static bool kml_dd_tail_allowed(const struct kml_dd_queue *kq)
{
	u32 budget = READ_ONCE(kml_dd.cost_miss_budget_permille);

	return !budget ||
	       READ_ONCE(kq->svc_missed) < div_u64((u64)budget << 16, 1000);
}

/*
 * Policy cost: what dispatching @rq next, with the head at @head, is
 * predicted to cost, in ns, less its age credit.  The service time is the
 * learned one for its seek (kml_dd_svc_predict(), plus the bucket, so that
 * the shorter seek wins a tie), or given a disk's geometry, its seek, turn
 * and transfer from when the request before it is predicted to end
 * (kml_dd_geom_service()), or given a flash device's channels, the wait
 * for its channel and its learned time there (cost_svc_permille of it
 * while the tail may be spent, kml_dd_tail_allowed()).  The credit is
 * its time in the queue and, past its deadline, its lateness again,
 * shifted right by cost_age_shift: a request ages from its arrival and
 * twice as fast once late.  Given a geometry, until its deadline, the
 * credit is kml_dd_due_credit() instead, and past it (unless
 * cost_late_permille carries that on) the same slow ageing: a request
 * past its deadline has missed it whatever comes next, and the credit
 * goes to those that can still meet theirs.  Given a flash device's
 * channels, with cost_late_permille set, kml_dd_flash_credit() instead
 * (its age counts at cost_late_permille thousandths from the deadline or
 * the horizon).  With every request served late making the next ones
 * later, serving the latest first would make them all late.  For a
 * request the model predicted to miss while steering, the lateness is at
 * least the predicted one: acting on that before the deadline is what can
 * still save it.  A request KML does not track (inserted before the mode
 * was switched, or with the pool exhausted) ages by mq-deadline's own
 * clock, rq->fifo_time less @expire, in jiffies.  One that has waited
 * KML_DD_COST_STARVE times its expiry goes first, whatever the shift.
 * Under the scheduler lock.
 */
s64 kml_dd_cost(struct kml_dd_queue *kq, struct request *rq, sector_t head,
		u64 now, unsigned long expire)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);
	u64 pos = blk_rq_pos(rq);
	unsigned long inserted;
	s64 wait, late, deadline, cost;
	struct kml_dd_flash f;
	struct kml_dd_geom g;
	bool geom = kml_dd_geom(&g), flash = false, tail = false;
	u32 late_permille = 0, horizon_ms = 0, svc_permille;
	unsigned int b;
	u64 busy, svc;

	if (geom) {
		tail = kml_dd_tail_allowed(kq);
		cost = kml_dd_geom_service(kq, &g, head, pos,
					   blk_rq_sectors(rq),
					   max_t(u64, now,
						 READ_ONCE(kq->svc_busy_until)));
	} else if (kml_dd_flash(&f)) {
		flash = true;
		tail = kml_dd_tail_allowed(kq);
		/* the wait for its channel, then its own time there */
		busy = READ_ONCE(kq->chan_busy_until[kml_dd_channel(&f, pos)]);
		svc = READ_ONCE(kq->svc_ns[rq_data_dir(rq)]);
		svc_permille = READ_ONCE(kml_dd.cost_svc_permille);
		if (tail && svc_permille < 1000)
			svc = div_u64(svc * svc_permille, 1000);
		cost = (busy > now ? busy - now : 0) + svc;
	} else {
		b = kml_dd_svc_bucket(pos > head ? pos - head : head - pos);
		cost = (s64)kml_dd_svc_predict(kq, b) + b;
	}
	if (ctx) {
		wait = kml_dd_since(ctx->in.insert_ns, now);
		deadline = ctx->in.deadline_ns;
	} else {
		inserted = (unsigned long)rq->fifo_time - expire;
		wait = time_after(jiffies, inserted) ?
		       kml_dd_jiffies_to_ns(jiffies - inserted) : 0;
		deadline = kml_dd_jiffies_to_ns(expire);
	}
	if (wait >= KML_DD_COST_STARVE * max_t(s64, deadline, NSEC_PER_MSEC))
		return S64_MIN / 2 - wait;
	late = wait - deadline;
	if (ctx && ctx->lazy)
		__kml_dd_predict_lazy(kq, ctx);
	if (ctx && ctx->pred_valid && ctx->steer)
		late = max_t(s64, late, (s64)ctx->pred_issue_ns - deadline);
	if (tail) {
		late_permille = READ_ONCE(kml_dd.cost_late_permille);
		horizon_ms = READ_ONCE(kml_dd.cost_horizon_ms);
	}
	if (geom && (wait < deadline || late_permille))
		return cost - kml_dd_due_credit(&g, wait, late, deadline,
						late_permille, horizon_ms);
	if (flash && late_permille)
		return cost - kml_dd_flash_credit(wait, late, deadline,
						  late_permille, horizon_ms,
						  READ_ONCE(kml_dd.cost_age_shift));
	return cost - ((wait + max_t(s64, late, 0)) >>
		       READ_ONCE(kml_dd.cost_age_shift));
}
EXPORT_SYMBOL_GPL(kml_dd_cost);

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
 * The share of @kq's dispatches that were late (the label, decided at the
 * dispatch of @ctx), a running average that cost_miss_budget_permille
 * bounds (kml_dd_tail_allowed()).
 */
static void kml_dd_note_missed(struct kml_dd_queue *kq,
			       const struct kml_dd_ctx *ctx)
{
	u32 missed = ctx->met ? 0 : 1 << 16;
	u32 avg = READ_ONCE(kq->svc_missed);

	WRITE_ONCE(kq->svc_missed, avg + ((s32)(missed - avg) >>
					  KML_DD_COST_MISSED_SHIFT));
}

/*
 * Policy cost's view of @rq, dispatched at @now: its seek from where the
 * request is now (a merge may have moved its start), or given a geometry,
 * what the device will do with it.  Out of line, so that other modes and
 * policies do not pay for it in the dispatch hook.
 */
static noinline void kml_dd_cost_dispatch(struct kml_dd_queue *kq,
					  struct kml_dd_ctx *ctx,
					  struct request *rq, u64 now)
{
	u64 pos = blk_rq_pos(rq), t0;
	u32 nr = blk_rq_sectors(rq), ch;
	struct kml_dd_flash f;
	struct kml_dd_geom g;
	/* a device's geometry concerns its reads and writes only */
	bool rw = req_op(rq) == REQ_OP_READ || req_op(rq) == REQ_OP_WRITE;
	/*
	 * While nothing was tracked (kml_mode off, as in the cell before) the
	 * device's head moved and kq->head did not: the first seek after
	 * kml_dd_svc_forget() is from a sector not known, and teaches nothing.
	 * Learned from that distance, a short seek priced the longest bucket,
	 * and so every shorter one (kml_dd_seek_predict()), at a third of its
	 * seek for the rest of a cell (an upper bound rises by a leak a
	 * sample), and the order it chose was slower than FIFO's.
	 */
	bool known;

	kml_dd_svc_fresh(kq);
	known = READ_ONCE(kq->head_known);

	if (kml_dd_geom(&g)) {
		if (!rw)
			return;
		t0 = max_t(u64, now, READ_ONCE(kq->svc_busy_until));
		ctx->svc_bucket = !known ? KML_DD_SVC_NONE :
				  kml_dd_svc_bucket(kml_dd_cyl_dist(&g, pos,
								    kq->head));
		ctx->svc_seq = known && pos == kq->head;
		ctx->svc_pos = pos;
		ctx->svc_sectors = nr;
		ctx->svc_done_ns = t0 + kml_dd_geom_service(kq, &g, kq->head,
							    pos, nr, t0);
		WRITE_ONCE(kq->svc_busy_until, ctx->svc_done_ns);
		kml_dd_note_missed(kq, ctx);
	} else if (kml_dd_flash(&f)) {
		if (!rw)
			return;
		/* queued on its channel behind what was sent there */
		ch = kml_dd_channel(&f, pos);
		t0 = max_t(u64, now, READ_ONCE(kq->chan_busy_until[ch]));
		ctx->svc_bucket = ctx->in.op;
		ctx->svc_pos = pos;
		ctx->svc_done_ns = t0 + READ_ONCE(kq->svc_ns[ctx->in.op]);
		WRITE_ONCE(kq->chan_busy_until[ch], ctx->svc_done_ns);
		kml_dd_note_missed(kq, ctx);
	} else {
		ctx->svc_bucket = !known ? KML_DD_SVC_NONE :
				  kml_dd_svc_bucket(pos > kq->head ?
						    pos - kq->head :
						    kq->head - pos);
		ctx->svc_done_ns = 0;
	}
	kq->head = pos + nr;
	if (!known)
		WRITE_ONCE(kq->head_known, true);
}

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
