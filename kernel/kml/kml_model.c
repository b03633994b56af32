// SPDX-License-Identifier: GPL-2.0
/*
 * Model construction, tensors and the dtype dispatch around the float
 * (kml_nn.c) and fixed-point (kml_nn_q16.c) paths.  Integer code only: the
 * float path is entered through kml_fpu_begin()/kml_fpu_end() here.
 *
 * A kernel may leave out float models (CONFIG_KML_FLOAT) and training
 * (CONFIG_KML_TRAIN): their calls then return -EOPNOTSUPP, and the tests
 * of KML_HAS_FLOAT and KML_HAS_TRAIN let the compiler drop the code behind.
 *
 * Memory: one allocation for the inference block (this struct, parameters,
 * normalisation) and one for the training block (gradients, optimiser
 * state, activations), both made before any forward pass.  Prediction
 * uses stack scratch only and never writes to the model, so any number of
 * CPUs may predict concurrently; training calls need a single caller.
 */
#include "kml_internal.h"

#define KML_MAX_BATCH 1024

void kml_tensor_init(struct kml_tensor *t, u32 dtype, void *data, u32 ndim,
		     const u32 *shape)
{
	u32 i;

	memset(t, 0, sizeof(*t));
	t->dtype = dtype;
	t->ndim = ndim > KML_MAX_DIMS ? KML_MAX_DIMS : ndim;
	t->numel = 1;
	for (i = 0; i < t->ndim; i++) {
		t->shape[i] = shape[i];
		t->numel *= shape[i];
	}
	t->data = data;
}
EXPORT_SYMBOL_GPL(kml_tensor_init);

size_t kml_tensor_bytes(const struct kml_tensor *t)
{
	return (size_t)t->numel * 4;
}
EXPORT_SYMBOL_GPL(kml_tensor_bytes);

/* Shared by kml_model_create() and kml_model_load(). */
int kml_cfg_check(const struct kml_model_cfg *c)
{
	u32 l;

	if (c->dtype != KML_F32 && c->dtype != KML_Q16)
		return -EINVAL;
	if (c->dtype == KML_F32 && !KML_HAS_FLOAT)
		return -EOPNOTSUPP;
	if (c->n_layers < 1)
		return -EINVAL;
	if (c->n_layers > KML_MAX_LAYERS)
		return -E2BIG;
	for (l = 0; l <= c->n_layers; l++) {
		if (!c->sizes[l])
			return -EINVAL;
		if (c->sizes[l] > KML_MAX_WIDTH)
			return -E2BIG;
	}
	for (l = c->n_layers + 1; l <= KML_MAX_LAYERS; l++)
		if (c->sizes[l])
			return -EINVAL;
	if (c->hidden_act > KML_ACT_TANH || c->out_act > KML_ACT_TANH)
		return -EINVAL;
	if (c->norm > KML_NORM_STANDARD)
		return -EINVAL;
	switch (c->arch) {
	case KML_ARCH_LINEAR:
		if (c->n_layers != 1 || c->out_act != KML_ACT_NONE)
			return -EINVAL;
		break;
	case KML_ARCH_LOGISTIC:
		if (c->n_layers != 1 || c->out_act != KML_ACT_SIGMOID)
			return -EINVAL;
		break;
	case KML_ARCH_MLP:
		break;
	default:
		return -EINVAL;
	}
	return 0;
}

static u32 kml_cfg_n_params(const struct kml_model_cfg *c)
{
	u32 n = 0, l;

	for (l = 1; l <= c->n_layers; l++)
		n += c->sizes[l] * (c->sizes[l - 1] + 1);
	return n;
}

/* xorshift32: deterministic weight initialisation for a given seed */
static u32 kml_xorshift(u32 *s)
{
	u32 x = *s;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	*s = x;
	return x;
}

/*
 * Uniform init in Q16: He (sqrt(6 / fan_in)) before ReLU, Glorot
 * (sqrt(6 / (fan_in + fan_out))) otherwise; biases 0.  The float path
 * converts the same values, so both dtypes start from identical weights.
 */
