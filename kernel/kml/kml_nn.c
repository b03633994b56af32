// SPDX-License-Identifier: GPL-2.0
/*
 * Float layers, losses, optimisers and the float model path; without
 * CONFIG_KML_TRAIN only what a prediction needs.
 *
 * Built with FPU code generation enabled in the kernel: every function here
 * runs inside an FPU section (kml_fpu_begin/end), taken by the caller.
 * Nothing here allocates, sleeps or locks.
 */
#include "kml_internal.h"

#if KML_HAS_TRAIN
/* float optimiser state kept in kml_model.fstate (opaque to integer code) */
struct kml_fstate {
	float lr, momentum, beta1, beta2, eps, pos_weight, beta1_t, beta2_t;
	float loss_sum;
};

static_assert(sizeof(struct kml_fstate) <=
	      sizeof(((struct kml_train *)0)->fstate), "fstate too small");

static struct kml_fstate *kml_fs(struct kml_model *m)
{
	return (struct kml_fstate *)m->tr->fstate;
}

static float kml_q32_to_f(s64 v)
{
	return (float)v * (1.0f / 4294967296.0f);
}
#endif

/* ---------------------------------------------------------------- layers */

/* out[B][out_dim] = in[B][in_dim] . w[out_dim][in_dim]^T + b */
void kml_linear_forward(float *out, const float *in, const float *w,
			const float *b, u32 B, u32 in_dim, u32 out_dim)
{
	u32 r, o, i;

	for (r = 0; r < B; r++) {
		const float *x = in + (size_t)r * in_dim;

		for (o = 0; o < out_dim; o++) {
			const float *wr = w + (size_t)o * in_dim;
			float acc = b[o];

			for (i = 0; i < in_dim; i++)
				acc += wr[i] * x[i];
			out[(size_t)r * out_dim + o] = acc;
		}
	}
}
EXPORT_SYMBOL_GPL(kml_linear_forward);

#if KML_HAS_TRAIN
/* dw, db accumulate; din (may be NULL) is overwritten */
void kml_linear_backward(float *din, float *dw, float *db, const float *dout,
			 const float *in, const float *w, u32 B, u32 in_dim,
			 u32 out_dim)
{
	u32 r, o, i;

	for (r = 0; r < B; r++) {
		const float *x = in + (size_t)r * in_dim;
		const float *d = dout + (size_t)r * out_dim;

		for (o = 0; o < out_dim; o++) {
			float *dwr = dw + (size_t)o * in_dim;

			for (i = 0; i < in_dim; i++)
				dwr[i] += d[o] * x[i];
			db[o] += d[o];
		}
		if (!din)
			continue;
		for (i = 0; i < in_dim; i++) {
			float acc = 0.0f;

			for (o = 0; o < out_dim; o++)
				acc += w[(size_t)o * in_dim + i] * d[o];
			din[(size_t)r * in_dim + i] = acc;
		}
	}
}
EXPORT_SYMBOL_GPL(kml_linear_backward);
#endif

void kml_act_forward(u32 act, float *out, const float *in, u32 n)
{
	u32 i;

	for (i = 0; i < n; i++) {
		switch (act) {
		case KML_ACT_RELU:
			out[i] = in[i] > 0.0f ? in[i] : 0.0f;
			break;
		case KML_ACT_SIGMOID:
			out[i] = kml_sigmoidf(in[i]);
			break;
		case KML_ACT_TANH:
			out[i] = kml_tanhf(in[i]);
			break;
		default:
			out[i] = in[i];
			break;
		}
	}
}
EXPORT_SYMBOL_GPL(kml_act_forward);

#if KML_HAS_TRAIN
/* din = dout * act'(in); sigmoid and tanh use their outputs */
void kml_act_backward(u32 act, float *din, const float *dout, const float *in,
		      const float *out, u32 n)
{
	u32 i;

	for (i = 0; i < n; i++) {
		switch (act) {
		case KML_ACT_RELU:
			din[i] = in[i] > 0.0f ? dout[i] : 0.0f;
			break;
		case KML_ACT_SIGMOID:
			din[i] = dout[i] * out[i] * (1.0f - out[i]);
			break;
		case KML_ACT_TANH:
			din[i] = dout[i] * (1.0f - out[i] * out[i]);
			break;
		default:
			din[i] = dout[i];
			break;
		}
	}
}
EXPORT_SYMBOL_GPL(kml_act_backward);

