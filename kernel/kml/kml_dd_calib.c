// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: the calibration of the meet/miss decision, the
 * integer half of kml_dd_calib.h (which says what is calibrated); used by
 * the kernel trainer, kmlctl train and, through libkml.so, kmlbench train.
 * Integer only: it runs outside FPU sections.
 */
#include "kml_dd_calib.h"

/*
 * The AUC of a score for "missed" (Mann-Whitney), one tie group at a time
 * in the score's order: each group of @met met and @missed missed samples
 * adds its pairs with the met samples of lower groups (@met_before) and,
 * counting half, with its own.  @num is in half pairs.
 */
static void kml_dd_auc_group(u64 *num, u64 *met_before, u64 met, u64 missed)
{
	*num += missed * (2 * *met_before + met);
	*met_before += met;
}

/* @num half pairs of @pairs, in 2^-20 units; 0 without pairs. */
static u32 kml_dd_auc_ratio(u64 num, u64 pairs)
{
	u64 den = 2 * pairs;

	if (!den)
		return 0;
	while (num >> 43) {	/* keep num << 20 in 64 bits */
		num >>= 1;
		den >>= 1;
	}
	return div64_u64(num << 20, den);
}

u32 kml_dd_cal_auc_hist(const u64 *met, const u64 *missed, u32 n)
{
	u64 num = 0, met_before = 0, n_miss = 0;
	u32 i;

	for (i = 0; i < n; i++) {
		kml_dd_auc_group(&num, &met_before, met[i], missed[i]);
		n_miss += missed[i];
	}
	/* both counts below 2^31: twice their product, and num, fit 64 bits */
	if (met_before >> 31 || n_miss >> 31)
		return 0;
	return kml_dd_auc_ratio(num, met_before * n_miss);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_cal_auc_hist);

/* The kernel trainer's, kmlctl train's and kmlbench train's */
#if KML_HAS_KTRAINER
static s64 kml_dd_abs64(s64 v)
{
	return v < 0 ? -v : v;
}

void kml_dd_cal_add(struct kml_dd_cal *c, const struct kml_dd_resid *r,
		    const struct kml_dd_sample *s, u32 n)
{
	u32 i, k, w, copies;

	for (i = 0; i < n; i++) {
		if (s && (s[i].flags & KML_DD_SAMPLE_ACTED))
			continue;
		copies = s && (s[i].flags & KML_DD_SAMPLE_HOLDOUT) ?
			 KML_DD_SKILL_HOLDOUT : 1;
		k = !!r[i].met;
		for (w = 0; w < copies; w++) {
			c->r[k][c->pos[k]] = r[i];
			c->pos[k] = (c->pos[k] + 1) % KML_DD_CAL_CLASS;
			if (c->n[k] < KML_DD_CAL_CLASS)
				c->n[k]++;
		}
	}
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_cal_add);

bool kml_dd_cal_fit_window(struct kml_dd_cal *c,
			   struct kml_dd_cal_result *res)
{
	u32 n0 = c->n[0], n1 = c->n[1];

	memcpy(c->scratch, c->r[0], n0 * sizeof(c->scratch[0]));
	memcpy(c->scratch + n0, c->r[1], n1 * sizeof(c->scratch[0]));
	return kml_dd_cal_fit(c->scratch, n0 + n1, c->scratch, res);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_cal_fit_window);

/*
 * Sift @s[i] down the max-heap of the first @n by r, moving, not swapping.
 * The child's index is taken in 64 bits: 2i + 1 wraps a u32 once @n passes
 * 2^31 (kmlctl calibrate and libkml.so's callers fit up to U32_MAX).
 */
static void kml_dd_resid_sift(struct kml_dd_resid *s, u32 i, u32 n)
{
	struct kml_dd_resid v = s[i];
	u64 c;

	while ((c = 2 * (u64)i + 1) < n) {
		if (c + 1 < n && s[c + 1].r > s[c].r)
			c++;
		if (s[c].r <= v.r)
			break;
		s[i] = s[c];
		i = c;
	}
	s[i] = v;
}

/*
 * Sort @s by r, ascending (not stable: the fit reads equal r as one group).
 * A heap sort with the comparison inline: the library's sort() calls a
 * comparison and a swap through pointers, which was most of the kernel
 * trainer's calibration, about 5,800 instructions a request at a publish
 * every 256 samples (docs/benchmarks.md, "an uncapped trainer").
 */