static void kml_init_weights(struct kml_model *m)
{
	s32 *p = m->params;
	u32 seed = m->cfg.seed ? m->cfg.seed : (kml_random_u32() | 1);
	u32 l, i, fan_in, fan_out, lim, cnt;

	for (l = 1; l <= m->cfg.n_layers; l++) {
		fan_in = m->cfg.sizes[l - 1];
		fan_out = m->cfg.sizes[l];
		if (kml_layer_act(m, l) == KML_ACT_RELU)
			lim = kml_isqrt64((6ULL << 32) / fan_in);
		else
			lim = kml_isqrt64((6ULL << 32) / (fan_in + fan_out));
		cnt = fan_in * fan_out;
		for (i = 0; i < cnt; i++)
			p[m->w_off[l - 1] + i] =
				(s32)(kml_xorshift(&seed) % (2 * lim + 1)) - (s32)lim;
	}
}

/* Allocate the inference block for a checked config; weights zero. */
int kml_model_alloc(const struct kml_model_cfg *cfg, struct kml_model **out)
{
	struct kml_model *m;
	u32 n_in = cfg->sizes[0], n = kml_cfg_n_params(cfg), off = 0, l, macs;
	size_t bytes = sizeof(*m);
	u8 *p;

	bytes += (size_t)n * 4;
	if (cfg->norm != KML_NORM_NONE)
		bytes += (size_t)n_in * (8 + 4 + 4);
	m = kml_zalloc(bytes);
	if (!m)
		return -ENOMEM;
	m->cfg = *cfg;
	m->n_params = n;
	m->bytes = bytes;
	for (l = 0; l <= cfg->n_layers; l++)
		if (cfg->sizes[l] > m->max_width)
			m->max_width = cfg->sizes[l];
	macs = 0;
	for (l = 1; l <= cfg->n_layers; l++)
		macs += cfg->sizes[l] * cfg->sizes[l - 1];
	m->fpu_rows = macs < KML_FPU_MACS ? KML_FPU_MACS / macs : 1;
	for (l = 1; l <= cfg->n_layers; l++) {
		m->w_off[l - 1] = off;
		off += cfg->sizes[l] * cfg->sizes[l - 1];
		m->b_off[l - 1] = off;
		off += cfg->sizes[l];
	}
	p = (u8 *)(m + 1);
	if (cfg->norm != KML_NORM_NONE) {
		m->norm_var = p;		/* 8-byte aligned: first */
		p += (size_t)n_in * 8;
		m->norm_mean = p;
		p += (size_t)n_in * 4;
		m->norm_scale = p;
		p += (size_t)n_in * 4;
	}
	m->params = p;
	*out = m;
	return 0;
}

/* mean 0, variance 1, scale 1 written as bit patterns: no FPU needed */
static void kml_norm_reset(struct kml_model *m)
{
	u32 i, n_in = m->cfg.sizes[0];

	if (m->cfg.norm == KML_NORM_NONE)
		return;
	m->norm_count = 0;
	for (i = 0; i < n_in; i++) {
		if (m->cfg.dtype == KML_F32) {
			((u32 *)m->norm_var)[i] = 0x3f800000U;
			((u32 *)m->norm_scale)[i] = 0x3f800000U;
		} else {
			((s64 *)m->norm_var)[i] = KML_Q16_ONE;
			((s32 *)m->norm_scale)[i] = KML_Q16_ONE;
		}
	}
}

int kml_model_create(const struct kml_model_cfg *cfg, struct kml_model **out)
{
	struct kml_model *m;
	int ret;

	ret = kml_cfg_check(cfg);
	if (ret)
		return ret;
	ret = kml_model_alloc(cfg, &m);
	if (ret)
		return ret;
	kml_init_weights(m);
	kml_norm_reset(m);
	if (KML_HAS_FLOAT && cfg->dtype == KML_F32) {
		if (kml_fpu_begin()) {
			kml_model_free(m);
			return -EBUSY;
		}
		kml_f32_from_q16(m->params, m->params, m->n_params);
		kml_fpu_end();
	}
	*out = m;
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_create);

void kml_model_free(struct kml_model *m)
{
	if (!m)
		return;
	kml_free(m->tr);
	kml_free(m);
}
EXPORT_SYMBOL_GPL(kml_model_free);

int kml_model_get_cfg(const struct kml_model *m, struct kml_model_cfg *cfg)
{
	*cfg = m->cfg;
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_get_cfg);

size_t kml_model_footprint(const struct kml_model *m)
{
	return m->bytes + m->train_bytes;
}
EXPORT_SYMBOL_GPL(kml_model_footprint);

