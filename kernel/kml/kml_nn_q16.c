// SPDX-License-Identifier: GPL-2.0
/*
 * Q16.16 model path: normalisation, inference, loss, backward, SGD (with
 * momentum) and Adam in integer arithmetic only.  No FPU section needed.
 * Without CONFIG_KML_TRAIN only what a prediction needs.
 *
 * Gradients are accumulated as Q32.32 in s64; the SGD velocity is Q32.32,
 * the learning rate Q8.24, parameters Q16.16 (rounded to nearest).
 */
#include "kml_internal.h"

void kml_q16_norm_scale(struct kml_model *m)
{
	const s64 *var = m->norm_var;
	s32 *scale = m->norm_scale;
	u32 i, sd;
	s64 v;

	for (i = 0; i < m->cfg.sizes[0]; i++) {
		/* 0 in Q16.16: unscaled, as KML_NORM_VAR_FLOOR says */
		if (var[i] < 1) {
			scale[i] = KML_Q16_ONE;
			continue;
		}
		/* std = sqrt(var << 16) in Q16, >= 256; clamped within u64 */
		v = var[i] < KML_Q16_VAR_MAX ? var[i] : KML_Q16_VAR_MAX;
		sd = kml_isqrt64((u64)v << 16);
		scale[i] = kml_sat32(kml_div_s64(1LL << 32, sd));
	}
}

#if KML_HAS_TRAIN
/* a / b rounded to nearest, b > 0: keeps the running statistics unbiased */
static s64 kml_div_round(s64 a, s64 b)
{
	return a >= 0 ? kml_div_s64(a + b / 2, b) : -kml_div_s64(-a + b / 2, b);
}

void kml_q16_norm_update(struct kml_model *m, const s32 *x, u32 n)
{
	u32 n_in = m->cfg.sizes[0], r, i;
	s32 *mean = m->norm_mean;
	s64 *var = m->norm_var;
	s64 d0, d1, cnt;

	for (r = 0; r < n; r++) {
		m->norm_count++;
		cnt = (s64)m->norm_count;
		for (i = 0; i < n_in; i++) {
			s32 v = x[(size_t)r * n_in + i];

			d0 = (s64)v - mean[i];
			mean[i] = kml_sat32(mean[i] + kml_div_round(d0, cnt));
			d1 = (s64)v - mean[i];
			var[i] += kml_div_round(kml_rshift_round(d0 * d1, 16) - var[i],
					      cnt);
		}
	}
	kml_q16_norm_scale(m);
}
#endif

static void kml_q16_normalise(const struct kml_model *m, s32 *out,
			      const s32 *x, u32 n)
{
	const s32 *mean = m->norm_mean, *scale = m->norm_scale;
	u32 n_in = m->cfg.sizes[0], r, i;
	size_t k;

	for (r = 0; r < n; r++) {
		for (i = 0; i < n_in; i++) {
			k = (size_t)r * n_in + i;
			out[k] = kml_sat32(kml_rshift_round(((s64)x[k] - mean[i]) *
							    scale[i], 16));
		}
	}
}

void kml_q16_predict(struct kml_model *m, const s32 *x, u32 n, s32 *y)
{
	const s32 *p = m->params;
	u32 L = m->cfg.n_layers, n_in = m->cfg.sizes[0], r, l;
	u32 n_out = kml_out_dim(m);
	s32 buf0[KML_MAX_WIDTH], buf1[KML_MAX_WIDTH];
	s32 *a = buf0, *z = buf1, *t;
	const s32 *in;

	for (r = 0; r < n; r++) {
		in = x + (size_t)r * n_in;
		if (m->cfg.norm != KML_NORM_NONE) {
			kml_q16_normalise(m, a, in, 1);
			in = a;
		}
		for (l = 1; l <= L; l++) {
			s32 *out = l == L ? y + (size_t)r * n_out : z;

			kml_linear_forward_q16(out, in, p + m->w_off[l - 1],
					       p + m->b_off[l - 1], 1,
					       m->cfg.sizes[l - 1],
					       m->cfg.sizes[l]);
			kml_act_forward_q16(kml_layer_act(m, l), out, out,
					    m->cfg.sizes[l]);
			in = out;
			t = a;
			a = z;
			z = t;
		}
	}
}

#if KML_HAS_TRAIN
static s32 kml_q16_pos_weight(const struct kml_model *m)
{
	return m->tr->tcfg.pos_weight ?
		kml_sat32(kml_rshift_round(m->tr->tcfg.pos_weight, 16)) :
		KML_Q16_ONE;
}

/* An MSE sum that kml_rshift_round() of its mean cannot overflow. */
#define KML_Q16_LOSS_SUM_MAX	(S64_MAX >> 1)