/* ---------------------------------------------------------------- losses */

/* mean((pred - y)^2) over n values */
float kml_mse_forward(const float *pred, const float *y, u32 n)
{
	float acc = 0.0f, d;
	u32 i;

	for (i = 0; i < n; i++) {
		d = pred[i] - y[i];
		acc += d * d;
	}
	return n ? acc / (float)n : 0.0f;
}
EXPORT_SYMBOL_GPL(kml_mse_forward);

void kml_mse_backward(float *dpred, const float *pred, const float *y, u32 n)
{
	float k = n ? 2.0f / (float)n : 0.0f;
	u32 i;

	for (i = 0; i < n; i++)
		dpred[i] = k * (pred[i] - y[i]);
}
EXPORT_SYMBOL_GPL(kml_mse_backward);

#define KML_BCE_EPS 1e-7f

static float kml_clampp(float p)
{
	if (p < KML_BCE_EPS)
		return KML_BCE_EPS;
	if (p > 1.0f - KML_BCE_EPS)
		return 1.0f - KML_BCE_EPS;
	return p;
}

/* mean(-(w y log p + (1 - y) log(1 - p))), p clamped to [1e-7, 1 - 1e-7] */
float kml_bce_forward(const float *p, const float *y, u32 n, float pos_weight)
{
	float acc = 0.0f, q;
	u32 i;

	for (i = 0; i < n; i++) {
		q = kml_clampp(p[i]);
		acc -= pos_weight * y[i] * kml_logf(q) +
		       (1.0f - y[i]) * kml_logf(1.0f - q);
	}
	return n ? acc / (float)n : 0.0f;
}
EXPORT_SYMBOL_GPL(kml_bce_forward);

void kml_bce_backward(float *dp, const float *p, const float *y, u32 n,
		      float pos_weight)
{
	float inv = n ? 1.0f / (float)n : 0.0f, q;
	u32 i;

	for (i = 0; i < n; i++) {
		q = kml_clampp(p[i]);
		dp[i] = inv * (-pos_weight * y[i] / q + (1.0f - y[i]) / (1.0f - q));
	}
}
EXPORT_SYMBOL_GPL(kml_bce_backward);
#endif

/* ---------------------------------------------------------------- model */

void kml_f32_from_q16(float *dst, const s32 *src, u32 n)
{
	u32 i;

	for (i = 0; i < n; i++)
		dst[i] = (float)src[i] * (1.0f / 65536.0f);
}

void kml_f32_norm_scale(struct kml_model *m)
{
	const float *var = m->norm_var;
	float *scale = m->norm_scale;
	u32 i;

	for (i = 0; i < m->cfg.sizes[0]; i++)
		scale[i] = var[i] > KML_NORM_VAR_FLOOR ?
			   1.0f / kml_sqrtf(var[i]) : 1.0f;
}

#if KML_HAS_TRAIN
/* Welford: running mean and (population) variance */
void kml_f32_norm_update(struct kml_model *m, const float *x, u32 n)
{
	u32 n_in = m->cfg.sizes[0], r, i;
	float *mean = m->norm_mean, *var = m->norm_var;
	float inv, d0;

	for (r = 0; r < n; r++) {
		m->norm_count++;
		inv = 1.0f / (float)m->norm_count;
		for (i = 0; i < n_in; i++) {
			d0 = x[(size_t)r * n_in + i] - mean[i];
			mean[i] += d0 * inv;
			var[i] += (d0 * (x[(size_t)r * n_in + i] - mean[i]) -
				   var[i]) * inv;
		}
	}
	kml_f32_norm_scale(m);
}
#endif

static void kml_f32_normalise(const struct kml_model *m, float *out,
			      const float *x, u32 n)
{
	const float *mean = m->norm_mean, *scale = m->norm_scale;
	u32 n_in = m->cfg.sizes[0], r, i;

	for (r = 0; r < n; r++)
		for (i = 0; i < n_in; i++)
			out[(size_t)r * n_in + i] =
				(x[(size_t)r * n_in + i] - mean[i]) * scale[i];
}