static void kml_dd_resid_sort(struct kml_dd_resid *s, u32 n)
{
	struct kml_dd_resid top;
	u32 i;

	for (i = n / 2; i-- > 0;)
		kml_dd_resid_sift(s, i, n);
	while (n > 1) {
		n--;
		top = s[0];
		s[0] = s[n];
		s[n] = top;
		kml_dd_resid_sift(s, 0, n);
	}
}

/* AUC of r as a score for "missed" on the sorted @s, in 2^-20 units. */
static u32 kml_dd_cal_auc(const struct kml_dd_resid *s, u32 n, u32 n_met,
			  u32 n_miss)
{
	u64 num = 0, met_before = 0;
	u32 i = 0, j, met_g;

	while (i < n) {
		met_g = 0;
		for (j = i; j < n && s[j].r == s[i].r; j++)
			met_g += !!s[j].met;
		kml_dd_auc_group(&num, &met_before, met_g, j - i - met_g);
		i = j;
	}
	return kml_dd_auc_ratio(num, (u64)n_met * n_miss);
}

/*
 * Predict "meet" when r <= thr.  Regression to the mean pulls predictions
 * toward the majority class, so the deadline itself (thr = 0) is rarely
 * the best threshold; calibrating the decision leaves the issue-time model
 * unbiased.
 *
 * Sort a copy into @scratch and try a split between each pair of distinct
 * neighbours.  The score is balanced accuracy, the mean recall of the two
 * classes: unlike accuracy it cannot be gamed by class imbalance (with 1%
 * misses, always answering "meet" is 99% accurate and 0.5 balanced), so a
 * split is chosen for telling the classes apart.  It is kept in integers
 * as the sum of the two recalls in units of 2^-20; ties go to the
 * threshold closest to the deadline.  Thresholds stay within a factor 8 of
 * the deadline (KML_DD_CAL_MAX_LG), and a split only that range cannot
 * make is not scored.  A best split no better than 0.5 (a model with no
 * skill) is refused rather than applied.
 */
bool kml_dd_cal_fit(const struct kml_dd_resid *r, u32 n,
		    struct kml_dd_resid *scratch,
		    struct kml_dd_cal_result *res)
{
	u32 n_met = 0, n_miss, met_below = 0, miss_above;
	u32 best_correct = 0;
	u64 i;			/* runs to n inclusive: U32_MAX + 1 */
	s64 lo, hi, first, last, cand;
	s32 best_thr = 0;
	u64 score, best = 0;
	bool found = false;

	for (i = 0; i < n; i++)
		n_met += !!r[i].met;
	n_miss = n - n_met;
	memset(res, 0, sizeof(*res));
	res->n_met = n_met;
	res->n_missed = n_miss;
	if (!n_met || !n_miss) {
		res->status = n_met ? KML_DD_CAL_FEW_MISSED : KML_DD_CAL_FEW_MET;
		return false;
	}
	if (scratch != r)
		memcpy(scratch, r, n * sizeof(*scratch));
	kml_dd_resid_sort(scratch, n);
	res->auc = kml_dd_cal_auc(scratch, n, n_met, n_miss);
	if (n_met < KML_DD_CAL_MIN_CLASS || n_miss < KML_DD_CAL_MIN_CLASS) {
		res->status = n_met < KML_DD_CAL_MIN_CLASS ?
			KML_DD_CAL_FEW_MET : KML_DD_CAL_FEW_MISSED;
		return false;
	}
	for (i = 0; i <= n; i++) {
		if (i > 0)
			met_below += !!scratch[i - 1].met;
		if (i > 0 && i < n && scratch[i - 1].r == scratch[i].r)
			continue;
		/*
		 * The first i residuals are predicted "meet" by any threshold
		 * in [lo, hi) (below hi for i = 0); take the middle, if the
		 * factor-8 range leaves any of it.
		 */
		lo = i > 0 ? scratch[i - 1].r : -KML_DD_CAL_MAX_LG;
		hi = i < n ? scratch[i].r : KML_DD_CAL_MAX_LG + 1;
		first = lo > -KML_DD_CAL_MAX_LG ? lo : -KML_DD_CAL_MAX_LG;
		last = hi - 1 < KML_DD_CAL_MAX_LG ? hi - 1 : KML_DD_CAL_MAX_LG;
		if (first > last)
			continue;
		cand = lo + (hi - lo) / 2;
		if (cand < first)
			cand = first;
		if (cand > last)
			cand = last;
		miss_above = n_miss - ((u32)i - met_below);
		score = ((u64)met_below << 20) / n_met +
			((u64)miss_above << 20) / n_miss;
		if (!found || score > best ||
		    (score == best &&
		     kml_dd_abs64(cand) < kml_dd_abs64(best_thr))) {
			found = true;
			best = score;
			best_thr = cand;
			best_correct = met_below + miss_above;
		}
	}
	if (!found || best <= KML_DD_CAL_ONE) {
		res->status = KML_DD_CAL_NO_SKILL;
		res->balanced = found ? best / 2 : 0;
		res->accuracy = found ? ((u64)best_correct << 20) / n : 0;
		return false;
	}
	res->status = KML_DD_CAL_OK;
	res->thr = best_thr;
	res->balanced = best / 2;
	res->accuracy = ((u64)best_correct << 20) / n;
	return true;
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_cal_fit);

