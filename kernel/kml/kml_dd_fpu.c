// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: the float parts.  Built with SSE like kml_nn.c, and
 * every function here runs between kml_fpu_begin() and kml_fpu_end(), taken
 * by the caller in kml_iosched.c, which itself has no float code.
 */
#include "kml_internal.h"
#include "kml_dd_fpu.h"

static float kml_dd_q16_to_f32(s32 v)
{
	return (float)v * (1.0f / 65536.0f);
}

s64 kml_dd_predict_f32(struct kml_model *m, const s32 *features)
{
	float x[KML_DD_NR_FEATURES], y;
	u32 i;

	for (i = 0; i < KML_DD_NR_FEATURES; i++)
		x[i] = kml_dd_q16_to_f32(features[i]);
	kml_model_predict_nofpu(m, x, 1, &y);
	return kml_dd_lg_us_to_ns(y);	/* -1 for NaN: no prediction */
}

/* the kernel trainer's (kml_ktrain.c) */
#if KML_HAS_KTRAINER
void kml_dd_samples_to_f32(const struct kml_dd_sample *s, u32 n, float *x,
			   float *y)
{
	u32 r, i;

	for (r = 0; r < n; r++)
		for (i = 0; i < KML_DD_NR_FEATURES; i++)
			x[r * KML_DD_NR_FEATURES + i] =
				kml_dd_q16_to_f32(s[r].features[i]);
	kml_dd_targets(s, n, y);
}

void kml_dd_init_output_bias(struct kml_model *m, const float *y, u32 n)
{
	float *params = kml_model_params(m), sum = 0.0f;
	u32 i;

	for (i = 0; i < n; i++)
		sum += y[i];
	params[kml_model_n_params(m) - 1] = sum / (float)n;
}

void kml_dd_deadline_residuals(struct kml_model *m, const float *x,
			       const struct kml_dd_sample *s, u32 n,
			       float *yhat, struct kml_dd_resid *r)
{
	kml_model_predict_nofpu(m, x, n, yhat);
	kml_dd_residuals(yhat, s, n, r);
}
#endif /* KML_HAS_KTRAINER */