u32 kml_model_n_params(const struct kml_model *m)
{
	return m->n_params;
}
EXPORT_SYMBOL_GPL(kml_model_n_params);

void *kml_model_params(struct kml_model *m)
{
	return m->params;
}
EXPORT_SYMBOL_GPL(kml_model_params);

void *kml_model_grads(struct kml_model *m)
{
	return m->tr ? m->tr->grads : NULL;
}
EXPORT_SYMBOL_GPL(kml_model_grads);

/*
 * Float statistics are updated about KML_FPU_PARAMS inputs per FPU section
 * (whole rows, at least one); on -EBUSY the rows before the failing chunk
 * have been applied.
 */
int kml_model_norm_update(struct kml_model *m, const void *x, u32 n)
{
	u32 n_in = m->cfg.sizes[0], rows, r, c;

	if (!KML_HAS_TRAIN)
		return -EOPNOTSUPP;
	if (m->cfg.norm == KML_NORM_NONE)
		return -EINVAL;
	if (!KML_HAS_FLOAT || m->cfg.dtype == KML_Q16) {
		kml_q16_norm_update(m, x, n);
		return 0;
	}
	rows = n_in < KML_FPU_PARAMS ? KML_FPU_PARAMS / n_in : 1;
	for (r = 0; r < n; r += c) {
		c = n - r < rows ? n - r : rows;
		if (kml_fpu_begin())
			return -EBUSY;
		kml_f32_norm_update(m, (const void *)((const u32 *)x +
						      (size_t)r * n_in), c);
		kml_fpu_end();
	}
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_norm_update);

int kml_model_norm_get(const struct kml_model *m, void *mean, void *scale)
{
	u32 n_in = m->cfg.sizes[0];

	if (m->cfg.norm == KML_NORM_NONE)
		return -EINVAL;
	memcpy(mean, m->norm_mean, (size_t)n_in * 4);
	memcpy(scale, m->norm_scale, (size_t)n_in * 4);
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_norm_get);

/* without KML_FLOAT no float model exists: every model is Q16 */
int kml_model_predict_nofpu(struct kml_model *m, const void *x, u32 n, void *y)
{
	if (!KML_HAS_FLOAT || m->cfg.dtype == KML_Q16)
		kml_q16_predict(m, x, n, y);
	else
		kml_f32_predict(m, x, n, y);
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_predict_nofpu);

/* Float batches are split so that no FPU section grows with n. */
int kml_model_predict(struct kml_model *m, const void *x, u32 n, void *y)
{
	u32 n_in = m->cfg.sizes[0], n_out = kml_out_dim(m), r, c;

	if (!KML_HAS_FLOAT || m->cfg.dtype == KML_Q16) {
		kml_q16_predict(m, x, n, y);
		return 0;
	}
	for (r = 0; r < n; r += c) {
		c = n - r < m->fpu_rows ? n - r : m->fpu_rows;
		if (kml_fpu_begin())
			return -EBUSY;
		kml_f32_predict(m, (const void *)((const u32 *)x +
						  (size_t)r * n_in),
				c, (void *)((u32 *)y + (size_t)r * n_out));
		kml_fpu_end();
	}
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_predict);

