// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl: the models it makes -- a fresh one of the trainer's shape, one
 * warm-started from a file -- and a model's bytes in KML's file format.
 */
#include "kmlctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/*
 * A fresh float32 model for @n_in inputs: --arch mlp (n_in-16-1, ReLU,
 * linear output; n_in-8-1 with --publish-dtype fixed, so that mq-deadline
 * compiles the copies it is sent: KML_DD_HIDDEN, KML_DD_FAST_HIDDEN) or
 * linear, KML_NORM_STANDARD, seeded by --seed.
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
		cfg.sizes[1] = o->publish_q16 ? KML_DD_FAST_HIDDEN :
						KML_DD_HIDDEN;
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
