/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML for mq-deadline, internal.  kml_dd_core.c owns what every queue
 * shares: the model, the sample ring and who consumes it, the statistics
 * and the module parameters that tune them.  The hooks (kml_iosched.c),
 * /dev/kml (kml_dd_dev.c) and the kernel trainer (kml_ktrain.c) call the
 * core, never each other.  Policy cost (kml_dd_cost.c) sits beside the
 * hooks: they call it, it calls them back for a lazy prediction, and the
 * core calls it for its parameters' relearning and statistics.  Only the
 * core and the inline accessors here write kml_dd, but for policy cost's
 * parameters and its generation (svc_gen), which kml_dd_cost.c owns; the
 * hooks and policy cost read the parameters in it.
 */
#ifndef _KML_DD_H
#define _KML_DD_H

#include <linux/atomic.h>
#include <linux/jiffies.h>
#include <linux/moduleparam.h>
#include <linux/timekeeping.h>
#include <linux/bitops.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include "kml.h"
#include "kml_iosched_uapi.h"
#include "kml_dd_calib.h"

struct vm_area_struct;

enum kml_dd_stat {
	KML_DD_S_INFERENCES,
	KML_DD_S_PREDICTIONS,
	KML_DD_S_MET_PRED_MET,
	KML_DD_S_MET_PRED_MISS,
	KML_DD_S_MISS_PRED_MET,
	KML_DD_S_MISS_PRED_MISS,
	KML_DD_S_ISSUE_ABS_ERR_US,
	KML_DD_S_SAMPLES,
	KML_DD_S_SAMPLES_MET,
	KML_DD_S_UNTRACKED,
	KML_DD_S_RING_PRODUCED,
	KML_DD_S_RING_DROPPED,
	KML_DD_S_RING_FULL_WAITS,
	KML_DD_S_RING_FILTERED,
	KML_DD_S_UPDATES_APPLIED,
	KML_DD_S_UPDATES_REFUSED,
	KML_DD_S_UPDATES_ABORTED,
	KML_DD_S_FPU_SECTIONS,
	KML_DD_S_FPU_BUSY,
	KML_DD_S_URGENT,
	KML_DD_S_KTRAINER_SAMPLES,
	KML_DD_S_KTRAINER_STEPS,
	KML_DD_S_KTRAINER_SKIPPED,
	KML_DD_S_KTRAINER_CALIBRATIONS,
	KML_DD_S_RING_REPAIRS,
	KML_DD_S_KTRAINER_CAL_REFUSED,
	KML_DD_S_SKILL_WINDOWS,
	KML_DD_S_SKILL_UNSKILLED,
	KML_DD_S_SKILL_INCONCLUSIVE,
	KML_DD_S_STEP_ASIDES,
	KML_DD_S_STEP_RESUMES,
	KML_DD_S_STEER_SUPPRESSED,
	KML_DD_S_PRED_CLAMPED,
	KML_DD_S_SKILL_HOLDOUTS,
	KML_DD_S_UNOBSERVED,
	KML_DD_S_RING_UNCLAIMED,
	KML_DD_S_UPDATES_COMPILED,
	KML_DD_S_STEERED_MET,		/* acted on, then met */
	KML_DD_S_STEERED_MISSED,	/* acted on, and missed all the same */
	KML_DD_S_HOLDOUT_MET,		/* held out (KML_DD_SKILL_HOLDOUT) */
	KML_DD_S_HOLDOUT_MISSED,
	KML_DD_NR_COUNTS,
	/* gauges, a last value (the last window's), not a count: */
	KML_DD_S_KTRAINER_CAL_BALANCED_PPM = KML_DD_NR_COUNTS,
	KML_DD_S_KTRAINER_CAL_AUC_PPM,
	KML_DD_S_SKILL_BALANCED_PPM,
	KML_DD_NR_STATS,
};

#define KML_DD_NR_GAUGES	(KML_DD_NR_STATS - KML_DD_NR_COUNTS)

/*
 * The inference-time and error histograms' buckets (kml_dd_hist_bucket()):
 * the last one holds everything from its start on: 2^24 ns (17 ms, where
 * an inference under a spinlock has long gone wrong) and 2^32 us (71
 * minutes; a prediction is clamped at 8 deadlines).  Per CPU, so each
 * bucket costs 8 bytes a CPU.
 */
