// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: policy cost, active mode's second policy.  Of the
 * candidates mq-deadline's dispatch offers (kml_dd_cost_span()), the one
 * whose predicted service time less a credit for its age and lateness,
 * past or predicted, is least goes next (kml_dd_cost()).  The service
 * times are learned per queue from the completions, per seek length, or
 * given a disk's geometry or a flash device's channels (the cost_*
 * module parameters, defined here), as that device serves them.  See
 * docs/kml-iosched.md.
 *
 * Built with KML_IOSCHED_COST: without it "cost" is refused by the policy
 * parameter, kml_dd_policy_cost() is false, neither the hooks nor
 * mq-deadline keep any of this code, a queue none of its state and a
 * request context none but two bytes of it (kml_iosched.h).  Called under the scheduler lock, but
 * for kml_dd_svc_learn() (completions), kml_dd_svc_forget() (a write of
 * kml_mode), whose races the comments below weigh, the two debugfs readers
 * (kml_dd_svc_show(), kml_dd_cost_show()) and kml_dd_relearn() (under the
 * parameter lock).
 */
#include <linux/module.h>
#include <linux/blkdev.h>
#include <linux/blk-mq.h>
#include <linux/jiffies.h>
#include <linux/math64.h>
#include <linux/seq_file.h>
#include <linux/stringify.h>
#include "kml_internal.h"
#include "kml_iosched.h"
#include "kml_dd.h"

/* ------------------------------------------------------------ parameters */

KML_DD_PARAM(cost_age_shift, KML_DD_COST_MAX_AGE_SHIFT, false,
	     "policy cost: (age + lateness) ns >> this is a request's credit (max 40)");

/*
 * Policy cost's view of a disk: one revolution in ns, the sectors in a
 * track and in a cylinder.  While any is 0 the service time is learned per
 * seek length alone.
 */
KML_DD_PARAM(cost_rev_ns, KML_DD_GEOM_MAX_REV_NS, true,
	     "policy cost: the disk's revolution, ns (0 = unknown)");

KML_DD_PARAM(cost_track_sectors, KML_DD_GEOM_MAX_TRACK, true,
	     "policy cost: the disk's sectors per track (0 = unknown)");

KML_DD_PARAM(cost_cyl_sectors, KML_DD_GEOM_MAX_CYL, true,
	     "policy cost: the disk's sectors per cylinder (0 = unknown)");

/*
 * A disk's seek curve, as C. Ruemmler and J. Wilkes model one ("An
 * introduction to disk drive modeling", IEEE Computer 27(3), 1994): over d
 * cylinders, a + b sqrt(d) below the boundary, c + e d from it.  While all
 * five are 0 a seek's time is learned per length (kml_dd_seek()).
 */
KML_DD_PARAM(cost_seek_a_ns, KML_DD_SEEK_MAX_NS, true,
	     "policy cost with a geometry: a short seek's fixed time, ns (all cost_seek_* 0 = learned)");

KML_DD_PARAM(cost_seek_b_ns, KML_DD_SEEK_MAX_NS, true,
	     "policy cost with a geometry: a short seek's ns per square root of a cylinder");

KML_DD_PARAM(cost_seek_boundary, KML_DD_SEEK_MAX_CYL, true,
	     "policy cost with a geometry: the cylinders from which a seek is long");

KML_DD_PARAM(cost_seek_c_ns, KML_DD_SEEK_MAX_NS, true,
	     "policy cost with a geometry: a long seek's fixed time, ns");

KML_DD_PARAM(cost_seek_e_ns, KML_DD_SEEK_MAX_NS, true,
	     "policy cost with a geometry: a long seek's ns per cylinder");

/*
 * Policy cost's view of a flash device: its channels (at most
 * KML_DD_MAX_CHANNELS) and the sectors striped to one before the next.
 * Not used while either is 0, or while a disk's geometry is given.
 */
KML_DD_PARAM(cost_channels, KML_DD_MAX_CHANNELS, true,
	     "policy cost: the flash device's channels (0 = unknown, max "
	     __stringify(KML_DD_MAX_CHANNELS) ")");