void kml_q16_forward(struct kml_model *m, const s32 *x, u32 n, const s32 *y,
		     s32 *loss)
{
	const s32 *p = m->params;
	u32 L = m->cfg.n_layers, cnt, l, i;
	const s32 *out;
	s64 acc = 0, d;
	s32 q, w;

	if (m->cfg.norm != KML_NORM_NONE)
		kml_q16_normalise(m, m->tr->acts[0], x, n);
	else
		memcpy(m->tr->acts[0], x, (size_t)n * m->cfg.sizes[0] * sizeof(s32));
	for (l = 1; l <= L; l++) {
		kml_linear_forward_q16(m->tr->pre[l], m->tr->acts[l - 1],
				       p + m->w_off[l - 1], p + m->b_off[l - 1],
				       n, m->cfg.sizes[l - 1], m->cfg.sizes[l]);
		kml_act_forward_q16(kml_layer_act(m, l), m->tr->acts[l], m->tr->pre[l],
				    n * m->cfg.sizes[l]);
	}
	m->tr->fwd_n = n;
	if (!loss || !y)
		return;
	out = m->tr->acts[L];
	cnt = n * kml_out_dim(m);
	w = kml_q16_pos_weight(m);
	for (i = 0; i < cnt; i++) {
		if (m->tr->tcfg.loss == KML_LOSS_BCE) {
			q = out[i] < 1 ? 1 : out[i];
			q = q > KML_Q16_ONE - 1 ? KML_Q16_ONE - 1 : q;
			/* Q16 * Q16 terms, summed in Q32 */
			acc -= (s64)kml_q16_mul(w, y[i]) * kml_q16_log(q) +
			       (s64)(KML_Q16_ONE - y[i]) *
			       kml_q16_log(KML_Q16_ONE - q);
		} else {
			/*
			 * |d| reaches 2^32 in a run that diverges, where d * d
			 * wraps: cap it and the sum.  With under 2^15 outputs
			 * in the batch the loss has saturated to S32_MAX before
			 * either cap is reached, so the caps change no value.
			 */
			d = (s64)out[i] - y[i];
			if (d < 0)
				d = -d;
			if (d > S32_MAX)
				d = S32_MAX;
			acc = acc > KML_Q16_LOSS_SUM_MAX - d * d ?
			      KML_Q16_LOSS_SUM_MAX : acc + d * d;
		}
	}
	*loss = kml_sat32(kml_rshift_round(kml_div_s64(acc, cnt ? cnt : 1), 16));
}

void kml_q16_backward(struct kml_model *m, const s32 *y, u32 n)
{
	const s32 *p = m->params;
	s32 *d = m->tr->dbuf[0], *dz = m->tr->dbuf[1];
	s64 *g = m->tr->grads;
	u32 L = m->cfg.n_layers, cnt = n * kml_out_dim(m), l, i;
	const s32 *out = m->tr->acts[L];
	s32 w = kml_q16_pos_weight(m);
	s64 t;

	for (i = 0; i < cnt; i++) {
		if (m->tr->tcfg.loss == KML_LOSS_BCE) {
			/* fused sigmoid + BCE: p (w y + 1 - y) - w y */
			s64 wy = kml_q16_mul(w, y[i]);

			t = kml_rshift_round((s64)out[i] *
					     (wy + KML_Q16_ONE - y[i]), 16) - wy;
		} else {
			t = 2 * ((s64)out[i] - y[i]);
		}
		d[i] = kml_sat32(kml_div_s64(t, cnt));
	}
	if (m->tr->tcfg.loss == KML_LOSS_BCE)
		memcpy(dz, d, cnt * sizeof(s32));
	else
		kml_act_backward_q16(m->cfg.out_act, dz, d, m->tr->pre[L], out, cnt);
	for (l = L; l >= 1; l--) {
		u32 in_dim = m->cfg.sizes[l - 1], out_dim = m->cfg.sizes[l];

		kml_linear_backward_q16(l > 1 ? d : NULL, g + m->w_off[l - 1],
					g + m->b_off[l - 1], dz, m->tr->acts[l - 1],
					p + m->w_off[l - 1], n, in_dim, out_dim);
		if (l > 1)
			kml_act_backward_q16(m->cfg.hidden_act, dz, d,
					     m->tr->pre[l - 1], m->tr->acts[l - 1],
					     n * in_dim);
	}
}

#define KML_VEL_MAX (1LL << 46)
#define KML_ADAM_B1 3865470566LL	/* 0.9 in Q32 */
#define KML_ADAM_B2 4290672329LL	/* 0.999 in Q32 */
#define KML_ADAM_GMAX (32LL << 32)	/* gradients clamped to +-32 */
#define KML_ADAM_RMAX (64LL << 16)	/* |m^ / (sqrt(v^) + eps)| <= 64 */

static s64 kml_clamp64(s64 v, s64 lim)
{
	return v > lim ? lim : (v < -lim ? -lim : v);
}

