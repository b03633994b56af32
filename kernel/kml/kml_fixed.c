// SPDX-License-Identifier: GPL-2.0
/*
 * Q16.16 fixed-point math and layers: integer only, usable without any FPU
 * section (interrupt context included).  Values are s32 with 16 fractional
 * bits; products are formed in s64 and rounded to nearest.
 */
#include "kml_internal.h"

#define KML_Q30_ONE	(1LL << 30)
#define KML_LN2_Q30	744261118LL		/* ln(2) * 2^30 */

s32 kml_q16_mul(s32 a, s32 b)
{
	return kml_sat32(kml_rshift_round((s64)a * b, 16));
}
EXPORT_SYMBOL_GPL(kml_q16_mul);

u32 kml_isqrt64(u64 x)
{
	u64 res = 0, bit = 1ULL << 62;

	while (bit > x)
		bit >>= 2;
	while (bit) {
		if (x >= res + bit) {
			x -= res + bit;
			res = (res >> 1) + bit;
		} else {
			res >>= 1;
		}
		bit >>= 2;
	}
	return (u32)res;
}
EXPORT_SYMBOL_GPL(kml_isqrt64);

/*
 * exp(x) for Q16 x as p * 2^k with p = exp(r) in Q30, r = x - k ln2,
 * |r| <= ln2 / 2; degree-7 Taylor polynomial evaluated in Q30.
 */
static s64 kml_exp_q30_parts(s32 x, s32 *k)
{
	s64 xq = (s64)x * (1 << 14);	/* not <<: x may be negative */
	s64 r, p;
	s32 i;

	if (xq >= 0)
		*k = (s32)kml_div_s64(xq + KML_LN2_Q30 / 2, KML_LN2_Q30);
	else
		*k = -(s32)kml_div_s64(-xq + KML_LN2_Q30 / 2, KML_LN2_Q30);
	r = xq - (s64)*k * KML_LN2_Q30;
	p = KML_Q30_ONE;
	for (i = 7; i >= 1; i--)
		p = KML_Q30_ONE + kml_div_s64(kml_rshift_round(r * p, 30), i);
	return p;
}

/* exp(x) in Q30 for x <= 0 (values in (0, 1]) */
static s64 kml_exp_neg_q30(s32 x)
{
	s64 p;
	s32 k;

	if (x < -22 * KML_Q16_ONE)
		return 0;
	p = kml_exp_q30_parts(x, &k);
	if (k >= 0)
		return p;
	return kml_rshift_round(p, -k);
}

s32 kml_q16_exp(s32 x)
{
	s64 p;
	s32 k;

	if (x > 681391)			/* exp(10.3972) ~ 32767.7 */
		return S32_MAX;
	if (x < -12 * KML_Q16_ONE)	/* below half an ulp */
		return 0;
	p = kml_exp_q30_parts(x, &k);
	if (k >= 14)
		return kml_sat32(p << (k - 14));
	return kml_sat32(kml_rshift_round(p, 14 - k));
}
EXPORT_SYMBOL_GPL(kml_q16_exp);

s32 kml_q16_sigmoid(s32 x)
{
	s64 a = x < 0 ? -(s64)x : x;
	s64 e, s;

	if (a > 22 * KML_Q16_ONE)
		a = 22 * KML_Q16_ONE;
	e = kml_exp_neg_q30((s32)-a);
	s = kml_div_s64((1LL << 46) + ((KML_Q30_ONE + e) >> 1),
			KML_Q30_ONE + e);
	return x < 0 ? (s32)(KML_Q16_ONE - s) : (s32)s;
}
EXPORT_SYMBOL_GPL(kml_q16_sigmoid);

s32 kml_q16_tanh(s32 x)
{
	s64 a = x < 0 ? -(s64)x : x;
	s64 e, t;

	if (a > 11 * KML_Q16_ONE)
		a = 11 * KML_Q16_ONE;
	e = kml_exp_neg_q30((s32)(-2 * a));
	t = kml_div_s64(((KML_Q30_ONE - e) << 16) + ((KML_Q30_ONE + e) >> 1),
			KML_Q30_ONE + e);
	return x < 0 ? (s32)-t : (s32)t;
}
EXPORT_SYMBOL_GPL(kml_q16_tanh);