#define KML_DD_HIST_BUCKETS(lg_last)	(8 + ((lg_last) - 3) * 4 + 1)
#define KML_DD_INFER_BUCKETS		KML_DD_HIST_BUCKETS(24)
#define KML_DD_ERR_BUCKETS		KML_DD_HIST_BUCKETS(32)
/*
 * A prediction is recorded as at most this many times its request's
 * deadline (at least 1 ms): beyond, its size means nothing (the decision
 * is made before the clamp, and the calibration stays within a factor 8).
 */
#define KML_DD_PRED_MAX_FACTOR	8

/*
 * The step-aside rule (kml_dd_core.c): a window of completed predictions
 * closes once it holds skill_window of them and KML_DD_SKILL_MIN_CLASS of
 * each outcome, or KML_DD_SKILL_MAX_STRETCH times skill_window whatever
 * it holds (inconclusive, but for one case: kml_dd_skill_one_sided()).
 * The four counts share one atomic64 (16 bits each), so skill_window is
 * at most KML_DD_SKILL_MAX_WINDOW.
 */
#define KML_DD_SKILL_WINDOW		1024
/*
 * A window with KML_DD_SKILL_MIN_CLASS of each outcome and
 * KML_DD_SKILL_MIN_TIMED in all (weighted counts) also closes
 * skill_window_ms after its first prediction: on a slow device (a disk
 * doing 50 requests a second) skill_window predictions take longer than a
 * run, and a model that is worse than the baseline would steer throughout.
 */
#define KML_DD_SKILL_WINDOW_MS		2000
/*
 * A skill_min_permille no window can beat: the model is a shadow, its
 * predictions made and judged, never acted on (kml_dd_core.c).
 */
#define KML_DD_SKILL_SHADOW		1000

/*
 * Policy cost: a request's age credit against its predicted service time
 * is its time in the queue plus its lateness (past, or predicted by a
 * steering model), shifted right by cost_age_shift: with 6, a read queued
 * for 200 ms, 100 ms past its deadline, is worth a seek 4.7 ms longer.
 * At most 40 (age then counts for nothing).
 */
#define KML_DD_COST_AGE_SHIFT		6
#define KML_DD_COST_MAX_AGE_SHIFT	40
/*
 * Policy cost's bound on starvation, whatever the shift: a request that has
 * waited this many times its expiry (at least a millisecond) goes before
 * every request that has not, the oldest first.
 */
#define KML_DD_COST_STARVE		8
/* A service-time sample counts at most this many times its bucket's mean. */
#define KML_DD_SVC_MAX_JUMP		8
/*
 * Policy cost with a disk's geometry (cost_rev_ns, cost_track_sectors,
 * cost_cyl_sectors; 0 while unknown).  The candidates are the
 * KML_DD_COST_GEOM_SPAN requests on either side of the head in sector
 * order, per direction, not one: where a sector passes under the head
 * matters as much as its seek, and it does not follow sector order across
 * cylinders.  (Given a flash device's channels instead, twice as many of
 * the oldest: kml_dd_cost.c, kml_dd_cost_span().)  A revolution and a
 * track are at most a second and 2^20 sectors, so that no product
 * overflows; a cylinder, only ever a divisor, at most 2^24 sectors.  A
 * seek's bounds (kml_dd_cost.c, kml_dd_geom_learn()) leak apart by a
 * revolution >> KML_DD_SEEK_LEAK_SHIFT per sample.  The platter's phase
 * moves an eighth of the way to each sample.
 */
#define KML_DD_COST_GEOM_SPAN		8
#define KML_DD_GEOM_MAX_REV_NS		NSEC_PER_SEC
#define KML_DD_GEOM_MAX_TRACK		(1U << 20)
#define KML_DD_GEOM_MAX_CYL		(1U << 24)
#define KML_DD_SEEK_LEAK_SHIFT		12
/*
 * A disk's seek curve, told (cost_seek_*; kml_dd_cost.c, kml_dd_seek()): its
 * times and slopes at most a second, its boundary at most 2^31 cylinders,
 * and a seek priced as over at most that many, so that b sqrt(d) and e d
 * keep in 62 bits.
 */
#define KML_DD_SEEK_MAX_NS		NSEC_PER_SEC
#define KML_DD_SEEK_MAX_CYL		(1U << 31)
/*
 * Policy cost with a geometry: a request's credit at its deadline, in
 * thousandths of a revolution (kml_dd_cost.c, kml_dd_due_credit()).  On the
 * rotational model under 8 and 16 requests in flight a revolution traded
 * the mean against the misses best (docs/benchmarks.md).
 */
