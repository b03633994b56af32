// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: the core.  It owns what every queue shares (the
 * model, the sample ring and its one consumer, the statistics) and the
 * module parameters that tune them.  The hooks (kml_iosched.c), /dev/kml
 * (kml_dd_dev.c) and the kernel trainer (kml_ktrain.c) call in here and
 * never into each other.  See docs/kml-iosched.md.
 *
 * The hooks run for every request, so what they need per request (a
 * statistic, the model under RCU, the decision threshold) is read through
 * the inline accessors in kml_dd.h; everything else goes through the
 * functions below.
 */
#include <linux/module.h>
#include <linux/cpu.h>
#include <linux/smp.h>
#include <linux/moduleparam.h>
#include <linux/mm.h>
#include <linux/rcupdate.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/stringify.h>
#include <linux/sysfs.h>
#include <linux/vmalloc.h>
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>
#include <linux/log2.h>
#include <linux/math64.h>
#include <linux/overflow.h>
#include <linux/percpu.h>
#include <kunit/visibility.h>
#include "kml_internal.h"
#include "kml_dd.h"
#include "kml_dd_feat.h"
#include "kml_iosched.h"

/* Predict a miss above deadline * decision_permille / 1000: see below. */
#define KML_DD_PERMILLE_DEFAULT	1000
#define KML_DD_PERMILLE_MAX	64000

struct kml_dd_global kml_dd = {
	.decision_permille = KML_DD_PERMILLE_DEFAULT,
#if IS_ENABLED(CONFIG_KML_IOSCHED_COST)
	.cost_age_shift = KML_DD_COST_AGE_SHIFT,
	.cost_credit_permille = KML_DD_COST_CREDIT_PERMILLE,
	.cost_late_permille = KML_DD_COST_LATE_PERMILLE,
	.cost_svc_permille = KML_DD_COST_SVC_PERMILLE,
#endif
	.sample_unclaimed = 1,
	.skill_window = KML_DD_SKILL_WINDOW,
	.skill_window_ms = KML_DD_SKILL_WINDOW_MS,
	.skill_min_permille = 500,
	.model_lock = __MUTEX_INITIALIZER(kml_dd.model_lock),
	/*
	 * kml.ring_mode= on the command line is set before the ring exists:
	 * until init, a write lands on the stand-in and init keeps its mode.
	 */
	.ring = { .mode = KML_RING_DROP, .sh = &kml_dd.no_ring },
};
/* for KUnit's cases of the hooks, which set parameters as a writer does */
EXPORT_SYMBOL_IF_KUNIT(kml_dd);

DEFINE_PER_CPU(struct kml_dd_counters, kml_dd_counters);
/*
 * The statistic KML_DD_S_UNOBSERVED, counted here and not in
 * kml_dd_counters.stats[] (whose slot stays 0): mq-deadline's insert
 * counts it in line (kml_dd_passing()) and sees nothing else of them.
 */
DEFINE_PER_CPU(u64, kml_dd_unobserved);
EXPORT_PER_CPU_SYMBOL_GPL(kml_dd_unobserved);

/* ------------------------------------------------------------ parameters */

static unsigned int ring_capacity = 4096;
module_param(ring_capacity, uint, 0444);
MODULE_PARM_DESC(ring_capacity, "sample ring records (power of two, boot only)");

static const char * const kml_dd_ring_modes[] = { "block", "drop" };
static const char * const kml_dd_filters[] = { "all", "uncertain" };
static const char * const kml_dd_policies[] = {
	[KML_DD_POLICY_EXPIRE] = "expire",
	[KML_DD_POLICY_COST] = "cost",
};

enum { KML_DD_FILTER_ALL = 0, KML_DD_FILTER_UNCERTAIN = 1 };

static int ring_mode_set(const char *val, const struct kernel_param *kp)
{
	int mode = __sysfs_match_string(kml_dd_ring_modes,
					ARRAY_SIZE(kml_dd_ring_modes), val);

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
	int f = __sysfs_match_string(kml_dd_filters,
				     ARRAY_SIZE(kml_dd_filters), val);

	if (f < 0)
		return f;
	WRITE_ONCE(kml_dd.sample_filter, f);
	return 0;
}

static int sample_filter_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n",
			  kml_dd_filters[READ_ONCE(kml_dd.sample_filter) & 1]);
}

static const struct kernel_param_ops sample_filter_ops = {
	.set = sample_filter_set,
	.get = sample_filter_get,
};
module_param_cb(sample_filter, &sample_filter_ops, NULL, 0644);
MODULE_PARM_DESC(sample_filter,
		 "all, or uncertain: only samples the model got wrong or was unsure of");

/*
 * What active mode does with the predictions (kml_iosched.h, enum
 * kml_dd_policy): "expire" treats a FIFO head predicted to miss as
 * expired; "cost" dispatches the request with the least predicted service
 * time, less a credit for its age and lateness (past or predicted) shifted
 * right by cost_age_shift.
 */
unsigned int kml_dd_policy __read_mostly = KML_DD_POLICY_EXPIRE;
EXPORT_SYMBOL_GPL(kml_dd_policy);

/* A parameter of policy cost's world set to @v: a change relearns. */
static void kml_dd_set_relearn(unsigned int *p, unsigned int v)
{
	if (READ_ONCE(*p) == v)
		return;
	kml_dd_relearn();
	WRITE_ONCE(*p, v);
	kml_dd_relearn();
}

static int policy_set(const char *val, const struct kernel_param *kp)
{
	int p = __sysfs_match_string(kml_dd_policies,
				     ARRAY_SIZE(kml_dd_policies), val);

	if (p < 0)
		return p;
	if (p == KML_DD_POLICY_COST && !IS_ENABLED(CONFIG_KML_IOSCHED_COST))
		return -EOPNOTSUPP;
	kml_dd_set_relearn(&kml_dd_policy, p);
	return 0;
}

