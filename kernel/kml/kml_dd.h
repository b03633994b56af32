/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML for mq-deadline, internal.  kml_dd_core.c owns what every queue
 * shares: the model, the sample ring and who consumes it, the statistics
 * and the module parameters that tune them.  The hooks (kml_iosched.c),
 * /dev/kml (kml_dd_dev.c) and the kernel trainer (kml_ktrain.c) call the
 * core, never each other, and only the core and the inline accessors here
 * touch kml_dd.
 */
#ifndef _KML_DD_H
#define _KML_DD_H

#include <linux/atomic.h>
#include <linux/bitops.h>
#include <linux/mutex.h>
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
	KML_DD_S_KTRAINER_CAL_BALANCED_PPM,	/* a gauge: the last window's */
	KML_DD_S_KTRAINER_CAL_AUC_PPM,		/* a gauge: the last window's */
	KML_DD_S_SKILL_WINDOWS,
	KML_DD_S_SKILL_UNSKILLED,
	KML_DD_S_SKILL_INCONCLUSIVE,
	KML_DD_S_STEP_ASIDES,
	KML_DD_S_STEP_RESUMES,
	KML_DD_S_STEER_SUPPRESSED,
	KML_DD_S_SKILL_BALANCED_PPM,		/* a gauge: the last window's */
	KML_DD_S_PRED_CLAMPED,
	KML_DD_S_SKILL_HOLDOUTS,
	KML_DD_NR_STATS,
};

#define KML_DD_HIST_BUCKETS 256

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
 * it holds (inconclusive).  The four counts share one atomic64 (16 bits
 * each), so skill_window is at most KML_DD_SKILL_MAX_WINDOW.
 */
#define KML_DD_SKILL_WINDOW		1024
#define KML_DD_SKILL_MAX_WINDOW		4096
#define KML_DD_SKILL_MIN_CLASS		16
#define KML_DD_SKILL_MAX_STRETCH	8
/*
 * Acting on a predicted miss changes its outcome, so the window leaves the
 * requests active mode moved ahead out.  Left at that, it would keep only
 * the misses the model did not predict, and any model would look no better
 * than the baseline.  So one steering prediction of a miss in
 * KML_DD_SKILL_HOLDOUT is not acted on (KML_DD_SAMPLE_HOLDOUT) and counts
 * KML_DD_SKILL_HOLDOUT times in the window, for itself and the ones that
 * were.  The weighted counts stay under 16 bits: a window closes at most
 * KML_DD_SKILL_MAX_STRETCH * KML_DD_SKILL_MAX_WINDOW + KML_DD_SKILL_HOLDOUT.
 */
#define KML_DD_SKILL_HOLDOUT		8

/* What readers see under RCU: the model and what the hot path needs of it. */
struct kml_dd_model {
	struct kml_model *model;
	u32 dtype;
	struct rcu_head rcu;
};

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
	atomic64_t stats[KML_DD_NR_STATS];
	atomic64_t inference_hist[KML_DD_HIST_BUCKETS];
	atomic64_t err_hist[KML_DD_HIST_BUCKETS];	/* abs error, us */
	/* the open window: 4 x 16-bit counts, written at every completion */
	atomic64_t skill ____cacheline_aligned_in_smp;
	/* read at every insert: a line apart from the window's writes */
	int aside ____cacheline_aligned_in_smp;	/* stands aside; READ_ONCE() */
	unsigned int skill_window;	/* module parameter; 0: rule off */
	unsigned int skill_min_permille;	/* module parameter */
	struct dentry *debugfs;
};

extern struct kml_dd_global kml_dd;

/*
 * Accessors for the hot paths.  The hooks run for every request, under the
 * scheduler's lock, so what they need of the core stays inline: the same
 * loads and atomics as when the core's state was local to kml_iosched.c.
 */
static inline void kml_dd_stat_inc(enum kml_dd_stat s)
{
	atomic64_inc(&kml_dd.stats[s]);
}

static inline void kml_dd_stat_add(enum kml_dd_stat s, s64 v)
{
	atomic64_add(v, &kml_dd.stats[s]);
}

/* A calibration's figures (2^-20 units) into the gauges, in ppm. */
static inline void kml_dd_note_calibration(u32 balanced, u32 auc)
{
	atomic64_set(&kml_dd.stats[KML_DD_S_KTRAINER_CAL_BALANCED_PPM],
		     ((u64)balanced * 1000000) >> 20);
	atomic64_set(&kml_dd.stats[KML_DD_S_KTRAINER_CAL_AUC_PPM],
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
 * Inference-time histogram: exact below 8 ns, then four buckets per power
 * of two, so p50/p99 are read to within 25%.
 */
static inline unsigned int kml_dd_hist_bucket(u64 ns)
{
	unsigned int n;

	if (ns < 8)
		return ns;
	n = fls64(ns) - 1;		/* >= 3 */
	return 8 + (n - 3) * 4 + ((ns >> (n - 2)) & 3);
}

/* One inference that gave a prediction, and the @ns it took. */
static inline void kml_dd_note_inference(u64 ns)
{
	kml_dd_stat_inc(KML_DD_S_INFERENCES);
	atomic64_inc(&kml_dd.inference_hist[kml_dd_hist_bucket(ns)]);
}

/*
 * The core (kml_dd_core.c).  Process context unless said otherwise.
 *
 * Models: validated, then swapped in under RCU; kml_dd_unload() (at the
 * end of this file) removes the model in use.
 */
int kml_dd_publish(const void *buf, size_t len);
long kml_dd_model_save(void *buf, size_t cap, u32 dtype);

/* A completed request's sample: statistics, then the ring.  Any context. */
void kml_dd_record_sample(const struct kml_dd_sample *s);

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