#define KML_DD_COST_CREDIT_PERMILLE	1000
#define KML_DD_COST_MAX_CREDIT_PERMILLE	8000
/*
 * ... and past it, how fast the credit goes on growing, in thousandths of
 * its rate before (cost_late_permille; 0: it falls back to the slow ageing
 * of policy cost without a geometry, and goes to those that can still meet
 * theirs), for at most KML_DD_COST_STARVE deadlines.  Bounded as the
 * credit is, so that no product or quotient overflows.
 */
#define KML_DD_COST_LATE_PERMILLE	0
#define KML_DD_COST_MAX_LATE_PERMILLE	8000
/*
 * ... and the credit grows as if the request were due within
 * cost_horizon_ms, if that is sooner than its deadline (0: its deadline):
 * a write due in 500 ms then ages as fast as a read due in 100 ms, and the
 * writes stop making the tail.  A minute at most.  Told a flash device's
 * channels instead, both act on the plain credit, and only with
 * cost_late_permille set: a request's age grows at that many thousandths
 * of its rate from the deadline or the horizon (kml_dd_cost.c,
 * kml_dd_flash_credit()).
 */
#define KML_DD_COST_MAX_HORIZON_MS	60000
/*
 * ... and told a flash device's channels, a request's own time on its
 * channel counts in its cost at cost_svc_permille thousandths (1000: all
 * of it).  All of it sends reads (under half a write's time on the flash
 * model) before writes, which is what meets the reads' shorter
 * deadlines under a heavy load, and under a light one, where nothing is
 * late, only makes the writes wait: 0 leaves the wait for the channel
 * alone.  Only while the tail may be spent (the miss budget below); past
 * it, all of it again.
 */
#define KML_DD_COST_SVC_PERMILLE	1000
#define KML_DD_COST_MAX_SVC_PERMILLE	1000
/*
 * ... and all three only while the share of a queue's requests dispatched past
 * their deadline stays under cost_miss_budget_permille (0: always): the
 * tail gets the misses the budget allows and no more, so that under a
 * load where many miss anyway (the disk under 16 requests) the policy
 * keeps to those that can still meet theirs.  The share is a running
 * average, each dispatch moving it 2^-KML_DD_COST_MISSED_SHIFT of the way:
 * about the last 64 requests, a second of a disk's.  It stays below 1, so
 * a budget of 1000 (all may miss) is never spent, as 0.
 */
#define KML_DD_COST_MISSED_SHIFT	6
#define KML_DD_COST_MAX_MISS_BUDGET	1000
/*
 * Policy cost with a geometry or channels: cost_window_permille N > 0 makes
 * the candidates of each direction its oldest requests, whatever their
 * sectors, N thousandths as many as the queue has in flight in their
 * priority class (queued or on the device), rounded up, at least one (0:
 * the default, KML_DD_COST_GEOM_SPAN each side of the head on a disk,
 * twice as many of the oldest on flash).  The window bounds how many
 * younger requests can go before a request, so how far the order strays
 * from the FIFO's: under a light load, where little waits, near none at
 * all, and the tail stays the FIFO's; under a heavy one, enough to find
 * the cheap requests the throughput comes from.
 */
#define KML_DD_COST_MAX_WINDOW_PERMILLE	1000
/*
 * Policy cost: cost_wait_cap_permille N > 0 bounds the tail.  A candidate
 * that has waited more than N thousandths of its queue's mean wait (from
 * insert to dispatch, a running average over about the last
 * 2^KML_DD_COST_WAIT_SHIFT dispatches of both directions) goes before any
 * that has not, the oldest first.  In proportion to the mean, as the mean
 * wait follows the load (the requests in flight over the throughput) and a
 * FIFO's tail lies little above its mean: one setting holds the tail near
 * a FIFO's under light and heavy loads alike, and below it the order stays
 * the one the credit and the seeks choose.  No cap until the mean holds
 * 2^KML_DD_COST_WAIT_SHIFT waits after a reset, their plain average.  0,
 * the default: no cap.
 */