static int policy_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n",
			  kml_dd_policies[READ_ONCE(kml_dd_policy) & 1]);
}

static const struct kernel_param_ops policy_ops = {
	.set = policy_set,
	.get = policy_get,
};
module_param_cb(policy, &policy_ops, NULL, 0644);
MODULE_PARM_DESC(policy,
		 "active mode: expire (a FIFO head predicted to miss is expired) or cost");

/* A numeric parameter's new value @v, in [@min, @max]. */
static int kml_dd_uint_param(const char *val, unsigned int min,
			     unsigned int max, unsigned int *v)
{
	int ret = kstrtouint(val, 0, v);

	if (ret)
		return ret;
	return *v < min || *v > max ? -ERANGE : 0;
}

static int kml_dd_uint_range_set(const char *val, const struct kernel_param *kp)
{
	const struct kml_dd_uint_range *r = kp->arg;
	unsigned int v;
	int ret = kml_dd_uint_param(val, r->min, r->max, &v);

	if (ret)
		return ret;
	if (r->relearn)
		kml_dd_set_relearn(r->v, v);
	else
		WRITE_ONCE(*r->v, v);
	return 0;
}

static int kml_dd_uint_range_get(char *buf, const struct kernel_param *kp)
{
	const struct kml_dd_uint_range *r = kp->arg;

	return sysfs_emit(buf, "%u\n", READ_ONCE(*r->v));
}

const struct kernel_param_ops kml_dd_uint_range_ops = {
	.set = kml_dd_uint_range_set,
	.get = kml_dd_uint_range_get,
};

/*
 * Observe mode's share of the time (kml_dd.h, KML_DD_OBSERVE_WINDOW): 1
 * watches every request; N > 1 one window in N, the rest untracked.
 */
unsigned int kml_dd_observe_every __read_mostly = 1;
EXPORT_SYMBOL_GPL(kml_dd_observe_every);

static struct kml_dd_uint_range observe_every_range = {
	.v = &kml_dd_observe_every,
	.min = 1,
	.max = KML_DD_OBSERVE_MAX_EVERY,
};
module_param_cb(observe_every, &kml_dd_uint_range_ops, &observe_every_range,
		0644);
MODULE_PARM_DESC(observe_every,
		 "observe mode: watch one window of "
		 __stringify(KML_DD_OBSERVE_WINDOW)
		 " requests in this many (1 = all, max "
		 __stringify(KML_DD_OBSERVE_MAX_EVERY) ")");

/*
 * Active mode predicting lazily (__kml_dd_predict_lazy()): 1 copies what a
 * request's features are computed from at insert and predicts when a
 * dispatch decision first reads the prediction; 0 predicts every request
 * at insert.
 */
KML_DD_PARAM(lazy, 1, false,
	     "active mode: predict a request when a dispatch decision first reads it (1), or every one at insert (0)");

/*
 * Samples while no consumer holds the ring (kml_dd_ring_claim()): 1 makes
 * them, and they wait in the ring (up to its capacity) for one that claims
 * it later; 0 makes none, so that a queue nobody trains from pays nothing
 * for the ring.
 */
KML_DD_PARAM(sample_unclaimed, 1, false,
	     "make samples while no consumer holds the ring (1), or only while one does (0)");

/*
 * Decision threshold: a request is predicted to meet its deadline when its
 * predicted issue time is at most deadline * decision_permille / 1000.
 * Trainers calibrate it for balanced accuracy on recent samples, so the
 * issue-time model itself stays unbiased (its error is what it is).
 */

