// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for KML.
 *
 * This file is integer-only (built without FPU code generation): float
 * values travel as IEEE-754 bit patterns and are compared in ulps, so no
 * test ever needs kernel_fpu_begin() itself; KML takes its own FPU section
 * inside kml_math_apply() and kml_model_predict().  Reference values were
 * computed with libm in double precision and rounded to float.
 */
#include <kunit/test.h>
#include <linux/slab.h>
#include <linux/kthread.h>
#include <linux/completion.h>
#include <linux/sched.h>
#include <linux/moduleparam.h>
#include "kml_internal.h"
#ifdef CONFIG_KML_IOSCHED
#include "kml_dd.h"
#include "kml_dd_feat.h"
#include "kml_iosched.h"
#endif

/*
 * A case that needs a part this kernel was built without (lib/kml/Kconfig:
 * float models, training, mq-deadline's kernel trainer) is skipped.  @has
 * is a constant (KML_HAS_*) and kunit_skip() does not return, so the
 * compiler drops the calls after it and they are not linked.
 */
#define kml_test_needs(test, has, part)					\
	do {								\
		if (!(has))						\
			kunit_skip(test, "built without " part);	\
	} while (0)

#define N_REF 16

struct kml_ref {
	u32 fn;
	u32 max_ulp;
	u32 x[N_REF];
	u32 y[N_REF];
};

static const struct kml_ref kml_refs[] = {
	{ KML_FN_EXP, 2,
	  { 0xc2ae0000, 0xc24a0000, 0xc1240000, 0xbf800000, 0xbeb1758e,
	    0xba83126f, 0x00000000, 0x3a83126f, 0x3f000000, 0x3f800000,
	    0x40135d8d, 0x41200000, 0x41a00000, 0x4231999a, 0x428c0000,
	    0x42b10000 },
	  { 0x00b33687, 0x1b0d6cfa, 0x38144cd4, 0x3ebc5ab2, 0x3f3503ba,
	    0x3f7fbe7f, 0x3f800000, 0x3f8020c9, 0x3fd3094c, 0x402df854,
	    0x411ffffe, 0x46ac14ee, 0x4de75844, 0x5f8508f6, 0x71fdfe91,
	    0x7f4cdcc4 } },
	{ KML_FN_LOG, 2,
	  { 0x0da24260, 0x3727c5ac, 0x3c23d70a, 0x3e99999a, 0x3f350481,
	    0x3f7fbe77, 0x3f800000, 0x3f8020c5, 0x3fb50481, 0x40000000,
	    0x402df855, 0x41200000, 0x447a0000, 0x47800000, 0x60ad78ec,
	    0x7f61b1e6 },
	  { 0xc28a27b5, 0xc13834f1, 0xc0935d8e, 0xbf9a1bc8, 0xbeb1735b,
	    0xba8322ca, 0x00000000, 0x3a83033b, 0x3eb170d5, 0x3f317218,
	    0x3f800000, 0x40135d8e, 0x40dd0c55, 0x41317218, 0x423834f1,
	    0x42b13196 } },
	{ KML_FN_TANH, 2,
	  { 0xc1a00000, 0xc0a00000, 0xbf800000, 0xbefae148, 0xbdcccccd,
	    0xb8d1b717, 0x00000000, 0x38d1b717, 0x3d4ccccd, 0x3e99999a,
	    0x3eff7cee, 0x3f000000, 0x3f400000, 0x40000000, 0x410e6666,
	    0x41180000 },
	  { 0xbf800000, 0xbf7ffa0d, 0xbf42f7d6, 0xbee88f0f, 0xbdcc1ebc,
	    0xb8d1b717, 0x00000000, 0x38d1b717, 0x3d4ca127, 0x3e9526ee,
	    0x3eec337e, 0x3eec9a9f, 0x3f22991f, 0x3f76ca83, 0x3f7fffff,
	    0x3f800000 } },
	{ KML_FN_SIGMOID, 2,
	  { 0xc2a00000, 0xc1f00000, 0xc1200000, 0xc0400000, 0xbf800000,
	    0xbe800000, 0xba83126f, 0x00000000, 0x3a83126f, 0x3e800000,
	    0x3f800000, 0x40400000, 0x41200000, 0x41800000, 0x41f00000,
	    0x42a00000 },
	  { 0x05bfecba, 0x29d2b706, 0x383e6997, 0x3d4241a2, 0x3e89b2b1,
	    0x3ee02a67, 0x3effdf3b, 0x3f000000, 0x3f001062, 0x3f0feacd,
	    0x3f3b26a8, 0x3f73dbe6, 0x3f7ffd06, 0x3f7ffffe, 0x3f800000,
	    0x3f800000 } },
	{ KML_FN_SQRT, 1,
	  { 0x006ce3ee, 0x1e3ce508, 0x3a83126f, 0x3e800000, 0x3f000000,
	    0x3f800000, 0x40000000, 0x40400000, 0x41200000, 0x42f6e979,
	    0x461c4000, 0x477fff00, 0x501502f9, 0x60ad78ec, 0x7149f2ca,
	    0x7f61b1e6 },
	  { 0x1fec1e4a, 0x2edbe6ff, 0x3d0186e3, 0x3f000000, 0x3f3504f3,
	    0x3f800000, 0x3fb504f3, 0x3fddb3d7, 0x404a62c2, 0x4131c6f7,
	    0x42c80000, 0x437fff80, 0x47c35000, 0x501502f9, 0x58635fa9,
	    0x5f705ece } },
};

/* distance in ulps between two float bit patterns */
static u32 kml_ulps(u32 a, u32 b)
{
	s64 ia = a & 0x80000000U ? -(s64)(a & 0x7fffffffU) : (s64)a;
	s64 ib = b & 0x80000000U ? -(s64)(b & 0x7fffffffU) : (s64)b;

	return ia > ib ? (u32)(ia - ib) : (u32)(ib - ia);
}

/* float bit pattern -> Q16.16, integer only (|value| < 32768) */
static s32 kml_f32_bits_to_q16(u32 u)
{
	s32 e = (s32)((u >> 23) & 0xff) - 127;
	s64 mant = (u & 0x7fffff) | 0x800000, v;

	if (e < -24)
		return 0;
	v = e >= 7 ? mant << (e - 7) : (mant + (1LL << (6 - e))) >> (7 - e);
	return u & 0x80000000U ? (s32)-v : (s32)v;
}

static void kml_test_math_accuracy(struct kunit *test)
{
	u32 y[N_REF], i, k, worst;

	kml_test_needs(test, KML_HAS_FLOAT, "float models");
	for (k = 0; k < ARRAY_SIZE(kml_refs); k++) {
		const struct kml_ref *r = &kml_refs[k];

		KUNIT_ASSERT_EQ(test, 0, kml_math_apply(r->fn, KML_F32, r->x, y,
							N_REF));
		worst = 0;
		for (i = 0; i < N_REF; i++) {
			u32 d = kml_ulps(y[i], r->y[i]);

			KUNIT_EXPECT_LE_MSG(test, d, r->max_ulp,
					    "fn %u x=0x%08x got 0x%08x want 0x%08x",
					    r->fn, r->x[i], y[i], r->y[i]);
			if (d > worst)
				worst = d;
		}
		kunit_info(test, "fn %u: max error %u ulp\n", r->fn, worst);
	}
}

static void kml_test_math_special(struct kunit *test)
{
	/* exp(+big) = inf, exp(-big) = 0, log(0) = -inf, log(-1) = NaN */
	u32 x[4] = { 0x42c80000, 0xc2c80000, 0x00000000, 0xbf800000 };
	u32 y[4];

	kml_test_needs(test, KML_HAS_FLOAT, "float models");
	KUNIT_ASSERT_EQ(test, 0, kml_math_apply(KML_FN_EXP, KML_F32, x, y, 2));
	KUNIT_EXPECT_EQ(test, y[0], 0x7f800000U);
	KUNIT_EXPECT_EQ(test, y[1], 0U);
	KUNIT_ASSERT_EQ(test, 0, kml_math_apply(KML_FN_LOG, KML_F32, x + 2, y, 2));
	KUNIT_EXPECT_EQ(test, y[0], 0xff800000U);
	KUNIT_EXPECT_EQ(test, y[1] & 0x7fc00000U, 0x7fc00000U);
}

/* Q16 exp/sigmoid/tanh against the float references, no FPU at all */
static void kml_test_q16_math(struct kunit *test)
{
	static const u32 fns[] = { KML_FN_EXP, KML_FN_TANH, KML_FN_SIGMOID };
	s32 x[N_REF], y[N_REF];
	u32 f, i, k;

	for (f = 0; f < ARRAY_SIZE(fns); f++) {
		for (k = 0; k < ARRAY_SIZE(kml_refs); k++)
			if (kml_refs[k].fn == fns[f])
				break;
		for (i = 0; i < N_REF; i++)
			x[i] = kml_f32_bits_to_q16(kml_refs[k].x[i]);
		KUNIT_ASSERT_EQ(test, 0, kml_math_apply(fns[f], KML_Q16, x, y,
							N_REF));
		for (i = 0; i < N_REF; i++) {
			s32 want;

			/* skip inputs or results outside the Q16 range */
			if (x[i] == 0 && kml_refs[k].x[i] & 0x7fffffffU)
				continue;
			if ((kml_refs[k].y[i] & 0x7fffffffU) >= 0x47000000U)
				continue;
			if (((kml_refs[k].x[i] >> 23) & 0xff) >= 127 + 15)
				continue;
			want = kml_f32_bits_to_q16(kml_refs[k].y[i]);
			/* 2 ulp of Q16 plus 2e-6 relative to the input rounding */
			KUNIT_EXPECT_LE_MSG(test, abs(y[i] - want),
					    2 + abs(want) / 4096,
					    "fn %u x=%d got %d want %d",
					    fns[f], x[i], y[i], want);
		}
	}
}

static void kml_test_linear_forward(struct kunit *test)
{
	/* W = [[0.5, -1, 2], [0.25, 0.25, 0.25]], b = [1, -0.5] */
	static const s32 w[6] = { 32768, -65536, 131072, 16384, 16384, 16384 };
	static const s32 b[2] = { 65536, -32768 };
	static const s32 x[6] = { 65536, 131072, 196608,	/* 1 2 3 */
				  -65536, 0, 32768 };		/* -1 0 .5 */
	/* row 0: 0.5 - 2 + 6 + 1 = 5.5, 1.5 - 0.5 = 1; row 1: -0.5 + 1 + 1 = 1.5, -0.125 - 0.5 */
	static const s32 want[4] = { 360448, 65536, 98304, -40960 };
	s32 out[4];
	u32 i;

	kml_linear_forward_q16(out, x, w, b, 2, 3, 2);
	for (i = 0; i < 4; i++)
		KUNIT_EXPECT_EQ(test, out[i], want[i]);
}

static struct kml_model *kml_test_model(struct kunit *test, u32 dtype,
					u32 arch)
{
	struct kml_model_cfg cfg = {
		.dtype = dtype, .arch = arch, .seed = 42,
		.hidden_act = KML_ACT_TANH,
	};
	struct kml_model *m = NULL;

	if (arch == KML_ARCH_MLP) {
		cfg.n_layers = 2;
		cfg.sizes[0] = 8;
		cfg.sizes[1] = 16;
		cfg.sizes[2] = 1;
		cfg.out_act = KML_ACT_SIGMOID;
	} else {
		cfg.n_layers = 1;
		cfg.sizes[0] = 8;
		cfg.sizes[1] = 1;
	}
	KUNIT_ASSERT_EQ(test, 0, kml_model_create(&cfg, &m));
	KUNIT_ASSERT_NOT_NULL(test, m);
	return m;
}

/* Same seed -> same initial weights; Q16 output within 1e-3 of float. */
static void kml_test_fixed_vs_float(struct kunit *test)
{
	struct kml_model *mf, *mq;
	/* inputs as Q16 and as float bits: k / 8 - 0.5 */
	static const u32 xf[8] = { 0xbf000000, 0xbec00000, 0xbe800000,
				   0xbe000000, 0x00000000, 0x3e000000,
				   0x3e800000, 0x3ec00000 };
	s32 xq[8], yq;
	u32 yf, i;

	kml_test_needs(test, KML_HAS_FLOAT, "float models");
	mf = kml_test_model(test, KML_F32, KML_ARCH_MLP);
	mq = kml_test_model(test, KML_Q16, KML_ARCH_MLP);
	for (i = 0; i < 8; i++)
		xq[i] = (s32)i * 8192 - 32768;
	KUNIT_ASSERT_EQ(test, 0, kml_model_predict(mf, xf, 1, &yf));
	KUNIT_ASSERT_EQ(test, 0, kml_model_predict(mq, xq, 1, &yq));
	KUNIT_EXPECT_LE(test, abs(yq - kml_f32_bits_to_q16(yf)), 66);
	kml_model_free(mf);
	kml_model_free(mq);
}

/* Q16 training (SGD + momentum, then Adam) fits a tiny regression, no FPU. */
static void kml_test_q16_training(struct kunit *test)
{
	s32 x[4 * 8], y[4], first = 0, loss = 0;
	u32 i, r, step, opt;

	kml_test_needs(test, KML_HAS_TRAIN, "training");
	for (r = 0; r < 4; r++) {
		for (i = 0; i < 8; i++)
			x[r * 8 + i] = (s32)((r * 7 + i * 3) % 5) * 16384 - 32768;
		y[r] = x[r * 8] - x[r * 8 + 1] + 32768;	/* x0 - x1 + 0.5 */
	}
	for (opt = KML_OPT_SGD; opt <= KML_OPT_ADAM; opt++) {
		struct kml_model *m = kml_test_model(test, KML_Q16,
						     KML_ARCH_LINEAR);
		struct kml_train_cfg tc = {
			.optimizer = opt, .loss = KML_LOSS_MSE, .max_batch = 4,
			.lr = opt == KML_OPT_SGD ? KML_Q32_ONE / 10 :
						   KML_Q32_ONE / 50,
			.momentum = KML_Q32_ONE / 2,
		};

		KUNIT_ASSERT_EQ(test, 0, kml_model_train_setup(m, &tc));
		for (step = 0; step < 300; step++) {
			KUNIT_ASSERT_EQ(test, 0,
					kml_model_train_batch(m, x, y, 4, &loss));
			if (!step)
				first = loss;
		}
		KUNIT_EXPECT_LT_MSG(test, loss, first / 20, "optimizer %u", opt);
		kml_model_free(m);
	}
}

/* a model file's CRC made again after an edit */
static void kml_test_recrc(u8 *buf, size_t len)
{
	u32 crc = kml_crc32(0, buf, len - 4);

	buf[len - 4] = crc;
	buf[len - 3] = crc >> 8;
	buf[len - 2] = crc >> 16;
	buf[len - 1] = crc >> 24;
}

/* What kml_model_load() refuses of any model file: @buf is @len bytes. */
static void kml_test_load_refusals(struct kunit *test, const u8 *buf,
				   size_t len)
{
	u8 *bad = kunit_kzalloc(test, len, GFP_KERNEL);
	struct kml_model *l = NULL;
	size_t cut;

	KUNIT_ASSERT_NOT_NULL(test, bad);
	/* truncated at every offset */
	for (cut = 0; cut < len; cut += 7) {
		KUNIT_EXPECT_EQ(test, -EBADMSG, kml_model_load(buf, cut, &l));
		KUNIT_EXPECT_NULL(test, l);
	}
	/* bad magic, version, sizes, checksum */
	memcpy(bad, buf, len);
	bad[0] ^= 1;
	KUNIT_EXPECT_EQ(test, -EINVAL, kml_model_load(bad, len, &l));
	memcpy(bad, buf, len);
	bad[4] = 2;
	KUNIT_EXPECT_EQ(test, -EPROTONOSUPPORT, kml_model_load(bad, len, &l));
	memcpy(bad, buf, len);
	bad[44] = 200;			/* sizes[1] > KML_MAX_WIDTH */
	KUNIT_EXPECT_EQ(test, -E2BIG, kml_model_load(bad, len, &l));
	memcpy(bad, buf, len);
	bad[44] = 15;			/* sizes disagree with payload size */
	KUNIT_EXPECT_EQ(test, -EINVAL, kml_model_load(bad, len, &l));
	memcpy(bad, buf, len);
	bad[100] ^= 0x10;
	KUNIT_EXPECT_EQ(test, -EBADMSG, kml_model_load(bad, len, &l));
	KUNIT_EXPECT_NULL(test, l);
}

