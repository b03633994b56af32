/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML internals shared by the library's source files.  Not installed.
 *
 * Files built with FPU code generation (kernel): kml_math.c, kml_nn.c.
 * Their kml_f32_*() entry points must only be called inside an FPU section.
 * Everything else (this header's struct included) is integer only.
 */
#ifndef _KML_INTERNAL_H
#define _KML_INTERNAL_H

#include "kml.h"

/*
 * Normalisation leaves a feature unscaled when its variance is 0 in Q16.16:
 * at most half a unit (2^-17), as rint() rounds it (to nearest, ties to
 * even).  Such a feature is constant to the format's precision.  Both dtypes
 * use this one floor, so that a float model and its Q16.16 conversion scale
 * the same features.  A float: for FPU code only (kml_nn.c); the Q16.16 path
 * tests for a variance of 0 units.
 */
#define KML_NORM_VAR_FLOOR	(0.5f / KML_Q16_ONE)

/* Training state: one allocation by kml_model_train_setup(), arrays follow. */
struct kml_train {
	struct kml_train_cfg tcfg;
	void *grads;			/* F32: float[n]; Q16: s64 Q32[n] */
	void *opt1;			/* SGD velocity / Adam m: F32 float, Q16 s64 Q32 */
	void *opt2;			/* Adam v: F32 float, Q16 s64 Q32 */
	void *acts[KML_MAX_LAYERS + 1];	/* post-activation, acts[0] = normalised x */
	void *pre[KML_MAX_LAYERS + 1];	/* pre-activation of layer l (1-based) */
	void *dbuf[2];			/* max_batch * max_width each */
	u32 fwd_n;			/* rows of the last forward, 0 = none */
	u32 steps;
	s64 b1t, b2t;			/* Q16 Adam: beta1^t, beta2^t in Q30 */
	u32 fstate[12];			/* float optimiser state, owned by kml_nn.c */
};

/* Inference state: one allocation, parameters and statistics follow. */
struct kml_model {
	struct kml_model_cfg cfg;
	u32 n_params;
	u32 max_width;
	u32 w_off[KML_MAX_LAYERS];	/* element offsets into params */
	u32 b_off[KML_MAX_LAYERS];
	size_t bytes;			/* inference block (this struct included) */
	size_t train_bytes;		/* training block, 0 before train_setup */

	void *params;			/* n_params dtype elements */
	u64 norm_count;
	void *norm_mean;		/* n_in dtype elements */
	void *norm_var;			/* n_in: float (F32) or s64 Q16 (Q16) */
	void *norm_scale;		/* n_in dtype elements: 1 / std */

	u32 fpu_rows;			/* predicted rows per FPU section */
	struct kml_train *tr;		/* NULL before kml_model_train_setup() */
};

/*
 * Float work per FPU section: about KML_FPU_MACS multiply-adds of forward
 * work (a training row costs ~3x a predicted one) and KML_FPU_PARAMS
 * optimiser updates, i.e. some microseconds to a few tens of microseconds,
 * whatever the batch size.  Batches are split into chunks of rows.
 */
#define KML_FPU_MACS	16384
#define KML_FPU_PARAMS	2048

static inline u32 kml_in_dim(const struct kml_model *m, u32 l)
{
	return m->cfg.sizes[l];
}

static inline u32 kml_out_dim(const struct kml_model *m)
{
	return m->cfg.sizes[m->cfg.n_layers];
}

static inline u32 kml_layer_act(const struct kml_model *m, u32 l)
{
	return l == m->cfg.n_layers ? m->cfg.out_act : m->cfg.hidden_act;
}

int kml_cfg_check(const struct kml_model_cfg *c);
int kml_model_alloc(const struct kml_model_cfg *cfg, struct kml_model **out);

/* 64-bit division that also links on 32-bit kernels */
s64 kml_div_s64(s64 a, s64 b);

/* float path (kml_nn.c, kml_math.c): call inside an FPU section */
void kml_math_apply_f32(u32 fn, const float *x, float *y, u32 n);
void kml_f32_from_q16(float *dst, const s32 *src, u32 n);
void kml_f32_norm_update(struct kml_model *m, const float *x, u32 n);
void kml_f32_norm_scale(struct kml_model *m);
void kml_f32_predict(struct kml_model *m, const float *x, u32 n, float *y);
void kml_f32_train_init(struct kml_model *m);
void kml_f32_forward(struct kml_model *m, const float *x, const float *y,
		     u32 row0, u32 rows);
void kml_f32_backward(struct kml_model *m, const float *y, u32 row0,
		      u32 rows, u32 total);
void kml_f32_loss_reset(struct kml_model *m);
void kml_f32_loss_get(struct kml_model *m, u32 rows, float *loss);
void kml_f32_step_begin(struct kml_model *m);
void kml_f32_step_range(struct kml_model *m, u32 i0, u32 cnt);

/* fixed-point path (kml_nn_q16.c): no FPU */
void kml_q16_norm_update(struct kml_model *m, const s32 *x, u32 n);
void kml_q16_norm_scale(struct kml_model *m);
void kml_q16_predict(struct kml_model *m, const s32 *x, u32 n, s32 *y);
void kml_q16_forward(struct kml_model *m, const s32 *x, u32 n,
		     const s32 *y, s32 *loss);
void kml_q16_backward(struct kml_model *m, const s32 *y, u32 n);
void kml_q16_step(struct kml_model *m);
s32 kml_q16_log(s32 x);

static inline s32 kml_sat32(s64 v)
{
	if (v > S32_MAX)
		return S32_MAX;
	if (v < S32_MIN)
		return S32_MIN;
	return (s32)v;
}

/* round-to-nearest arithmetic right shift, 1 <= s <= 62 */
static inline s64 kml_rshift_round(s64 v, u32 s)
{
	return (v + (1LL << (s - 1))) >> s;
}

#endif /* _KML_INTERNAL_H */