void kml_f32_predict(struct kml_model *m, const float *x, u32 n, float *y)
{
	const float *p = m->params;
	u32 L = m->cfg.n_layers, n_in = m->cfg.sizes[0], r, l;
	u32 n_out = kml_out_dim(m);
	float buf0[KML_MAX_WIDTH], buf1[KML_MAX_WIDTH];
	float *a = buf0, *z = buf1, *t;
	const float *in;

	for (r = 0; r < n; r++) {
		in = x + (size_t)r * n_in;
		if (m->cfg.norm != KML_NORM_NONE) {
			kml_f32_normalise(m, a, in, 1);
			in = a;
		}
		for (l = 1; l <= L; l++) {
			float *out = l == L ? y + (size_t)r * n_out : z;

			kml_linear_forward(out, in, p + m->w_off[l - 1],
					   p + m->b_off[l - 1], 1,
					   m->cfg.sizes[l - 1], m->cfg.sizes[l]);
			kml_act_forward(kml_layer_act(m, l), out, out,
					m->cfg.sizes[l]);
			in = out;
			t = a;
			a = z;
			z = t;
		}
	}
}

#if KML_HAS_TRAIN
void kml_f32_train_init(struct kml_model *m)
{
	struct kml_fstate *fs = kml_fs(m);
	const struct kml_train_cfg *c = &m->tr->tcfg;

	fs->lr = kml_q32_to_f(c->lr);
	fs->momentum = kml_q32_to_f(c->momentum);
	fs->beta1 = c->beta1 ? kml_q32_to_f(c->beta1) : 0.9f;
	fs->beta2 = c->beta2 ? kml_q32_to_f(c->beta2) : 0.999f;
	fs->eps = c->eps ? kml_q32_to_f(c->eps) : 1e-8f;
	fs->pos_weight = c->pos_weight ? kml_q32_to_f(c->pos_weight) : 1.0f;
	fs->beta1_t = 1.0f;
	fs->beta2_t = 1.0f;
}

/*
 * Training forward for rows [row0, row0 + rows) of a batch (x and y point at
 * row 0): activations are kept at their row offsets for the backward pass;
 * with targets, the rows' summed loss is added to the running loss sum.
 * Callers split a batch into chunks to keep each FPU section short.
 */
void kml_f32_forward(struct kml_model *m, const float *x, const float *y,
		     u32 row0, u32 rows)
{
	const float *p = m->params;
	u32 L = m->cfg.n_layers, n_out = kml_out_dim(m), l;
	float *a0 = (float *)m->tr->acts[0] + (size_t)row0 * m->cfg.sizes[0];
	float *in, *pre, *out;

	x += (size_t)row0 * m->cfg.sizes[0];
	if (m->cfg.norm != KML_NORM_NONE)
		kml_f32_normalise(m, a0, x, rows);
	else
		memcpy(a0, x, (size_t)rows * m->cfg.sizes[0] * sizeof(float));
	in = a0;
	for (l = 1; l <= L; l++) {
		pre = (float *)m->tr->pre[l] + (size_t)row0 * m->cfg.sizes[l];
		out = (float *)m->tr->acts[l] + (size_t)row0 * m->cfg.sizes[l];
		kml_linear_forward(pre, in, p + m->w_off[l - 1],
				   p + m->b_off[l - 1], rows, m->cfg.sizes[l - 1],
				   m->cfg.sizes[l]);
		kml_act_forward(kml_layer_act(m, l), out, pre,
				rows * m->cfg.sizes[l]);
		in = out;
	}
	if (!y)
		return;
	y += (size_t)row0 * n_out;
	if (m->tr->tcfg.loss == KML_LOSS_BCE)
		kml_fs(m)->loss_sum += kml_bce_forward(in, y, rows * n_out,
						       kml_fs(m)->pos_weight) *
				       (float)(rows * n_out);
	else
		kml_fs(m)->loss_sum += kml_mse_forward(in, y, rows * n_out) *
				       (float)(rows * n_out);
}

void kml_f32_loss_reset(struct kml_model *m)
{
	kml_fs(m)->loss_sum = 0.0f;
}