static void kml_test_model_load(struct kunit *test)
{
	struct kml_model *m, *l = NULL;
	u8 *buf, *buf2;
	size_t len;

	kml_test_needs(test, KML_HAS_FLOAT, "float models");
	kml_test_needs(test, KML_HAS_TRAIN, "training");
	m = kml_test_model(test, KML_F32, KML_ARCH_MLP);
	len = kml_model_file_size(m);
	buf = kunit_kzalloc(test, len, GFP_KERNEL);
	buf2 = kunit_kzalloc(test, len, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, buf);
	KUNIT_ASSERT_NOT_NULL(test, buf2);
	KUNIT_ASSERT_EQ(test, (long)len, kml_model_save(m, buf, len));

	/* round trip is bit-exact */
	KUNIT_ASSERT_EQ(test, 0, kml_model_load(buf, len, &l));
	KUNIT_EXPECT_EQ(test, (long)len, kml_model_save(l, buf2, len));
	KUNIT_EXPECT_EQ(test, 0, memcmp(buf, buf2, len));
	KUNIT_EXPECT_LE(test, kml_model_footprint(l), (size_t)4096);
	kml_model_free(l);

	kml_test_load_refusals(test, buf, len);
	/* NaN weight with a valid checksum */
	memcpy(buf2, buf, len);
	buf2[64] = 0x00;
	buf2[65] = 0x00;
	buf2[66] = 0xc0;
	buf2[67] = 0x7f;
	kml_test_recrc(buf2, len);
	KUNIT_EXPECT_EQ(test, -EDOM, kml_model_load(buf2, len, &l));
	KUNIT_EXPECT_NULL(test, l);
	kml_model_free(m);
}

/* kml.Model.mlp(4, hidden=[3], activation="tanh", output="sigmoid", normalize=True), trained by libkml.so */
static const u8 kml_user_model[200] = {
	0x4b, 0x4d, 0x4c, 0x4d, 0x01, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x84, 0x00, 0x00, 0x00, 0x90, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xab, 0x24, 0x87, 0x3f, 0x40, 0x64, 0x08, 0x40, 0x29, 0x49, 0x81, 0xbf,
	0xad, 0x24, 0xea, 0x3e, 0x1f, 0x6d, 0x79, 0x3f, 0x00, 0x00, 0x00, 0x00,
	0xc8, 0x62, 0x09, 0x41, 0x00, 0x00, 0x00, 0x00, 0x4d, 0x0c, 0x6d, 0x3e,
	0x00, 0x00, 0x00, 0x00, 0x85, 0x7f, 0x7e, 0x40, 0x00, 0x00, 0x00, 0x00,
	0x57, 0x4c, 0xe0, 0x3f, 0x31, 0xd1, 0xd0, 0xbf, 0xc5, 0x87, 0x50, 0x3f,
	0x74, 0xa2, 0x11, 0x3e, 0x45, 0xca, 0xda, 0x3f, 0x89, 0x02, 0xd2, 0xbf,
	0xef, 0x01, 0x49, 0x3f, 0x35, 0xb3, 0x01, 0x3e, 0x21, 0xa1, 0xdf, 0x3f,
	0x97, 0x3e, 0xca, 0xbf, 0x6d, 0xf0, 0x30, 0x3f, 0x13, 0xca, 0x00, 0x3e,
	0x00, 0xd6, 0x75, 0xbf, 0x46, 0xe9, 0x72, 0xbf, 0xcb, 0x92, 0x68, 0xbf,
	0x16, 0x87, 0x25, 0x40, 0xa5, 0x3a, 0x29, 0x40, 0x49, 0xf6, 0x21, 0x40,
	0x4a, 0xd7, 0x31, 0xbf, 0x66, 0x11, 0x48, 0xe2,
};
/* x = {1.5, 2, -1, 0.5} -> p = 0.2288519 (libkml.so) */
static const u32 kml_user_x[4] = { 0x3fc00000, 0x40000000, 0xbf800000, 0x3f000000 };
static const u32 kml_user_p = 0x3e6a582a;

/* A model file written by the user-space build loads and predicts alike. */
static void kml_test_user_model(struct kunit *test)
{
	struct kml_model *m = NULL;
	u32 p;

	kml_test_needs(test, KML_HAS_FLOAT, "float models");
	KUNIT_ASSERT_EQ(test, 0, kml_model_load(kml_user_model,
						sizeof(kml_user_model), &m));
	KUNIT_ASSERT_EQ(test, 0, kml_model_predict(m, kml_user_x, 1, &p));
	KUNIT_EXPECT_LE_MSG(test, kml_ulps(p, kml_user_p), 4U,
			    "kernel 0x%08x user space 0x%08x", p, kml_user_p);
	KUNIT_EXPECT_LE(test, kml_model_footprint(m), (size_t)4096);
	kml_model_free(m);
}

/*
 * kml.Model.mlp(4, hidden=[3], activation="tanh", output="sigmoid",
 * dtype="fixed", normalize=True), statistics and weights set by libkml.so:
 * what a kernel that only predicts (CONFIG_KML_FLOAT=n, CONFIG_KML_TRAIN=n)
 * can load.  The payload: count, mean[4], var[4] (s64, from byte 88), the
 * weights.
 */
static const u8 kml_q16_model[200] = {
	0x4b, 0x4d, 0x4c, 0x4d, 0x01, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x02, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x84, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x8d, 0x7d, 0x00, 0x00, 0x82, 0xf8, 0xfe, 0xff, 0xdb, 0xf9, 0x01, 0x00,
	0xdf, 0x9e, 0xff, 0xff, 0x69, 0xc3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x8f, 0x90, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2b, 0x42, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0xee, 0x66, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x4e, 0x3c, 0x00, 0x00, 0x0b, 0xc5, 0x00, 0x00, 0x24, 0xbe, 0x00, 0x00,
	0xd0, 0x10, 0x01, 0x00, 0x25, 0xa5, 0x00, 0x00, 0x44, 0xbb, 0xff, 0xff,
	0xe3, 0xf4, 0xff, 0xff, 0x37, 0x65, 0x00, 0x00, 0x74, 0xc0, 0xff, 0xff,
	0x86, 0x70, 0x00, 0x00, 0x42, 0xec, 0x00, 0x00, 0xe8, 0x5b, 0xff, 0xff,
	0x6d, 0x95, 0xfe, 0xff, 0x76, 0xf4, 0x00, 0x00, 0xa3, 0x03, 0x00, 0x00,
	0x23, 0x91, 0x00, 0x00, 0x25, 0xef, 0xfe, 0xff, 0xeb, 0x62, 0x01, 0x00,
	0x45, 0x97, 0x00, 0x00, 0x92, 0x7c, 0x36, 0x81,
};
/* x = {1.5, 2, -1, 0.5} -> p = 5658 / 65536 (libkml.so) */
static const s32 kml_q16_x[4] = { 98304, 131072, -65536, 32768 };
#define KML_Q16_P	5658
#define KML_Q16_VAR0	88

/*
 * The loader on a Q16.16 file, in every kernel: it loads and predicts as
 * libkml.so does, and refuses a file cut short, a bad magic, version or
 * width, sizes that disagree with the payload, a bad checksum, and a
 * variance past KML_Q16_VAR_MAX or below 0.
 */
static void kml_test_q16_model_load(struct kunit *test)
{
	u8 *bad = kunit_kmalloc(test, sizeof(kml_q16_model), GFP_KERNEL);
	struct kml_model *m = NULL;
	s64 var;
	s32 p;

	KUNIT_ASSERT_NOT_NULL(test, bad);
	KUNIT_ASSERT_EQ(test, 0, kml_model_load(kml_q16_model,
						sizeof(kml_q16_model), &m));
	KUNIT_ASSERT_EQ(test, 0, kml_model_predict(m, kml_q16_x, 1, &p));
	KUNIT_EXPECT_EQ(test, p, KML_Q16_P);
	kml_model_free(m);
	kml_test_load_refusals(test, kml_q16_model, sizeof(kml_q16_model));
	/* variances with a valid checksum: the bound, past it, negative */
	memcpy(bad, kml_q16_model, sizeof(kml_q16_model));
	var = KML_Q16_VAR_MAX;
	memcpy(bad + KML_Q16_VAR0, &var, 8);
	kml_test_recrc(bad, sizeof(kml_q16_model));
	KUNIT_ASSERT_EQ(test, 0, kml_model_load(bad, sizeof(kml_q16_model),
						&m));
	kml_model_free(m);
	var = KML_Q16_VAR_MAX + 1;
	memcpy(bad + KML_Q16_VAR0, &var, 8);
	kml_test_recrc(bad, sizeof(kml_q16_model));
	m = NULL;
	KUNIT_EXPECT_EQ(test, -EDOM, kml_model_load(bad, sizeof(kml_q16_model),
						    &m));
	KUNIT_EXPECT_NULL(test, m);
	memset(bad + KML_Q16_VAR0, 0xff, 8);
	kml_test_recrc(bad, sizeof(kml_q16_model));
	KUNIT_EXPECT_EQ(test, -EDOM, kml_model_load(bad, sizeof(kml_q16_model),
						    &m));
	KUNIT_EXPECT_NULL(test, m);
}

/*
 * A kernel built without float models or without training refuses them
 * with -EOPNOTSUPP, and leaves the model it was given unchanged.
 */
static void kml_test_parts_left_out(struct kunit *test)
{
	struct kml_model_cfg cfg = {
		.dtype = KML_F32, .arch = KML_ARCH_LINEAR, .n_layers = 1,
		.sizes = { 8, 1 },
	};
	struct kml_train_cfg tc = {
		.optimizer = KML_OPT_SGD, .loss = KML_LOSS_MSE, .max_batch = 4,
		.lr = KML_Q32_ONE / 10,
	};
	struct kml_model *m = NULL;
	s32 x[8] = { 65536 }, y = 0, before, after;
	u32 fx = 0, fy;
	u8 buf[256];

	if (KML_HAS_FLOAT && KML_HAS_TRAIN)
		kunit_skip(test, "built with float models and training");
	if (!KML_HAS_FLOAT) {
		KUNIT_EXPECT_EQ(test, -EOPNOTSUPP, kml_model_create(&cfg, &m));
		KUNIT_EXPECT_NULL(test, m);
		KUNIT_EXPECT_EQ(test, -EOPNOTSUPP,
				kml_model_load(kml_user_model,
					       sizeof(kml_user_model), &m));
		KUNIT_EXPECT_NULL(test, m);
		KUNIT_EXPECT_EQ(test, -EOPNOTSUPP,
				kml_math_apply(KML_FN_EXP, KML_F32, &fx, &fy, 1));
	}
	if (KML_HAS_TRAIN)
		return;
	m = kml_test_model(test, KML_Q16, KML_ARCH_LINEAR);
	KUNIT_ASSERT_EQ(test, 0, kml_model_predict(m, x, 1, &before));
	KUNIT_EXPECT_EQ(test, -EOPNOTSUPP, kml_model_train_setup(m, &tc));
	KUNIT_EXPECT_EQ(test, -EOPNOTSUPP,
			kml_model_train_batch(m, x, &y, 1, NULL));
	KUNIT_EXPECT_EQ(test, -EOPNOTSUPP,
			kml_model_forward(m, x, 1, &y, NULL));
	KUNIT_EXPECT_EQ(test, -EOPNOTSUPP, kml_model_backward(m, &y, 1));
	KUNIT_EXPECT_EQ(test, -EOPNOTSUPP, kml_model_step(m));
	KUNIT_EXPECT_EQ(test, -EOPNOTSUPP, kml_model_norm_update(m, x, 1));
	KUNIT_EXPECT_EQ(test, -EOPNOTSUPP,
			kml_model_save(m, buf, sizeof(buf)));
	KUNIT_ASSERT_EQ(test, 0, kml_model_predict(m, x, 1, &after));
	KUNIT_EXPECT_EQ(test, before, after);
	kml_model_free(m);
}

static void kml_test_crc32(struct kunit *test)
{
	KUNIT_EXPECT_EQ(test, kml_crc32(0, "123456789", 9), 0xcbf43926U);
}

static void kml_test_ring_counts(struct kunit *test)
{
	struct kml_ring *r;
	u64 produced, consumed, dropped;
	u32 i, v, got = 0;

	KUNIT_ASSERT_EQ(test, 0, kml_ring_create(&r, 8, sizeof(u32),
						 KML_RING_DROP));
	for (i = 0; i < 20; i++)
		kml_ring_push(r, &i);
	while (!kml_ring_pop(r, &v)) {
		KUNIT_EXPECT_EQ(test, v, got);
		got++;
	}
	kml_ring_counters(r, &produced, &consumed, &dropped);
	KUNIT_EXPECT_EQ(test, got, 8U);
	KUNIT_EXPECT_EQ(test, produced, 8ULL);
	KUNIT_EXPECT_EQ(test, consumed, 8ULL);
	KUNIT_EXPECT_EQ(test, dropped, 12ULL);
	kml_ring_destroy(r);

	/* blocking mode never sleeps in the kernel: full ring -> -EAGAIN */
	KUNIT_ASSERT_EQ(test, 0, kml_ring_create(&r, 4, sizeof(u32),
						 KML_RING_BLOCK));
	for (i = 0; i < 4; i++)
		KUNIT_EXPECT_EQ(test, 0, kml_ring_push(r, &i));
	KUNIT_EXPECT_EQ(test, -EAGAIN, kml_ring_push(r, &i));
	KUNIT_EXPECT_EQ(test, 0, kml_ring_pop(r, &v));
	KUNIT_EXPECT_EQ(test, 0, kml_ring_push(r, &i));
	kml_ring_counters(r, &produced, &consumed, &dropped);
	KUNIT_EXPECT_EQ(test, produced, 5ULL);
	KUNIT_EXPECT_EQ(test, consumed, 1ULL);
	KUNIT_EXPECT_EQ(test, dropped, 0ULL);
	kml_ring_destroy(r);
}

/*
 * kml_ring_drops() says "full" exactly when a drop-mode push would drop,
 * and counts the drop as that push would; never in blocking mode.
 */
static void kml_test_ring_drops(struct kunit *test)
{
	u64 produced, consumed, dropped;
	struct kml_ring *r;
	u32 i, v;

	KUNIT_ASSERT_EQ(test, 0, kml_ring_create(&r, 4, sizeof(u32),
						 KML_RING_DROP));
	for (i = 0; i < 4; i++) {
		KUNIT_EXPECT_FALSE(test, kml_ring_drops(r));
		KUNIT_EXPECT_EQ(test, 0, kml_ring_push(r, &i));
	}
	KUNIT_EXPECT_TRUE(test, kml_ring_drops(r));
	KUNIT_EXPECT_EQ(test, -ENOSPC, kml_ring_push(r, &i));
	KUNIT_EXPECT_EQ(test, 0, kml_ring_pop(r, &v));
	KUNIT_EXPECT_FALSE(test, kml_ring_drops(r));
	kml_ring_counters(r, &produced, &consumed, &dropped);
	KUNIT_EXPECT_EQ(test, produced, 4ULL);
	KUNIT_EXPECT_EQ(test, dropped, 2ULL);
	kml_ring_destroy(r);

	KUNIT_ASSERT_EQ(test, 0, kml_ring_create(&r, 2, sizeof(u32),
						 KML_RING_BLOCK));
	for (i = 0; i < 2; i++)
		KUNIT_EXPECT_EQ(test, 0, kml_ring_push(r, &i));
	KUNIT_EXPECT_FALSE(test, kml_ring_drops(r));
	kml_ring_counters(r, &produced, &consumed, &dropped);
	KUNIT_EXPECT_EQ(test, dropped, 0ULL);
	kml_ring_destroy(r);
}