/* The kernel trainer's calibration; the caller keeps it in range. */
void kml_dd_set_decision_permille(unsigned int permille)
{
	WRITE_ONCE(kml_dd.decision_permille,
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
		&kml_dd.decision_permille, 0644);
MODULE_PARM_DESC(decision_permille,
		 "predict a miss above deadline * N / 1000 (1..64000)");

/*
 * The step-aside rule: in active mode a model steers only while it is
 * better than the baseline of always answering "meet".  Its skill is
 * measured online on completed requests, in both modes, in windows of
 * skill_window predictions, or skill_window_ms of them on a slow device
 * (kml_dd_skill_note()): balanced accuracy, the
 * mean recall of met and missed, which that baseline scores 0.5 however
 * rare misses are.  A window whose balanced accuracy is at most
 * skill_min_permille / 1000 makes the model stand aside (its predicted
 * misses are not acted on) until a later window shows more.  Writing
 * any of the three parameters starts a new window (the model's standing kept,
 * but for the two cases below); skill_window 0 turns the rule off and the
 * model steers, and so does a statistics reset, which starts afresh.
 *
 * No window can beat a bar of KML_DD_SKILL_SHADOW: the model is then a
 * shadow, whose predictions are made and judged, never acted on, from the
 * write on (the standing is taken at insert: requests queued before keep
 * theirs), whatever the window and after a reset.  That tells what a model
 * knows from what its steering changed: under policy cost a predicted miss
 * only raises a request's credit, is served early and meets its deadline.
 * A lower bar with the rule off makes it steer again; with the rule on it
 * steers once a window beats the bar, or after a reset.
 */
static bool kml_dd_shadow(void)
{
	return READ_ONCE(kml_dd.skill_min_permille) >= KML_DD_SKILL_SHADOW;
}

/*
 * Let the model steer, unless the bar was raised to a shadow's meanwhile:
 * a writer of the bar stores it, then (after a full barrier) stands the
 * model aside, and this stores, then (after one) reads the bar, so that
 * either its clearing comes first or it sees the new bar.  Either way
 * the shadow stands aside.  Not on the per-request path.
 */
static void kml_dd_skill_resume(void)
{
	WRITE_ONCE(kml_dd.aside, 0);
	smp_mb();	/* the clearing before the bar: see above */
	if (kml_dd_shadow())
		WRITE_ONCE(kml_dd.aside, 1);
}

/* A new window; @fresh for a statistics reset, which starts afresh. */
static void kml_dd_skill_restart(bool fresh)
{
	atomic64_set(&kml_dd.skill, 0);
	smp_mb();	/* the bar before the standing: kml_dd_skill_resume() */
	if (kml_dd_shadow())
		WRITE_ONCE(kml_dd.aside, 1);
	else if (fresh || !READ_ONCE(kml_dd.skill_window))
		kml_dd_skill_resume();
}

static int skill_window_set(const char *val, const struct kernel_param *kp)
{
	unsigned int v;
	int ret;

	ret = kml_dd_uint_param(val, 0, KML_DD_SKILL_MAX_WINDOW, &v);
	if (ret)
		return ret;
	WRITE_ONCE(kml_dd.skill_window, v);
	kml_dd_skill_restart(false);	/* with the rule off, it steers */
	return 0;
}

static const struct kernel_param_ops skill_window_ops = {
	.set = skill_window_set,
	.get = param_get_uint,
};
module_param_cb(skill_window, &skill_window_ops, &kml_dd.skill_window, 0644);
MODULE_PARM_DESC(skill_window,
		 "step aside: predictions per skill window (0 = never step aside, unless skill_min_permille is 1000; max 4096)");

static int skill_window_ms_set(const char *val, const struct kernel_param *kp)
{
	unsigned int v;
	int ret;

	ret = kml_dd_uint_param(val, 0, KML_DD_SKILL_MAX_WINDOW_MS, &v);
	if (ret)
		return ret;
	WRITE_ONCE(kml_dd.skill_window_ms, v);
	WRITE_ONCE(kml_dd.skill_window_j, msecs_to_jiffies(v));
	kml_dd_skill_restart(false);
	return 0;
}

static const struct kernel_param_ops skill_window_ms_ops = {
	.set = skill_window_ms_set,
	.get = param_get_uint,
};
module_param_cb(skill_window_ms, &skill_window_ms_ops,
		&kml_dd.skill_window_ms, 0644);
MODULE_PARM_DESC(skill_window_ms,
		 "step aside: a window with 16 of each outcome also closes after this (ms, 0 = never, max 60000)");

static int skill_min_set(const char *val, const struct kernel_param *kp)
{
	unsigned int v;
	int ret;

	ret = kml_dd_uint_param(val, 0, KML_DD_SKILL_SHADOW, &v);
	if (ret)
		return ret;
	WRITE_ONCE(kml_dd.skill_min_permille, v);
	kml_dd_skill_restart(false);
	return 0;
}

static const struct kernel_param_ops skill_min_ops = {
	.set = skill_min_set,
	.get = param_get_uint,
};
module_param_cb(skill_min_permille, &skill_min_ops,
		&kml_dd.skill_min_permille, 0644);
MODULE_PARM_DESC(skill_min_permille,
		 "step aside: balanced accuracy (permille) a window must beat to steer (1000 = never steer)");

/* ------------------------------------------------------------ statistics */

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
	[KML_DD_S_KTRAINER_CAL_REFUSED] = "ktrainer_cal_refused",
	[KML_DD_S_KTRAINER_CAL_BALANCED_PPM] = "ktrainer_cal_balanced_ppm",
	[KML_DD_S_KTRAINER_CAL_AUC_PPM] = "ktrainer_cal_auc_ppm",
	[KML_DD_S_SKILL_WINDOWS] = "skill_windows",
	[KML_DD_S_SKILL_UNSKILLED] = "skill_windows_unskilled",
	[KML_DD_S_SKILL_INCONCLUSIVE] = "skill_windows_inconclusive",
	[KML_DD_S_STEP_ASIDES] = "step_asides",
	[KML_DD_S_STEP_RESUMES] = "step_resumes",
	[KML_DD_S_STEER_SUPPRESSED] = "steer_suppressed",
	[KML_DD_S_SKILL_BALANCED_PPM] = "skill_balanced_ppm",
	[KML_DD_S_PRED_CLAMPED] = "pred_clamped",
	[KML_DD_S_SKILL_HOLDOUTS] = "skill_holdouts",
	[KML_DD_S_UNOBSERVED] = "unobserved",
	[KML_DD_S_RING_UNCLAIMED] = "ring_unclaimed",
	[KML_DD_S_UPDATES_COMPILED] = "updates_compiled",
	[KML_DD_S_STEERED_MET] = "steered_met",
	[KML_DD_S_STEERED_MISSED] = "steered_missed",
	[KML_DD_S_HOLDOUT_MET] = "holdout_met",
	[KML_DD_S_HOLDOUT_MISSED] = "holdout_missed",
};

/* The range bucket @b of kml_dd_hist_bucket() with @nr buckets holds. */
static void kml_dd_hist_bounds(unsigned int b, unsigned int nr, u64 *lo,
			       u64 *hi)
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
	*hi = b == nr - 1 ? U64_MAX : (u64)(5 + sub) << (n - 2);
}

/* A statistic: a gauge's value, or the sum of the CPUs' counts. */
VISIBLE_IF_KUNIT u64 kml_dd_stat_read(unsigned int s)
{
	u64 sum = 0;
	int cpu;

	if (s >= KML_DD_NR_COUNTS)
		return atomic64_read(&kml_dd.gauges[s - KML_DD_NR_COUNTS]);
	for_each_possible_cpu(cpu)
		/* data_race: others increment it; a snapshot is all we need */
		sum += data_race(per_cpu(kml_dd_counters.stats[s], cpu));
	if (s == KML_DD_S_UNOBSERVED)
		for_each_possible_cpu(cpu)
			/* data_race: as above */
			sum += data_race(per_cpu(kml_dd_unobserved, cpu));
	return sum;
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_stat_read);