bool kml_dd_cal_fit_hist(const u64 *met, const u64 *missed, u32 n,
			 u32 lo, u32 hi, u32 *split,
			 struct kml_dd_cal_result *res)
{
	u64 n_met = 0, n_miss = 0, met_below = 0, miss_below = 0;
	u64 tn = 0, tp = 0, score, best = 0;
	u64 i;			/* runs to n inclusive: U32_MAX + 1 */

	for (i = 0; i < n; i++) {
		n_met += met[i];
		n_miss += missed[i];
	}
	memset(res, 0, sizeof(*res));
	res->n_met = n_met > U32_MAX ? U32_MAX : n_met;
	res->n_missed = n_miss > U32_MAX ? U32_MAX : n_miss;
	/* as kml_dd_cal_fit(): the AUC even when the split is refused */
	res->auc = kml_dd_cal_auc_hist(met, missed, n);
	/* a class of 2^31 or more is refused too (the products below) */
	if (n_met < KML_DD_CAL_MIN_CLASS || n_miss < KML_DD_CAL_MIN_CLASS ||
	    n_met >> 31 || n_miss >> 31) {
		res->status = n_met < KML_DD_CAL_MIN_CLASS || n_met >> 31 ?
			KML_DD_CAL_FEW_MET : KML_DD_CAL_FEW_MISSED;
		return false;
	}
	*split = n / 2;
	/*
	 * The recalls' sum times n_met * n_miss: exact, below 2^63 with both
	 * counts below 2^31; ties to the split closest to the deadline.
	 */
	for (i = 0; i <= n && i <= hi; i++) {
		if (i > 0) {
			met_below += met[i - 1];
			miss_below += missed[i - 1];
		}
		if (i < lo)
			continue;
		score = met_below * n_miss + (n_miss - miss_below) * n_met;
		if (score > best ||
		    (score == best &&
		     kml_dd_abs64((s64)i - n / 2) <
		     kml_dd_abs64((s64)*split - n / 2))) {
			best = score;
			*split = (u32)i;
			tn = met_below;
			tp = n_miss - miss_below;
		}
	}
	res->balanced = (div64_u64(tn << 20, n_met) +
			 div64_u64(tp << 20, n_miss)) / 2;
	res->accuracy = div64_u64((tn + tp) << 20, n_met + n_miss);
	if (best <= n_met * n_miss) {	/* balanced accuracy 0.5 at best */
		res->status = KML_DD_CAL_NO_SKILL;
		return false;
	}
	res->status = KML_DD_CAL_OK;
	return true;
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_cal_fit_hist);
#endif /* KML_HAS_KTRAINER */

void kml_dd_decide_q16(const s32 *yq, const u64 *deadline_ns, u32 n,
		       u32 permille, s64 *issue_ns, u8 *met)
{
	u32 i;

	for (i = 0; i < n; i++) {
		issue_ns[i] = kml_dd_lg_q16_to_ns(yq[i]);
		met[i] = kml_dd_meets(issue_ns[i], deadline_ns[i], permille);
	}
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_decide_q16);