/*
 * A consumer can write the header's positions and counters: kml_ring_check()
 * passes what pushes and pops make and breaks the ring on anything else
 * (more popped than pushed, the tail past the head or a lap behind it).
 */
static void kml_test_ring_check(struct kunit *test)
{
	struct kml_ring_shared *sh;
	struct kml_ring *r;
	u32 i, v;
	s64 head;
	int bad;

	for (bad = 0; bad < 4; bad++) {
		KUNIT_ASSERT_EQ(test, 0, kml_ring_create(&r, 8, sizeof(u32),
							 KML_RING_DROP));
		sh = kml_ring_shared(r);
		for (i = 0; i < 20; i++)
			kml_ring_push(r, &i);
		kml_ring_pop(r, &v);
		KUNIT_EXPECT_TRUE(test, kml_ring_check(r));
		KUNIT_EXPECT_FALSE(test, kml_ring_broken(r));
		head = kml_atomic64_load_relaxed(&sh->head);
		if (bad == 0)		/* the fuzzer's find: a huge popped count */
			kml_atomic64_store_relaxed(&sh->consumed,
						   3980224874770476360LL);
		else if (bad == 1)
			kml_atomic64_store_relaxed(&sh->tail, head + 1);
		else if (bad == 2)
			kml_atomic64_store_relaxed(&sh->tail, head - 9);
		else
			kml_atomic64_store_relaxed(&sh->consumed, -1);
		KUNIT_EXPECT_FALSE(test, kml_ring_check(r));
		KUNIT_EXPECT_TRUE(test, kml_ring_broken(r));
		KUNIT_EXPECT_EQ(test, -EIO, kml_ring_push(r, &i));
		kml_ring_destroy(r);
	}
}

/* attach binds exactly the geometry it validated, whatever the header */
static void kml_test_ring_attach(struct kunit *test)
{
	static const u32 bad_caps[] = { 0, 12, 32, 1U << 25, 0xffffffffU };
	struct kml_ring r, a;
	struct kml_ring_shared *sh;
	size_t bytes = kml_ring_bytes(16, 12);
	u32 i, rec[3] = { 1, 2, 3 };
	void *mem;

	mem = kunit_kzalloc(test, bytes, GFP_KERNEL);
	KUNIT_ASSERT_NOT_ERR_OR_NULL(test, mem);
	KUNIT_ASSERT_EQ(test, 0, kml_ring_init(&r, mem, bytes, 16, 12,
					       KML_RING_DROP));
	sh = mem;
	for (i = 0; i < ARRAY_SIZE(bad_caps); i++) {
		WRITE_ONCE(sh->capacity, bad_caps[i]);
		KUNIT_EXPECT_EQ(test, -EINVAL, kml_ring_attach(&a, mem, bytes));
	}
	WRITE_ONCE(sh->capacity, 16);
	WRITE_ONCE(sh->slot_size, 32);
	KUNIT_EXPECT_EQ(test, -EINVAL, kml_ring_attach(&a, mem, bytes));
	WRITE_ONCE(sh->slot_size, 24);
	KUNIT_EXPECT_EQ(test, -EINVAL, kml_ring_attach(&a, mem, bytes - 1));
	KUNIT_ASSERT_EQ(test, 0, kml_ring_attach(&a, mem, bytes));
	KUNIT_EXPECT_EQ(test, a.mask, 15U);
	KUNIT_EXPECT_EQ(test, a.slot_size, 24U);
	KUNIT_EXPECT_EQ(test, a.record_size, 12U);
	/* the mapper rewriting the header later changes nothing bound */
	WRITE_ONCE(sh->capacity, 0xffffffffU);
	for (i = 0; i < 40; i++)
		kml_ring_push(&a, rec);
	KUNIT_EXPECT_EQ(test, a.mask, 15U);
	for (i = 0; !kml_ring_pop(&a, rec); i++)
		;
	KUNIT_EXPECT_EQ(test, i, 16U);
}

#ifdef CONFIG_KML_IOSCHED
/*
 * mq-deadline's sample ring has one consumer at a time, a /dev/kml mapping
 * or the kernel trainer, and both claim it through the core: a claim is
 * refused to the other owner, and to the same one, until it is released.
 * This is the real ring, so the test skips while something holds it.
 */
static void kml_test_ring_claim(struct kunit *test)
{
	int ret = kml_dd_ring_claim(KML_DD_OWNER_USER);

	if (ret == -ENODEV)
		kunit_skip(test, "no sample ring");
	if (ret == -EBUSY)
		kunit_skip(test, "the sample ring is in use");
	KUNIT_ASSERT_EQ(test, ret, 0);
	KUNIT_EXPECT_EQ(test, kml_dd_ring_claim(KML_DD_OWNER_KERNEL), -EBUSY);
	KUNIT_EXPECT_EQ(test, kml_dd_ring_claim(KML_DD_OWNER_USER), -EBUSY);
	KUNIT_EXPECT_EQ(test, kml_dd_ktrainer_running(), 0);
	kml_dd_ring_release(KML_DD_OWNER_USER);

	KUNIT_ASSERT_EQ(test, kml_dd_ring_claim(KML_DD_OWNER_KERNEL), 0);
	KUNIT_EXPECT_EQ(test, kml_dd_ktrainer_running(), 1);
	KUNIT_EXPECT_EQ(test, kml_dd_ring_claim(KML_DD_OWNER_USER), -EBUSY);
	kml_dd_ring_release(KML_DD_OWNER_KERNEL);
	KUNIT_EXPECT_EQ(test, kml_dd_ktrainer_running(), 0);

	/* released: the first owner claims it again */
	KUNIT_ASSERT_EQ(test, kml_dd_ring_claim(KML_DD_OWNER_USER), 0);
	kml_dd_ring_release(KML_DD_OWNER_USER);
	/* "nobody" is not an owner */
	KUNIT_EXPECT_EQ(test, kml_dd_ring_claim(KML_DD_OWNER_NONE), -EINVAL);
}
#endif

/* ---- several kernel threads producing into one ring, the test consumes */

#define KML_MP_PRODUCERS 4
#define KML_MP_PER 20000

struct kml_mp_producer {
	struct kml_ring *r;
	u32 id;
	u64 pushed;
	u64 refused;
	struct completion done;
};

static int kml_mp_produce(void *arg)
{
	struct kml_mp_producer *p = arg;
	u64 rec[2];
	u32 i;
	int ret;

	for (i = 0; i < KML_MP_PER; i++) {
		rec[0] = p->id;
		rec[1] = i;
		/* process context: retry when the bounded blocking wait gives up */
		while ((ret = kml_ring_push(p->r, rec)) == -EAGAIN)
			cond_resched();
		if (ret)
			p->refused++;
		else
			p->pushed++;
		if (!(i & 255))
			cond_resched();
	}
	kthread_complete_and_exit(&p->done, 0);
}

static void kml_test_ring_mp(struct kunit *test, u32 mode)
{
	struct kml_mp_producer *prod;
	u64 next[KML_MP_PRODUCERS] = { 0 }, rec[2], got = 0, pushed = 0;
	u64 refused = 0, bad = 0, produced, consumed, dropped;
	struct task_struct *t;
	struct kml_ring *r;
	u32 i, started = 0;
	bool all_done;

	prod = kunit_kcalloc(test, KML_MP_PRODUCERS, sizeof(*prod), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, prod);
	KUNIT_ASSERT_EQ(test, 0, kml_ring_create(&r, 64, sizeof(rec), mode));
	for (i = 0; i < KML_MP_PRODUCERS; i++) {
		prod[i].r = r;
		prod[i].id = i;
		init_completion(&prod[i].done);
		t = kthread_run(kml_mp_produce, &prod[i], "kml_mp%u", i);
		if (IS_ERR(t))
			break;
		started++;
	}
	/* no assertion may leave this loop while producers still run */
	do {
		all_done = true;
		for (i = 0; i < started; i++)
			all_done &= completion_done(&prod[i].done);
		while (!kml_ring_pop(r, rec)) {
			got++;
			/* per-producer FIFO, no duplicates */
			if (rec[0] >= KML_MP_PRODUCERS || rec[1] < next[rec[0]])
				bad++;
			else
				next[rec[0]] = rec[1] + 1;
		}
		cond_resched();
	} while (!all_done);
	for (i = 0; i < started; i++) {
		wait_for_completion(&prod[i].done);
		pushed += prod[i].pushed;
		refused += prod[i].refused;
	}
	kml_ring_counters(r, &produced, &consumed, &dropped);
	kml_ring_destroy(r);
	KUNIT_ASSERT_EQ(test, started, (u32)KML_MP_PRODUCERS);
	KUNIT_EXPECT_EQ(test, bad, 0ULL);
	KUNIT_EXPECT_EQ(test, produced, pushed);
	KUNIT_EXPECT_EQ(test, consumed, got);
	KUNIT_EXPECT_EQ(test, consumed, produced);
	KUNIT_EXPECT_EQ(test, dropped, refused);
	KUNIT_EXPECT_EQ(test, produced + dropped,
			(u64)KML_MP_PRODUCERS * KML_MP_PER);
	if (mode == KML_RING_BLOCK)
		KUNIT_EXPECT_EQ(test, dropped, 0ULL);
	kunit_info(test, "mode %u: produced %llu dropped %llu\n", mode,
		   produced, dropped);
}

static void kml_test_ring_mp_drop(struct kunit *test)
{
	kml_test_ring_mp(test, KML_RING_DROP);
}

static void kml_test_ring_mp_block(struct kunit *test)
{
	kml_test_ring_mp(test, KML_RING_BLOCK);
}

#ifdef CONFIG_KML_IOSCHED
/* ------------------------------------------------ decision calibration */

#define KML_CAL_N	400
#define KML_Q16_1	65536

/* The two recalls of "meet iff r <= thr" summed, in units of 2^-20. */
static u64 kml_cal_score(const struct kml_dd_resid *w, u32 n, s32 thr)
{
	u32 n_met = 0, met_below = 0, miss_above = 0, i;

	for (i = 0; i < n; i++) {
		n_met += w[i].met;
		if (w[i].met && w[i].r <= thr)
			met_below++;
		if (!w[i].met && w[i].r > thr)
			miss_above++;
	}
	return div_u64((u64)met_below << 20, n_met) +
	       div_u64((u64)miss_above << 20, n - n_met);
}

static struct kml_dd_resid *kml_cal_window(struct kunit *test)
{
	struct kml_dd_resid *w;

	w = kunit_kcalloc(test, 2 * KML_CAL_N, sizeof(*w), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, w);
	return w;
}

/* Separable classes: the one perfect split, at the middle of the gap. */
static void kml_test_cal_separable(struct kunit *test)
{
	struct kml_dd_resid *w = kml_cal_window(test);
	struct kml_dd_cal_result res;
	s32 thr;
	u32 i;

	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	/* met at -2.0 .. -1.0, missed at 0.5 .. 1.5, interleaved */
	for (i = 0; i < KML_CAL_N; i++) {
		w[i].met = i % 3 != 0;
		w[i].r = w[i].met ? -2 * KML_Q16_1 + (s32)(i * 163) :
				    KML_Q16_1 / 2 + (s32)(i * 163);
	}
	w[1].r = -KML_Q16_1;			/* the largest "met" */
	w[0].r = KML_Q16_1 / 2;			/* the smallest "missed" */
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit(w, KML_CAL_N, w + KML_CAL_N,
					       &res));
	thr = res.thr;
	KUNIT_EXPECT_EQ(test, thr, -KML_Q16_1 / 4);
	KUNIT_EXPECT_EQ(test, kml_cal_score(w, KML_CAL_N, thr), 2ULL << 20);
	KUNIT_EXPECT_EQ(test, res.balanced, KML_DD_CAL_ONE);
	KUNIT_EXPECT_EQ(test, res.accuracy, KML_DD_CAL_ONE);
	KUNIT_EXPECT_EQ(test, res.auc, KML_DD_CAL_ONE);
}

/* Overlapping classes: no threshold scores better than the one chosen. */
static void kml_test_cal_best_split(struct kunit *test)
{
	struct kml_dd_resid *w = kml_cal_window(test), *copy;
	struct kml_dd_cal_result res;
	u32 i, state = 2463534242U;
	u64 best;
	s32 thr;

	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	for (i = 0; i < KML_CAL_N; i++) {
		state ^= state << 13;
		state ^= state >> 17;
		state ^= state << 5;
		/* 70% met; met around -0.5, missed around +0.5, +-1.5 wide */
		w[i].met = state % 10 < 7;
		w[i].r = (w[i].met ? -KML_Q16_1 / 2 : KML_Q16_1 / 2) +
			 (s32)((state >> 8) % (3 * KML_Q16_1)) -
			 3 * KML_Q16_1 / 2;
	}
	copy = kunit_kmalloc(test, KML_CAL_N * sizeof(*w), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, copy);
	memcpy(copy, w, KML_CAL_N * sizeof(*w));
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit(w, KML_CAL_N, w + KML_CAL_N,
					       &res));
	thr = res.thr;
	/* it sorted its scratch copy, not the window */
	KUNIT_EXPECT_EQ(test, memcmp(copy, w, KML_CAL_N * sizeof(*w)), 0);
	/* every split, through a threshold at or just below each residual */
	best = 0;
	for (i = 0; i < KML_CAL_N; i++) {
		best = max(best, kml_cal_score(w, KML_CAL_N, w[i].r));
		best = max(best, kml_cal_score(w, KML_CAL_N, w[i].r - 1));
	}
	KUNIT_EXPECT_EQ(test, kml_cal_score(w, KML_CAL_N, thr), best);
	KUNIT_EXPECT_EQ(test, res.balanced, best / 2);
}

/*
 * The statistics' AUC from score histograms is the calibration's AUC of
 * the same scores: residuals on whole buckets (ties included) give the
 * same figure both ways; with one class empty it is 0.
 */
static void kml_test_cal_auc_hist(struct kunit *test)
{
	struct kml_dd_resid *w = kml_cal_window(test);
	struct kml_dd_cal_result res;
	u64 *met, *missed;
	u32 i, b, state = 88675123U;

	met = kunit_kcalloc(test, 2 * KML_DD_SCORE_BUCKETS, sizeof(u64),
			    GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, met);
	missed = met + KML_DD_SCORE_BUCKETS;
	for (i = 0; i < KML_CAL_N; i++) {
		state ^= state << 13;
		state ^= state >> 17;
		state ^= state << 5;
		/* 30% missed, scoring higher on the whole, 24 buckets wide */
		w[i].met = state % 10 >= 3;
		b = (w[i].met ? 50 : 58) + (state >> 8) % 24;
		w[i].r = ((s32)b - KML_DD_SCORE_BUCKETS / 2) *
			 (1 << KML_DD_SCORE_SHIFT);
		(w[i].met ? met : missed)[b]++;
	}
	/* the calibration's AUC, where it is built (the kernel trainer) */
	if (KML_HAS_KTRAINER) {
		kml_dd_cal_fit(w, KML_CAL_N, w + KML_CAL_N, &res);
		KUNIT_EXPECT_GT(test, res.auc, KML_DD_CAL_ONE / 2);
		KUNIT_EXPECT_LT(test, res.auc, KML_DD_CAL_ONE);
		KUNIT_EXPECT_EQ(test, kml_dd_cal_auc_hist(met, missed,
							  KML_DD_SCORE_BUCKETS),
				res.auc);
	}
	/* every pair in one bucket: a tie, 0.5 */
	memset(met, 0, 2 * KML_DD_SCORE_BUCKETS * sizeof(u64));
	met[7] = 3;
	missed[7] = 5;
	KUNIT_EXPECT_EQ(test, kml_dd_cal_auc_hist(met, missed,
						  KML_DD_SCORE_BUCKETS),
			KML_DD_CAL_ONE / 2);
	/* every missed above every met: 1.0; no missed at all: 0 */
	missed[7] = 0;
	missed[9] = 5;
	KUNIT_EXPECT_EQ(test, kml_dd_cal_auc_hist(met, missed,
						  KML_DD_SCORE_BUCKETS),
			KML_DD_CAL_ONE);
	missed[9] = 0;
	KUNIT_EXPECT_EQ(test, kml_dd_cal_auc_hist(met, missed,
						  KML_DD_SCORE_BUCKETS), 0U);
}