KML_DD_PARAM(cost_stripe_sectors, KML_DD_GEOM_MAX_TRACK, true,
	     "policy cost: the flash device's sectors per channel stripe (0 = unknown)");

KML_DD_PARAM(cost_credit_permille, KML_DD_COST_MAX_CREDIT_PERMILLE, false,
	     "policy cost with a geometry: a request's credit at its deadline, thousandths of a revolution (max "
	     __stringify(KML_DD_COST_MAX_CREDIT_PERMILLE) ")");

KML_DD_PARAM(cost_late_permille, KML_DD_COST_MAX_LATE_PERMILLE, false,
	     "policy cost with a geometry or channels: past its deadline (or horizon) a request's credit (on flash, its age) grows on at this many thousandths of its rate before (0 = slow ageing; max "
	     __stringify(KML_DD_COST_MAX_LATE_PERMILLE) ")");

KML_DD_PARAM(cost_horizon_ms, KML_DD_COST_MAX_HORIZON_MS, false,
	     "policy cost with a geometry, or channels and cost_late_permille: a request's credit grows as if it were due within this many ms, if sooner than its deadline (0 = its deadline; max "
	     __stringify(KML_DD_COST_MAX_HORIZON_MS) ")");

KML_DD_PARAM(cost_svc_permille, KML_DD_COST_MAX_SVC_PERMILLE, false,
	     "policy cost with channels: a request's own time on its channel counts in its cost at this many thousandths (1000 = all: reads first; 0 = the wait for the channel alone; max "
	     __stringify(KML_DD_COST_MAX_SVC_PERMILLE) ")");

KML_DD_PARAM(cost_miss_budget_permille, KML_DD_COST_MAX_MISS_BUDGET, false,
	     "policy cost with a geometry or channels: cost_late_permille, cost_horizon_ms and cost_svc_permille only while fewer than this many in 1000 requests are dispatched late (0 or 1000 = always; max "
	     __stringify(KML_DD_COST_MAX_MISS_BUDGET) ")");

KML_DD_PARAM(cost_window_permille, KML_DD_COST_MAX_WINDOW_PERMILLE, false,
	     "policy cost with a geometry or channels: the candidates are each direction's oldest requests, this many thousandths as many as are in flight, rounded up (0 = the default set; max "
	     __stringify(KML_DD_COST_MAX_WINDOW_PERMILLE) ")");

KML_DD_PARAM(cost_wait_cap_permille, KML_DD_COST_MAX_WAIT_CAP_PERMILLE, false,
	     "policy cost: a request that has waited more than this many thousandths of its queue's mean wait goes first, the oldest first (0 = no cap; max "
	     __stringify(KML_DD_COST_MAX_WAIT_CAP_PERMILLE) ")");

KML_DD_PARAM(cost_wait_ramp_permille, KML_DD_COST_MAX_WAIT_RAMP_PERMILLE, false,
	     "policy cost: a soft cap; a request past the cap gains this many thousandths of a ns of credit for each ns past it instead of going first (0 = the hard cap; max "
	     __stringify(KML_DD_COST_MAX_WAIT_RAMP_PERMILLE) ")");

KML_DD_PARAM(cost_wait_bound_permille, KML_DD_COST_MAX_WAIT_BOUND_PERMILLE, false,
	     "policy cost: a request that has waited more than this many thousandths of its queue's mean wait goes first, the oldest first, whatever a soft cap's credit (0 = no bound; max "
	     __stringify(KML_DD_COST_MAX_WAIT_BOUND_PERMILLE) ")");

/*
 * What policy cost learned, and where it last saw each queue's head, was
 * learned under another policy or device: every queue learns afresh before
 * its next choice under policy cost (kml_dd_head()), as after a write of
 * its kml_mode.  Otherwise the first seek after a switch back to cost is
 * measured from a sector the head left while another policy ran.  A
 * parameter's writer calls this before and after it changes the value
 * (module parameter writes are serialised by the parameter lock, which a
 * caller from elsewhere takes too): a queue that learned afresh in
 * between, under the old value, does so again.
 */