static u64 kml_dd_hist_read(unsigned int b, bool err)
{
	struct kml_dd_counters *c;
	const u64 *h;
	u64 sum = 0;
	int cpu;

	for_each_possible_cpu(cpu) {
		c = per_cpu_ptr(&kml_dd_counters, cpu);
		h = err ? c->err_hist : c->inference_hist;
		/* data_race: as in kml_dd_stat_read() */
		sum += data_race(h[b]);
	}
	return sum;
}

/* A histogram's non-empty buckets as "@name lo hi count" lines. */
static void kml_dd_hist_show(struct seq_file *m, const char *name, bool err,
			     unsigned int nr)
{
	unsigned int i;
	u64 lo, hi, n;

	for (i = 0; i < nr; i++) {
		n = kml_dd_hist_read(i, err);
		if (!n)
			continue;
		kml_dd_hist_bounds(i, nr, &lo, &hi);
		seq_printf(m, "%s %llu %llu %llu\n", name, lo, hi, n);
	}
}

/*
 * On each CPU, in the IPI (interrupts off): an increment there is one
 * instruction or runs with interrupts off, so none is half done.
 */
static void kml_dd_counters_zero(void *unused)
{
	memset(this_cpu_ptr(&kml_dd_counters), 0,
	       sizeof(struct kml_dd_counters));
	this_cpu_write(kml_dd_unobserved, 0);
}

/*
 * Each online CPU zeroes its own counters: writing another's could race
 * with its increment, which would write the old total back.  An offline
 * CPU runs no hook, so its counters are zeroed from here, under the
 * hotplug lock that keeps it offline.  Process context.
 */
static void kml_dd_stats_reset(void)
{
	unsigned int i;
	int cpu;

	cpus_read_lock();
	for_each_possible_cpu(cpu)
		if (!cpu_online(cpu)) {
			memset(per_cpu_ptr(&kml_dd_counters, cpu), 0,
			       sizeof(struct kml_dd_counters));
			per_cpu(kml_dd_unobserved, cpu) = 0;
		}
	on_each_cpu(kml_dd_counters_zero, NULL, 1);
	cpus_read_unlock();
	for (i = 0; i < KML_DD_NR_GAUGES; i++)
		atomic64_set(&kml_dd.gauges[i], 0);
}

/* ------------------------------------------------------------ samples */

/*
 * Active learning: a sample is worth sending when there is no model, the
 * model got it wrong, or its prediction was within a factor of two of the
 * deadline (close to the decision boundary).
 */
static bool kml_dd_sample_wanted(const struct kml_dd_outcome *o)
{
	if (READ_ONCE(kml_dd.sample_filter) == KML_DD_FILTER_ALL ||
	    !o->pred_valid || o->pred_met != o->met)
		return true;
	return o->pred_issue_ns * 2 > o->deadline_ns &&
	       o->pred_issue_ns < o->deadline_ns * 2;
}

/* The window's four counts: actual met/missed x predicted met/missed. */
static u32 kml_dd_skill_count(u64 v, unsigned int cell)
{
	return (v >> (16 * cell)) & 0xffff;
}

/*
 * Judge a closed window @v (kml_dd_skill_note()); any context.  One with
 * fewer than KML_DD_SKILL_MIN_CLASS of an outcome closed only at
 * KML_DD_SKILL_MAX_STRETCH windows' worth.
 */
static void kml_dd_skill_judge(u64 v)
{
	u32 tn = kml_dd_skill_count(v, 0), fp = kml_dd_skill_count(v, 1);
	u32 fn = kml_dd_skill_count(v, 2), tp = kml_dd_skill_count(v, 3);
	bool one_sided = false;
	u64 ppm;

	if (tn + fp < KML_DD_SKILL_MIN_CLASS ||
	    fn + tp < KML_DD_SKILL_MIN_CLASS) {
		one_sided = kml_dd_skill_one_sided(tn, fp, fn, tp);
		if (!one_sided) {
			kml_dd_stat_inc(KML_DD_S_SKILL_INCONCLUSIVE);
			return;
		}
	}
	/* an outcome that never occurred has a recall of 0 here */
	ppm = (tn + fp ? div_u64((u64)tn * 500000, tn + fp) : 0) +
	      (fn + tp ? div_u64((u64)tp * 500000, fn + tp) : 0);
	kml_dd_stat_set(KML_DD_S_SKILL_BALANCED_PPM, ppm);
	kml_dd_stat_inc(KML_DD_S_SKILL_WINDOWS);
	if (ppm <= READ_ONCE(kml_dd.skill_min_permille) * 1000ULL) {
		kml_dd_stat_inc(KML_DD_S_SKILL_UNSKILLED);
		if (!READ_ONCE(kml_dd.aside)) {
			WRITE_ONCE(kml_dd.aside, 1);
			kml_dd_stat_inc(KML_DD_S_STEP_ASIDES);
		}
	} else if (READ_ONCE(kml_dd.aside) && !one_sided) {
		kml_dd_skill_resume();
		kml_dd_stat_inc(KML_DD_S_STEP_RESUMES);
	}
}