/*
 * The step-aside rule's one judged case without KML_DD_SKILL_MIN_CLASS of
 * each outcome: one outcome absent and 128 weighted wrong calls of the
 * other.  A single occurrence of the rare outcome keeps it inconclusive.
 */
static void kml_test_skill_one_sided(struct kunit *test)
{
	static const struct {
		u32 tn, fp, fn, tp;
		bool judged;
	} cases[] = {
		{ 900, 128, 0, 0, true },	/* nothing missed, false alarms */
		{ 0, 128, 0, 0, true },
		{ 900, 127, 0, 0, false },	/* too few false alarms */
		{ 900, 500, 1, 0, false },	/* one miss: may be luck */
		{ 900, 500, 0, 1, false },
		{ 0, 0, 128, 3, true },		/* nothing met, missed calls */
		{ 1, 0, 500, 0, false },
		{ 0, 0, 127, 0, false },
	};
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(cases); i++)
		KUNIT_EXPECT_EQ_MSG(test,
				    kml_dd_skill_one_sided(cases[i].tn, cases[i].fp,
							   cases[i].fn, cases[i].tp),
				    cases[i].judged, "case %u", i);
}

/* Too few of a class: no calibration; beyond a factor 8: the bound. */
static void kml_test_cal_limits(struct kunit *test)
{
	struct kml_dd_resid *w = kml_cal_window(test);
	struct kml_dd_cal_result res = { .thr = 777 };
	u32 i;

	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	for (i = 0; i < KML_CAL_N; i++) {
		w[i].met = i >= KML_DD_CAL_MIN_CLASS - 1;
		w[i].r = w[i].met ? -KML_Q16_1 : KML_Q16_1;
	}
	KUNIT_EXPECT_FALSE(test, kml_dd_cal_fit(w, KML_CAL_N, w + KML_CAL_N,
						&res));
	KUNIT_EXPECT_EQ(test, res.status, (u32)KML_DD_CAL_FEW_MISSED);
	KUNIT_EXPECT_EQ(test, res.n_missed, (u32)KML_DD_CAL_MIN_CLASS - 1);
	/* every met request far below the range, every miss just inside */
	for (i = 0; i < KML_CAL_N; i++) {
		w[i].met = i % 2;
		w[i].r = w[i].met ? -10 * KML_Q16_1 : -KML_DD_CAL_MAX_LG + 1;
	}
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit(w, KML_CAL_N, w + KML_CAL_N,
					       &res));
	KUNIT_EXPECT_EQ(test, res.thr, -KML_DD_CAL_MAX_LG);
	KUNIT_EXPECT_EQ(test, kml_cal_score(w, KML_CAL_N, res.thr),
			2ULL << 20);
}

/*
 * 1% misses, scored by a model with no skill (the same residuals for both
 * classes) or a backwards one: refused, never a split below chance; with
 * some skill, a split of balanced accuracy above 0.5.
 */
static void kml_test_cal_imbalanced(struct kunit *test)
{
	struct kml_dd_resid *w = kml_cal_window(test);
	struct kml_dd_cal_result res;
	u32 i, state = 99991;

	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	for (i = 0; i < KML_CAL_N; i++) {
		w[i].met = i % 100 != 0;
		w[i].r = (s32)(i % 7) * KML_Q16_1 / 4 - KML_Q16_1;
	}
	/* 4 misses in 400: too few */
	KUNIT_EXPECT_FALSE(test, kml_dd_cal_fit(w, KML_CAL_N, w + KML_CAL_N,
						&res));
	KUNIT_EXPECT_EQ(test, res.status, (u32)KML_DD_CAL_FEW_MISSED);
	/* enough misses, all ranked below the met ones: no skill */
	for (i = 0; i < KML_CAL_N; i++) {
		w[i].met = i >= KML_DD_CAL_MIN_CLASS;
		w[i].r = w[i].met ? KML_Q16_1 : -KML_Q16_1;
	}
	KUNIT_EXPECT_FALSE(test, kml_dd_cal_fit(w, KML_CAL_N, w + KML_CAL_N,
						&res));
	KUNIT_EXPECT_EQ(test, res.status, (u32)KML_DD_CAL_NO_SKILL);
	KUNIT_EXPECT_EQ(test, res.auc, 0U);
	/* noisy but informative: a split above chance */
	for (i = 0; i < KML_CAL_N; i++) {
		state ^= state << 13;
		state ^= state >> 17;
		state ^= state << 5;
		w[i].met = i >= KML_DD_CAL_MIN_CLASS;
		w[i].r = (s32)((state >> 8) % (2 * KML_Q16_1)) - KML_Q16_1 +
			 (w[i].met ? 0 : KML_Q16_1 / 2);
	}
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit(w, KML_CAL_N, w + KML_CAL_N,
					       &res));
	KUNIT_EXPECT_GT(test, res.balanced, KML_DD_CAL_ONE / 2);
	KUNIT_EXPECT_GT(test, res.auc, KML_DD_CAL_ONE / 2);
	KUNIT_EXPECT_EQ(test, kml_cal_score(w, KML_CAL_N, res.thr) / 2,
			(u64)res.balanced);
}

/*
 * The contract of tests/test_calibration_contract.py: libkml.so (kmlbench
 * train) and kmlctl give these same values from the same code, so the
 * three trainers agree.  A fixed sample of residuals: 70% met, classes
 * around -0.5 and +0.5, steps of 2^-8 (ties), every 50th far outside
 * the factor-8 range.
 */
#define KML_CAL_CONTRACT_N		600
#define KML_CAL_CONTRACT_SEED		0x6b6d6c31U
#define KML_CAL_CONTRACT_THR		-65280
#define KML_CAL_CONTRACT_PERMILLE	501

static void kml_cal_contract_sample(struct kml_dd_resid *w)
{
	u32 i, state = KML_CAL_CONTRACT_SEED;

	for (i = 0; i < KML_CAL_CONTRACT_N; i++) {
		state ^= state << 13;
		state ^= state >> 17;
		state ^= state << 5;
		w[i].met = state % 10 < 7;
		w[i].r = (w[i].met ? -KML_Q16_1 / 2 : KML_Q16_1 / 2) +
			 (s32)(((state >> 8) % (3 * KML_Q16_1)) & ~255U) -
			 3 * KML_Q16_1 / 2;
		if (i % 50 == 0)
			w[i].r = w[i].met ? -5 * KML_Q16_1 : 4 * KML_Q16_1;
	}
}

static void kml_test_cal_contract(struct kunit *test)
{
	struct kml_dd_cal_result res;
	struct kml_dd_resid *w;
	u32 permille;
	s32 thr;

	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	w = kunit_kcalloc(test, 2 * KML_CAL_CONTRACT_N, sizeof(*w), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, w);
	kml_cal_contract_sample(w);
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit(w, KML_CAL_CONTRACT_N,
					       w + KML_CAL_CONTRACT_N, &res));
	thr = res.thr;
	KUNIT_EXPECT_EQ(test, thr, KML_CAL_CONTRACT_THR);
	KUNIT_ASSERT_EQ(test, kml_fpu_begin(), 0);
	permille = kml_dd_lg_q16_to_permille(thr);
	kml_fpu_end();
	KUNIT_EXPECT_EQ(test, permille, KML_CAL_CONTRACT_PERMILLE);
}

/*
 * kmlctl calibrate (a model no trainer calibrates) fits on the kernel's
 * score histograms: kml_dd_cal_fit()'s rule on the buckets, at their
 * edges.  Ties go to the split closest to the deadline; too few of a class,
 * no skill and the range are kept to; on residuals that sit on bucket
 * edges it finds the same balanced accuracy, accuracy, AUC and partition
 * as kml_dd_cal_fit().
 */
static void kml_test_cal_fit_hist(struct kunit *test)
{
	const u32 nb = KML_DD_SCORE_BUCKETS, mid = nb / 2;
	struct kml_dd_cal_result res, want;
	struct kml_dd_resid *w;
	u64 *met, *missed;
	u32 i, split;
	s32 k;

	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	met = kunit_kcalloc(test, 2 * nb, sizeof(*met), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, met);
	missed = met + nb;
	/* every split from mid - 3 to mid + 2 separates the same groups */
	met[mid - 4] = 100;
	met[mid + 2] = 10;
	missed[mid - 4] = 5;
	missed[mid + 2] = 35;
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit_hist(met, missed, nb, 0, nb,
						    &split, &res));
	KUNIT_EXPECT_EQ(test, split, mid);
	KUNIT_EXPECT_EQ(test, res.status, (u32)KML_DD_CAL_OK);
	KUNIT_EXPECT_EQ(test, res.balanced,
			(u32)((((u64)100 << 20) / 110 + ((u64)35 << 20) / 40) / 2));
	/* outside [lo, hi] the split is not taken: the best left is "all" */
	KUNIT_EXPECT_FALSE(test, kml_dd_cal_fit_hist(met, missed, nb,
						     mid + 3, nb, &split, &res));
	KUNIT_EXPECT_EQ(test, res.status, (u32)KML_DD_CAL_NO_SKILL);
	/* too few misses; no skill */
	missed[mid + 2] = KML_DD_CAL_MIN_CLASS - 6;
	KUNIT_EXPECT_FALSE(test, kml_dd_cal_fit_hist(met, missed, nb, 0, nb,
						     &split, &res));
	KUNIT_EXPECT_EQ(test, res.status, (u32)KML_DD_CAL_FEW_MISSED);
	/* refused, with the AUC all the same, as kml_dd_cal_fit() gives it */
	KUNIT_EXPECT_GT(test, res.auc, 0U);
	KUNIT_EXPECT_EQ(test, res.auc, kml_dd_cal_auc_hist(met, missed, nb));
	memcpy(missed, met, nb * sizeof(*met));
	KUNIT_EXPECT_FALSE(test, kml_dd_cal_fit_hist(met, missed, nb, 0, nb,
						     &split, &res));
	KUNIT_EXPECT_EQ(test, res.status, (u32)KML_DD_CAL_NO_SKILL);

	/* the contract's residuals, down to their buckets' edges */
	memset(met, 0, 2 * nb * sizeof(*met));
	w = kunit_kcalloc(test, 2 * KML_CAL_CONTRACT_N, sizeof(*w), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, w);
	kml_cal_contract_sample(w);
	for (i = 0; i < KML_CAL_CONTRACT_N; i++) {
		u8 b = kml_dd_score_bucket(w[i].r);

		w[i].r = ((s32)b - (s32)mid) * (1 << KML_DD_SCORE_SHIFT);
		if (w[i].met)
			met[b]++;
		else
			missed[b]++;
	}
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit(w, KML_CAL_CONTRACT_N,
					       w + KML_CAL_CONTRACT_N, &want));
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit_hist(met, missed, nb, mid - 24,
						    mid + 24, &split, &res));
	KUNIT_EXPECT_EQ(test, res.balanced, want.balanced);
	KUNIT_EXPECT_EQ(test, res.accuracy, want.accuracy);
	KUNIT_EXPECT_EQ(test, res.auc, want.auc);
	/* and the same requests on each side of the two thresholds */
	for (i = 0, k = 0; i < KML_CAL_CONTRACT_N; i++)
		k += w[i].r <= want.thr;
	for (i = 0; i < split; i++)
		k -= met[i] + missed[i];
	KUNIT_EXPECT_EQ(test, k, 0);
}

/*
 * The trainers' window keeps each class apart (struct kml_dd_cal): with
 * one miss in a hundred, a ring of the last KML_DD_CAL_WINDOW residuals
 * held about 20 misses and never calibrated.  Each class keeps its last
 * KML_DD_CAL_CLASS, and the fit sees both.
 */
static void kml_test_cal_window(struct kunit *test)
{
	const u32 n = 100 * KML_DD_CAL_MIN_CLASS;
	struct kml_dd_resid r, five[5];
	struct kml_dd_cal_result res;
	struct kml_dd_sample *s;
	struct kml_dd_cal *c;
	s32 met_max = S32_MIN;
	u32 i, kept = 0;

	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	c = kunit_kzalloc(test, sizeof(*c), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, c);
	/* meets below -1, misses above +1, each further out the later */
	for (i = 0; i < n; i++) {
		r.met = i % 100 != 99;
		r.r = r.met ? -KML_Q16_1 - (s32)i : KML_Q16_1 + (s32)i;
		kml_dd_cal_add(c, &r, NULL, 1);
	}
	KUNIT_EXPECT_EQ(test, c->n[0], (u32)KML_DD_CAL_MIN_CLASS);
	KUNIT_EXPECT_EQ(test, c->n[1], (u32)KML_DD_CAL_CLASS);
	/* the meets kept are the last KML_DD_CAL_CLASS: the oldest is i */
	for (i = n; kept < KML_DD_CAL_CLASS; )
		kept += --i % 100 != 99;
	for (kept = 0; kept < c->n[1]; kept++)
		met_max = max(met_max, c->r[1][kept].r);
	KUNIT_EXPECT_EQ(test, met_max, -KML_Q16_1 - (s32)i);
	KUNIT_ASSERT_TRUE(test, kml_dd_cal_fit_window(c, &res));
	KUNIT_EXPECT_EQ(test, res.n_met, (u32)KML_DD_CAL_CLASS);
	KUNIT_EXPECT_EQ(test, res.n_missed, (u32)KML_DD_CAL_MIN_CLASS);
	KUNIT_EXPECT_EQ(test, res.balanced, KML_DD_CAL_ONE);
	KUNIT_EXPECT_GT(test, res.thr, met_max);
	KUNIT_EXPECT_LT(test, res.thr, KML_Q16_1 + 99);
	/* a class's ring wraps on its own: the misses' now hold the last */
	r.met = 0;
	for (i = 0; i < 2 * KML_DD_CAL_CLASS; i++) {
		r.r = (s32)i;
		kml_dd_cal_add(c, &r, NULL, 1);
	}
	KUNIT_EXPECT_EQ(test, c->n[0], (u32)KML_DD_CAL_CLASS);
	KUNIT_EXPECT_EQ(test, c->n[1], (u32)KML_DD_CAL_CLASS);
	for (i = 0; i < KML_DD_CAL_CLASS; i++)
		KUNIT_EXPECT_GE(test, c->r[0][i].r, (s32)KML_DD_CAL_CLASS);
	/*
	 * What active mode acted on is left out; a holdout stands for
	 * itself and the KML_DD_SKILL_HOLDOUT - 1 acted on.
	 */
	memset(c, 0, sizeof(*c));
	s = kunit_kcalloc(test, ARRAY_SIZE(five), sizeof(*s), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, s);
	s[0].flags = KML_DD_SAMPLE_STEERED;
	s[1].flags = KML_DD_SAMPLE_STEERED | KML_DD_SAMPLE_URGENT;
	s[2].flags = KML_DD_SAMPLE_URGENT;
	s[3].flags = KML_DD_SAMPLE_HOLDOUT;
	s[4].flags = KML_DD_SAMPLE_HOLDOUT;
	five[0] = (struct kml_dd_resid){ .r = 1, .met = 1 };
	five[1] = (struct kml_dd_resid){ .r = 2, .met = 0 };
	five[2] = (struct kml_dd_resid){ .r = 5, .met = 1 };
	five[3] = (struct kml_dd_resid){ .r = 3, .met = 0 };
	five[4] = (struct kml_dd_resid){ .r = 4, .met = 1 };
	kml_dd_cal_add(c, five, s, ARRAY_SIZE(five));
	KUNIT_EXPECT_EQ(test, c->n[0], (u32)KML_DD_SKILL_HOLDOUT);
	KUNIT_EXPECT_EQ(test, c->n[1], (u32)KML_DD_SKILL_HOLDOUT);
	for (i = 0; i < KML_DD_SKILL_HOLDOUT; i++) {
		KUNIT_EXPECT_EQ(test, c->r[0][i].r, 3);
		KUNIT_EXPECT_EQ(test, c->r[1][i].r, 4);
	}
}