int kml_model_train_setup(struct kml_model *m, const struct kml_train_cfg *cfg)
{
	u32 L = m->cfg.n_layers, n = m->n_params, B = cfg->max_batch, l;
	size_t gsz = m->cfg.dtype == KML_Q16 ? 8 : 4, bytes;
	u8 *p;

	if (!KML_HAS_TRAIN)
		return -EOPNOTSUPP;
	if (cfg->optimizer > KML_OPT_ADAM || cfg->loss > KML_LOSS_BCE)
		return -EINVAL;
	if (cfg->loss == KML_LOSS_BCE && m->cfg.out_act != KML_ACT_SIGMOID)
		return -EINVAL;
	if (!B || cfg->lr <= 0 || cfg->lr > KML_Q32_ONE || cfg->momentum < 0 ||
	    cfg->momentum >= KML_Q32_ONE || cfg->pos_weight < 0)
		return -EINVAL;
	if (cfg->beta1 < 0 || cfg->beta1 >= KML_Q32_ONE || cfg->beta2 < 0 ||
	    cfg->beta2 >= KML_Q32_ONE || cfg->eps < 0)
		return -EINVAL;
	/* Q16 Adam's 64-bit products need beta1 >= 0.5 and beta2 >= 0.9 */
	if (cfg->optimizer == KML_OPT_ADAM && m->cfg.dtype == KML_Q16 &&
	    ((cfg->beta1 && cfg->beta1 < KML_Q32_ONE / 2) ||
	     (cfg->beta2 && cfg->beta2 < KML_Q32_ONE / 10 * 9)))
		return -EINVAL;
	if (B > KML_MAX_BATCH)
		return -E2BIG;

	bytes = sizeof(struct kml_train);
	bytes += (size_t)n * gsz * 2;			/* grads, opt1 */
	if (cfg->optimizer == KML_OPT_ADAM)
		bytes += (size_t)n * gsz;		/* opt2 */
	for (l = 0; l <= L; l++)
		bytes += (size_t)B * m->cfg.sizes[l] * 4 * (l ? 2 : 1);
	bytes += (size_t)B * m->max_width * 4 * 2;	/* dbuf */

	kml_free(m->tr);
	m->tr = kml_zalloc(bytes);
	if (!m->tr) {
		m->train_bytes = 0;
		return -ENOMEM;
	}
	m->train_bytes = bytes;
	m->tr->tcfg = *cfg;
	m->tr->fwd_n = 0;
	m->tr->steps = 0;
	m->tr->b1t = 1LL << 30;
	m->tr->b2t = 1LL << 30;
	p = (u8 *)(m->tr + 1);
	m->tr->grads = p;
	p += (size_t)n * gsz;
	m->tr->opt1 = p;
	p += (size_t)n * gsz;
	m->tr->opt2 = NULL;
	if (cfg->optimizer == KML_OPT_ADAM) {
		m->tr->opt2 = p;
		p += (size_t)n * gsz;
	}
	for (l = 0; l <= L; l++) {
		m->tr->acts[l] = p;
		p += (size_t)B * m->cfg.sizes[l] * 4;
		if (l) {
			m->tr->pre[l] = p;
			p += (size_t)B * m->cfg.sizes[l] * 4;
		}
	}
	m->tr->dbuf[0] = p;
	p += (size_t)B * m->max_width * 4;
	m->tr->dbuf[1] = p;

	if (KML_HAS_FLOAT && m->cfg.dtype == KML_F32) {
		if (kml_fpu_begin()) {
			/* never leave a half-initialised training block behind */
			kml_free(m->tr);
			m->tr = NULL;
			m->train_bytes = 0;
			return -EBUSY;
		}
		kml_f32_train_init(m);
		kml_fpu_end();
	}
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_train_setup);

static int kml_train_check(const struct kml_model *m, u32 n)
{
	if (!m->tr)
		return -EINVAL;
	if (!n || n > m->tr->tcfg.max_batch)
		return -E2BIG;
	return 0;
}

/* training rows per FPU section: backward costs about twice the forward */
static u32 kml_train_rows(const struct kml_model *m)
{
	return m->fpu_rows >= 3 ? m->fpu_rows / 3 : 1;
}

/* float forward (+ backward) over a batch, one FPU section per chunk */
static int kml_f32_batch(struct kml_model *m, const void *x, const void *y,
			 u32 n, bool fwd, bool bwd, void *loss)
{
	u32 rows = kml_train_rows(m), r, c;

	for (r = 0; r < n; r += c) {
		c = n - r < rows ? n - r : rows;
		if (kml_fpu_begin())
			return -EBUSY;
		if (fwd) {
			if (!r)
				kml_f32_loss_reset(m);
			kml_f32_forward(m, x, y, r, c);
		}
		if (bwd)
			kml_f32_backward(m, y, r, c, n);
		if (fwd && loss && y && r + c == n)
			kml_f32_loss_get(m, n, loss);
		kml_fpu_end();
	}
	return 0;
}

static int kml_f32_step(struct kml_model *m)
{
	u32 i, c;

	for (i = 0; i < m->n_params; i += c) {
		c = m->n_params - i < KML_FPU_PARAMS ? m->n_params - i :
			KML_FPU_PARAMS;
		if (kml_fpu_begin())
			return -EBUSY;
		if (!i)
			kml_f32_step_begin(m);
		kml_f32_step_range(m, i, c);
		kml_fpu_end();
	}
	return 0;
}

