/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Float helpers of KML for mq-deadline (kml_dd_fpu.c).  Call them only
 * between kml_fpu_begin() and kml_fpu_end().
 */
#ifndef _KML_DD_FPU_H
#define _KML_DD_FPU_H

#include "kml.h"
#include "kml_iosched_uapi.h"
#include "kml_dd_calib.h"

/* Predicted issue time in ns of one request, or -1 (the model gave NaN). */
s64 kml_dd_predict_f32(struct kml_model *m, const s32 *features);

/* Rows of model inputs and targets (kml_dd_targets()) from ring samples. */
void kml_dd_samples_to_f32(const struct kml_dd_sample *s, u32 n, float *x,
			   float *y);

/*
 * Start a fresh model's output bias at the mean target of its first batch:
 * targets (lg of the issue time in us) sit around 10, and from a zero bias
 * Adam spends about a thousand steps just walking there.
 */
void kml_dd_init_output_bias(struct kml_model *m, const float *y, u32 n);

/*
 * For the decision threshold: the model's predictions for the n rows of x,
 * scored against their samples by kml_dd_residuals().  @yhat is scratch
 * for n floats.
 */
void kml_dd_deadline_residuals(struct kml_model *m, const float *x,
			       const struct kml_dd_sample *s, u32 n,
			       float *yhat, struct kml_dd_resid *r);

#endif /* _KML_DD_FPU_H */