/* Targets: issue_ns -> lg(issue us), float bits (kml_dd_targets()). */
static const u64 kml_target_ns[] = {
	0, 1, 999, 1000, 7000, 123456, 8000000, 20000000, 1000000000,
	3000000000000ULL,
};

static const u32 kml_target_bits[] = {
	0x00000000, 0x3abd02e3, 0x3f7fd0b8, 0x3f800000, 0x40400000,
	0x40deb428, 0x414f7497, 0x41649ac4, 0x419f73db, 0x41fbdbc8,
};

/* Residuals: prediction (float bits), deadline, issue -> r, met. */
static const struct {
	u32 yhat;
	u64 deadline_ns, issue_ns;
	s32 r;
	u32 met;
} kml_resid_cases[] = {
	{ 0x41200000, 8000000, 7000000, -194377, 1 },	/* 10 */
	{ 0x41200000, 20000000, 30000000, -281004, 0 },
	{ 0x00000000, 0, 0, 0, 1 },
	{ 0x7fc00000, 500000, 1, 64 << 16, 1 },		/* NaN: a miss */
	{ 0xc2c80000, 500000, 600000, -64 << 16, 0 },	/* -100 */
	{ 0x42c80000, 500000, 0, 64 << 16, 1 },		/* 100 */
	{ 0x40400000, 7000, 7000, 0, 1 },		/* 3: lg(7 us) */
};

static void kml_test_dd_target_contract(struct kunit *test)
{
	u32 nt = ARRAY_SIZE(kml_target_ns), nr = ARRAY_SIZE(kml_resid_cases);
	u32 y[ARRAY_SIZE(kml_target_ns)], yhat[ARRAY_SIZE(kml_resid_cases)];
	struct kml_dd_resid r[ARRAY_SIZE(kml_resid_cases)];
	struct kml_dd_sample *s;
	u32 i;

	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	s = kunit_kcalloc(test, nt + nr, sizeof(*s), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, s);
	for (i = 0; i < nt; i++)
		s[i].issue_ns = kml_target_ns[i];
	for (i = 0; i < nr; i++) {
		s[nt + i].deadline_ns = kml_resid_cases[i].deadline_ns;
		s[nt + i].issue_ns = kml_resid_cases[i].issue_ns;
		yhat[i] = kml_resid_cases[i].yhat;
	}
	KUNIT_ASSERT_EQ(test, kml_fpu_begin(), 0);
	kml_dd_targets(s, nt, (float *)y);
	kml_dd_residuals((const float *)yhat, s + nt, nr, r);
	kml_fpu_end();
	for (i = 0; i < nt; i++)
		KUNIT_EXPECT_EQ_MSG(test, y[i], kml_target_bits[i],
				    "issue_ns %llu", kml_target_ns[i]);
	for (i = 0; i < nr; i++) {
		KUNIT_EXPECT_EQ_MSG(test, r[i].r, kml_resid_cases[i].r,
				    "case %u", i);
		KUNIT_EXPECT_EQ_MSG(test, r[i].met, kml_resid_cases[i].met,
				    "case %u", i);
	}
}

/*
 * The inverse and the call: prediction, deadline, permille -> issue_ns, met
 * (kml_dd_decide() for float bits, kml_dd_decide_q16() for Q16 outputs).
 */
struct kml_decide_case {
	u32 y;
	u64 deadline_ns;
	u32 permille;
	s64 issue_ns;
	u8 met;
};

static const struct kml_decide_case kml_decide_cases[] = {
	{ 0x41200000, 1023000, 1000, 1023000, 1 },	/* 10: at the limit */
	{ 0x41200000, 1022999, 1000, 1023000, 0 },
	{ 0x41200000, 2045999, 500, 1023000, 0 },	/* limit rounded down */
	{ 0x41200000, 1000000, 1023, 1023000, 1 },
	{ 0x41200000, 1000000, 1022, 1023000, 0 },
	{ 0x40600000, 10313, 1000, 10313, 1 },		/* 3.5: ns truncated */
	{ 0x41a00000, 1048575000, 1000, 1048574976, 1 },	/* 20 */
	{ 0x41a00000, 1048576000, 1000, 1048574976, 1 },
	{ 0x7fc00000, 1000000000000ULL, 64000, -1, 0 },	/* NaN: a miss */
	{ 0x00000000, 0, 1000, 0, 1 },
	{ 0xc2c80000, 0, 1, 0, 1 },			/* -100 */
	{ 0x42c80000, 3000000000000ULL, 64000, 1099511761993728LL, 0 },
};

static const struct kml_decide_case kml_decide_q16_cases[] = {
	{ 655360, 1023000, 1000, 1023000, 1 },		/* 10 */
	{ 655360, 1022999, 1000, 1023000, 0 },
	{ 229376, 10313, 1000, 11000, 0 },		/* 3.5: mantissa linear */
	{ 229376, 11000, 1000, 11000, 1 },
	{ 0, 0, 1000, 0, 1 },
	{ 0xfffffffb, 0, 1000, 0, 1 },			/* -5 */
	{ 0x7fffffff, 3000000000000ULL, 64000, 2199006478335000LL, 0 },
	{ 1, 0, 1000, 0, 1 },
};

static void kml_test_decide_cases(struct kunit *test,
				  const struct kml_decide_case *c, u32 n,
				  bool q16)
{
	s64 issue_ns;
	u64 d;
	u32 i;
	u8 met;

	for (i = 0; i < n; i++) {
		d = c[i].deadline_ns;
		if (q16 || !KML_HAS_KTRAINER) {
			/* without the trainer only the Q16 half is called */
			kml_dd_decide_q16((const s32 *)&c[i].y, &d, 1,
					  c[i].permille, &issue_ns, &met);
		} else {
			KUNIT_ASSERT_EQ(test, kml_fpu_begin(), 0);
			kml_dd_decide((const float *)&c[i].y, &d, 1,
				      c[i].permille, &issue_ns, &met);
			kml_fpu_end();
		}
		KUNIT_EXPECT_EQ_MSG(test, issue_ns, c[i].issue_ns,
				    "q16 %d case %u", q16, i);
		KUNIT_EXPECT_EQ_MSG(test, met, c[i].met, "q16 %d case %u", q16,
				    i);
		KUNIT_EXPECT_EQ_MSG(test, kml_dd_meets(c[i].issue_ns, d,
						       c[i].permille),
				    (bool)c[i].met, "q16 %d case %u", q16, i);
	}
}

/* active mode's decision: every kernel has it */
static void kml_test_dd_decide_q16_contract(struct kunit *test)
{
	kml_test_decide_cases(test, kml_decide_q16_cases,
			      ARRAY_SIZE(kml_decide_q16_cases), true);
}

/* the float one the trainers calibrate with */
static void kml_test_dd_decide_contract(struct kunit *test)
{
	kml_test_needs(test, KML_HAS_KTRAINER, "the kernel trainer");
	kml_test_decide_cases(test, kml_decide_cases,
			      ARRAY_SIZE(kml_decide_cases), false);
}

/*
 * Active mode predicting lazily keeps a request's feature inputs and what it
 * saw of the queue's state at insert, and computes its features when a
 * dispatch first reads its prediction, the queue having moved on.  Both
 * ways must give the features the kernel computed in one step before they
 * were split (commit ab7d0ea's kml_dd_feat_insert(), run on these inputs):
 * no FIFO head, no insert before, a clock behind, negative counts, a
 * capacity of 0.
 */
static void kml_test_dd_feat_take(struct kunit *test)
{
	static const struct kml_dd_feat_in ins[] = {
		{ .insert_ns = 5000000, .sector = 123456, .capacity = 1 << 20,
		  .deadline_ns = 8000000, .head_insert_ns = 1000000,
		  .bytes = 4096, .queued = { 7, 2 }, .inflight = 1,
		  .op = 0, .same_dir = 1, .has_head = 1 },
		{ .insert_ns = 9000000, .sector = 900000, .capacity = 1 << 20,
		  .deadline_ns = 500000000, .bytes = 131072,
		  .queued = { 0, 40 }, .inflight = 31, .op = 1 },
		{ .insert_ns = 9000001, .sector = 77, .deadline_ns = 1,
		  .bytes = 512, .queued = { 3, 0 }, .op = 0, .has_head = 1,
		  .head_insert_ns = 9000002 },	/* clock behind: age 0 */
		{ .insert_ns = 3000000, .sector = 5000, .capacity = 4096,
		  .deadline_ns = 20000000, .bytes = 8192, .queued = { -1, 5 },
		  .inflight = -2, .op = 1, .same_dir = 1 },
	};
	static const s32 want[][KML_DD_NR_FEATURES] = {
		{ 0, 7716, 786448, 196608, 98304, 65536, 1104497, 652416,
		  848912, 535808, 237568, 65536, 783392, 1000 },
		{ 65536, 56250, 1114112, 346112, 0, 327680, 1291898, 800912,
		  1239112, 832912, 237568, 0, 0, 40000 },
		{ 0, 0, 589952, 131072, 0, 0, 712960, 800912, 0, 535808,
		  237568, 0, 0, 1000 },
		/* ins[3], no insert before */
		{ 65536, 65536, 851976, 163840, 4194304, 4194303, 751392, 0,
		  931972, 832912, 237568, 65536, 0, 40000 },
		/* ins[3], the insert before it later on the clock */
		{ 65536, 65536, 851976, 163840, 4194304, 4194303, 751392, 0,
		  931972, 832912, 237568, 65536, 0, 40000 },
	};
	const struct kml_dd_feat_state st = {
		.last_insert_ns = 4000000, .last_end = 2000,
		.issue_ewma_ns = { 300000, 7000000 },
		.dispatch_gap_ewma_ns = 12000, .miss_ewma = { 1000, 40000 },
	};
	struct kml_dd_feat_state eager, lazy;
	s32 one[KML_DD_NR_FEATURES], two[KML_DD_NR_FEATURES];
	const struct kml_dd_feat_in *in;
	struct kml_dd_feat_seen seen, other_seen;
	struct kml_dd_feat_in later;
	unsigned int i, j;

	for (i = 0; i < ARRAY_SIZE(want); i++) {
		in = &ins[min_t(unsigned int, i, ARRAY_SIZE(ins) - 1)];
		eager = st;
		if (i == 3)
			eager.last_insert_ns = 0;
		lazy = eager;
		kml_dd_feat_insert(&eager, in, one);
		kml_dd_feat_take(&lazy, in, &seen);
		KUNIT_EXPECT_EQ(test, lazy.last_insert_ns, in->insert_ns);
		KUNIT_EXPECT_EQ(test, eager.last_insert_ns, in->insert_ns);
		/* the queue moves on: a dispatch and another insert */
		kml_dd_feat_dispatch(&lazy, !in->op, 555555, 65536,
				     in->insert_ns - 100000, 1000,
				     in->insert_ns + 5000);
		later = *in;
		later.insert_ns += 7000;
		later.op = !later.op;
		kml_dd_feat_take(&lazy, &later, &other_seen);
		kml_dd_feat_compute(in, &seen, two);
		for (j = 0; j < KML_DD_NR_FEATURES; j++) {
			KUNIT_EXPECT_EQ_MSG(test, one[j], want[i][j],
					    "insert, case %u, feature %u", i, j);
			KUNIT_EXPECT_EQ_MSG(test, two[j], want[i][j],
					    "take, case %u, feature %u", i, j);
		}
	}
}
#endif /* CONFIG_KML_IOSCHED */

#ifdef CONFIG_KML_IOSCHED
/*
 * A Q16 deadline model, linear (@hidden 0) or with @hidden ReLU units:
 * weights, biases and running statistics.
 */
static struct kml_model *kml_test_dd_small(struct kunit *test, u32 norm,
					   u32 hidden)
{
	struct kml_model_cfg cfg = {
		.dtype = KML_Q16, .norm = norm, .arch = KML_ARCH_LINEAR,
		.n_layers = 1, .sizes = { KML_DD_NR_FEATURES, 1 },
	};
	s32 x[4 * KML_DD_NR_FEATURES], *p;
	struct kml_model *m = NULL;
	u32 i, n;

	if (hidden) {
		cfg.arch = KML_ARCH_MLP;
		cfg.hidden_act = KML_ACT_RELU;
		cfg.n_layers = 2;
		cfg.sizes[1] = hidden;
		cfg.sizes[2] = 1;
	}
	KUNIT_ASSERT_EQ(test, 0, kml_model_create(&cfg, &m));
	p = kml_model_params(m);
	n = kml_model_n_params(m);
	for (i = 0; i < n; i++)		/* -1.5 .. 1.75, and a 9.19 bias */
		p[i] = ((s32)((i * 5) % 14) - 6) * (KML_Q16_ONE / 4);
	p[n - 1] = 9 * KML_Q16_ONE + 12345;
	/* features like the kernel's: lg values up to 20, flags 0 or 1 */
	for (i = 0; i < ARRAY_SIZE(x); i++)
		x[i] = (s32)((i * 7919) % (20 << 16));
	if (norm == KML_NORM_NONE)
		return m;
	if (KML_HAS_TRAIN) {
		KUNIT_ASSERT_EQ(test, 0, kml_model_norm_update(m, x, 4));
	} else {
		/*
		 * A kernel that cannot fit them gets them from a model file;
		 * a prediction reads the mean and the scale.
		 */
		for (i = 0; i < KML_DD_NR_FEATURES; i++) {
			((s32 *)m->norm_mean)[i] = x[i];
			((s32 *)m->norm_scale)[i] = KML_Q16_ONE / (i + 2);
		}
	}
	return m;
}

/*
 * How far the compiled model may be from the library's Q16 inference: the
 * library rounds each normalised input to 16 fraction bits, which moves a
 * first-layer sum by up to half a unit of each |w|, and the folded weights
 * with @frac fraction bits move it by up to 2^(22 - frac) for each feature
 * (its weight and its mean); a hidden unit carries that, plus its own
 * rounding, through its output weight.
 */
static s64 kml_test_dd_bound(struct kml_model *m, u32 hidden, u32 frac)
{
	const s32 *p = kml_model_params(m);
	u32 rows = hidden ? hidden : 1, j, i;
	s64 row, bound = 2;

	for (j = 0; j < rows; j++) {
		row = 2;
		for (i = 0; i < KML_DD_NR_FEATURES; i++)
			row += abs(p[j * KML_DD_NR_FEATURES + i]) /
			       (2 * KML_Q16_ONE) + 1 + ((1LL << 22) >> frac);
		bound += hidden ?
			 row * abs(p[rows * (KML_DD_NR_FEATURES + 1) + j]) /
			 KML_Q16_ONE + 1 : row;
	}
	return bound;
}

