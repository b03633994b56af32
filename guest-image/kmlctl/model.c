// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl: the models it makes -- a fresh one of the trainer's shape, one
 * warm-started from a file -- and a model's bytes in KML's file format.
 */
#include "kmlctl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/*
 * A fresh float32 model for @n_in inputs: --arch mlp (n_in-16-1, ReLU,
 * linear output) or linear, KML_NORM_STANDARD, seeded by --seed.
 */
int model_new(const struct opts *o, u32 n_in, struct kml_model **m)
{
	struct kml_model_cfg cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.dtype = KML_F32;
	cfg.norm = KML_NORM_STANDARD;
	cfg.seed = o->seed;
	cfg.sizes[0] = n_in;
	if (o->linear) {
		cfg.arch = KML_ARCH_LINEAR;
		cfg.n_layers = 1;
		cfg.sizes[1] = 1;
	} else {
		cfg.arch = KML_ARCH_MLP;
		cfg.n_layers = 2;
		cfg.sizes[1] = 16;
		cfg.sizes[2] = 1;
		cfg.hidden_act = KML_ACT_RELU;
	}
	return kml_model_create(&cfg, m);
}

/*
 * Load the model file @path into @m (its configuration in @cfg) and check it
 * takes @n_in inputs and gives one output; @who ("the samples need") names
 * what has @n_in features in the error.  With @f32_only, a model that is not
 * float32 is refused first.
 */
int model_load_file(const char *path, u32 n_in, const char *who, bool f32_only,
		    struct kml_model **m, struct kml_model_cfg *cfg)
{
	size_t len;
	void *buf;
	int ret;

	ret = read_file(path, &buf, &len);
	if (ret)
		return fail(-ret, "read %s", path);
	ret = kml_model_load(buf, len, m);
	free(buf);
	if (ret)
		return fail(-ret, "%s: not a valid model", path);
	kml_model_get_cfg(*m, cfg);
	if (f32_only && cfg->dtype != KML_F32)
		return fail(EINVAL, "%s: kmlctl trains float32 models only", path);
	if (cfg->sizes[0] != n_in || cfg->sizes[cfg->n_layers] != 1)
		return fail(EPROTO, "%s: %u inputs and %u outputs, %s %u and 1",
			    path, cfg->sizes[0], cfg->sizes[cfg->n_layers], who,
			    n_in);
	return 0;
}

/* --warm: continue from a saved model, which must fit the samples. */
int model_warm(const char *path, u32 n_in, struct kml_model **m)
{
	struct kml_model_cfg cfg;

	return model_load_file(path, n_in, "the samples need", true, m, &cfg);
}

/*
 * rint(v * 2^16), saturated to [lo, hi]; -EDOM for NaN or an infinity,
 * which the kernel's loader refuses in a float model too
 */
static int q16_of(float v, long long lo, long long hi, long long *out)
{
	double x = rint((double)v * KML_Q16_ONE);

	if (!isfinite(x))
		return -EDOM;
	*out = x < (double)lo ? lo : x > (double)hi ? hi : (long long)x;
	return 0;
}

void put_le32(u8 *p, u32 v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

void model_file_recrc(u8 *buf, size_t len)
{
	put_le32(buf + len - 4, kml_crc32(0, buf, len - 4));
}

/* @n float values at @p, each as its Q16.16 s32 in place */
static int q16_values(u8 *p, u32 n)
{
	long long q;
	u32 i;
	float f;
	s32 v;

	for (i = 0; i < n; i++, p += 4) {
		memcpy(&f, p, 4);
		if (q16_of(f, S32_MIN, S32_MAX, &q))
			return -EDOM;
		v = (s32)q;
		memcpy(p, &v, 4);
	}
	return 0;
}

/*
 * Rewrite a float model file (kml_model_save()'s, @len bytes at @buf) in
 * place as the same model in Q16.16, for a kernel without float models
 * (CONFIG_KML_FLOAT=n).  Both dtypes lay out the payload alike (docs/kml.md,
 * "Model file format"): each weight, bias and mean becomes its value
 * rounded to 16 fraction bits and saturated, as kmlbench.kml.ffi.to_q16()
 * makes them; each variance (float bits, then 4 zero bytes) an s64 in
 * Q16.16 units, within the loader's bound (KML_Q16_VAR_MAX, 2^47).  The
 * CRC is made again.  0, or -EINVAL (not a float model file) or -EDOM (a
 * value that is not finite).
 */
int model_file_to_q16(void *buf, size_t len)
{
	u32 norm, n_in, payload, i, u;
	u8 *h = buf, *p;
	long long q;
	float f;
	s64 w;

	if (len < KML_MODEL_HDR_SIZE + 4)
		return -EINVAL;
	memcpy(&u, h + 16, 4);
	memcpy(&norm, h + 36, 4);
	memcpy(&n_in, h + 40, 4);
	memcpy(&payload, h + 60, 4);
	if (u != KML_F32 || len != (size_t)KML_MODEL_HDR_SIZE + payload + 4 ||
	    (norm && payload < 8 + 12ULL * n_in))
		return -EINVAL;
	p = h + KML_MODEL_HDR_SIZE;
	if (norm) {
		p += 8;				/* the count */
		if (q16_values(p, n_in))	/* the means */
			return -EDOM;
		p += 4 * n_in;
		for (i = 0; i < n_in; i++, p += 8) {
			memcpy(&f, p, 4);
			if (q16_of(f, 0, KML_Q16_VAR_MAX, &q))
				return -EDOM;
			w = q;
			memcpy(p, &w, 8);
		}
	}
	/* the weights and biases, to the end of the payload */
	if (q16_values(p, (h + KML_MODEL_HDR_SIZE + payload - p) / 4))
		return -EDOM;
	put_le32(h + 16, KML_Q16);
	model_file_recrc(h, len);
	return 0;
}

/* Serialise the model; the caller frees. */
int model_bytes(struct kml_model *m, void **bufp, size_t *lenp)
{
	size_t len = kml_model_file_size(m);
	void *buf = malloc(len);
	long ret;

	*bufp = NULL;
	*lenp = 0;
	if (!buf)
		return -ENOMEM;
	ret = kml_model_save(m, buf, len);
	if (ret < 0) {
		free(buf);
		return (int)ret;
	}
	*bufp = buf;
	*lenp = (size_t)ret;
	return 0;
}