#define KML_DD_COST_WAIT_SHIFT		6
#define KML_DD_COST_MAX_WAIT_CAP_PERMILLE	100000
/*
 * Policy cost: cost_wait_ramp_permille N > 0 makes the cap soft.  A
 * candidate past the cap no longer goes before every other; its credit
 * grows by N thousandths of a ns for each ns it has waited past it, so
 * that it goes when the head comes near it or, later, whatever its seek
 * (and first once starved, KML_DD_COST_STARVE).  A hard cap sends each
 * capped request at once, a random seek on a disk, and those seeks cost
 * the throughput that the sorted order had won.  0, the default: the hard
 * cap.  At most 8 ns of credit for each ns past the cap, as for
 * cost_late_permille: past that the credit outgrows any seek at once, and
 * the soft cap is the hard one.
 */
#define KML_DD_COST_MAX_WAIT_RAMP_PERMILLE	8000
/*
 * Policy cost: cost_wait_bound_permille N > 0 bounds a soft cap's tail.  A
 * candidate that has waited more than N thousandths of its queue's mean
 * wait goes before any that has not, the oldest first, as past a hard cap,
 * whatever its credit.  The ramp lets a capped request wait for the head to
 * come near, which is what keeps the sorted order's throughput; the few it
 * leaves waiting longest, whose seek never comes cheap, are the tail, and
 * the bound cuts them off.  With the hard cap (no ramp) the lower of the
 * two holds; a bound at or under a soft cap makes it hard, and a bound
 * without a cap is a hard cap.  No bound until the mean holds
 * 2^KML_DD_COST_WAIT_SHIFT waits, as for the cap.  0, the default: no
 * bound.
 */
#define KML_DD_COST_MAX_WAIT_BOUND_PERMILLE	KML_DD_COST_MAX_WAIT_CAP_PERMILLE
#define KML_DD_SKILL_MAX_WINDOW_MS	60000
/*
 * Observe mode watching part of the time (module parameter observe_every N):
 * one window of KML_DD_OBSERVE_WINDOW inserts in every N is tracked, the others
 * go untracked (a countdown and a counter each, in line in mq-deadline's
 * insert: kml_dd_passing()).  A window's first KML_DD_OBSERVE_WARMUP
 * requests are tracked but neither predicted nor counted:
 * they bring the queue's running state (the features' averages, the queued and
 * in-flight counts, which count tracked requests only) back to what it would
 * have been; the averages follow within a few dozen dispatches, the counts once
 * the requests inserted while nobody watched have left, at most the scheduler's
 * nr_requests later (64 or 128 in our matrices, 256 at most by default).
 * Writing kml_mode starts a cycle, with a window; a new N applies at once, but
 * only a new cycle starts with a warm-up.
 */
#define KML_DD_OBSERVE_WINDOW		1024
#define KML_DD_OBSERVE_WARMUP		256
#define KML_DD_OBSERVE_MAX_EVERY	1024
#define KML_DD_SKILL_MIN_TIMED		128
#define KML_DD_SKILL_MAX_WINDOW		4096
#define KML_DD_SKILL_MIN_CLASS		16
#define KML_DD_SKILL_MAX_STRETCH	8
/*
 * KML_DD_SKILL_HOLDOUT (kml_dd_calib.h) in the skill window: the weighted
 * counts stay under 16 bits, as a window closes at most
 * KML_DD_SKILL_MAX_STRETCH * KML_DD_SKILL_MAX_WINDOW + KML_DD_SKILL_HOLDOUT.
 */

/*
 * A window that closed without KML_DD_SKILL_MIN_CLASS of each outcome,
 * after KML_DD_SKILL_MAX_STRETCH windows' worth of predictions, has no
 * balanced accuracy.  One such window is still judged: an outcome that
 * never occurred, and KML_DD_SKILL_MIN_CLASS held-out weights' worth of
 * wrong calls of the other (a model calling misses where nothing misses).
 * Whatever the absent outcome would have done, the model's balanced
 * accuracy is at most 0.5: it can only step aside, never resume, on such a
 * window.  Without a miss at all a false alarm cannot be luck on a few
 * rare misses, which is why one missed request keeps the window
 * inconclusive.
 */
static inline bool kml_dd_skill_one_sided(u32 tn, u32 fp, u32 fn, u32 tp)
{
	const u32 wrong = KML_DD_SKILL_MIN_CLASS * KML_DD_SKILL_HOLDOUT;

	return (!(fn + tp) && fp >= wrong) || (!(tn + fp) && fn >= wrong);
}