/* The compiled model against the library's Q16 inference, 64 feature rows. */
static void kml_test_dd_fast_agree(struct kunit *test, struct kml_model *m,
				   const struct kml_dd_fast *f)
{
	s64 diff, bound = kml_test_dd_bound(m, f->hidden, f->frac);
	s32 x[KML_DD_NR_FEATURES], ref;
	u32 r, i;

	for (r = 0; r < 64; r++) {
		for (i = 0; i < KML_DD_NR_FEATURES; i++)
			x[i] = (s32)(((r + 3) * (i + 11) * 104729) %
				     (kml_dd_feat_max(i) + 1));
		KUNIT_ASSERT_EQ(test, 0, kml_model_predict(m, x, 1, &ref));
		diff = abs(kml_dd_fast_predict(f, x) - ref);
		KUNIT_EXPECT_LE_MSG(test, diff, bound,
				    "hidden %u norm %u frac %u row %u",
				    f->hidden, m->cfg.norm, f->frac, r);
	}
}

/*
 * The compiled model agrees with the library's Q16 inference (whose
 * agreement with the float path kml_test_fixed_vs_float checks) within
 * kml_test_dd_bound(); what cannot be compiled is left to the library.
 */
static void kml_test_dd_fast_compile(struct kunit *test)
{
	static const u32 hidden[] = { 0, 4, KML_DD_FAST_HIDDEN };
	struct kml_dd_fast *f;
	struct kml_model *m;
	u32 norm, h, i, j;
	s32 *p, *w2;

	f = kunit_kzalloc(test, sizeof(*f), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, f);
	for (h = 0; h < ARRAY_SIZE(hidden); h++) {
		for (norm = KML_NORM_NONE; norm <= KML_NORM_STANDARD; norm++) {
			m = kml_test_dd_small(test, norm, hidden[h]);
			KUNIT_ASSERT_TRUE(test, kml_dd_fast_compile(m, f));
			KUNIT_EXPECT_EQ(test, f->hidden, hidden[h]);
			KUNIT_EXPECT_EQ(test, f->frac, KML_DD_FAST_FRAC);
			kml_test_dd_fast_agree(test, m, f);
			if (norm == KML_NORM_NONE) {
				kml_model_free(m);
				continue;
			}
			/*
			 * A feature that hardly varies is scaled up: 320 times
			 * its weights of 1.25 fold with 22 fraction bits.
			 */
			((s32 *)m->norm_scale)[KML_DD_F_LG_INFLIGHT] =
				320 * KML_Q16_ONE;
			KUNIT_ASSERT_TRUE(test, kml_dd_fast_compile(m, f));
			KUNIT_EXPECT_EQ(test, f->frac, 22);
			kml_test_dd_fast_agree(test, m, f);
			/* 2^31 times 2: not even with KML_DD_FAST_FRAC_MIN */
			((s32 *)m->norm_scale)[3] = 2 * KML_Q16_ONE;
			p = kml_model_params(m);
			p[3] = S32_MAX;
			KUNIT_EXPECT_FALSE(test, kml_dd_fast_compile(m, f));
			((s32 *)m->norm_scale)[3] = KML_Q16_ONE;
			KUNIT_EXPECT_TRUE(test, kml_dd_fast_compile(m, f));
			KUNIT_EXPECT_EQ(test, f->frac, KML_DD_FAST_FRAC_MIN);
			kml_model_free(m);
		}
	}
	/* too wide, not ReLU, float, or deeper: the library's */
	m = kml_test_dd_small(test, KML_NORM_NONE, KML_DD_FAST_HIDDEN + 1);
	KUNIT_EXPECT_FALSE(test, kml_dd_fast_compile(m, f));
	kml_model_free(m);
	m = kml_test_dd_small(test, KML_NORM_NONE, 4);
	KUNIT_ASSERT_TRUE(test, kml_dd_fast_compile(m, f));
	m->cfg.hidden_act = KML_ACT_TANH;
	KUNIT_EXPECT_FALSE(test, kml_dd_fast_compile(m, f));
	m->cfg.hidden_act = KML_ACT_RELU;
	m->cfg.dtype = KML_F32;
	KUNIT_EXPECT_FALSE(test, kml_dd_fast_compile(m, f));
	m->cfg.dtype = KML_Q16;
	/*
	 * A unit is clamped where the library saturates it, S32_MAX, and at
	 * its most (kml_dd_feat_max(): a flag reaches 1.0, an lg() 64):
	 * units 1 to 3 at 127 on each lg() reach 2^32.3, past the library's
	 * saturation, and agree with it there; at 127 on each flag 2^25.
	 * The output sum must stay within 63 bits: three such units through
	 * output weights of 2^31 could pass it, one could not.
	 */
	p = kml_model_params(m);
	w2 = p + m->w_off[1];
	for (j = 1; j < 4; j++)
		for (i = 0; i < KML_DD_NR_FEATURES; i++)
			p[j * KML_DD_NR_FEATURES + i] =
				kml_dd_feat_max(i) == KML_Q16_ONE ?
				0 : (128 - j) * KML_Q16_ONE;
	w2[1] = KML_Q16_ONE;
	w2[2] = -KML_Q16_ONE;
	KUNIT_ASSERT_TRUE(test, kml_dd_fast_compile(m, f));
	KUNIT_EXPECT_EQ(test, f->h_max[1], S32_MAX);
	kml_test_dd_fast_agree(test, m, f);
	w2[1] = w2[2] = w2[3] = S32_MAX;
	KUNIT_EXPECT_FALSE(test, kml_dd_fast_compile(m, f));
	w2[2] = w2[3] = KML_Q16_ONE;
	KUNIT_EXPECT_TRUE(test, kml_dd_fast_compile(m, f));
	for (i = 0; i < KML_DD_NR_FEATURES; i++)
		p[KML_DD_NR_FEATURES + i] = kml_dd_feat_max(i) == KML_Q16_ONE ?
					    127 * KML_Q16_ONE : 0;
	KUNIT_EXPECT_TRUE(test, kml_dd_fast_compile(m, f));
	KUNIT_EXPECT_LT(test, f->h_max[1], 1 << 26);
	kml_model_free(m);
	m = kml_test_model(test, KML_Q16, KML_ARCH_MLP);
	KUNIT_EXPECT_FALSE(test, kml_dd_fast_compile(m, f));
	kml_model_free(m);
}
#endif

#ifdef CONFIG_KML_IOSCHED_COST
/*
 * Policy cost's choice asks where the head is before it prices anything:
 * after a switch of policy or device (kml_dd_relearn()), that question
 * forgets what the queue learned, so that not even the first choice is
 * priced by the tables of before.  Asked again with nothing switched, it
 * forgets nothing.
 */
static void kml_test_dd_head_relearns(struct kunit *test)
{
	struct kml_dd_queue *kq = kunit_kzalloc(test, sizeof(*kq), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, kq);
	kml_dd_head(kq);	/* learn under the present generation */
	kq->svc_ns[3] = 123456;
	kq->svc_lo_ns[3] = 100000;
	kq->svc_missed = 1 << 15;
	kq->svc_wait_ns = 5 * NSEC_PER_MSEC;
	kq->svc_wait_n = 7;
	kq->chan_busy_until[1] = 99;
	kq->head = 2048;
	kq->head_known = true;
	KUNIT_EXPECT_EQ(test, (u64)kml_dd_head(kq), 2048ULL);
	KUNIT_EXPECT_EQ(test, kq->svc_ns[3], 123456U);
	KUNIT_EXPECT_TRUE(test, kq->head_known);

	/* as a parameter's writer does: KML is built in, its lock is NULL's */
	kernel_param_lock(NULL);
	kml_dd_relearn();
	kernel_param_unlock(NULL);
	KUNIT_EXPECT_EQ(test, (u64)kml_dd_head(kq), 2048ULL);
	KUNIT_EXPECT_EQ(test, kq->svc_ns[3], 0U);
	KUNIT_EXPECT_EQ(test, kq->svc_lo_ns[3], 0U);
	KUNIT_EXPECT_EQ(test, kq->svc_missed, 0U);
	KUNIT_EXPECT_EQ(test, kq->svc_wait_ns, 0ULL);
	KUNIT_EXPECT_EQ(test, kq->svc_wait_n, 0U);
	KUNIT_EXPECT_EQ(test, kq->chan_busy_until[1], 0ULL);
	KUNIT_EXPECT_FALSE(test, kq->head_known);
}

/*
 * The parameters policy cost's flash cases set.  kml_test_flash_begin()
 * saves them and leaves all of them 0 but a flash device's channels (8,
 * striped every 8 sectors), a shift of 3 and all of a request's own time
 * counted; kml_test_flash_end() puts them back.  No check in between
 * aborts a case, so they are put back however it ends.
 */
static unsigned int *const kml_test_flash_params[] = {
	&kml_dd.cost_rev_ns, &kml_dd.cost_track_sectors,
	&kml_dd.cost_cyl_sectors, &kml_dd.cost_channels,
	&kml_dd.cost_stripe_sectors, &kml_dd.cost_age_shift,
	&kml_dd.cost_late_permille, &kml_dd.cost_horizon_ms,
	&kml_dd.cost_miss_budget_permille, &kml_dd.cost_svc_permille,
	&kml_dd.cost_window_permille, &kml_dd.cost_wait_cap_permille,
	&kml_dd.cost_wait_ramp_permille, &kml_dd.cost_wait_bound_permille,
	&kml_dd.cost_seek_a_ns, &kml_dd.cost_seek_b_ns,
	&kml_dd.cost_seek_boundary, &kml_dd.cost_seek_c_ns,
	&kml_dd.cost_seek_e_ns,
};

static void kml_test_flash_begin(unsigned int *saved)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(kml_test_flash_params); i++) {
		saved[i] = READ_ONCE(*kml_test_flash_params[i]);
		WRITE_ONCE(*kml_test_flash_params[i], 0);
	}
	WRITE_ONCE(kml_dd.cost_channels, 8);
	WRITE_ONCE(kml_dd.cost_stripe_sectors, 8);
	WRITE_ONCE(kml_dd.cost_age_shift, 3);
	WRITE_ONCE(kml_dd.cost_svc_permille, 1000);
}

static void kml_test_flash_end(const unsigned int *saved)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(kml_test_flash_params); i++)
		WRITE_ONCE(*kml_test_flash_params[i], saved[i]);
}

/*
 * Policy cost's candidates (kml_dd_cost_span()): untold, the one request
 * each side of the head; told a flash device's channels, the 16 oldest;
 * told a disk's geometry, 8 each side of the head.  With a window of 62
 * thousandths of those in flight, rounded up, told either, the oldest: one
 * under 16 in flight (and under fewer, never none), two under 17, four
 * under 64, and under 1000 in flight 62; 1000 thousandths is every one.
 */
static void kml_test_dd_cost_window(struct kunit *test)
{
	unsigned int saved[ARRAY_SIZE(kml_test_flash_params)];
	unsigned int got[11];
	bool by_age[11];

	kml_test_flash_begin(saved);
	got[0] = kml_dd_cost_span(&by_age[0], 16);
	WRITE_ONCE(kml_dd.cost_window_permille, 62);
	got[1] = kml_dd_cost_span(&by_age[1], 16);
	got[2] = kml_dd_cost_span(&by_age[2], 17);
	got[3] = kml_dd_cost_span(&by_age[3], 0);
	got[4] = kml_dd_cost_span(&by_age[4], 64);
	got[5] = kml_dd_cost_span(&by_age[5], 1000);
	WRITE_ONCE(kml_dd.cost_window_permille, 1000);
	got[6] = kml_dd_cost_span(&by_age[6], 64);
	/* a disk's geometry instead */
	WRITE_ONCE(kml_dd.cost_channels, 0);
	WRITE_ONCE(kml_dd.cost_rev_ns, 8333333);
	WRITE_ONCE(kml_dd.cost_track_sectors, 1024);
	WRITE_ONCE(kml_dd.cost_cyl_sectors, 4096);
	got[7] = kml_dd_cost_span(&by_age[7], 64);
	WRITE_ONCE(kml_dd.cost_window_permille, 0);
	got[8] = kml_dd_cost_span(&by_age[8], 64);
	/* neither: the window does not apply */
	WRITE_ONCE(kml_dd.cost_rev_ns, 0);
	got[9] = kml_dd_cost_span(&by_age[9], 64);
	WRITE_ONCE(kml_dd.cost_window_permille, 62);
	got[10] = kml_dd_cost_span(&by_age[10], 64);
	kml_test_flash_end(saved);

	KUNIT_EXPECT_EQ(test, got[0], 2U * KML_DD_COST_GEOM_SPAN);
	KUNIT_EXPECT_TRUE(test, by_age[0]);
	KUNIT_EXPECT_EQ(test, got[1], 1U);
	KUNIT_EXPECT_EQ(test, got[2], 2U);
	KUNIT_EXPECT_EQ(test, got[3], 1U);
	KUNIT_EXPECT_EQ(test, got[4], 4U);
	KUNIT_EXPECT_EQ(test, got[5], 62U);
	KUNIT_EXPECT_EQ(test, got[6], 64U);
	KUNIT_EXPECT_TRUE(test, by_age[1] && by_age[2] && by_age[3]);
	KUNIT_EXPECT_TRUE(test, by_age[4] && by_age[5] && by_age[6]);
	KUNIT_EXPECT_EQ(test, got[7], 64U);
	KUNIT_EXPECT_TRUE(test, by_age[7]);
	KUNIT_EXPECT_EQ(test, got[8], (unsigned int)KML_DD_COST_GEOM_SPAN);
	KUNIT_EXPECT_FALSE(test, by_age[8]);
	KUNIT_EXPECT_EQ(test, got[9], 1U);
	KUNIT_EXPECT_FALSE(test, by_age[9]);
	KUNIT_EXPECT_EQ(test, got[10], 1U);
	KUNIT_EXPECT_FALSE(test, by_age[10]);
}

/*
 * Policy cost told a flash device's channels (8, striped every 8
 * sectors), at a shift of 3: a read that has waited 3 ms of its 2 ms for
 * channel 1, busy for another millisecond, against one just queued for
 * idle channel 0.  The plain credit, (3 + 1) ms >> 3, is worth less than
 * the wait for channel 1, and the young one goes first; so it is with
 * cost_late_permille 1000 and a horizon of 1 ms.  With 8000 and a horizon
 * of 1 ms the old one's age is 1 + 2 x 8 ms, its credit (17 + 1) ms >> 3,
 * and it goes first; with a horizon past its deadline, from the deadline:
 * (2 + 1 x 8 + 1) ms >> 3.  A steering model's predicted lateness (4 ms)
 * counts past the horizon too.  No disk's geometry, which would win
 * (kml_test_flash_begin()).
 */