int kml_model_forward(struct kml_model *m, const void *x, u32 n,
		      const void *y, void *loss)
{
	int ret;

	if (!KML_HAS_TRAIN)
		return -EOPNOTSUPP;
	ret = kml_train_check(m, n);
	if (ret)
		return ret;
	m->tr->fwd_n = 0;
	if (!KML_HAS_FLOAT || m->cfg.dtype == KML_Q16)
		kml_q16_forward(m, x, n, y, loss);
	else
		ret = kml_f32_batch(m, x, y, n, true, false, loss);
	if (!ret)
		m->tr->fwd_n = n;
	return ret;
}
EXPORT_SYMBOL_GPL(kml_model_forward);

int kml_model_backward(struct kml_model *m, const void *y, u32 n)
{
	int ret;

	if (!KML_HAS_TRAIN)
		return -EOPNOTSUPP;
	ret = kml_train_check(m, n);
	if (ret)
		return ret;
	if (m->tr->fwd_n != n)
		return -EINVAL;
	if (!KML_HAS_FLOAT || m->cfg.dtype == KML_Q16) {
		kml_q16_backward(m, y, n);
		return 0;
	}
	return kml_f32_batch(m, NULL, y, n, false, true, NULL);
}
EXPORT_SYMBOL_GPL(kml_model_backward);

int kml_model_step(struct kml_model *m)
{
	if (!KML_HAS_TRAIN)
		return -EOPNOTSUPP;
	if (!m->tr)
		return -EINVAL;
	m->tr->steps++;
	if (!KML_HAS_FLOAT || m->cfg.dtype == KML_Q16) {
		kml_q16_step(m);
		return 0;
	}
	return kml_f32_step(m);
}
EXPORT_SYMBOL_GPL(kml_model_step);

/*
 * forward + backward + step on a mini-batch of 1 <= n <= max_batch rows
 * (n = 1: per-sample training).  Float models take one short FPU section
 * per chunk of rows and per chunk of parameters.
 */
int kml_model_train_batch(struct kml_model *m, const void *x, const void *y,
			  u32 n, void *loss)
{
	int ret;

	if (!KML_HAS_TRAIN)
		return -EOPNOTSUPP;
	ret = kml_train_check(m, n);
	if (ret)
		return ret;
	m->tr->steps++;
	m->tr->fwd_n = n;
	if (!KML_HAS_FLOAT || m->cfg.dtype == KML_Q16) {
		kml_q16_forward(m, x, n, y, loss);
		kml_q16_backward(m, y, n);
		kml_q16_step(m);
		return 0;
	}
	ret = kml_f32_batch(m, x, y, n, true, true, loss);
	if (ret)
		return ret;
	return kml_f32_step(m);
}
EXPORT_SYMBOL_GPL(kml_model_train_batch);

int kml_math_apply(u32 fn, u32 dtype, const void *x, void *y, u32 n)
{
	const s32 *xi = x;
	s32 *yi = y;
	u32 i, c;

	if (fn > KML_FN_SIGMOID)
		return -EINVAL;
	if (dtype == KML_F32) {
		if (!KML_HAS_FLOAT)
			return -EOPNOTSUPP;
		/* about KML_FPU_PARAMS elements per FPU section */
		for (i = 0; i < n; i += c) {
			c = n - i < KML_FPU_PARAMS ? n - i : KML_FPU_PARAMS;
			if (kml_fpu_begin())
				return -EBUSY;
			kml_math_apply_f32(fn, (const void *)(xi + i),
					   (void *)(yi + i), c);
			kml_fpu_end();
		}
		return 0;
	}
	if (dtype != KML_Q16)
		return -EINVAL;
	for (i = 0; i < n; i++) {
		switch (fn) {
		case KML_FN_EXP:
			yi[i] = kml_q16_exp(xi[i]);
			break;
		case KML_FN_LOG:
			yi[i] = kml_q16_log(xi[i]);
			break;
		case KML_FN_SQRT:
			yi[i] = xi[i] < 0 ? S32_MIN :
				(s32)kml_isqrt64((u64)xi[i] << 16);
			break;
		case KML_FN_TANH:
			yi[i] = kml_q16_tanh(xi[i]);
			break;
		default:
			yi[i] = kml_q16_sigmoid(xi[i]);
			break;
		}
	}
	return 0;
}
EXPORT_SYMBOL_GPL(kml_math_apply);