/*
 * One inference in KML_DD_TIME_EVERY (a power of two) is timed for the
 * inference-time histogram, with interrupts off so that it holds the
 * model's time alone: two clock reads per request would cost more than a
 * linear model's prediction.
 */
#define KML_DD_TIME_EVERY	64

/*
 * A small Q16.16 model compiled when it is published into integer dot
 * products inline in the insert hook, with no FPU section and no call into
 * the library: a linear model, or one ReLU hidden layer of at most
 * KML_DD_FAST_HIDDEN units and a linear output (kml_dd_fast_predict()).
 * The input normalisation is folded into the first layer: w with @frac
 * fraction bits (24, fewer only when a folded weight w * scale would not
 * fit 32 bits: a feature that hardly varies is scaled up), the bias with
 * @frac + 16 and half a unit of the row added, its rounding.  Features
 * are in [0, KML_DD_FEAT_MAX], so with |w| < 2^31 and |bias| <=
 * KML_DD_FAST_BIAS_MAX (before the rounding) a row's sum stays within 63
 * bits.
 * Each hidden unit is clamped to @h_max[j]: the least of S32_MAX, where
 * the library saturates a unit too, and the most any features within
 * their ranges (kml_dd_feat_max()) can make it, so the clamp changes no
 * prediction the library would make differently; a model is compiled
 * only if the output sum cannot leave 63 bits even at those maxima,
 * whatever the features.
 */
#define KML_DD_FAST_BIAS_MAX	(1LL << 60)
#define KML_DD_FAST_FRAC	24	/* the folded weights' fraction bits */
/* fewer, and a feature's rounding (2^(22 - frac)) could pass 1/1024 */
#define KML_DD_FAST_FRAC_MIN	16

struct kml_dd_fast {
	u32 hidden;					/* 0: linear */
	u32 frac;					/* w's fraction bits */
	s32 w[KML_DD_FAST_HIDDEN][KML_DD_NR_FEATURES];
	s64 b[KML_DD_FAST_HIDDEN];
	s32 h_max[KML_DD_FAST_HIDDEN];			/* Q16.16 */
	s32 w2[KML_DD_FAST_HIDDEN];			/* Q16.16 */
	s32 b2;						/* Q16.16 */
};

/* What readers see under RCU: the model and what the hot path needs of it. */
struct kml_dd_model {
	struct kml_model *model;
	u32 dtype;
	bool fast;			/* @f holds the model */
	struct kml_dd_fast f;
	struct rcu_head rcu;
};

/*
 * The counters every request touches, per CPU: an increment is one
 * instruction and never bounces a cache line between CPUs.  Readers sum
 * them (kml_dd_stat_read()); a reset has each CPU zero its own, between
 * two of its increments, so no CPU writes another's counters.
 */
struct kml_dd_counters {
	u64 stats[KML_DD_NR_COUNTS];
	u64 inference_hist[KML_DD_INFER_BUCKETS];
	u64 err_hist[KML_DD_ERR_BUCKETS];	/* abs error, us */
	u64 score_hist[2][KML_DD_SCORE_BUCKETS];	/* met, missed */
};

DECLARE_PER_CPU(struct kml_dd_counters, kml_dd_counters);

/* Who pops the ring: nobody, a user mapping of /dev/kml, or the ktrainer. */
enum kml_dd_owner {
	KML_DD_OWNER_NONE = 0,
	KML_DD_OWNER_USER = 1,
	KML_DD_OWNER_KERNEL = 2,
};