static void kml_test_dd_flash_horizon(struct kunit *test)
{
	struct kml_dd_queue *kq = kunit_kzalloc(test, sizeof(*kq), GFP_KERNEL);
	struct request *rq = kunit_kzalloc(test, 2 * sizeof(*rq), GFP_KERNEL);
	struct kml_dd_ctx *ctx = kunit_kzalloc(test, 2 * sizeof(*ctx),
					       GFP_KERNEL);
	unsigned int saved[ARRAY_SIZE(kml_test_flash_params)];
	const u64 now = 10 * NSEC_PER_SEC, svc = 125 * NSEC_PER_USEC;
	const s64 old_cost = NSEC_PER_MSEC + svc;
	s64 young, old;
	unsigned int i;

	KUNIT_ASSERT_NOT_NULL(test, kq);
	KUNIT_ASSERT_NOT_NULL(test, rq);
	KUNIT_ASSERT_NOT_NULL(test, ctx);
	for (i = 0; i < 2; i++) {
		rq[i].rq_flags = RQF_ELVPRIV;
		rq[i].elv.priv[1] = &ctx[i];
		rq[i].cmd_flags = REQ_OP_READ;
		ctx[i].in.deadline_ns = 2 * NSEC_PER_MSEC;
	}
	rq[1].__sector = 8;			/* channel 1 */
	ctx[0].in.insert_ns = now;
	ctx[1].in.insert_ns = now - 3 * NSEC_PER_MSEC;
	kq->svc_ns[0] = svc;
	kq->chan_busy_until[1] = now + NSEC_PER_MSEC;

	kml_test_flash_begin(saved);
	young = kml_dd_cost(kq, &rq[0], 0, now, 0);
	old = kml_dd_cost(kq, &rq[1], 0, now, 0);
	KUNIT_EXPECT_EQ(test, young, (s64)svc);
	KUNIT_EXPECT_EQ(test, old, old_cost - (4 * NSEC_PER_MSEC >> 3));
	KUNIT_EXPECT_LT(test, young, old);

	WRITE_ONCE(kml_dd.cost_late_permille, 1000);
	WRITE_ONCE(kml_dd.cost_horizon_ms, 1);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), old);

	WRITE_ONCE(kml_dd.cost_late_permille, 8000);
	old = kml_dd_cost(kq, &rq[1], 0, now, 0);
	KUNIT_EXPECT_EQ(test, old, old_cost - (18 * NSEC_PER_MSEC >> 3));
	KUNIT_EXPECT_LT(test, old, young);
	/* the young one is within its horizon: the plain credit, none */
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), young);

	WRITE_ONCE(kml_dd.cost_horizon_ms, 5);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0),
			old_cost - (11 * NSEC_PER_MSEC >> 3));

	WRITE_ONCE(kml_dd.cost_horizon_ms, 1);
	ctx[1].pred_valid = 1;
	ctx[1].steer = 1;
	ctx[1].pred_issue_ns = 6 * NSEC_PER_MSEC;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0),
			old_cost - (21 * NSEC_PER_MSEC >> 3));

	kml_test_flash_end(saved);
}

/*
 * A read and a write of kml_dd_cost()'s flash cases, as mq-deadline holds
 * them at @now: the read due in 2 ms, queued 1 ms ago, for channel 0; the
 * write due in 5 ms, queued 2 ms ago, for channel 1; @kq has learned 125 us
 * a read and 300 us a write on a channel.
 */
static void kml_test_flash_pair(struct kml_dd_queue *kq, struct request *rq,
				struct kml_dd_ctx *ctx, u64 now)
{
	unsigned int i;

	for (i = 0; i < 2; i++) {
		rq[i].rq_flags = RQF_ELVPRIV;
		rq[i].elv.priv[1] = &ctx[i];
	}
	rq[0].cmd_flags = REQ_OP_READ;
	ctx[0].in.deadline_ns = 2 * NSEC_PER_MSEC;
	ctx[0].in.insert_ns = now - NSEC_PER_MSEC;
	rq[1].cmd_flags = REQ_OP_WRITE;
	rq[1].__sector = 8;			/* channel 1 */
	ctx[1].in.op = 1;
	ctx[1].in.deadline_ns = 5 * NSEC_PER_MSEC;
	ctx[1].in.insert_ns = now - 2 * NSEC_PER_MSEC;
	kq->svc_ns[0] = 125 * NSEC_PER_USEC;
	kq->svc_ns[1] = 300 * NSEC_PER_USEC;
}

/*
 * Policy cost told a flash device's channels, at a shift of 3: a read
 * (125 us on its channel) and a write (300 us) for idle channels, the
 * write queued 2 ms ago and the read 1 ms ago.  With all of its own time
 * counted the read goes first (125 - 125 against 300 - 250 us); with none
 * of it, or half (62.5 - 125 against 150 - 250 us), the older write.  With
 * the miss budget spent (half the recent dispatches late, against a
 * budget of a tenth) all of it counts again, and the read goes first
 * (kml_test_flash_begin()).
 */
static void kml_test_dd_flash_svc_weight(struct kunit *test)
{
	struct kml_dd_queue *kq = kunit_kzalloc(test, sizeof(*kq), GFP_KERNEL);
	struct request *rq = kunit_kzalloc(test, 2 * sizeof(*rq), GFP_KERNEL);
	struct kml_dd_ctx *ctx = kunit_kzalloc(test, 2 * sizeof(*ctx),
					       GFP_KERNEL);
	unsigned int saved[ARRAY_SIZE(kml_test_flash_params)];
	const u64 now = 10 * NSEC_PER_SEC;
	const s64 us = NSEC_PER_USEC;

	KUNIT_ASSERT_NOT_NULL(test, kq);
	KUNIT_ASSERT_NOT_NULL(test, rq);
	KUNIT_ASSERT_NOT_NULL(test, ctx);
	kml_test_flash_pair(kq, rq, ctx, now);

	kml_test_flash_begin(saved);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), 0LL);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), 50 * us);

	WRITE_ONCE(kml_dd.cost_svc_permille, 0);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), -125 * us);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), -250 * us);

	WRITE_ONCE(kml_dd.cost_svc_permille, 500);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0),
			(s64)62500 - 125 * us);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), -100 * us);

	/* within the budget: the weight holds */
	WRITE_ONCE(kml_dd.cost_miss_budget_permille, 100);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), -100 * us);
	/* spent: all of its own time again, the read first */
	kq->svc_missed = 1 << 15;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), 0LL);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), 50 * us);

	kml_test_flash_end(saved);
}

/* Tell policy cost a seek curve (kml_test_flash_end() puts it back). */
static void kml_test_seek_curve(u32 a, u32 b, u32 bound, u32 c, u32 e)
{
	WRITE_ONCE(kml_dd.cost_seek_a_ns, a);
	WRITE_ONCE(kml_dd.cost_seek_b_ns, b);
	WRITE_ONCE(kml_dd.cost_seek_boundary, bound);
	WRITE_ONCE(kml_dd.cost_seek_c_ns, c);
	WRITE_ONCE(kml_dd.cost_seek_e_ns, e);
}

/*
 * Policy cost told a disk's geometry (the HP 97560's: 72 sectors a track,
 * 1368 a cylinder) prices a request, before the platter's phase is learned,
 * as its seek, half a revolution and its transfer.  Told the seek curve
 * too (3.24 ms + 0.4 ms sqrt(d) below 383 cylinders, 8 ms + 8 us d from
 * there), the seek is the curve's, as null_blk's model takes it: 3.64 ms
 * over one cylinder, 7.24 ms over 100, 11.057187 ms over 382 and 11.064 ms
 * over 383 (either side of the boundary), 16 ms over 1000, none within a
 * cylinder, and over more than KML_DD_SEEK_MAX_CYL at most U32_MAX ns, or
 * at a ns a cylinder as over KML_DD_SEEK_MAX_CYL.  Untold, with nothing
 * learned, every seek is free; without a geometry the curve is not read.
 */
static void kml_test_dd_seek_curve(struct kunit *test)
{
	struct kml_dd_queue *kq = kunit_kzalloc(test, sizeof(*kq), GFP_KERNEL);
	struct request *rq = kunit_kzalloc(test, 7 * sizeof(*rq), GFP_KERNEL);
	struct kml_dd_ctx *ctx = kunit_kzalloc(test, 7 * sizeof(*ctx),
					       GFP_KERNEL);
	unsigned int saved[ARRAY_SIZE(kml_test_flash_params)];
	const u64 cyl = 1368, now = 10 * NSEC_PER_SEC;
	const u64 at[7] = { 100 * cyl, 1000 * cyl, 8,
			    ((u64)KML_DD_SEEK_MAX_CYL + 5) * cyl, cyl,
			    382 * cyl, 383 * cyl };
	const s64 seek[7] = { 7240000, 16000000, 0, U32_MAX, 3640000,
			      11057187, 11064000 };
	const s64 rev = 14992504, xfer = 8 * (rev / 72);
	s64 got[2][7], plain[2], shallow;
	u32 i, k;

	KUNIT_ASSERT_NOT_NULL(test, kq);
	KUNIT_ASSERT_NOT_NULL(test, rq);
	KUNIT_ASSERT_NOT_NULL(test, ctx);
	for (i = 0; i < 7; i++) {
		rq[i].rq_flags = RQF_ELVPRIV;
		rq[i].elv.priv[1] = &ctx[i];
		rq[i].cmd_flags = REQ_OP_READ;
		rq[i].__sector = at[i];
		rq[i].__data_len = 8 << SECTOR_SHIFT;
		ctx[i].in.deadline_ns = 100 * NSEC_PER_MSEC;
		ctx[i].in.insert_ns = now;	/* no credit yet */
	}
	kml_test_flash_begin(saved);
	WRITE_ONCE(kml_dd.cost_channels, 0);
	WRITE_ONCE(kml_dd.cost_track_sectors, 72);
	WRITE_ONCE(kml_dd.cost_cyl_sectors, cyl);
	kml_dd_head(kq);	/* learn under the present generation */
	for (k = 0; k < 2; k++) {
		if (k)
			kml_test_seek_curve(3240000, 400000, 383, 8000000, 8000);
		/* no geometry: the learned table's bucket orders them */
		WRITE_ONCE(kml_dd.cost_rev_ns, 0);
		plain[k] = kml_dd_cost(kq, &rq[1], 0, now, 0);
		WRITE_ONCE(kml_dd.cost_rev_ns, rev);
		for (i = 0; i < 7; i++)
			got[k][i] = kml_dd_cost(kq, &rq[i], 0, now, 0);
	}
	/* a ns a cylinder: past the clamp on the distance, 2^31 ns */
	kml_test_seek_curve(0, 0, 0, 0, 1);
	shallow = kml_dd_cost(kq, &rq[3], 0, now, 0);
	kml_test_flash_end(saved);

	KUNIT_EXPECT_EQ(test, plain[1], plain[0]);
	for (i = 0; i < 7; i++) {
		KUNIT_EXPECT_EQ(test, got[0][i], rev / 2 + xfer);
		KUNIT_EXPECT_EQ(test, got[1][i], seek[i] + rev / 2 + xfer);
	}
	KUNIT_EXPECT_EQ(test, shallow,
			(s64)KML_DD_SEEK_MAX_CYL + rev / 2 + xfer);
}

/*
 * Policy cost's cap on waiting, told a flash device's channels at a shift
 * of 3: the read and the write of kml_test_dd_flash_svc_weight(), queued 1
 * and 2 ms ago, cost 0 and 50 us.  With cost_wait_cap_permille 1500 and no
 * mean wait yet, nothing is capped, nor with a mean of fewer than 64 waits;
 * with a mean of 1 ms the write, past 1.5 ms, goes before anything not
 * capped (S64_MIN / 4 less its wait); with a mean of 500 us both are past
 * 750 us, the older first; a wait equal to the cap is not past it, and a
 * starved one goes before any capped one (S64_MIN / 2 less its wait).  A
 * soft cap (cost_wait_ramp_permille 2000, a mean of 1 ms) leaves the read
 * as it was and takes a ms off the write's cost, two for each ns of the
 * 500 us it is past the cap, until a bound (cost_wait_bound_permille) of
 * 1.8 ms sends it first, as the hard cap did (a starved one still before
 * it), and so does the bound with no cap at all; a bound of 2 ms, its
 * wait, does not.  The
 * mean: the plain average of a queue's first 64 waits (4 ms, then none:
 * 2 ms, then 2 ms for the rest), then each new one weighs a 64th.
 */
static void kml_test_dd_wait_cap(struct kunit *test)
{
	struct kml_dd_queue *kq = kunit_kzalloc(test, sizeof(*kq), GFP_KERNEL);
	struct request *rq = kunit_kzalloc(test, 2 * sizeof(*rq), GFP_KERNEL);
	struct kml_dd_ctx *ctx = kunit_kzalloc(test, 2 * sizeof(*ctx),
					       GFP_KERNEL);
	unsigned int saved[ARRAY_SIZE(kml_test_flash_params)];
	const u64 now = 10 * NSEC_PER_SEC, ms = NSEC_PER_MSEC;
	const u32 full = 1U << KML_DD_COST_WAIT_SHIFT;
	const s64 us = NSEC_PER_USEC;
	u32 i;

	KUNIT_ASSERT_NOT_NULL(test, kq);
	KUNIT_ASSERT_NOT_NULL(test, rq);
	KUNIT_ASSERT_NOT_NULL(test, ctx);
	kml_test_flash_begin(saved);
	kml_dd_head(kq);	/* learn under the present generation */
	kml_test_flash_pair(kq, rq, ctx, now);
	WRITE_ONCE(kml_dd.cost_wait_cap_permille, 1500);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), 0LL);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), 50 * us);

	kq->svc_wait_ns = ms;
	kq->svc_wait_n = full - 1;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), 50 * us);
	kq->svc_wait_n = full;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), 0LL);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0),
			S64_MIN / 4 - 2 * (s64)ms);
	/* soft: two ns of credit for each of the write's 500 us past the cap */
	WRITE_ONCE(kml_dd.cost_wait_ramp_permille, 2000);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), 0LL);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0),
			50 * us - 1000 * us);
	/* bounded: past 1.8 ms it goes first, whatever its credit */
	WRITE_ONCE(kml_dd.cost_wait_bound_permille, 1800);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), 0LL);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0),
			S64_MIN / 4 - 2 * (s64)ms);
	/* and one starved (8 of its 2 ms expiries) still goes first */
	ctx[0].in.insert_ns = now - 16 * ms;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0),
			S64_MIN / 2 - 16 * (s64)ms);
	ctx[0].in.insert_ns = now - ms;
	WRITE_ONCE(kml_dd.cost_wait_bound_permille, 2000);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0),
			50 * us - 1000 * us);
	/* a bound without a cap is a hard cap of its own */
	WRITE_ONCE(kml_dd.cost_wait_cap_permille, 0);
	WRITE_ONCE(kml_dd.cost_wait_bound_permille, 1800);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0), 0LL);
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0),
			S64_MIN / 4 - 2 * (s64)ms);
	WRITE_ONCE(kml_dd.cost_wait_cap_permille, 1500);
	WRITE_ONCE(kml_dd.cost_wait_bound_permille, 0);
	WRITE_ONCE(kml_dd.cost_wait_ramp_permille, 0);

	kq->svc_wait_ns = 500 * us;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0),
			S64_MIN / 4 - (s64)ms);
	KUNIT_EXPECT_LT(test, kml_dd_cost(kq, &rq[1], 0, now, 0),
			kml_dd_cost(kq, &rq[0], 0, now, 0));

	/* one starved (8 of its 2 ms expiries) still goes before them */
	ctx[0].in.insert_ns = now - 16 * ms;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[0], 0, now, 0),
			S64_MIN / 2 - 16 * (s64)ms);
	ctx[0].in.insert_ns = now - ms;

	WRITE_ONCE(kml_dd.cost_wait_cap_permille, 1000);
	kq->svc_wait_ns = 2 * ms;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), 50 * us);
	WRITE_ONCE(kml_dd.cost_wait_cap_permille, 0);
	kq->svc_wait_ns = us;
	KUNIT_EXPECT_EQ(test, kml_dd_cost(kq, &rq[1], 0, now, 0), 50 * us);

	kq->svc_wait_ns = 0;
	kq->svc_wait_n = 0;
	ctx[0].in.insert_ns = now - 4 * ms;
	kml_dd_cost_dispatch(kq, &ctx[0], &rq[0], now);
	KUNIT_EXPECT_EQ(test, kq->svc_wait_ns, 4 * ms);
	KUNIT_EXPECT_EQ(test, kq->svc_wait_n, 1U);
	ctx[1].in.insert_ns = now;
	kml_dd_cost_dispatch(kq, &ctx[1], &rq[1], now);
	KUNIT_EXPECT_EQ(test, kq->svc_wait_ns, 2 * ms);
	ctx[0].in.insert_ns = now - 2 * ms;
	for (i = 2; i < full; i++)
		kml_dd_cost_dispatch(kq, &ctx[0], &rq[0], now);
	KUNIT_EXPECT_EQ(test, kq->svc_wait_ns, 2 * ms);
	KUNIT_EXPECT_EQ(test, kq->svc_wait_n, full);
	ctx[1].in.insert_ns = now;
	kml_dd_cost_dispatch(kq, &ctx[1], &rq[1], now);
	KUNIT_EXPECT_EQ(test, kq->svc_wait_ns, 2 * ms - (2 * ms >> 6));
	KUNIT_EXPECT_EQ(test, kq->svc_wait_n, full);

	kml_test_flash_end(saved);
}
#elif defined(CONFIG_KML_IOSCHED) /* without policy cost: say why */

