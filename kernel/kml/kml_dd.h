/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML for mq-deadline, internal: state shared by kml_iosched.c (hooks,
 * statistics, model swap), kml_dd_dev.c (/dev/kml) and kml_ktrain.c (the
 * kernel trainer).
 */
#ifndef _KML_DD_H
#define _KML_DD_H

#include <linux/atomic.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include "kml.h"
#include "kml_iosched_uapi.h"
#include "kml_dd_calib.h"

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
	KML_DD_NR_STATS,
};

#define KML_DD_HIST_BUCKETS 256

/* What readers see under RCU: the model and what the hot path needs of it. */
struct kml_dd_model {
	struct kml_model *model;
	u32 dtype;
	struct rcu_head rcu;
};

/* Who pops the ring: nobody, a user mapping of /dev/kml, or the ktrainer. */
enum { KML_DD_OWNER_NONE = 0, KML_DD_OWNER_USER = 1, KML_DD_OWNER_KERNEL = 2 };

struct kml_dd_global {
	struct kml_dd_model __rcu *model;
	struct mutex model_lock;	/* serialises swaps */
	u64 model_generation;
	struct kml_ring ring;
	void *ring_mem;			/* vmalloc_user(), mmap()ed by users */
	size_t ring_bytes;		/* page aligned */
	struct kml_ring_shared no_ring;	/* ring.sh when allocation failed */
	s64 consumed_base;		/* ring pushes at the last reset */
	atomic_t ring_owner;
	atomic64_t stats[KML_DD_NR_STATS];
	atomic64_t hist[KML_DD_HIST_BUCKETS];
	struct dentry *debugfs;
};

extern struct kml_dd_global kml_dd;

static inline void kml_dd_stat_inc(enum kml_dd_stat s)
{
	atomic64_inc(&kml_dd.stats[s]);
}

static inline void kml_dd_stat_add(enum kml_dd_stat s, s64 v)
{
	atomic64_add(v, &kml_dd.stats[s]);
}

int kml_dd_publish(const void *buf, size_t len);
void kml_dd_set_decision_permille(unsigned int permille);

void kml_dd_unload(void);
void kml_dd_push_sample(const struct kml_dd_sample *s);
void kml_dd_ring_repair(void);
int kml_dd_dev_init(void);
int kml_dd_ktrainer_running(void);

#endif /* _KML_DD_H */