void kml_dd_relearn(void)
{
	WRITE_ONCE(kml_dd.svc_gen, READ_ONCE(kml_dd.svc_gen) + 1);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_relearn);

/* Policy cost's parameters, in the statistics file (kml_dd_core.c). */
void kml_dd_cost_show(struct seq_file *m)
{
	seq_printf(m, "cost_age_shift %u\n", READ_ONCE(kml_dd.cost_age_shift));
	seq_printf(m, "cost_rev_ns %u\n", READ_ONCE(kml_dd.cost_rev_ns));
	seq_printf(m, "cost_track_sectors %u\n",
		   READ_ONCE(kml_dd.cost_track_sectors));
	seq_printf(m, "cost_cyl_sectors %u\n",
		   READ_ONCE(kml_dd.cost_cyl_sectors));
	seq_printf(m, "cost_seek_a_ns %u\n", READ_ONCE(kml_dd.cost_seek_a_ns));
	seq_printf(m, "cost_seek_b_ns %u\n", READ_ONCE(kml_dd.cost_seek_b_ns));
	seq_printf(m, "cost_seek_boundary %u\n",
		   READ_ONCE(kml_dd.cost_seek_boundary));
	seq_printf(m, "cost_seek_c_ns %u\n", READ_ONCE(kml_dd.cost_seek_c_ns));
	seq_printf(m, "cost_seek_e_ns %u\n", READ_ONCE(kml_dd.cost_seek_e_ns));
	seq_printf(m, "cost_credit_permille %u\n",
		   READ_ONCE(kml_dd.cost_credit_permille));
	seq_printf(m, "cost_late_permille %u\n",
		   READ_ONCE(kml_dd.cost_late_permille));
	seq_printf(m, "cost_horizon_ms %u\n", READ_ONCE(kml_dd.cost_horizon_ms));
	seq_printf(m, "cost_svc_permille %u\n",
		   READ_ONCE(kml_dd.cost_svc_permille));
	seq_printf(m, "cost_miss_budget_permille %u\n",
		   READ_ONCE(kml_dd.cost_miss_budget_permille));
	seq_printf(m, "cost_window_permille %u\n",
		   READ_ONCE(kml_dd.cost_window_permille));
	seq_printf(m, "cost_wait_cap_permille %u\n",
		   READ_ONCE(kml_dd.cost_wait_cap_permille));
	seq_printf(m, "cost_wait_ramp_permille %u\n",
		   READ_ONCE(kml_dd.cost_wait_ramp_permille));
	seq_printf(m, "cost_wait_bound_permille %u\n",
		   READ_ONCE(kml_dd.cost_wait_bound_permille));
	seq_printf(m, "cost_channels %u\n", READ_ONCE(kml_dd.cost_channels));
	seq_printf(m, "cost_stripe_sectors %u\n",
		   READ_ONCE(kml_dd.cost_stripe_sectors));
}