#define KML_TEST_NO_COST(name)						\
static void name(struct kunit *test)					\
{									\
	kunit_skip(test, "built without CONFIG_KML_IOSCHED_COST");	\
}

KML_TEST_NO_COST(kml_test_dd_head_relearns)
KML_TEST_NO_COST(kml_test_dd_cost_window)
KML_TEST_NO_COST(kml_test_dd_flash_horizon)
KML_TEST_NO_COST(kml_test_dd_flash_svc_weight)
KML_TEST_NO_COST(kml_test_dd_seek_curve)
KML_TEST_NO_COST(kml_test_dd_wait_cap)
#endif /* CONFIG_KML_IOSCHED_COST */

#ifdef CONFIG_KML_IOSCHED
/*
 * One request through the hooks, active and lazy, on a queue of no disk:
 * a completion counts it met when it was dispatched within its deadline
 * (kml_dd_met(), decided at the dispatch), both where nobody wants its
 * sample (the completion's path without a call) and where one would
 * (sample_unclaimed: kml_dd_finish_slow(), which puts two samples in the
 * ring for a consumer to come).  Due a jiffy after a start at boot, it
 * missed; started now and due in a second, it met.  Then the queue's
 * counts through a request never dispatched by the hooks, and one
 * dispatched twice.  The parameters are
 * KML's defaults in the KUnit guest (policy expire, nobody holding the
 * ring), which the first path needs; they are put back however a case
 * ends.
 */
static void kml_test_dd_hooks_count_met(struct kunit *test)
{
	struct kml_dd_queue *kq = kunit_kzalloc(test, sizeof(*kq), GFP_KERNEL);
	struct request_queue *q = kunit_kzalloc(test, sizeof(*q), GFP_KERNEL);
	struct request *rq = kunit_kzalloc(test, sizeof(*rq), GFP_KERNEL);
	unsigned int lazy = READ_ONCE(kml_dd.lazy);
	unsigned int unclaimed = READ_ONCE(kml_dd.sample_unclaimed);
	u64 samples, met;
	int i;

	KUNIT_ASSERT_NOT_NULL(test, kq);
	KUNIT_ASSERT_NOT_NULL(test, q);
	KUNIT_ASSERT_NOT_NULL(test, rq);
	KUNIT_ASSERT_EQ(test, READ_ONCE(kml_dd_policy),
			(unsigned int)KML_DD_POLICY_EXPIRE);
	KUNIT_ASSERT_EQ(test, atomic_read(&kml_dd.ring_owner),
			KML_DD_OWNER_NONE);
	KUNIT_ASSERT_EQ(test, kml_dd_init(kq, q), 0);
	KUNIT_EXPECT_EQ(test, kml_dd_mode_store(kq, "active", 6), 6L);
	WRITE_ONCE(kml_dd.lazy, 1);
	rq->q = q;
	rq->rq_flags = RQF_ELVPRIV;	/* as mq-deadline prepared it */
	rq->cmd_flags = REQ_OP_READ;
	rq->__data_len = 4096;
	for (i = 0; i < 4; i++) {
		bool meet = i & 1;

		WRITE_ONCE(kml_dd.sample_unclaimed, i >> 1);
		samples = kml_dd_stat_read(KML_DD_S_SAMPLES);
		met = kml_dd_stat_read(KML_DD_S_SAMPLES_MET);
		rq->__sector = 8 * i;
		rq->start_time_ns = meet ? ktime_get_ns() : 1;
		__kml_dd_insert(kq, rq, NULL, meet ? HZ : 1, true,
				KML_DD_ACTIVE);
		if (!kml_dd_ctx(rq)) {
			KUNIT_FAIL(test, "case %d: not tracked", i);
			break;
		}
		KUNIT_EXPECT_TRUE(test, kml_dd_ctx(rq)->lazy);
		__kml_dd_dispatch(kq, rq);
		KUNIT_EXPECT_EQ(test, (bool)kml_dd_ctx(rq)->met, meet);
		__kml_dd_finish(kq, rq);
		KUNIT_EXPECT_NULL(test, kml_dd_ctx(rq));
		KUNIT_EXPECT_EQ_MSG(test, kml_dd_stat_read(KML_DD_S_SAMPLES),
				    samples + 1, "case %d", i);
		KUNIT_EXPECT_EQ_MSG(test, kml_dd_stat_read(KML_DD_S_SAMPLES_MET),
				    met + meet, "case %d", i);
	}
	KUNIT_EXPECT_EQ(test, atomic_read(&kq->inflight), 0);
	KUNIT_EXPECT_EQ(test, atomic_read(&kq->queued[0]), 0);

	/*
	 * Dispatched by mq-deadline's copy without hooks (every queue off
	 * by then): handed back as never dispatched, counted nowhere; and
	 * dispatched twice (requeued): counted once.
	 */
	WRITE_ONCE(kml_dd.sample_unclaimed, 0);
	samples = kml_dd_stat_read(KML_DD_S_SAMPLES);
	rq->start_time_ns = ktime_get_ns();
	__kml_dd_insert(kq, rq, NULL, HZ, true, KML_DD_ACTIVE);
	KUNIT_EXPECT_EQ(test, atomic_read(&kq->queued[0]), 1);
	__kml_dd_finish(kq, rq);
	KUNIT_EXPECT_EQ(test, kml_dd_stat_read(KML_DD_S_SAMPLES), samples);
	__kml_dd_insert(kq, rq, NULL, HZ, true, KML_DD_ACTIVE);
	__kml_dd_dispatch(kq, rq);
	__kml_dd_dispatch(kq, rq);
	KUNIT_EXPECT_EQ(test, atomic_read(&kq->inflight), 1);
	__kml_dd_finish(kq, rq);
	KUNIT_EXPECT_EQ(test, kml_dd_stat_read(KML_DD_S_SAMPLES), samples + 1);
	KUNIT_EXPECT_EQ(test, atomic_read(&kq->inflight), 0);
	KUNIT_EXPECT_EQ(test, atomic_read(&kq->queued[0]), 0);
	WRITE_ONCE(kml_dd.sample_unclaimed, unclaimed);
	WRITE_ONCE(kml_dd.lazy, lazy);
	kml_dd_exit(kq);
}

/*
 * Inserts through mq-deadline's own hook, kml_dd_insert(), until @n have
 * gone by or, with @until_tracked, one is tracked; a tracked one is taken
 * back at once.  How many went untracked.
 */
static unsigned int kml_test_observe_run(struct kml_dd_queue *kq,
					 struct request *rq,
					 struct list_head *fifo,
					 unsigned int n, bool until_tracked)
{
	unsigned int i, passed = 0;

	for (i = 0; i < n; i++) {
		kml_dd_insert(kq, rq, fifo, HZ, true);
		if (!kml_dd_ctx(rq)) {
			passed++;
			continue;
		}
		__kml_dd_dispatch(kq, rq);
		__kml_dd_finish(kq, rq);
		if (until_tracked)
			break;
	}
	return passed;
}

/*
 * Observe mode one window in N (observe_every), through the insert hook
 * mq-deadline calls: a window of KML_DD_OBSERVE_WINDOW requests tracked,
 * then (N - 1) windows' worth let pass in line (kml_dd_passing()) and
 * counted as unobserved, exactly; a request inserted again during a pause
 * keeps its context and is not counted; a smaller N written during a
 * pause shortens it from then on, and N = 1 tracks every request, as
 * active mode does.  The parameters are put back however the case ends.
 */
static void kml_test_dd_observe_cycle(struct kunit *test)
{
	const unsigned int w = KML_DD_OBSERVE_WINDOW;
	struct kml_dd_queue *kq = kunit_kzalloc(test, sizeof(*kq), GFP_KERNEL);
	struct request_queue *q = kunit_kzalloc(test, sizeof(*q), GFP_KERNEL);
	struct request *rq = kunit_kzalloc(test, sizeof(*rq), GFP_KERNEL);
	unsigned int every = READ_ONCE(kml_dd_observe_every);
	unsigned int unclaimed = READ_ONCE(kml_dd.sample_unclaimed);
	LIST_HEAD(fifo);
	u64 unobserved;

	KUNIT_ASSERT_NOT_NULL(test, kq);
	KUNIT_ASSERT_NOT_NULL(test, q);
	KUNIT_ASSERT_NOT_NULL(test, rq);
	KUNIT_ASSERT_EQ(test, atomic_read(&kml_dd.ring_owner),
			KML_DD_OWNER_NONE);
	KUNIT_ASSERT_EQ(test, kml_dd_init(kq, q), 0);
	WRITE_ONCE(kml_dd.sample_unclaimed, 0);
	WRITE_ONCE(kml_dd_observe_every, 4);
	KUNIT_EXPECT_EQ(test, kml_dd_mode_store(kq, "observe", 7), 7L);
	rq->q = q;
	rq->rq_flags = RQF_ELVPRIV;	/* as mq-deadline prepared it */
	rq->cmd_flags = REQ_OP_READ;
	rq->__data_len = 4096;
	rq->start_time_ns = ktime_get_ns();
	list_add_tail(&rq->queuelist, &fifo);
	unobserved = kml_dd_stat_read(KML_DD_S_UNOBSERVED);

	/*
	 * A cycle: the window (its last request kept), then three windows'
	 * worth untracked, but for that request inserted again
	 */
	KUNIT_EXPECT_EQ(test, kml_test_observe_run(kq, rq, &fifo, w - 1,
						   false), 0U);
	kml_dd_insert(kq, rq, &fifo, HZ, true);
	KUNIT_ASSERT_NOT_NULL(test, kml_dd_ctx(rq));
	kml_dd_insert(kq, rq, &fifo, HZ, true);
	KUNIT_ASSERT_NOT_NULL(test, kml_dd_ctx(rq));
	KUNIT_EXPECT_TRUE(test, kml_dd_ctx(rq)->flags &
			  KML_DD_SAMPLE_REQUEUED);
	__kml_dd_dispatch(kq, rq);
	__kml_dd_finish(kq, rq);
	KUNIT_EXPECT_EQ(test, kml_dd_stat_read(KML_DD_S_UNOBSERVED),
			unobserved);
	KUNIT_EXPECT_EQ(test, kml_test_observe_run(kq, rq, &fifo, 3 * w,
						   false), 3 * w);
	KUNIT_EXPECT_EQ(test, kml_dd_stat_read(KML_DD_S_UNOBSERVED),
			unobserved + 3 * w);
	/* the next window, and 100 of the pause after it */
	KUNIT_EXPECT_EQ(test, kml_test_observe_run(kq, rq, &fifo, w, false),
			0U);
	KUNIT_EXPECT_EQ(test, kml_test_observe_run(kq, rq, &fifo, 100, false),
			100U);
	/* N = 2 from now: one window's worth more, not the 2,972 left */
	WRITE_ONCE(kml_dd_observe_every, 2);
	KUNIT_EXPECT_EQ(test, kml_test_observe_run(kq, rq, &fifo, 4 * w, true),
			w);
	/* N = 1: every request */
	WRITE_ONCE(kml_dd_observe_every, 1);
	KUNIT_EXPECT_EQ(test, kml_test_observe_run(kq, rq, &fifo, w, false),
			0U);
	KUNIT_EXPECT_EQ(test, kml_dd_stat_read(KML_DD_S_UNOBSERVED),
			unobserved + 4 * w + 100);
	/* active mode, whatever N: every request */
	WRITE_ONCE(kml_dd_observe_every, 4);
	KUNIT_EXPECT_EQ(test, kml_dd_mode_store(kq, "active", 6), 6L);
	KUNIT_EXPECT_EQ(test, kml_test_observe_run(kq, rq, &fifo, 2 * w,
						   false), 0U);
	/*
	 * A request mq-deadline never prepared (a FUA write that bypassed the
	 * flush machinery, requeued): inserted at the head with the flush
	 * list's pointer in elv.priv[1], which the head insert clears, so
	 * that its dispatch reads and writes nothing through it.  A prepared
	 * request's context is left as it is.
	 */
	rq->rq_flags = 0;
	rq->elv.priv[1] = &rq->queuelist;	/* what a flush list leaves */
	kml_dd_insert_head(rq);
	KUNIT_EXPECT_NULL(test, kml_dd_ctx(rq));
	kml_dd_dispatch(kq, rq);
	rq->rq_flags = RQF_ELVPRIV;
	rq->elv.priv[1] = &rq->queuelist;
	kml_dd_insert_head(rq);
	KUNIT_EXPECT_PTR_EQ(test, rq->elv.priv[1], (void *)&rq->queuelist);
	rq->elv.priv[1] = NULL;

	list_del_init(&rq->queuelist);
	WRITE_ONCE(kml_dd_observe_every, every);
	WRITE_ONCE(kml_dd.sample_unclaimed, unclaimed);
	kml_dd_exit(kq);
}
#endif

static struct kunit_case kml_test_cases[] = {
	KUNIT_CASE(kml_test_math_accuracy),
	KUNIT_CASE(kml_test_math_special),
	KUNIT_CASE(kml_test_q16_math),
	KUNIT_CASE(kml_test_linear_forward),
	KUNIT_CASE(kml_test_fixed_vs_float),
	KUNIT_CASE(kml_test_q16_training),
	KUNIT_CASE(kml_test_model_load),
	KUNIT_CASE(kml_test_user_model),
	KUNIT_CASE(kml_test_q16_model_load),
	KUNIT_CASE(kml_test_parts_left_out),
	KUNIT_CASE(kml_test_crc32),
	KUNIT_CASE(kml_test_ring_counts),
	KUNIT_CASE(kml_test_ring_attach),
	KUNIT_CASE(kml_test_ring_check),
	KUNIT_CASE(kml_test_ring_drops),
#ifdef CONFIG_KML_IOSCHED
	KUNIT_CASE(kml_test_ring_claim),
#endif
	KUNIT_CASE(kml_test_ring_mp_drop),
	KUNIT_CASE(kml_test_ring_mp_block),
#ifdef CONFIG_KML_IOSCHED
	KUNIT_CASE(kml_test_cal_separable),
	KUNIT_CASE(kml_test_cal_best_split),
	KUNIT_CASE(kml_test_cal_auc_hist),
	KUNIT_CASE(kml_test_skill_one_sided),
	KUNIT_CASE(kml_test_cal_limits),
	KUNIT_CASE(kml_test_cal_imbalanced),
	KUNIT_CASE(kml_test_cal_contract),
	KUNIT_CASE(kml_test_cal_window),
	KUNIT_CASE(kml_test_cal_fit_hist),
	KUNIT_CASE(kml_test_dd_target_contract),
	KUNIT_CASE(kml_test_dd_decide_contract),
	KUNIT_CASE(kml_test_dd_decide_q16_contract),
	KUNIT_CASE(kml_test_dd_fast_compile),
	KUNIT_CASE(kml_test_dd_feat_take),
	KUNIT_CASE(kml_test_dd_head_relearns),
	KUNIT_CASE(kml_test_dd_cost_window),
	KUNIT_CASE(kml_test_dd_flash_horizon),
	KUNIT_CASE(kml_test_dd_flash_svc_weight),
	KUNIT_CASE(kml_test_dd_seek_curve),
	KUNIT_CASE(kml_test_dd_wait_cap),
	KUNIT_CASE(kml_test_dd_hooks_count_met),
	KUNIT_CASE(kml_test_dd_observe_cycle),
#endif
	{}
};

static struct kunit_suite kml_test_suite = {
	.name = "kml",
	.test_cases = kml_test_cases,
};
kunit_test_suite(kml_test_suite);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("KUnit tests for KML");
MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);
