/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML for mq-deadline: the deadline model's training target and the
 * calibration of its meet/miss decision, defined once for the three
 * trainers -- the kernel trainer (kml_ktrain.c), kmlctl train and kmlbench
 * train (through libkml.so) -- so the same samples give the same targets
 * and the same threshold in all three.
 *
 *   target     y = lg(issue us) = log2(1 + issue_ns / 1000), float
 *   label      met = issue_ns <= deadline_ns (the sample's met field)
 *   residual   r = y_hat - lg(deadline us), Q16.16, within +-64;
 *              a NaN prediction gives +64 (a predicted miss)
 *   decision   "meet" when r <= thr, which the hot path applies as
 *              decision_permille = 1000 * 2^thr: its own test, predicted
 *              issue time <= deadline * permille / 1000, puts the cut
 *              2^thr - 1 us (under 7 us) from that of r <= thr
 *   threshold  the one that maximises balanced accuracy (the mean recall
 *              of "met" and "missed", which class imbalance cannot game:
 *              always answering "meet" scores 0.5) on a set of residuals
 *              (kml_dd_cal_fit()); none while a class has fewer than
 *              KML_DD_CAL_MIN_CLASS residuals or no split beats 0.5 (the
 *              caller keeps its previous threshold)
 *   AUC        of the residuals as a "miss" score, threshold-free, beside
 *              it (the ranking quality of the model)
 *   inverse    a prediction back to an issue time in ns:
 *              kml_dd_lg_us_to_ns() (float models) and
 *              kml_dd_lg_q16_to_ns() (Q16 models), and the call on it,
 *              kml_dd_meets(); the kernel's hooks, kmlctl's and kmlbench
 *              train's scoring all use these
 *
 * kml_dd_calib.c is the integer half (callable anywhere, sleeps never);
 * kml_dd_calib_fpu.c the float half: in the kernel, call it only between
 * kml_fpu_begin() and kml_fpu_end().
 */
#ifndef _KML_DD_CALIB_H
#define _KML_DD_CALIB_H

#include "kml.h"
#include "kml_iosched_uapi.h"

/*
 * Acting on a predicted miss changes its outcome, so the skill window
 * (kml_dd.h) and the calibration window leave the requests active mode
 * acted on out (KML_DD_SAMPLE_STEERED, KML_DD_SAMPLE_URGENT).  Left at
 * that, they would keep only the misses the model did not predict, and any
 * model would look no better than the baseline.  So one steering
 * prediction of a miss in KML_DD_SKILL_HOLDOUT is not acted on
 * (KML_DD_SAMPLE_HOLDOUT) and counts KML_DD_SKILL_HOLDOUT times, for
 * itself and the ones that were.
 */
#define KML_DD_SKILL_HOLDOUT	8
#define KML_DD_SAMPLE_ACTED	(KML_DD_SAMPLE_URGENT | KML_DD_SAMPLE_STEERED)

#define KML_DD_CAL_WINDOW	2048	/* residuals a trainer calibrates on */
#define KML_DD_CAL_MIN_CLASS	32	/* fewer met or missed: no calibration */
#define KML_DD_CAL_MAX_LG	(3 << 16)	/* thresholds: a factor 8 either way */
#define KML_DD_LN2		0.6931471805599453f
#define KML_DD_MAX_LG		40	/* lg(issue us) saturates: 12 days */

/*
 * The trainers' fresh MLP (kmlctl train, the kernel trainer): the
 * features, KML_DD_HIDDEN ReLU units, one linear output.  Publishing
 * Q16.16 copies (kmlctl --publish-dtype fixed, ktrainer_publish_q16),
 * KML_DD_FAST_HIDDEN units: the widest model mq-deadline compiles into
 * integer dot products (kml_dd.h, struct kml_dd_fast): about a thousand
 * instructions a prediction, where a 14-16-1 on the library's
 * layer-by-layer path takes about three thousand.
 */
#define KML_DD_HIDDEN		16
#define KML_DD_FAST_HIDDEN	8

/*
 * The trainers (kmlctl train, the kernel trainer) train on a batch once it
 * is full or once its oldest sample has waited this long since the trainer
 * took it off the ring (kmlctl's consumer into its buffer, the kernel
 * trainer into its batch): fresh enough to follow a changed load, long
 * enough that a slow device's batches are not of a sample or two.
 */
#define KML_DD_BATCH_WAIT_MS	1000

/*
 * A prediction's score in the statistics' histograms (their AUC, kml_dd.h;
 * kmlctl calibrate): its residual lg(predicted issue us) - lg(deadline us),
 * the score the calibration ranks (below), in eighths of a lg unit, 64
 * buckets either side of the deadline (the outer ones take everything
 * beyond).
 */
#define KML_DD_SCORE_BUCKETS 128
#define KML_DD_SCORE_SHIFT 13

/* The score bucket of a residual @r (Q16.16 lg units). */
static inline u8 kml_dd_score_bucket(s32 r)
{
	s32 b = KML_DD_SCORE_BUCKETS / 2 + (r >> KML_DD_SCORE_SHIFT);

	return b < 0 ? 0 : b >= KML_DD_SCORE_BUCKETS ? KML_DD_SCORE_BUCKETS - 1 : b;
}

/* Why kml_dd_cal_fit() calibrated or not (struct kml_dd_cal_result). */
enum kml_dd_cal_status {
	KML_DD_CAL_OK = 0,		/* thr is set */
	KML_DD_CAL_FEW_MET = 1,		/* fewer than KML_DD_CAL_MIN_CLASS met */
	KML_DD_CAL_FEW_MISSED = 2,	/* fewer than KML_DD_CAL_MIN_CLASS missed */
	KML_DD_CAL_NO_SKILL = 3,	/* no split beats balanced accuracy 0.5 */
};

#define KML_DD_CAL_ONE		(1U << 20)	/* 1.0 in the result's units */

/*
 * What kml_dd_cal_fit() found.  Figures are in units of 2^-20
 * (KML_DD_CAL_ONE = 1.0): balanced accuracy and accuracy of the best
 * split (0 when it refused for a rare class), and the AUC of r as a score
 * for "missed" (ties count half; 0 unless both classes occur).
 */
struct kml_dd_cal_result {
	s32 thr;		/* Q16.16; set only when status is OK */
	u32 status;		/* enum kml_dd_cal_status */
	u32 n_met, n_missed;
	u32 balanced;
	u32 accuracy;
	u32 auc;
	u32 reserved;
};

/* One residual and its label. */
struct kml_dd_resid {
	s32 r;		/* predicted - deadline, lg(us) in Q16.16 */
	u32 met;	/* the request met its deadline */
};

/*
 * A trainer's window: the last KML_DD_CAL_CLASS residuals of each class,
 * a ring per class ([0] missed, [1] met).  Balanced accuracy and the AUC
 * weigh each class by its own count, so holding as many misses as meets
 * changes neither's meaning; one ring of the last KML_DD_CAL_WINDOW held,
 * on average, fewer than KML_DD_CAL_MIN_CLASS misses where under 1.6% of
 * requests missed, and the trainers seldom calibrated there.  Where misses
 * are rare, the missed ring reaches back further, to residuals of older
 * models; one variant that fitted on only the misses as recent as the
 * meets did not undo a loss on a bursty load (docs/benchmarks.md, "the
 * missed ring's age, one variant tried").
 */
#define KML_DD_CAL_CLASS	(KML_DD_CAL_WINDOW / 2)
struct kml_dd_cal {
	struct kml_dd_resid r[2][KML_DD_CAL_CLASS];
	struct kml_dd_resid scratch[KML_DD_CAL_WINDOW];	/* for the fit */
	u32 n[2], pos[2];
};

/* ---- the label, the inverse and the meet/miss call, integer, inline */

/* The label: a request met its deadline when dispatched within it. */
static inline bool kml_dd_met(u64 issue_ns, u64 deadline_ns)
{
	return issue_ns <= deadline_ns;
}

/*
 * The meet/miss call: "meet" when the predicted issue time @issue_ns is at
 * most deadline * permille / 1000, in integer ns (the product rounded
 * down).  A negative @issue_ns (no prediction: the model gave NaN) is a
 * predicted miss, as kml_dd_residuals() scores it.
 */
static inline bool kml_dd_meets(s64 issue_ns, u64 deadline_ns, u32 permille)
{
	return issue_ns >= 0 &&
	       (u64)issue_ns <= mul_u64_u32_div(deadline_ns, permille, 1000);
}

/*
 * Issue time in ns of a Q16.16 prediction y = lg(issue us), integer only:
 * the inverse of the kernel's integer lg of its features (exponent, and
 * the mantissa linear, so up to 6% above 2^y), whole us, saturating at
 * y = KML_DD_MAX_LG; 0 for y <= 0.
 */
static inline s64 kml_dd_lg_q16_to_ns(s32 y)
{
	u64 n, us;

	if (y <= 0)
		return 0;
	n = (u32)y >> 16;
	if (n > KML_DD_MAX_LG)
		n = KML_DD_MAX_LG;
	us = ((u64)(65536 + ((u32)y & 0xffff)) << n) >> 16;
	return (us - 1) * 1000;
}

/*
 * Issue time in ns of a float prediction y = lg(issue us): 1000 * (2^y - 1)
 * in float with KML's expf, truncated, saturating at y = KML_DD_MAX_LG; 0
 * for y <= 0, -1 for NaN (no prediction).  Float: call it only from the
 * float objects (kml_dd_fpu.c, kml_dd_calib_fpu.c), in an FPU section.
 */
static inline s64 kml_dd_lg_us_to_ns(float y)
{
	if (y != y)
		return -1;
	if (!(y > 0.0f))
		return 0;
	if (y > (float)KML_DD_MAX_LG)
		y = KML_DD_MAX_LG;
	return (s64)((kml_expf(y * KML_DD_LN2) - 1.0f) * 1000.0f);
}

/* ---- kml_dd_calib.c: integer */

/*
 * Append the residuals @r of samples @s to the window, dropping the oldest
 * of their class: not those active mode acted on, and a holdout's
 * KML_DD_SKILL_HOLDOUT times.  @s may be NULL (samples nobody acted on).
 */
KML_API void kml_dd_cal_add(struct kml_dd_cal *c,
			    const struct kml_dd_resid *r,
			    const struct kml_dd_sample *s, u32 n);

/* kml_dd_cal_fit() on the window @c, in its scratch. */
KML_API bool kml_dd_cal_fit_window(struct kml_dd_cal *c,
				   struct kml_dd_cal_result *res);

/*
 * The threshold on @n residuals (n < 2^31): true and @res->thr (Q16.16,
 * within +-KML_DD_CAL_MAX_LG) when it calibrated; false when either class
 * has fewer than KML_DD_CAL_MIN_CLASS samples or no split has a balanced
 * accuracy above 0.5, @res->status saying which.  @res is filled either
 * way.  @scratch holds @n entries, and may be @r itself; otherwise @r is
 * not changed.  The result depends only on the multiset of @r.
 */
KML_API bool kml_dd_cal_fit(const struct kml_dd_resid *r, u32 n,
			    struct kml_dd_resid *scratch,
			    struct kml_dd_cal_result *res);

/*
 * The AUC of a score for "missed" given as two histograms over the same
 * @n buckets in the score's order, @met[] and @missed[] samples: the share
 * of (met, missed) pairs whose missed sample is in a higher bucket, a
 * shared bucket counting half; in 2^-20 units, 0 without pairs or with a
 * class of 2^31 samples or more.  The AUC kml_dd_cal_fit() reports, on
 * bucketed scores.
 */
KML_API u32 kml_dd_cal_auc_hist(const u64 *met, const u64 *missed, u32 n);

/*
 * kml_dd_cal_fit()'s rule on scores given as two histograms over @n
 * buckets in the score's order (@met[], @missed[]; the kernel's score
 * histograms: eighths of a lg unit, above): true and @split, the first
 * bucket predicted "missed", the one in [@lo, @hi] that maximises balanced
 * accuracy (ties to the one closest to the deadline, bucket @n / 2), when
 * both classes have at least KML_DD_CAL_MIN_CLASS (and fewer than 2^31)
 * and it beats 0.5; @res as kml_dd_cal_fit() fills it, but for thr.  It
 * compares exact sums of the recalls where kml_dd_cal_fit() compares them
 * floored to 2^-20, so the two may part on a near-tie.  Where no trainer
 * calibrates a model: kmlctl calibrate, on the kernel's statistics
 * (docs/kml-iosched.md).
 */
KML_API bool kml_dd_cal_fit_hist(const u64 *met, const u64 *missed, u32 n,
				 u32 lo, u32 hi, u32 *split,
				 struct kml_dd_cal_result *res);

/*
 * kml_dd_lg_q16_to_ns() and kml_dd_meets() of @n Q16 predictions @yq with
 * deadlines @deadline_ns at @permille, into @issue_ns and @met (0 or 1).
 */
KML_API void kml_dd_decide_q16(const s32 *yq, const u64 *deadline_ns, u32 n,
			       u32 permille, s64 *issue_ns, u8 *met);

/* ---- kml_dd_calib_fpu.c: float */

/* The same for float predictions @yhat: kml_dd_lg_us_to_ns(), kml_dd_meets(). */
KML_API void kml_dd_decide(const float *yhat, const u64 *deadline_ns, u32 n,
			   u32 permille, s64 *issue_ns, u8 *met);

/* log2(1 + @ns / 1000): lg(us) of an issue time (the target) or deadline. */
KML_API float kml_dd_lg_us(u64 ns);

/* The targets of @n samples. */
KML_API void kml_dd_targets(const struct kml_dd_sample *s, u32 n, float *y);

/* Residuals and labels of @n samples, given their predictions @yhat. */
KML_API void kml_dd_residuals(const float *yhat,
			      const struct kml_dd_sample *s, u32 n,
			      struct kml_dd_resid *r);

/* decision_permille of a threshold: 1000 * 2^thr, rounded, in [1, 64000]. */
KML_API u32 kml_dd_lg_q16_to_permille(s32 thr);

#endif /* _KML_DD_CALIB_H */
