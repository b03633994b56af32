// SPDX-License-Identifier: GPL-2.0
/*
 * Versioned binary model format, shared by the kernel and user space.
 *
 *   offset  size  field (all little endian)
 *        0     4  magic "KMLM" (0x4d4c4d4b)
 *        4     4  version (1)
 *        8     4  header size (64)
 *       12     4  flags (0)
 *       16     4  dtype, 20 arch, 24 n_layers, 28 hidden_act, 32 out_act,
 *                 36 norm
 *       40    20  sizes[0..4] (unused entries 0)
 *       60     4  payload size P
 *       64     P  payload: [norm block] params
 *   64 + P     4  CRC32 (IEEE, as zlib.crc32) of bytes [0, 64 + P)
 *
 * Norm block (norm != 0): u64 count, mean[n_in] (4 bytes, dtype),
 * var[n_in] (8 bytes: Q16: s64 Q16.16; F32: f32 bits then 4 zero bytes).
 * Params: per layer W[out][in] then b[out], 4 bytes each (f32 or Q16).
 *
 * Integer code only: float values are handled as bit patterns.
 */
#include "kml_internal.h"

u32 kml_crc32(u32 crc, const void *buf, size_t len)
{
	return ~kml_crc32_le(~crc, buf, len);
}
EXPORT_SYMBOL_GPL(kml_crc32);