/* Defined in kml_dd_core.c; see the comment at the top. */
struct kml_dd_global {
	struct kml_dd_model __rcu *model;
	struct mutex model_lock;	/* serialises swaps */
	u64 model_generation;
	struct kml_ring ring;
	void *ring_mem;			/* vmalloc_user(), mmap()ed by users */
	size_t ring_bytes;		/* page aligned */
	struct kml_ring_shared no_ring;	/* ring.sh when allocation failed */
	s64 consumed_base;		/* ring pushes at the last reset */
	atomic_t ring_owner;		/* enum kml_dd_owner */
	unsigned int decision_permille;	/* module parameter */
	int sample_filter;		/* module parameter */
	unsigned int lazy;		/* module parameter, active mode */
	unsigned int sample_unclaimed;	/* module parameter */
#if IS_ENABLED(CONFIG_KML_IOSCHED_COST)
	unsigned int cost_age_shift;	/* module parameter, policy "cost" */
	unsigned int cost_credit_permille;	/* module parameter, policy "cost" */
	unsigned int cost_late_permille;	/* module parameter, policy "cost" */
	unsigned int cost_horizon_ms;	/* module parameter, policy "cost" */
	unsigned int cost_svc_permille;	/* module parameter, policy "cost" */
	unsigned int cost_miss_budget_permille;	/* module parameter, "cost" */
	unsigned int cost_window_permille;	/* module parameter, "cost" */
	unsigned int cost_wait_cap_permille;	/* module parameter, "cost" */
	unsigned int cost_wait_ramp_permille;	/* module parameter, "cost" */
	unsigned int cost_wait_bound_permille;	/* module parameter, "cost" */
	/* module parameters, policy "cost": a disk's geometry, 0 unknown */
	unsigned int cost_rev_ns;
	unsigned int cost_track_sectors;
	unsigned int cost_cyl_sectors;
	/* module parameters, policy "cost": its seek curve, all 0 unknown */
	unsigned int cost_seek_a_ns;
	unsigned int cost_seek_b_ns;
	unsigned int cost_seek_boundary;
	unsigned int cost_seek_c_ns;
	unsigned int cost_seek_e_ns;
	/* module parameters, policy "cost": a flash device's, 0 unknown */
	unsigned int cost_channels;
	unsigned int cost_stripe_sectors;
	/*
	 * Bumped when the policy or the device policy cost is told changes:
	 * a queue that learned under another (kml_dd_queue.svc_gen) learns
	 * afresh at its next dispatch under policy cost.
	 */
	unsigned int svc_gen;
#endif
	/* the gauges, from KML_DD_NR_COUNTS on; counts are per CPU */
	atomic64_t gauges[KML_DD_NR_GAUGES];
	/* the open window: 4 x 16-bit counts, written at every completion */
	atomic64_t skill ____cacheline_aligned_in_smp;
	unsigned long skill_since;	/* jiffies at its first prediction */
	/* read at every insert: a line apart from the window's writes */
	int aside ____cacheline_aligned_in_smp;	/* stands aside; READ_ONCE() */
	unsigned int skill_window;	/* module parameter; 0: rule off */
	unsigned int skill_window_ms;	/* module parameter; 0: no time bound */
	unsigned long skill_window_j;	/* the same in jiffies */
	unsigned int skill_min_permille;	/* module parameter */
	struct dentry *debugfs;
};

extern struct kml_dd_global kml_dd;

/*
 * Accessors for the hot paths.  The hooks run for every request, under the
 * scheduler's lock, so what they need of the core stays inline: the same
 * loads and atomics as when the core's state was local to kml_iosched.c.
 */
/* Any context: this_cpu ops are safe against interrupts and preemption. */
static inline void kml_dd_stat_inc(enum kml_dd_stat s)
{
	BUILD_BUG_ON(__builtin_constant_p(s) && s >= KML_DD_NR_COUNTS);
	this_cpu_inc(kml_dd_counters.stats[s]);
}

static inline void kml_dd_stat_add(enum kml_dd_stat s, u64 v)
{
	BUILD_BUG_ON(__builtin_constant_p(s) && s >= KML_DD_NR_COUNTS);
	this_cpu_add(kml_dd_counters.stats[s], v);
}

/* A completed request's counts that need no prediction.  Any context. */
static inline void kml_dd_count_outcome(bool met)
{
	kml_dd_stat_inc(KML_DD_S_SAMPLES);
	if (met)
		kml_dd_stat_inc(KML_DD_S_SAMPLES_MET);
}

/*
 * True, and counted, when a completed request's sample would go nowhere:
 * sample_unclaimed is 0 and no consumer holds the ring (a claim or release
 * meanwhile makes one sample more or fewer).  Any context.
 */
static inline bool kml_dd_skip_unclaimed(void)
{
	if (READ_ONCE(kml_dd.sample_unclaimed) ||
	    atomic_read(&kml_dd.ring_owner) != KML_DD_OWNER_NONE)
		return false;
	kml_dd_stat_inc(KML_DD_S_RING_UNCLAIMED);
	return true;
}

/* A gauge's new value (KML_DD_S_*_PPM). */
static inline void kml_dd_stat_set(enum kml_dd_stat s, u64 v)
{
	BUILD_BUG_ON(__builtin_constant_p(s) && s < KML_DD_NR_COUNTS);
	atomic64_set(&kml_dd.gauges[s - KML_DD_NR_COUNTS], v);
}