/*
 * Adam in integers.  Moments are Q32 (s64); with gradients clamped to +-32
 * every product below fits in 63 bits: m (<= 2^37) and v (<= 2^42) are
 * updated with (1 - beta) in Q24, the bias corrections 1 - beta^t are kept
 * in Q30 and used in Q20, sqrt(v^) is an integer square root in Q16, and
 * eps has a floor of one Q16 unit (1.5e-5).
 */
static void kml_q16_adam(struct kml_model *m)
{
	struct kml_train *t = m->tr;
	s32 *p = m->params;
	s64 *g = t->grads, *m1 = t->opt1, *m2 = t->opt2;
	s64 b1 = t->tcfg.beta1 ? t->tcfg.beta1 : KML_ADAM_B1;
	s64 b2 = t->tcfg.beta2 ? t->tcfg.beta2 : KML_ADAM_B2;
	s64 k1 = (KML_Q32_ONE - b1) >> 8, k2 = (KML_Q32_ONE - b2) >> 8;
	s64 eps = t->tcfg.eps >> 16, lr = t->tcfg.lr >> 8;
	s64 c1, c2, gi, g24, mh, vh, r;
	u32 i;

	if (eps < 1)
		eps = 1;
	t->b1t = kml_rshift_round(t->b1t * (b1 >> 2), 30);
	t->b2t = kml_rshift_round(t->b2t * (b2 >> 2), 30);
	c1 = ((1LL << 30) - t->b1t) >> 10;		/* Q20 */
	c2 = ((1LL << 30) - t->b2t) >> 10;
	if (c1 < 1)
		c1 = 1;
	if (c2 < 1)
		c2 = 1;
	for (i = 0; i < m->n_params; i++) {
		gi = kml_clamp64(g[i], KML_ADAM_GMAX);
		m1[i] += kml_rshift_round((gi - m1[i]) * k1, 24);
		g24 = kml_rshift_round(gi, 8);
		m2[i] += kml_rshift_round((kml_rshift_round(g24 * g24, 16) -
					   m2[i]) * k2, 24);
		mh = kml_div_s64(m1[i] * (1LL << 20), c1);		/* Q32 */
		vh = kml_div_s64(m2[i] * (1LL << 20), c2);		/* Q32 */
		r = kml_div_s64(mh, (s64)kml_isqrt64(vh > 0 ? vh : 0) + eps);
		r = kml_clamp64(r, KML_ADAM_RMAX);			/* Q16 */
		p[i] = kml_sat32((s64)p[i] - kml_rshift_round(r * lr, 24));
		g[i] = 0;
	}
}

/*
 * Keep every layer's rows within what kml_linear_forward_q16() sums in s64
 * and the loader takes (kml_format.c, kml_q16_rows_fit()), and its columns
 * within what the backward pass sums for the input gradient: each weight
 * of a layer at most S32_MAX / max(in_dim, out_dim) in magnitude, so a
 * row's or a column's sum of |w| stays under 2^31 and, times values of at
 * most 2^31 plus a bias of at most 2^47, under 2^63.  A step that diverges
 * saturates there instead of at S32_MAX, where three weights of a row
 * wrap the sum and the model saved cannot be loaded again.
 */
static void kml_q16_weights_bound(struct kml_model *m)
{
	s32 *p = m->params;
	u32 l, i, n, in, out;
	s32 lim;

	for (l = 1; l <= m->cfg.n_layers; l++) {
		in = m->cfg.sizes[l - 1];
		out = m->cfg.sizes[l];
		lim = S32_MAX / (in > out ? in : out);
		n = in * out;
		for (i = m->w_off[l - 1]; i < m->w_off[l - 1] + n; i++) {
			if (p[i] > lim)
				p[i] = lim;
			else if (p[i] < -lim)
				p[i] = -lim;
		}
	}
}

void kml_q16_step(struct kml_model *m)
{
	s32 *p = m->params;
	s64 *g = m->tr->grads, *v = m->tr->opt1;
	s64 lr = m->tr->tcfg.lr >> 8;		/* Q24 */
	s64 mu = m->tr->tcfg.momentum >> 16;	/* Q16 */
	s64 upd;
	u32 i;

	if (m->tr->tcfg.optimizer == KML_OPT_ADAM) {
		kml_q16_adam(m);
		kml_q16_weights_bound(m);
		return;
	}
	for (i = 0; i < m->n_params; i++) {
		v[i] = kml_rshift_round(mu * v[i], 16) + g[i];
		if (v[i] > KML_VEL_MAX)
			v[i] = KML_VEL_MAX;
		if (v[i] < -KML_VEL_MAX)
			v[i] = -KML_VEL_MAX;
		upd = kml_rshift_round(lr * (v[i] >> 8), 32);
		p[i] = kml_sat32((s64)p[i] - upd);
		g[i] = 0;
	}
	kml_q16_weights_bound(m);
}
#endif /* KML_HAS_TRAIN */
