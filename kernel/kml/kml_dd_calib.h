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
 *   threshold  the one that maximises the mean of accuracy and balanced
 *              accuracy on a set of residuals (kml_dd_cal_fit())
 *
 * kml_dd_calib.c is the integer half (callable anywhere, sleeps never);
 * kml_dd_calib_fpu.c the float half: in the kernel, call it only between
 * kml_fpu_begin() and kml_fpu_end().
 */
#ifndef _KML_DD_CALIB_H
#define _KML_DD_CALIB_H

#include "kml.h"
#include "kml_iosched_uapi.h"

#define KML_DD_CAL_WINDOW	2048	/* residuals a trainer calibrates on */
#define KML_DD_CAL_MIN_CLASS	32	/* fewer met or missed: no calibration */
#define KML_DD_CAL_MAX_LG	(3 << 16)	/* thresholds: a factor 8 either way */

/* One residual and its label. */
struct kml_dd_resid {
	s32 r;		/* predicted - deadline, lg(us) in Q16.16 */
	u32 met;	/* the request met its deadline */
};

/* A trainer's window: the last KML_DD_CAL_WINDOW residuals, a ring. */
struct kml_dd_cal {
	struct kml_dd_resid r[KML_DD_CAL_WINDOW];
	struct kml_dd_resid scratch[KML_DD_CAL_WINDOW];	/* for the fit */
	u32 n, pos;
};

/* ---- kml_dd_calib.c: integer */

/* Append @n residuals to the window, dropping the oldest. */
KML_API void kml_dd_cal_add(struct kml_dd_cal *c,
			    const struct kml_dd_resid *r, u32 n);

/*
 * The threshold on @n residuals: on success true and *thr (Q16.16, within
 * +-KML_DD_CAL_MAX_LG); false, *thr untouched, while either class has
 * fewer than KML_DD_CAL_MIN_CLASS samples.  @scratch holds @n entries;
 * @r is not changed.  The result depends only on the multiset of @r.
 */
KML_API bool kml_dd_cal_fit(const struct kml_dd_resid *r, u32 n,
			    struct kml_dd_resid *scratch, s32 *thr);

/* ---- kml_dd_calib_fpu.c: float */

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