/* A calibration's figures (2^-20 units) into the gauges, in ppm. */
static inline void kml_dd_note_calibration(u32 balanced, u32 auc)
{
	kml_dd_stat_set(KML_DD_S_KTRAINER_CAL_BALANCED_PPM,
			((u64)balanced * 1000000) >> 20);
	kml_dd_stat_set(KML_DD_S_KTRAINER_CAL_AUC_PPM,
			((u64)auc * 1000000) >> 20);
}

/* The model in use, or NULL; under rcu_read_lock(). */
static inline struct kml_dd_model *kml_dd_model_rcu(void)
{
	return rcu_dereference(kml_dd.model);
}

/*
 * Whether the model in use stands aside: its last window of completed
 * predictions showed no skill (kml_dd_core.c), so active mode does not
 * act on its predicted misses.
 */
static inline bool kml_dd_stepped_aside(void)
{
	return READ_ONCE(kml_dd.aside);
}

/* The decision_permille parameter: see kml_dd_core.c. */
static inline unsigned int kml_dd_decision_permille(void)
{
	return READ_ONCE(kml_dd.decision_permille);
}

/*
 * A histogram of @nr buckets: exact below 8, then four buckets per power
 * of two, so p50/p99 are read to within 25%; the last bucket holds all
 * from its start on.
 */
static inline unsigned int kml_dd_hist_bucket(u64 v, unsigned int nr)
{
	unsigned int n;

	if (v < 8)
		return v;
	n = fls64(v) - 1;		/* >= 3 */
	return min_t(unsigned int, 8 + (n - 3) * 4 + ((v >> (n - 2)) & 3),
		     nr - 1);
}

/* A timed inference (one in KML_DD_TIME_EVERY) took @ns. */
static inline void kml_dd_note_inference_time(u64 ns)
{
	unsigned int b = kml_dd_hist_bucket(ns, KML_DD_INFER_BUCKETS);

	this_cpu_inc(kml_dd_counters.inference_hist[b]);
}

/*
 * One row of a compiled first layer: Q16.16, not yet clamped.  The bias
 * holds the rounding (half a unit of the result), so that the row costs a
 * shift and no add (kml_dd_fast_fold()).
 */
static inline s64 kml_dd_fast_row(const s32 *w, s64 bias, u32 frac,
				  const s32 *features)
{
	s64 acc = bias;
	unsigned int i;

	for (i = 0; i < KML_DD_NR_FEATURES; i++)
		acc += (s64)w[i] * features[i];
	return acc >> frac;
}

/*
 * The prediction of a compiled model (struct kml_dd_fast), Q16.16
 * lg(issue us), as kml_model_predict() gives it to within the rounding of
 * its normalised inputs (a KUnit case bounds the difference).
 */
static inline s32 kml_dd_fast_predict(const struct kml_dd_fast *f,
				      const s32 *features)
{
	s64 acc, h;
	unsigned int j;

	if (!f->hidden) {
		acc = kml_dd_fast_row(f->w[0], f->b[0], f->frac, features);
		return clamp_t(s64, acc, S32_MIN, S32_MAX);
	}
	acc = (s64)f->b2 * (1LL << 16);
	for (j = 0; j < f->hidden; j++) {
		h = kml_dd_fast_row(f->w[j], f->b[j], f->frac, features);
		acc += (s64)f->w2[j] * clamp_t(s64, h, 0, f->h_max[j]);
	}
	acc = (acc + (1LL << 15)) >> 16;
	return clamp_t(s64, acc, S32_MIN, S32_MAX);
}

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
static inline u64 kml_dd_clock(void)
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

/*
 * Policy cost (kml_dd_cost.c), for the hooks: the service-time model
 * learns from a dispatch and a completion, and a queue whose kml_mode is
 * written forgets it.  Without KML_IOSCHED_COST, kml_dd_policy_cost() is
 * false and none is called.
 */
struct kml_dd_ctx;
struct kml_dd_queue;
struct request;
struct seq_file;

#if IS_ENABLED(CONFIG_KML_IOSCHED_COST)
void kml_dd_cost_dispatch(struct kml_dd_queue *kq, struct kml_dd_ctx *ctx,
			  struct request *rq, u64 now);
