// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: the float half of kml_dd_calib.h -- the training
 * target, the residuals the decision is calibrated on, and the permille
 * of a threshold.  Built with SSE like kml_nn.c; in the kernel every
 * function here runs between kml_fpu_begin() and kml_fpu_end(), taken by
 * the caller.
 */
#include "kml_dd_calib.h"

#define KML_DD_MAX_RESID	64.0f	/* |residual| kept, in lg units */

/* In float with KML's logf, so the kernel computes it as user space does. */
float kml_dd_lg_us(u64 ns)
{
	return kml_logf(1.0f + (float)ns * 1e-3f) / KML_DD_LN2;
}

void kml_dd_targets(const struct kml_dd_sample *s, u32 n, float *y)
{
	u32 i;

	for (i = 0; i < n; i++)
		y[i] = kml_dd_lg_us(s[i].issue_ns);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_targets);

void kml_dd_residuals(const float *yhat, const struct kml_dd_sample *s,
		      u32 n, struct kml_dd_resid *r)
{
	float d;
	u32 i;

	for (i = 0; i < n; i++) {
		d = yhat[i] - kml_dd_lg_us(s[i].deadline_ns);
		if (!(d < KML_DD_MAX_RESID))	/* also NaN */
			d = KML_DD_MAX_RESID;
		if (d < -KML_DD_MAX_RESID)
			d = -KML_DD_MAX_RESID;
		r[i].r = (s32)(d * 65536.0f);
		r[i].met = kml_dd_met(s[i].issue_ns, s[i].deadline_ns);
	}
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_residuals);

u32 kml_dd_lg_q16_to_permille(s32 thr)
{
	float p = 1000.0f * kml_expf((float)thr * (1.0f / 65536.0f) *
				     KML_DD_LN2);

	if (!(p >= 1.0f))
		return 1;
	if (p > 64000.0f)
		return 64000;
	return (u32)(p + 0.5f);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_lg_q16_to_permille);

void kml_dd_decide(const float *yhat, const u64 *deadline_ns, u32 n,
		   u32 permille, s64 *issue_ns, u8 *met)
{
	u32 i;

	for (i = 0; i < n; i++) {
		issue_ns[i] = kml_dd_lg_us_to_ns(yhat[i]);
		met[i] = kml_dd_meets(issue_ns[i], deadline_ns[i], permille);
	}
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_decide);