/*
 * Count a completed prediction into the open skill window; whoever
 * completes the window takes it (cmpxchg to an empty one) and judges it.
 * No lock, no allocation.  A predicted miss active mode acted on
 * (KML_DD_SAMPLE_STEERED; under policy expire, those it moved ahead are
 * KML_DD_SAMPLE_URGENT too) is left out: acting on its prediction may
 * have changed its outcome, so it says nothing about the model's skill.
 * A held-out predicted miss (KML_DD_SAMPLE_HOLDOUT) counts for itself
 * and for the KML_DD_SKILL_HOLDOUT - 1 that were acted on (kml_dd_calib.h), so
 * those must not count as well: under policy cost they are never moved
 * ahead, and counted at 1 beside the holdout's 8 they made each eight
 * predicted misses weigh fifteen.  Both kinds are counted by outcome for
 * the whole run too (steered_*, holdout_*), so that a reader can judge
 * all of active mode's predictions the same way (docs/kml-iosched.md).
 */
static void kml_dd_skill_note(const struct kml_dd_outcome *o)
{
	unsigned int window = READ_ONCE(kml_dd.skill_window);
	unsigned long timed;
	unsigned int cell = 2 * !o->met + !o->pred_met;
	u32 met, missed, weight = 1;
	u64 v;

	/* one test on the path of a request nothing was done to */
	if (o->flags & (KML_DD_SAMPLE_ACTED | KML_DD_SAMPLE_HOLDOUT)) {
		if (o->flags & KML_DD_SAMPLE_ACTED) {
			kml_dd_stat_inc(o->met ? KML_DD_S_STEERED_MET :
						 KML_DD_S_STEERED_MISSED);
			return;
		}
		kml_dd_stat_inc(o->met ? KML_DD_S_HOLDOUT_MET :
					 KML_DD_S_HOLDOUT_MISSED);
		weight = KML_DD_SKILL_HOLDOUT;
	}
	if (!window)
		return;
	v = atomic64_add_return((s64)weight << (16 * cell), &kml_dd.skill);
	if (v == (u64)weight << (16 * cell))	/* the window's first */
		WRITE_ONCE(kml_dd.skill_since, jiffies);
	met = kml_dd_skill_count(v, 0) + kml_dd_skill_count(v, 1);
	missed = kml_dd_skill_count(v, 2) + kml_dd_skill_count(v, 3);
	if (met + missed < window) {
		/* a slow device: closed by time, with enough of each outcome */
		timed = READ_ONCE(kml_dd.skill_window_j);
		if (!timed || met < KML_DD_SKILL_MIN_CLASS ||
		    missed < KML_DD_SKILL_MIN_CLASS ||
		    met + missed < KML_DD_SKILL_MIN_TIMED ||
		    jiffies - READ_ONCE(kml_dd.skill_since) < timed)
			return;
	} else if ((met < KML_DD_SKILL_MIN_CLASS ||
		    missed < KML_DD_SKILL_MIN_CLASS) &&
		   met + missed < KML_DD_SKILL_MAX_STRETCH * window) {
		return;
	}
	if (atomic64_cmpxchg(&kml_dd.skill, v, 0) == v)
		kml_dd_skill_judge(v);
}

/* The statistics of a completed request: counts, the error, the skill. */
static void kml_dd_account(const struct kml_dd_outcome *o)
{
	u64 err;

	kml_dd_count_outcome(o->met);
	if (!o->pred_valid)
		return;
	kml_dd_stat_inc(KML_DD_S_PREDICTIONS);
	if (o->met)
		kml_dd_stat_inc(o->pred_met ? KML_DD_S_MET_PRED_MET :
					      KML_DD_S_MET_PRED_MISS);
	else
		kml_dd_stat_inc(o->pred_met ? KML_DD_S_MISS_PRED_MET :
					      KML_DD_S_MISS_PRED_MISS);
	err = o->pred_issue_ns > o->issue_ns ? o->pred_issue_ns - o->issue_ns :
					       o->issue_ns - o->pred_issue_ns;
	err = div_u64(err, NSEC_PER_USEC);
	kml_dd_stat_add(KML_DD_S_ISSUE_ABS_ERR_US, err);
	this_cpu_inc(kml_dd_counters.err_hist[kml_dd_hist_bucket(err,
						KML_DD_ERR_BUCKETS)]);
	this_cpu_inc(kml_dd_counters.score_hist[!o->met][o->score]);
	kml_dd_skill_note(o);
}

/*
 * Count a completed request, and say whether the ring would take its
 * sample.  When it would not (no consumer holds the ring and
 * sample_unclaimed is 0, filtered out, no ring, or a full ring in drop
 * mode), the reason is counted here and the finish hook need not make the
 * sample.  Any context.
 */
bool kml_dd_count_sample(const struct kml_dd_outcome *o)
{
	bool full;

	kml_dd_account(o);
	if (kml_dd_skip_unclaimed())
		return false;
	if (!kml_dd_sample_wanted(o)) {
		kml_dd_stat_inc(KML_DD_S_RING_FILTERED);
		return false;
	}
	if (!kml_dd.ring_mem) {
		kml_dd_stat_inc(KML_DD_S_RING_DROPPED);
		return false;
	}
	/* kml_dd_ring_repair() waits for readers of the ring with RCU */
	rcu_read_lock();
	full = kml_ring_drops(&kml_dd.ring);
	rcu_read_unlock();
	if (full)
		kml_dd_stat_inc(KML_DD_S_RING_DROPPED);
	return !full;
}

