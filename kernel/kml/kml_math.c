// SPDX-License-Identifier: GPL-2.0
/*
 * Float math without libm: exp, log, sqrt, tanh, sigmoid.
 *
 * Built with FPU code generation enabled in the kernel: every function here
 * must only run between kml_fpu_begin() and kml_fpu_end().  Accuracy against
 * libm is measured by tests/test_kml_math.py and listed in docs/kml.md.
 */
#include "kml_internal.h"

union kml_fbits {
	float f;
	u32 u;
};

static inline float kml_bits_to_float(u32 u)
{
	union kml_fbits b = { .u = u };

	return b.f;
}

static inline u32 kml_float_to_bits(float f)
{
	union kml_fbits b = { .f = f };

	return b.u;
}

#define KML_LN2_HI	6.93145752e-1f		/* ln2 high part, exact in float */
#define KML_LN2_LO	1.42860677e-6f		/* ln2 - KML_LN2_HI */
#define KML_LOG2E	1.44269504f

/*
 * exp(x) = 2^k * exp(r), k = round(x / ln2), |r| <= ln2 / 2 (Cody-Waite),
 * exp(r) by a degree-7 Taylor polynomial (truncation < 1e-8 relative).
 */
float kml_expf(float x)
{
	float r, p, kf;
	s32 k;

	if (x != x)
		return x;
	if (x > 88.7228317f)
		return kml_bits_to_float(0x7f800000U);
	if (x < -87.3365479f)
		return 0.0f;
	kf = x * KML_LOG2E;
	k = (s32)(kf + (kf >= 0.0f ? 0.5f : -0.5f));
	kf = (float)k;
	r = (x - kf * KML_LN2_HI) - kf * KML_LN2_LO;
	p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666672e-1f +
		r * (4.16666679e-2f + r * (8.33333377e-3f +
		r * (1.38888892e-3f + r * 1.98412698e-4f))))));
	/* 2^k may not be representable as a normal float: split it */
	if (k > 127) {
		p *= 2.0f;
		k--;
	}
	if (k < -126) {
		p *= kml_bits_to_float((u32)(127 - 64) << 23);
		k += 64;
	}
	return p * kml_bits_to_float((u32)(k + 127) << 23);
}
EXPORT_SYMBOL_GPL(kml_expf);

/*
 * log(x) = e * ln2 + log(m), m in [sqrt(1/2), sqrt(2)),
 * log(m) = 2 atanh(s), s = (m - 1) / (m + 1), odd series to s^11.
 */
float kml_logf(float x)
{
	u32 u = kml_float_to_bits(x);
	float m, s, s2, p, ef;
	s32 e;

	if (x != x)
		return x;
	if (x < 0.0f)
		return kml_bits_to_float(0x7fc00000U);
	if (x == 0.0f)
		return kml_bits_to_float(0xff800000U);
	if (u == 0x7f800000U)
		return x;
	e = 0;
	if (u < 0x00800000U) {		/* subnormal: scale by 2^25 */
		x *= 33554432.0f;
		u = kml_float_to_bits(x);
		e = -25;
	}
	e += (s32)(u >> 23) - 127;
	m = kml_bits_to_float((u & 0x007fffffU) | 0x3f800000U);
	if (m > 1.41421356f) {
		m *= 0.5f;
		e++;
	}
	s = (m - 1.0f) / (m + 1.0f);
	s2 = s * s;
	p = s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 +
		s2 * (1.0f / 9 + s2 * (1.0f / 11)))));
	ef = (float)e;
	return ef * KML_LN2_HI + (2.0f * s + (2.0f * s * p + ef * KML_LN2_LO));
}
EXPORT_SYMBOL_GPL(kml_logf);

/* Bit-level first guess, then three Newton (Heron) steps. */
float kml_sqrtf(float x)
{
	u32 u = kml_float_to_bits(x);
	float y, scale = 1.0f;

	if (x != x || x == 0.0f)
		return x;
	if (x < 0.0f)
		return kml_bits_to_float(0x7fc00000U);
	if (u == 0x7f800000U)
		return x;
	if (u < 0x00800000U) {		/* subnormal: sqrt(x * 2^32) / 2^16 */
		x *= 4294967296.0f;
		scale = 1.0f / 65536.0f;
		u = kml_float_to_bits(x);
	}
	y = kml_bits_to_float((u >> 1) + 0x1fbd1df5U);
	y = 0.5f * (y + x / y);
	y = 0.5f * (y + x / y);
	y = 0.5f * (y + x / y);
	return y * scale;
}
EXPORT_SYMBOL_GPL(kml_sqrtf);

/*
 * tanh: odd Taylor series for |x| < 0.5 (no cancellation near 0),
 * 1 - 2 / (exp(2|x|) + 1) above, +-1 for |x| > 9.
 */
float kml_tanhf(float x)
{
	float a = x < 0.0f ? -x : x;
	float x2, t;

	if (x != x)
		return x;
	if (a < 0.5f) {
		x2 = x * x;
		return x * (1.0f + x2 * (-3.33333343e-1f + x2 * (1.33333340e-1f +
			x2 * (-5.39682545e-2f + x2 * (2.18694885e-2f +
			x2 * (-8.86323582e-3f + x2 * 3.59212844e-3f))))));
	}
	if (a > 9.0f)
		t = 1.0f;
	else
		t = 1.0f - 2.0f / (kml_expf(2.0f * a) + 1.0f);
	return x < 0.0f ? -t : t;
}
EXPORT_SYMBOL_GPL(kml_tanhf);

/* sigmoid without overflow: exp is only taken of -|x|. */
float kml_sigmoidf(float x)
{
	float e;

	if (x != x)
		return x;
	if (x >= 0.0f)
		return 1.0f / (1.0f + kml_expf(-x));
	e = kml_expf(x);
	return e / (1.0f + e);
}
EXPORT_SYMBOL_GPL(kml_sigmoidf);

void kml_math_apply_f32(u32 fn, const float *x, float *y, u32 n)
{
	u32 i;

	for (i = 0; i < n; i++) {
		switch (fn) {
		case KML_FN_EXP:
			y[i] = kml_expf(x[i]);
			break;
		case KML_FN_LOG:
			y[i] = kml_logf(x[i]);
			break;
		case KML_FN_SQRT:
			y[i] = kml_sqrtf(x[i]);
			break;
		case KML_FN_TANH:
			y[i] = kml_tanhf(x[i]);
			break;
		default:
			y[i] = kml_sigmoidf(x[i]);
			break;
		}
	}
}