void kml_dd_svc_learn(struct kml_dd_queue *kq, const struct kml_dd_ctx *ctx,
		      u64 now);
void kml_dd_svc_forget(struct kml_dd_queue *kq);
/* policy cost's parameters, for the statistics file */
void kml_dd_cost_show(struct seq_file *m);
/*
 * What policy cost learned was learned under another policy or device:
 * every queue learns afresh before its next choice.
 */
void kml_dd_relearn(void);
#else
static inline void kml_dd_cost_dispatch(struct kml_dd_queue *kq,
					struct kml_dd_ctx *ctx,
					struct request *rq, u64 now) {}
static inline void kml_dd_svc_learn(struct kml_dd_queue *kq,
				    const struct kml_dd_ctx *ctx, u64 now) {}
static inline void kml_dd_svc_forget(struct kml_dd_queue *kq) {}
static inline void kml_dd_cost_show(struct seq_file *m) {}
static inline void kml_dd_relearn(void) {}
#endif

/*
 * A numeric module parameter kept in [min, max], the range beside it:
 * kml_dd_uint_range_ops (kml_dd_core.c) read both from kp->arg.
 */
struct kml_dd_uint_range {
	unsigned int *v;
	unsigned int min, max;
	bool relearn;		/* a change relearns: kml_dd_relearn() */
};

extern const struct kernel_param_ops kml_dd_uint_range_ops;

/*
 * Module parameter @name, kml_dd.@name kept in [0, @hi] and described by
 * @desc; @relearn_: a change makes every queue learn policy cost's service
 * times afresh (kml_dd_relearn()).
 */
#define KML_DD_PARAM(name, hi, relearn_, desc)				\
	static struct kml_dd_uint_range name##_range = {		\
		.v = &kml_dd.name,					\
		.max = (hi),						\
		.relearn = (relearn_),					\
	};								\
	module_param_cb(name, &kml_dd_uint_range_ops, &name##_range,	\
			0644);						\
	MODULE_PARM_DESC(name, desc)

#if IS_ENABLED(CONFIG_KUNIT)
u64 kml_dd_stat_read(unsigned int s);
#endif

/* Compile @m into @f if it is small enough; false if not (or it cannot be). */
bool kml_dd_fast_compile(struct kml_model *m, struct kml_dd_fast *f);

/*
 * The core (kml_dd_core.c).  Process context unless said otherwise.
 *
 * Models: validated, then swapped in under RCU; kml_dd_unload() (at the
 * end of this file) removes the model in use.
 */
int kml_dd_publish(const void *buf, size_t len);
long kml_dd_model_save(void *buf, size_t cap, u32 dtype);

/*
 * A completed request as the statistics see it: the outcome and prediction
 * fields of its sample (struct kml_dd_sample) and its score bucket.  Apart
 * from the sample, so that a request whose sample the ring does not take
 * puts no 128-byte sample on the stack (which a kernel built to zero stack
 * variables clears at every completion).
 */
struct kml_dd_outcome {
	u64 issue_ns;
	u64 deadline_ns;
	u64 pred_issue_ns;
	u32 flags;		/* KML_DD_SAMPLE_* */
	u8 met;
	u8 pred_valid;
	u8 pred_met;
	u8 score;		/* kml_dd_score_bucket() of the prediction */
};

/*
 * A completed request: the statistics, then whether the ring takes its
 * sample, then, only if it does, the whole sample into the ring.  Any
 * context.
 */
bool kml_dd_count_sample(const struct kml_dd_outcome *o);
void kml_dd_push_sample(const struct kml_dd_sample *s);

/* The ring's one consumer: see kml_dd_ring_claim(). */
int kml_dd_ring_claim(enum kml_dd_owner owner);
void kml_dd_ring_release(enum kml_dd_owner owner);
int kml_dd_ring_pop(struct kml_dd_sample *s);
bool kml_dd_ring_blocks(void);
size_t kml_dd_ring_bytes(void);
int kml_dd_ring_mmap(struct vm_area_struct *vma);
int kml_dd_ktrainer_running(void);

/* What KML_IOC_INFO reports of the core; /dev/kml adds its own limits. */
void kml_dd_get_info(struct kml_dev_info *info);

/* The trainers' calibration of the decision threshold. */
void kml_dd_set_decision_permille(unsigned int permille);

void kml_dd_unload(void);

#endif /* _KML_DD_H */