/* Push a sample kml_dd_count_sample() said the ring takes.  Any context. */
void kml_dd_push_sample(const struct kml_dd_sample *s)
{
	int ret;

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
 * A first-layer weight of a Q16.16 model with the normalisation folded in,
 * with 32 fraction bits: with x' = (x - mean) * scale, w . x' + b = (w *
 * scale) . x + (b - (w * scale) . mean).  At most 2^62 in magnitude.
 */
static s64 kml_dd_fast_weight(const struct kml_model *m, const s32 *w,
			      unsigned int i)
{
	if (m->cfg.norm == KML_NORM_NONE)
		return (s64)w[i] * (1LL << 16);
	return (s64)w[i] * ((const s32 *)m->norm_scale)[i];
}

/*
 * One output of the first layer, folded with @frac fraction bits: the sum
 * differs from the library's (which rounds each x' to 16) by less than
 * half a unit of each |w| and 2^(21 - frac) for each feature and its mean.
 * Refused if a folded weight or the bias does not fit; *@h_max is the most
 * the row can reach over every feature vector within the features' ranges,
 * rounded as kml_dd_fast_row() rounds it, at least 0 and at most S32_MAX,
 * where the library saturates a hidden unit (kml_linear_forward_q16()).
 */
static bool kml_dd_fast_fold(const struct kml_model *m, const s32 *w, s32 b,
			     u32 frac, s32 *wo, s64 *bo, s32 *h_max)
{
	const s32 *mean = m->norm_mean;
	bool norm = m->cfg.norm != KML_NORM_NONE;
	s64 bias = (s64)b * (1LL << frac), wi, t, top = 0;
	unsigned int i;

	for (i = 0; i < KML_DD_NR_FEATURES; i++) {
		wi = kml_rshift_round(kml_dd_fast_weight(m, w, i), 32 - frac);
		if (wi > S32_MAX || wi < S32_MIN)
			return false;
		wo[i] = wi;
		if (norm && (check_mul_overflow(wi, (s64)mean[i], &t) ||
			     check_sub_overflow(bias, t, &bias)))
			return false;
		if (wi > 0)	/* < 2^53 each */
			top += wi * kml_dd_feat_max(i);
	}
	if (bias > KML_DD_FAST_BIAS_MAX || bias < -KML_DD_FAST_BIAS_MAX)
		return false;
	*bo = bias + (1LL << (frac - 1));	/* the row's rounding */
	*h_max = clamp_t(s64, (*bo + top) >> frac, 0, S32_MAX);
	return true;
}

/*
 * The most fraction bits, up to KML_DD_FAST_FRAC, with which each of the
 * first layer's @rows folded weights fits 32 bits; 0 if none from
 * KML_DD_FAST_FRAC_MIN does.
 */
static u32 kml_dd_fast_frac(const struct kml_model *m, unsigned int rows)
{
	const s32 *w = m->params + m->w_off[0];
	s64 hi = 0, lo = 0, v;
	unsigned int i, j;
	u32 frac;

	for (j = 0; j < rows; j++, w += KML_DD_NR_FEATURES) {
		for (i = 0; i < KML_DD_NR_FEATURES; i++) {
			v = kml_dd_fast_weight(m, w, i);
			hi = max(hi, v);
			lo = min(lo, v);
		}
	}
	for (frac = KML_DD_FAST_FRAC; frac >= KML_DD_FAST_FRAC_MIN; frac--)
		if (kml_rshift_round(hi, 32 - frac) <= S32_MAX &&
		    kml_rshift_round(lo, 32 - frac) >= S32_MIN)
			return frac;
	return 0;
}

/*
 * Q16.16 models with a linear output, and no hidden layer or one ReLU
 * layer of at most KML_DD_FAST_HIDDEN units.  Float models keep their FPU
 * path: the integer lg-to-ns conversion is up to 6% coarser than theirs.
 */
bool kml_dd_fast_compile(struct kml_model *m, struct kml_dd_fast *f)
{
	const struct kml_model_cfg *c = &m->cfg;
	const s32 *p = m->params;
	s64 acc, t;
	unsigned int j;

	if (c->n_layers < 1 || c->n_layers > 2 || c->dtype != KML_Q16 ||
	    c->out_act != KML_ACT_NONE || c->sizes[0] != KML_DD_NR_FEATURES ||
	    c->sizes[c->n_layers] != 1)
		return false;
	if (c->n_layers == 2 && (c->hidden_act != KML_ACT_RELU ||
				 c->sizes[1] > KML_DD_FAST_HIDDEN))
		return false;
	memset(f, 0, sizeof(*f));
	f->hidden = c->n_layers == 2 ? c->sizes[1] : 0;
	f->frac = kml_dd_fast_frac(m, max_t(u32, f->hidden, 1));
	if (!f->frac)
		return false;
	if (!f->hidden)
		return kml_dd_fast_fold(m, p + m->w_off[0], p[m->b_off[0]],
					f->frac, f->w[0], &f->b[0],
					&f->h_max[0]);
	/* |b2| 2^16 + the units' |w2| h_max + the rounding, within 63 bits */
	acc = abs((s64)p[m->b_off[1]]) * (1LL << 16) + (1LL << 15);
	for (j = 0; j < f->hidden; j++) {
		if (!kml_dd_fast_fold(m, p + m->w_off[0] + j * KML_DD_NR_FEATURES,
				      p[m->b_off[0] + j], f->frac, f->w[j],
				      &f->b[j], &f->h_max[j]))
			return false;
		f->w2[j] = p[m->w_off[1] + j];
		if (check_mul_overflow(abs((s64)f->w2[j]), (s64)f->h_max[j], &t) ||
		    check_add_overflow(acc, t, &acc))
			return false;
	}
	f->b2 = p[m->b_off[1]];
	return true;
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_fast_compile);

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
	bool fast;
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
	fast = kml_dd_fast_compile(m, &dm->f);
	dm->fast = fast;
	/* from here another publisher may replace and free dm */
	kml_dd_model_replace(dm);
	kml_dd_stat_inc(KML_DD_S_UPDATES_APPLIED);
	if (fast)
		kml_dd_stat_inc(KML_DD_S_UPDATES_COMPILED);
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

#if KML_HAS_KTRAINER
/*
 * Save the model in use into @buf if it is of @dtype, for the kernel
 * trainer to warm-start from.  The swap lock keeps it from being replaced
 * (and freed) while it is saved.  Returns its length, 0 when no model of
 * @dtype is in use, or a negative errno.
 */
long kml_dd_model_save(void *buf, size_t cap, u32 dtype)
{
	struct kml_model_cfg cfg;
	struct kml_dd_model *dm;
	long len = 0;

	mutex_lock(&kml_dd.model_lock);
	dm = rcu_dereference_protected(kml_dd.model,
				       lockdep_is_held(&kml_dd.model_lock));
	if (dm && !kml_model_get_cfg(dm->model, &cfg) && cfg.dtype == dtype)
		len = kml_model_save(dm->model, buf, cap);
	mutex_unlock(&kml_dd.model_lock);
	return len;
}
#endif

/* ------------------------------------------------------------ the ring */

/*
 * A consumer that wrote over the shared ring leaves it broken (pushes fail
 * fast, counted as dropped).  When that consumer is gone, make the ring
 * anew: first wait until no push that began before it broke is running.
 * Process context; the caller owns the ring (no consumer is running).
 */
static void kml_dd_ring_repair(void)
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

/*
 * The ring has one consumer at a time, since popping is single-consumer:
 * a user mapping of /dev/kml or the kernel trainer.  Claim it before
 * mapping or popping it.  Returns -ENODEV without a ring, -EBUSY while
 * another consumer holds it.  A consumer before this one may have left the
 * ring broken, so a claim repairs it (which may wait for an RCU grace
 * period).  Process context.
 */
int kml_dd_ring_claim(enum kml_dd_owner owner)
{
	if (owner != KML_DD_OWNER_USER && owner != KML_DD_OWNER_KERNEL)
		return -EINVAL;
	if (!kml_dd.ring_mem)
		return -ENODEV;
	if (atomic_cmpxchg(&kml_dd.ring_owner, KML_DD_OWNER_NONE,
			   owner) != KML_DD_OWNER_NONE)
		return -EBUSY;
	/* no consumer runs: check the positions and counters it could write */
	kml_ring_check(&kml_dd.ring);
	kml_dd_ring_repair();
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_ring_claim);

/*
 * Give the ring up, once the consumer has stopped popping (for a mapping:
 * at the file's release, after munmap()).  Repair it first, so that a
 * consumer that broke it does not leave producers dropping every sample
 * until the next claim.  Process context.
 */
void kml_dd_ring_release(enum kml_dd_owner owner)
{
	if (kml_dd.ring_mem)
		kml_ring_check(&kml_dd.ring);
	kml_dd_ring_repair();
	WARN_ON_ONCE(atomic_cmpxchg(&kml_dd.ring_owner, owner,
				    KML_DD_OWNER_NONE) != owner);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_ring_release);

/* Pop one sample; for the owner only (0, or -EAGAIN when empty). */
int kml_dd_ring_pop(struct kml_dd_sample *s)
{
	return kml_ring_pop(&kml_dd.ring, s);
}

/* Whether producers wait for room in a full ring (ring_mode "block"). */
bool kml_dd_ring_blocks(void)
{
	return READ_ONCE(kml_dd.ring.mode) == KML_RING_BLOCK;
}

/* Bytes a consumer may map, or 0 without a ring. */
size_t kml_dd_ring_bytes(void)
{
	return kml_dd.ring_mem ? kml_dd.ring_bytes : 0;
}

/*
 * Map the ring for its owner, who has checked @vma against
 * kml_dd_ring_bytes().  Repair it first: the owner may map it again after
 * its own earlier mapping broke it, which no claim saw.
 */
int kml_dd_ring_mmap(struct vm_area_struct *vma)
{
	kml_dd_ring_repair();
	return remap_vmalloc_range(vma, kml_dd.ring_mem, 0);
}

/*
 * The kernel trainer claims the ring before its thread starts and releases
 * it after the thread stopped, so the claim is what "running" reports.
 */
int kml_dd_ktrainer_running(void)
{
	return atomic_read(&kml_dd.ring_owner) == KML_DD_OWNER_KERNEL;
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_ktrainer_running);

void kml_dd_get_info(struct kml_dev_info *info)
{
	memset(info, 0, sizeof(*info));
	info->abi_version = KML_DD_ABI_VERSION;
	info->record_size = sizeof(struct kml_dd_sample);
	info->ring_capacity = kml_dd.ring_mem ? kml_dd.ring.mask + 1 : 0;
	info->ring_mode = READ_ONCE(kml_dd.ring.mode);
	info->ring_bytes = kml_dd_ring_bytes();
	info->n_features = KML_DD_NR_FEATURES;
	info->model_generation = READ_ONCE(kml_dd.model_generation);
	info->ktrainer_running = kml_dd_ktrainer_running();
}

/* ------------------------------------------------------------ debugfs */

/* The CPUs' score histograms summed into @h ([0] met, [1] missed, zeroed). */
static void kml_dd_score_hist(u64 (*h)[KML_DD_SCORE_BUCKETS])
{
	const u64 *c;
	unsigned int o, b;
	int cpu;

	for_each_possible_cpu(cpu) {
		for (o = 0; o < 2; o++) {
			c = per_cpu_ptr(&kml_dd_counters, cpu)->score_hist[o];
			for (b = 0; b < KML_DD_SCORE_BUCKETS; b++)
				/* data_race: as in kml_dd_stat_read() */
				h[o][b] += data_race(c[b]);
		}
	}
}

/*
 * The predictions since the reset by score and outcome, each bucket as
 * "score_met_hist b b+1 n" (and score_missed_hist) so that the ROC of every
 * threshold can be read from user space; then their AUC, in ppm: -1 while
 * either outcome has none, once one has 2^31 or more, or without memory to
 * sum them in (process context, so it may sleep for it).
 */
static void kml_dd_score_show(struct seq_file *m)
{
	static const char * const names[2] = {
		"score_met_hist", "score_missed_hist"
	};
	u64 (*h)[KML_DD_SCORE_BUCKETS];
	u64 n[2] = { 0, 0 };
	unsigned int o, b;
	s64 ppm = -1;

	h = kcalloc(2, sizeof(*h), GFP_KERNEL);
	if (!h)
		goto out;
	kml_dd_score_hist(h);
	for (o = 0; o < 2; o++) {
		for (b = 0; b < KML_DD_SCORE_BUCKETS; b++) {
			n[o] += h[o][b];
			if (h[o][b])
				seq_printf(m, "%s %u %u %llu\n", names[o], b,
					   b + 1, h[o][b]);
		}
	}
	/* kml_dd_cal_auc_hist() takes fewer than 2^31 of each */
	if (n[0] && n[1] && !(n[0] >> 31) && !(n[1] >> 31))
		ppm = ((u64)kml_dd_cal_auc_hist(h[0], h[1], KML_DD_SCORE_BUCKETS) *
		       1000000) >> 20;
	kfree(h);
out:
	seq_printf(m, "auc_ppm %lld\n", ppm);
}

static int kml_dd_stats_show(struct seq_file *m, void *v)
{
	struct kml_dd_model *dm;
	unsigned int i;
	u64 n;

	seq_printf(m, "abi_version %d\n", KML_DD_ABI_VERSION);
	seq_printf(m, "model_loaded %d\n",
		   rcu_access_pointer(kml_dd.model) ? 1 : 0);
	seq_printf(m, "model_generation %llu\n",
		   READ_ONCE(kml_dd.model_generation));
	/* the model in use, and whether it runs compiled (kml_dd_fast) */
	rcu_read_lock();
	dm = rcu_dereference(kml_dd.model);
	seq_printf(m, "model_dtype %s\n", !dm ? "none" :
		   dm->dtype == KML_Q16 ? "fixed" : "float32");
	seq_printf(m, "model_compiled %d\n", dm && dm->fast);
	rcu_read_unlock();
	/*
	 * queues whose kml_mode is not off: while 0, mq-deadline's tests of
	 * the key are nops
	 */
	seq_printf(m, "queues_on %d\n", static_key_count(&kml_dd_enabled.key));
	for (i = 0; i < KML_DD_NR_STATS; i++)
		seq_printf(m, "%s %llu\n", kml_dd_stat_names[i],
			   kml_dd_stat_read(i));
	/* records popped since the reset that were pushed after it */
	n = kml_dd.ring_mem ?
		atomic64_read(&kml_dd.ring.sh->consumed.v) : 0;
	/*
	 * The count is in memory the consumer writes: until a release checks
	 * it (kml_ring_check()), show no more than were pushed.
	 */
	seq_printf(m, "ring_consumed %lld\n",
		   clamp_t(s64, (s64)n - kml_dd.consumed_base, 0,
			   (s64)kml_dd_stat_read(KML_DD_S_RING_PRODUCED)));
	seq_printf(m, "ring_capacity %u\n", kml_dd.ring_mem ? ring_capacity : 0);
	seq_printf(m, "ring_broken %d\n",
		   kml_dd.ring_mem && kml_ring_broken(&kml_dd.ring));
	seq_printf(m, "ring_mode %s\n",
		   kml_dd_ring_modes[READ_ONCE(kml_dd.ring.mode) & 1]);
	seq_printf(m, "sample_filter %s\n",
		   kml_dd_filters[READ_ONCE(kml_dd.sample_filter) & 1]);
	seq_printf(m, "policy %s\n",
		   kml_dd_policies[READ_ONCE(kml_dd_policy) & 1]);
	kml_dd_cost_show(m);
	seq_printf(m, "observe_every %u\n", READ_ONCE(kml_dd_observe_every));
	seq_printf(m, "lazy %u\n", READ_ONCE(kml_dd.lazy));
	seq_printf(m, "sample_unclaimed %u\n",
		   READ_ONCE(kml_dd.sample_unclaimed));
	seq_printf(m, "ktrainer_running %d\n", kml_dd_ktrainer_running());
	seq_printf(m, "decision_permille %u\n",
		   READ_ONCE(kml_dd.decision_permille));
	seq_printf(m, "skill_window %u\n", READ_ONCE(kml_dd.skill_window));
	seq_printf(m, "skill_window_ms %u\n", READ_ONCE(kml_dd.skill_window_ms));
	seq_printf(m, "skill_holdout_weight %u\n", KML_DD_SKILL_HOLDOUT);
	seq_printf(m, "skill_min_permille %u\n",
		   READ_ONCE(kml_dd.skill_min_permille));
	seq_printf(m, "stepped_aside %d\n", kml_dd_stepped_aside());
	kml_dd_score_show(m);
	kml_dd_hist_show(m, "inference_ns_hist", false, KML_DD_INFER_BUCKETS);
	kml_dd_hist_show(m, "issue_abs_err_us_hist", true, KML_DD_ERR_BUCKETS);
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

	if (count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	if (!sysfs_streq(buf, "reset"))
		return -EINVAL;
	kml_dd_stats_reset();
	kml_dd_skill_restart(true);
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

/*
 * The ring is allocated once, at boot: the hot path never allocates, and
 * a consumer maps the same memory for the life of the system.  /dev/kml
 * registers itself (kml_dd_dev.c), after this in link order.
 */
static int __init kml_dd_global_init(void)
{
	size_t bytes;
	int ret;

	kml_dd.skill_window_j = msecs_to_jiffies(kml_dd.skill_window_ms);
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
				    READ_ONCE(kml_dd.ring.mode));
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
	return 0;
}
late_initcall(kml_dd_global_init);