/* mean loss over @rows rows since the last reset */
void kml_f32_loss_get(struct kml_model *m, u32 rows, float *loss)
{
	u32 cnt = rows * kml_out_dim(m);

	*loss = cnt ? kml_fs(m)->loss_sum / (float)cnt : 0.0f;
}

/*
 * Backward for rows [row0, row0 + rows) of a batch of @total rows whose
 * forward is done: the loss is the mean over the whole batch, so gradients
 * are scaled by 1 / (total * outputs) and accumulate across chunks.
 * BCE always comes with a sigmoid output (kml_model_train_setup checks).
 */
void kml_f32_backward(struct kml_model *m, const float *y, u32 row0,
		      u32 rows, u32 total)
{
	const float *p = m->params;
	float *g = m->tr->grads, *d = m->tr->dbuf[0], *dz = m->tr->dbuf[1];
	u32 L = m->cfg.n_layers, n_out = kml_out_dim(m), l, i;
	u32 cnt = rows * n_out;
	const float *out = (float *)m->tr->acts[L] + (size_t)row0 * n_out;
	const float *pre = (float *)m->tr->pre[L] + (size_t)row0 * n_out;
	float w = kml_fs(m)->pos_weight, inv = 1.0f / (float)(total * n_out);

	y += (size_t)row0 * n_out;
	if (m->tr->tcfg.loss == KML_LOSS_BCE) {
		/* fused sigmoid + BCE: dL/dz = p (w y + 1 - y) - w y */
		for (i = 0; i < cnt; i++)
			dz[i] = (out[i] * (w * y[i] + 1.0f - y[i]) - w * y[i]) * inv;
	} else {
		for (i = 0; i < cnt; i++)
			d[i] = 2.0f * (out[i] - y[i]) * inv;
		kml_act_backward(m->cfg.out_act, dz, d, pre, out, cnt);
	}
	for (l = L; l >= 1; l--) {
		u32 in_dim = m->cfg.sizes[l - 1], out_dim = m->cfg.sizes[l];
		const float *in = (float *)m->tr->acts[l - 1] + (size_t)row0 * in_dim;

		kml_linear_backward(l > 1 ? d : NULL, g + m->w_off[l - 1],
				    g + m->b_off[l - 1], dz, in,
				    p + m->w_off[l - 1], rows, in_dim, out_dim);
		if (l > 1)
			kml_act_backward(m->cfg.hidden_act, dz, d,
					 (float *)m->tr->pre[l - 1] +
					 (size_t)row0 * in_dim,
					 in, rows * in_dim);
	}
}

/* once per optimiser step, before kml_f32_step_range() over all params */
void kml_f32_step_begin(struct kml_model *m)
{
	struct kml_fstate *fs = kml_fs(m);

	if (m->tr->tcfg.optimizer == KML_OPT_ADAM) {
		fs->beta1_t *= fs->beta1;
		fs->beta2_t *= fs->beta2;
	}
}

/* update parameters [i0, i0 + cnt), then zero their gradients */
void kml_f32_step_range(struct kml_model *m, u32 i0, u32 cnt)
{
	struct kml_fstate *fs = kml_fs(m);
	float *p = m->params, *g = m->tr->grads, *m1 = m->tr->opt1, *m2 = m->tr->opt2;
	float c1, c2, mh, vh;
	u32 i;

	if (m->tr->tcfg.optimizer == KML_OPT_ADAM) {
		c1 = 1.0f / (1.0f - fs->beta1_t);
		c2 = 1.0f / (1.0f - fs->beta2_t);
		for (i = i0; i < i0 + cnt; i++) {
			m1[i] = fs->beta1 * m1[i] + (1.0f - fs->beta1) * g[i];
			m2[i] = fs->beta2 * m2[i] + (1.0f - fs->beta2) * g[i] * g[i];
			mh = m1[i] * c1;
			vh = m2[i] * c2;
			p[i] -= fs->lr * mh / (kml_sqrtf(vh) + fs->eps);
			g[i] = 0.0f;
		}
	} else {
		for (i = i0; i < i0 + cnt; i++) {
			m1[i] = fs->momentum * m1[i] + g[i];
			p[i] -= fs->lr * m1[i];
			g[i] = 0.0f;
		}
	}
}
#endif /* KML_HAS_TRAIN */