static void kml_put32(u8 *p, u32 v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static u32 kml_get32(const u8 *p)
{
	return p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static void kml_put64(u8 *p, u64 v)
{
	kml_put32(p, (u32)v);
	kml_put32(p + 4, (u32)(v >> 32));
}

static u64 kml_get64(const u8 *p)
{
	return kml_get32(p) | (u64)kml_get32(p + 4) << 32;
}

static size_t kml_payload_size(const struct kml_model_cfg *c, u32 n_params)
{
	size_t n = (size_t)n_params * 4;

	if (c->norm != KML_NORM_NONE)
		n += 8 + (size_t)c->sizes[0] * 12;
	return n;
}

size_t kml_model_file_size(const struct kml_model *m)
{
	return KML_MODEL_HDR_SIZE + kml_payload_size(&m->cfg, m->n_params) + 4;
}
EXPORT_SYMBOL_GPL(kml_model_file_size);

long kml_model_save(const struct kml_model *m, void *buf, size_t cap)
{
	size_t need = kml_model_file_size(m), payload = need - 4 -
		      KML_MODEL_HDR_SIZE;
	const u32 *w = m->params;
	u32 n_in = m->cfg.sizes[0], i;
	u8 *p = buf;

	/* in the kernel only the kernel trainer saves (its warm start) */
	if (!KML_HAS_TRAIN)
		return -EOPNOTSUPP;
	if (cap < need)
		return -ENOSPC;
	memset(p, 0, KML_MODEL_HDR_SIZE);
	kml_put32(p + 0, KML_MODEL_MAGIC);
	kml_put32(p + 4, KML_MODEL_VERSION);
	kml_put32(p + 8, KML_MODEL_HDR_SIZE);
	kml_put32(p + 12, 0);
	kml_put32(p + 16, m->cfg.dtype);
	kml_put32(p + 20, m->cfg.arch);
	kml_put32(p + 24, m->cfg.n_layers);
	kml_put32(p + 28, m->cfg.hidden_act);
	kml_put32(p + 32, m->cfg.out_act);
	kml_put32(p + 36, m->cfg.norm);
	for (i = 0; i <= KML_MAX_LAYERS; i++)
		kml_put32(p + 40 + 4 * i, m->cfg.sizes[i]);
	kml_put32(p + 60, (u32)payload);
	p += KML_MODEL_HDR_SIZE;
	if (m->cfg.norm != KML_NORM_NONE) {
		const u32 *mean = m->norm_mean;

		kml_put64(p, m->norm_count);
		p += 8;
		for (i = 0; i < n_in; i++, p += 4)
			kml_put32(p, mean[i]);
		for (i = 0; i < n_in; i++, p += 8) {
			if (m->cfg.dtype == KML_Q16)
				kml_put64(p, ((const u64 *)m->norm_var)[i]);
			else
				kml_put64(p, ((const u32 *)m->norm_var)[i]);
		}
	}
	for (i = 0; i < m->n_params; i++, p += 4)
		kml_put32(p, w[i]);
	kml_put32(p, kml_crc32(0, buf, need - 4));
	return (long)need;
}
EXPORT_SYMBOL_GPL(kml_model_save);

static bool kml_f32_bits_finite(u32 u)
{
	return (u & 0x7f800000U) != 0x7f800000U;
}

/*
 * The float with bits @u in Q16.16, rint(v * 2^16) (to nearest, ties to
 * even) saturated to [@lo, @hi], into *@out; -EDOM for NaN or an infinity.
 * In integers, exactly: v * 2^16 is m * 2^s for the 24-bit significand m,
 * and rint() in double (which holds any float times 2^16 exactly) is the
 * same rounding.  Saturates from s >= 25 on: m >= 2^23 makes that 2^48 or
 * more, past any @hi the callers pass (S32_MAX, KML_Q16_VAR_MAX).
 */
static int kml_f32_bits_to_q16(u32 u, s64 lo, s64 hi, s64 *out)
{
	u32 e = (u >> 23) & 0xff, m = (u & 0x7fffff) | 0x800000, rest, half;
	int s = (int)e - 134;		/* v * 2^16 = m * 2^s */
	s64 q;

	if (!kml_f32_bits_finite(u))
		return -EDOM;
	if (!e || s < -25) {
		q = 0;			/* under a quarter: rounds to 0 */
	} else if (s >= 25) {
		q = S64_MAX;		/* saturated below */
	} else if (s >= 0) {
		q = (s64)m << s;
	} else {
		rest = m & ((1U << -s) - 1);
		half = 1U << (-s - 1);
		q = m >> -s;
		if (rest > half || (rest == half && (q & 1)))
			q++;
	}
	if (u >> 31)
		q = -q;
	*out = q < lo ? lo : q > hi ? hi : q;
	return 0;
}

/* @n float values at @p, each its Q16.16 s32 in place; -EDOM as above */
static int kml_f32_file_values_to_q16(u8 *p, u32 n)
{
	s64 q;
	u32 i;

	for (i = 0; i < n; i++, p += 4) {
		if (kml_f32_bits_to_q16(kml_get32(p), S32_MIN, S32_MAX, &q))
			return -EDOM;
		kml_put32(p, (u32)(s32)q);
	}
	return 0;
}

/*
 * Rewrite a float model file (kml_model_save()'s, @len bytes at @buf) in
 * place as the same model in Q16.16, for a kernel that runs Q16.16 models
 * faster or has no float ones: each weight, bias and mean becomes its
 * value rounded to 16 fraction bits and saturated, as
 * kmlbench.kml.ffi.to_q16() makes them; each variance (float bits, then 4
 * zero bytes) an s64 in Q16.16 units within the loader's [0,
 * KML_Q16_VAR_MAX].  Both dtypes lay out the payload alike, so only the
 * values, the dtype and the CRC change.  Integer code: no FPU section.
 * 0; -EINVAL for what is not a float model file of consistent sizes,
 * -EBADMSG for a CRC that does not match, -EDOM for a value that is not
 * finite (the buffer is then partly rewritten); -EOPNOTSUPP in a kernel
 * without CONFIG_KML_TRAIN, where nothing saves a model to convert.
 */
int kml_model_file_to_q16(void *buf, size_t len)
{
	u32 norm, n_in, payload, i;
	u8 *h = buf, *p, *end;
	s64 q;

	if (!KML_HAS_TRAIN)
		return -EOPNOTSUPP;
	if (!buf || len < KML_MODEL_HDR_SIZE + 4 ||
	    kml_get32(h) != KML_MODEL_MAGIC ||
	    kml_get32(h + 8) != KML_MODEL_HDR_SIZE ||
	    kml_get32(h + 16) != KML_F32)
		return -EINVAL;
	norm = kml_get32(h + 36);
	n_in = kml_get32(h + 40);
	payload = kml_get32(h + 60);
	if (len != (size_t)KML_MODEL_HDR_SIZE + payload + 4 || payload % 4 ||
	    (norm && payload < 8 + 12ULL * n_in))
		return -EINVAL;
	if (kml_crc32(0, buf, len - 4) != kml_get32(h + len - 4))
		return -EBADMSG;
	p = h + KML_MODEL_HDR_SIZE;
	end = p + payload;
	if (norm) {
		p += 8;					/* the count */
		if (kml_f32_file_values_to_q16(p, n_in))	/* the means */
			return -EDOM;
		p += 4 * n_in;
		for (i = 0; i < n_in; i++, p += 8) {
			if (kml_f32_bits_to_q16(kml_get32(p), 0, KML_Q16_VAR_MAX,
						&q))
				return -EDOM;
			kml_put64(p, (u64)q);
		}
	}
	/* the weights and biases, to the end of the payload */
	if (kml_f32_file_values_to_q16(p, (end - p) / 4))
		return -EDOM;
	kml_put32(h + 16, KML_Q16);
	kml_put32(h + len - 4, kml_crc32(0, buf, len - 4));
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_file_to_q16);

/*
 * Whether every output of a Q16.16 model's layers sums within s64 whatever
 * its inputs (each at most 2^31 units, as s32 saturation leaves them):
 * |b| 2^16 + sum |w| 2^31 < 2^63.  kml_linear_forward_q16() accumulates in
 * s64, and a row past that would wrap.  Only a model with weights summing
 * past 65,536 in a row fails, which no trained model comes near.
 */
static bool kml_q16_rows_fit(const struct kml_model_cfg *cfg, const u8 *p)
{
	u32 l, o, i, in_dim, out_dim;
	s64 b, sum;
	s32 w;

	for (l = 1; l <= cfg->n_layers; l++) {
		in_dim = cfg->sizes[l - 1];
		out_dim = cfg->sizes[l];
		for (o = 0; o < out_dim; o++) {
			sum = 0;
			for (i = 0; i < in_dim; i++) {
				w = (s32)kml_get32(p + 4 * ((size_t)o * in_dim + i));
				sum += w < 0 ? -(s64)w : w;
			}
			b = (s32)kml_get32(p + 4 * ((size_t)out_dim * in_dim + o));
			b = b < 0 ? -b : b;
			if (sum > (S64_MAX - (b << 16)) >> 31)
				return false;
		}
		p += 4 * ((size_t)out_dim * (in_dim + 1));
	}
	return true;
}

int kml_model_load(const void *buf, size_t len, struct kml_model **out)
{
	const u8 *h = buf, *p;
	struct kml_model_cfg cfg;
	struct kml_model *m;
	u32 i, n_in, n_params, payload;
	u32 *w, *mean;
	int ret;

	*out = NULL;
	if (!buf || len < KML_MODEL_HDR_SIZE + 4)
		return -EBADMSG;
	if (kml_get32(h) != KML_MODEL_MAGIC)
		return -EINVAL;
	if (kml_get32(h + 4) != KML_MODEL_VERSION)
		return -EPROTONOSUPPORT;
	if (kml_get32(h + 8) != KML_MODEL_HDR_SIZE || kml_get32(h + 12))
		return -EINVAL;
	if (len > KML_MODEL_MAX_FILE)
		return -E2BIG;
	memset(&cfg, 0, sizeof(cfg));
	cfg.dtype = kml_get32(h + 16);
	cfg.arch = kml_get32(h + 20);
	cfg.n_layers = kml_get32(h + 24);
	cfg.hidden_act = kml_get32(h + 28);
	cfg.out_act = kml_get32(h + 32);
	cfg.norm = kml_get32(h + 36);
	for (i = 0; i <= KML_MAX_LAYERS; i++)
		cfg.sizes[i] = kml_get32(h + 40 + 4 * i);
	ret = kml_cfg_check(&cfg);
	if (ret)
		return ret;
	n_params = 0;
	for (i = 1; i <= cfg.n_layers; i++)
		n_params += cfg.sizes[i] * (cfg.sizes[i - 1] + 1);
	payload = kml_get32(h + 60);
	if (payload != kml_payload_size(&cfg, n_params))
		return -EINVAL;		/* header sizes disagree */
	if (len != (size_t)KML_MODEL_HDR_SIZE + payload + 4)
		return -EBADMSG;	/* truncated or trailing bytes */
	if (kml_crc32(0, buf, len - 4) != kml_get32(h + len - 4))
		return -EBADMSG;

	/* values: finite floats, variances in [0, KML_Q16_VAR_MAX] for Q16 */
	n_in = cfg.sizes[0];
	p = h + KML_MODEL_HDR_SIZE;
	if (cfg.norm != KML_NORM_NONE) {
		for (i = 0; i < n_in; i++) {
			u64 v = kml_get64(p + 8 + 4 * n_in + 8 * i);

			if (cfg.dtype == KML_F32 &&
			    (!kml_f32_bits_finite(kml_get32(p + 8 + 4 * i)) ||
			     !kml_f32_bits_finite((u32)v) || (v >> 31)))
				return -EDOM;	/* NaN/Inf, negative or padding */
			if (cfg.dtype == KML_Q16 &&
			    ((s64)v < 0 || (s64)v > KML_Q16_VAR_MAX))
				return -EDOM;	/* negative or var << 16 wraps */
		}
		p += 8 + (size_t)n_in * 12;
	}
	if (cfg.dtype == KML_F32)
		for (i = 0; i < n_params; i++)
			if (!kml_f32_bits_finite(kml_get32(p + 4 * i)))
				return -EDOM;
	if (cfg.dtype == KML_Q16 && !kml_q16_rows_fit(&cfg, p))
		return -EDOM;

	ret = kml_model_alloc(&cfg, &m);
	if (ret)
		return ret;
	p = h + KML_MODEL_HDR_SIZE;
	if (cfg.norm != KML_NORM_NONE) {
		mean = m->norm_mean;
		m->norm_count = kml_get64(p);
		p += 8;
		for (i = 0; i < n_in; i++, p += 4)
			mean[i] = kml_get32(p);
		for (i = 0; i < n_in; i++, p += 8) {
			if (cfg.dtype == KML_Q16)
				((u64 *)m->norm_var)[i] = kml_get64(p);
			else
				((u32 *)m->norm_var)[i] = kml_get32(p);
		}
	}
	w = m->params;
	for (i = 0; i < n_params; i++, p += 4)
		w[i] = kml_get32(p);

	if (cfg.norm != KML_NORM_NONE) {
		/* kml_cfg_check() let a float model in only with KML_FLOAT */
		if (!KML_HAS_FLOAT || cfg.dtype == KML_Q16) {
			kml_q16_norm_scale(m);
		} else {
			if (kml_fpu_begin()) {
				kml_model_free(m);
				return -EBUSY;
			}
			kml_f32_norm_scale(m);
			kml_fpu_end();
		}
	}
	*out = m;
	return 0;
}
EXPORT_SYMBOL_GPL(kml_model_load);