/* natural log of a positive Q16 value; S32_MIN for x <= 0 */
s32 kml_q16_log(s32 x)
{
	s64 m, s, s2, p;
	s32 msb = 0, e;
	u32 u = (u32)x;

	if (x <= 0)
		return S32_MIN;
	while (u >> (msb + 1))
		msb++;
	e = msb - 16;
	m = msb <= 30 ? (s64)x << (30 - msb) : (s64)x >> (msb - 30);
	if (m > 1518500250LL) {		/* sqrt(2) in Q30 */
		m >>= 1;
		e++;
	}
	s = kml_div_s64((m - KML_Q30_ONE) * KML_Q30_ONE, m + KML_Q30_ONE);
	s2 = kml_rshift_round(s * s, 30);
	p = kml_div_s64(KML_Q30_ONE, 9);
	p = kml_div_s64(KML_Q30_ONE, 7) + kml_rshift_round(s2 * p, 30);
	p = kml_div_s64(KML_Q30_ONE, 5) + kml_rshift_round(s2 * p, 30);
	p = kml_div_s64(KML_Q30_ONE, 3) + kml_rshift_round(s2 * p, 30);
	p = KML_Q30_ONE + kml_rshift_round(s2 * p, 30);
	p = 2 * kml_rshift_round(s * p, 30);
	return kml_sat32(kml_rshift_round((s64)e * KML_LN2_Q30 + p, 14));
}

/* ---------------------------------------------------------------- layers */

/* out[B][out_dim] = in[B][in_dim] . w[out_dim][in_dim]^T + b */
void kml_linear_forward_q16(s32 *out, const s32 *in, const s32 *w,
			    const s32 *b, u32 B, u32 in_dim, u32 out_dim)
{
	u32 r, o, i;

	for (r = 0; r < B; r++) {
		const s32 *x = in + (size_t)r * in_dim;

		for (o = 0; o < out_dim; o++) {
			const s32 *wr = w + (size_t)o * in_dim;
			s64 acc = (s64)b[o] * KML_Q16_ONE;

			for (i = 0; i < in_dim; i++)
				acc += (s64)wr[i] * x[i];
			out[(size_t)r * out_dim + o] =
				kml_sat32(kml_rshift_round(acc, 16));
		}
	}
}
EXPORT_SYMBOL_GPL(kml_linear_forward_q16);

#if KML_HAS_TRAIN
/* dw, db accumulate Q32 sums in s64; din (may be NULL) is Q16 */
void kml_linear_backward_q16(s32 *din, s64 *dw, s64 *db, const s32 *dout,
			     const s32 *in, const s32 *w, u32 B, u32 in_dim,
			     u32 out_dim)
{
	u32 r, o, i;

	for (r = 0; r < B; r++) {
		const s32 *x = in + (size_t)r * in_dim;
		const s32 *d = dout + (size_t)r * out_dim;

		for (o = 0; o < out_dim; o++) {
			s64 *dwr = dw + (size_t)o * in_dim;

			for (i = 0; i < in_dim; i++)
				dwr[i] += (s64)d[o] * x[i];
			db[o] += (s64)d[o] * KML_Q16_ONE;
		}
		if (!din)
			continue;
		for (i = 0; i < in_dim; i++) {
			s64 acc = 0;

			for (o = 0; o < out_dim; o++)
				acc += (s64)w[(size_t)o * in_dim + i] * d[o];
			din[(size_t)r * in_dim + i] =
				kml_sat32(kml_rshift_round(acc, 16));
		}
	}
}
EXPORT_SYMBOL_GPL(kml_linear_backward_q16);
#endif

void kml_act_forward_q16(u32 act, s32 *out, const s32 *in, u32 n)
{
	u32 i;

	for (i = 0; i < n; i++) {
		switch (act) {
		case KML_ACT_RELU:
			out[i] = in[i] > 0 ? in[i] : 0;
			break;
		case KML_ACT_SIGMOID:
			out[i] = kml_q16_sigmoid(in[i]);
			break;
		case KML_ACT_TANH:
			out[i] = kml_q16_tanh(in[i]);
			break;
		default:
			out[i] = in[i];
			break;
		}
	}
}
EXPORT_SYMBOL_GPL(kml_act_forward_q16);

#if KML_HAS_TRAIN
void kml_act_backward_q16(u32 act, s32 *din, const s32 *dout, const s32 *in,
			  const s32 *out, u32 n)
{
	u32 i;
	s64 g;

	for (i = 0; i < n; i++) {
		switch (act) {
		case KML_ACT_RELU:
			din[i] = in[i] > 0 ? dout[i] : 0;
			break;
		case KML_ACT_SIGMOID:
			g = kml_rshift_round((s64)out[i] * (KML_Q16_ONE - out[i]), 16);
			din[i] = kml_sat32(kml_rshift_round(g * dout[i], 16));
			break;
		case KML_ACT_TANH:
			g = KML_Q16_ONE - kml_rshift_round((s64)out[i] * out[i], 16);
			din[i] = kml_sat32(kml_rshift_round(g * dout[i], 16));
			break;
		default:
			din[i] = dout[i];
			break;
		}
	}
}
EXPORT_SYMBOL_GPL(kml_act_backward_q16);
#endif