/* ------------------------------------------------------------ the model */

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
noinline void kml_dd_svc_learn(struct kml_dd_queue *kq,
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
 * the next 64 or so dispatches bring it to the new load's.  The mean wait's
 * count is cleared before the mean and read after it (kml_dd_note_wait()),
 * so that a racing dispatch leaves the old load's mean or a fresh average,
 * never the old count over a mean of nothing, which would cap on a mean
 * near zero for a few hundred dispatches.
 */
void kml_dd_svc_forget(struct kml_dd_queue *kq)
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
	WRITE_ONCE(kq->svc_wait_n, 0);
	smp_wmb();	/* the count before the mean: kml_dd_note_wait() */
	WRITE_ONCE(kq->svc_wait_ns, 0);
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
		/*
		 * the learned seek at the bucket's shortest: what it prices
		 * while no seek curve is told (kml_dd_seek())
		 */
		if (geom)
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
 * A seek over @dist cylinders: by the disk's seek curve where one is told
 * (the cost_seek_* parameters), else as learned (kml_dd_seek_predict()).
 * The square root has 8 fraction bits, as null_blk's model takes it, and
 * a seek within a cylinder costs nothing, as there.  b times the root
 * stays under 2^54, as the boundary is at most KML_DD_SEEK_MAX_CYL; a
 * distance past that many cylinders counts as that many, so that e d stays
 * under 2^61.  The seek is then at most U32_MAX ns, as a learned one is,
 * so that the predicted ends of a few dispatches in flight keep in 64 bits
 * (kml_dd_cost_dispatch()).
 */
static u64 kml_dd_seek(struct kml_dd_queue *kq, u64 dist)
{
	u32 a = READ_ONCE(kml_dd.cost_seek_a_ns);
	u32 b = READ_ONCE(kml_dd.cost_seek_b_ns);
	u32 bound = READ_ONCE(kml_dd.cost_seek_boundary);
	u32 c = READ_ONCE(kml_dd.cost_seek_c_ns);
	u32 e = READ_ONCE(kml_dd.cost_seek_e_ns);
	u64 seek;

	if (!(a | b | bound | c | e))
		return kml_dd_seek_predict(kq, dist);
	if (!dist)
		return 0;
	dist = min_t(u64, dist, KML_DD_SEEK_MAX_CYL);
	if (dist < bound)
		seek = a + (((u64)b * int_sqrt64(dist << 16)) >> 8);
	else
		seek = c + (u64)e * dist;
	return min_t(u64, seek, U32_MAX);
}

/*
 * On a disk of geometry @g, how long @nr sectors at @pos take when the head
 * is at @head and free at @t0: the seek (told or learned, kml_dd_seek()),
 * the turn until the first sector comes under the head (from the learned
 * phase; half a revolution while none is learned), and the transfer.  A
 * request that starts at the head streams on.
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
	seek = kml_dd_seek(kq, kml_dd_cyl_dist(g, pos, head));
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
 * @kq's mean wait, which the cap and the bound on waiting are in
 * thousandths of (kml_dd.h), or 0 while it holds fewer than
 * 2^KML_DD_COST_WAIT_SHIFT waits (kml_dd_note_wait()): the first ones after
 * a reset, in a queue that was empty, are shorter than the load's, and a
 * cap on their mean would send nearly every request first, in a FIFO's
 * order.  Read once per pricing, so that the cap and the bound see one mean.
 */
static u64 kml_dd_wait_mean(const struct kml_dd_queue *kq)
{
	if (READ_ONCE(kq->svc_wait_n) < 1U << KML_DD_COST_WAIT_SHIFT)
		return 0;
	return READ_ONCE(kq->svc_wait_ns);
}

/*
 * How far a request that has waited @wait ns is past @permille thousandths
 * of @mean (a cap: cost_wait_cap_permille, or the bound,
 * cost_wait_bound_permille), in ns; 0 if it is not, or @permille or @mean
 * is 0.  Past the cap, it goes before every candidate that is not, the
 * oldest first, or with cost_wait_ramp_permille set, gains credit for each
 * ns past it; past the bound, it goes first.  mul_u64_u32_div() keeps the
 * product in 128 bits; the quotient, at most 100 times the mean, traps
 * only past a mean of 2^64 / 100 ns, over five years.
 */
static s64 kml_dd_wait_over(u64 mean, s64 wait, u32 permille)
{
	u64 limit;

	if (!permille || !mean || wait <= 0)
		return 0;
	limit = mul_u64_u32_div(mean, permille, 1000);
	return (u64)wait > limit ? wait - limit : 0;
}

/*
 * Note @wait, a request's from insert to dispatch, in @kq's mean wait, which
 * cost_wait_cap_permille is in thousandths of: the plain average of the
 * first 2^KML_DD_COST_WAIT_SHIFT waits after a reset, then a running one
 * that weighs each new wait as one of that many, so that the mean is the
 * load's from the moment the cap reads it instead of climbing to it from
 * the first wait over hundreds of dispatches.
 */
static void kml_dd_note_wait(struct kml_dd_queue *kq, u64 wait)
{
	u64 mean = READ_ONCE(kq->svc_wait_ns);
	u32 n;

	smp_rmb();	/* the mean before the count: kml_dd_svc_forget() */
	n = READ_ONCE(kq->svc_wait_n);
	if (n < 1U << KML_DD_COST_WAIT_SHIFT) {
		n++;
		WRITE_ONCE(kq->svc_wait_n, n);
		mean = wait >= mean ? mean + div_u64(wait - mean, n) :
				      mean - div_u64(mean - wait, n);
	} else {
		mean = mean - (mean >> KML_DD_COST_WAIT_SHIFT) +
		       (wait >> KML_DD_COST_WAIT_SHIFT);
	}
	WRITE_ONCE(kq->svc_wait_ns, mean);
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
 * KML_DD_COST_STARVE times its expiry goes first, whatever the shift; after
 * those, one past the queue's cap on waiting (kml_dd_wait_over(); an
 * untracked request by mq-deadline's clock).  Neither is predicted.  With
 * cost_wait_ramp_permille set, one past the cap is priced as the others,
 * its credit grown by that share of the time past it; one past
 * cost_wait_bound_permille (a hard cap of its own, whether the cap is set
 * or not) goes first whatever its credit.
 * Under the scheduler lock.
 */
s64 kml_dd_cost(struct kml_dd_queue *kq, struct request *rq, sector_t head,
		u64 now, unsigned long expire)
{
	struct kml_dd_ctx *ctx = kml_dd_ctx(rq);
	u64 pos = blk_rq_pos(rq);
	unsigned long inserted;
	s64 wait, late, deadline, cost, over, credit;
	struct kml_dd_flash f;
	struct kml_dd_geom g;
	bool geom = kml_dd_geom(&g), flash = false, tail = false;
	u32 late_permille = 0, horizon_ms = 0, svc_permille, ramp, cap, bound;
	unsigned int b;
	u64 busy, svc, mean;

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
	cap = READ_ONCE(kml_dd.cost_wait_cap_permille);
	bound = READ_ONCE(kml_dd.cost_wait_bound_permille);
	/* neither set, the default: the queue's mean is not read */
	mean = cap || bound ? kml_dd_wait_mean(kq) : 0;
	over = kml_dd_wait_over(mean, wait, cap);
	ramp = READ_ONCE(kml_dd.cost_wait_ramp_permille);
	if ((over && !ramp) || kml_dd_wait_over(mean, wait, bound))
		return S64_MIN / 4 - wait;
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
		credit = kml_dd_due_credit(&g, wait, late, deadline,
					   late_permille, horizon_ms);
	else if (flash && late_permille)
		credit = kml_dd_flash_credit(wait, late, deadline,
					     late_permille, horizon_ms,
					     READ_ONCE(kml_dd.cost_age_shift));
	else
		credit = (wait + max_t(s64, late, 0)) >>
			 READ_ONCE(kml_dd.cost_age_shift);
	/*
	 * At most KML_DD_COST_MAX_WAIT_RAMP_PERMILLE / 1000 times the time past
	 * the cap, which is under KML_DD_COST_STARVE deadlines: it keeps in 64
	 * bits, and so does the sum.
	 */
	if (over)
		credit += mul_u64_u32_div(over, ramp, 1000);
	return cost - credit;
}
EXPORT_SYMBOL_GPL(kml_dd_cost);

/* ------------------------------------------------------------ dispatch */

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
noinline void kml_dd_cost_dispatch(struct kml_dd_queue *kq,
				   struct kml_dd_ctx *ctx, struct request *rq,
				   u64 now)
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
	kml_dd_note_wait(kq, kml_dd_since(ctx->in.insert_ns, now));

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
EXPORT_SYMBOL_IF_KUNIT(kml_dd_cost_dispatch);
