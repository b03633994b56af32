// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl train: how well the trainer does -- prequential scores of its
 * meet/miss calls -- and the decision calibration that chooses the
 * threshold (decision_permille) those calls are made with.
 */
#include "kmlctl.h"

#include <math.h>
#include <stdlib.h>

void scores_add(struct scores *sc, bool met, bool pred_met, double err_us)
{
	sc->n++;
	sc->correct += met == pred_met;
	sc->pos += met;
	sc->tp += met && pred_met;
	sc->neg += !met;
	sc->tn += !met && !pred_met;
	sc->abs_err_us += err_us;
}

double scores_accuracy(const struct scores *sc)
{
	return sc->n ? (double)sc->correct / sc->n : 0;
}

/* Mean recall of the classes present (= accuracy if only one is). */
double scores_balanced(const struct scores *sc)
{
	double sum = 0;
	int k = 0;

	if (sc->pos) {
		sum += (double)sc->tp / sc->pos;
		k++;
	}
	if (sc->neg) {
		sum += (double)sc->tn / sc->neg;
		k++;
	}
	return k ? sum / k : 0;
}

double scores_mae(const struct scores *sc)
{
	return sc->n ? sc->abs_err_us / sc->n : 0;
}

/*
 * Decision calibration.  The model predicts lg(issue us); the kernel says
 * "meet" when the predicted issue time is at most deadline * permille /
 * 1000 (/sys/module/kml/parameters/decision_permille).  Regression to the
 * mean pulls predictions toward the majority class, so the deadline itself
 * is rarely the best threshold.  We keep the last CALIB_WINDOW prequential
 * residuals r = yhat - lg(deadline us) and, at each publish, pick the
 * threshold (within a factor of 8 of the deadline) that maximises the mean
 * of accuracy and balanced accuracy: the two figures we report, one
 * rewarding the majority class and one the minority.  Balanced accuracy
 * alone would give up a lot of accuracy on a rare "miss" class for little
 * (replaying a TCG trace: 0.82 / 0.87 against 0.87 / 0.84).  The model
 * itself stays unbiased.
 */
#define CALIB_MIN_CLASS	32
#define CALIB_MAX_LG	3.0	/* at most a factor 8 either way */

void calib_add(struct calib *c, float r, bool met)
{
	c->r[c->pos] = r;
	c->met[c->pos] = met;
	c->pos = (c->pos + 1) % CALIB_WINDOW;
	if (c->n < CALIB_WINDOW)
		c->n++;
}

static const struct calib *calib_sort_ctx;

static int calib_cmp(const void *a, const void *b)
{
	float ra = calib_sort_ctx->r[*(const u32 *)a];
	float rb = calib_sort_ctx->r[*(const u32 *)b];

	return ra < rb ? -1 : ra > rb;
}

/*
 * Best threshold on r: predict meet when r <= thr.  Returns the permille
 * 1000 * 2^thr, or the current one when a class has too few samples.
 */
double calib_fit(struct calib *c)
{
	u32 idx[CALIB_WINDOW], i, n_met = 0, n_miss, met_below = 0, right;
	double best = -1, thr = 0, score, lo, hi, cand;

	for (i = 0; i < c->n; i++)
		n_met += c->met[i];
	n_miss = c->n - n_met;
	if (n_met < CALIB_MIN_CLASS || n_miss < CALIB_MIN_CLASS)
		return c->permille;
	for (i = 0; i < c->n; i++)
		idx[i] = i;
	calib_sort_ctx = c;
	qsort(idx, c->n, sizeof(idx[0]), calib_cmp);
	/* split after i sorted residuals: the first i are predicted "meet" */
	for (i = 0; i <= c->n; i++) {
		if (i > 0)
			met_below += c->met[idx[i - 1]];
		lo = i > 0 ? c->r[idx[i - 1]] : -CALIB_MAX_LG;
		hi = i < c->n ? c->r[idx[i]] : CALIB_MAX_LG;
		if (i > 0 && i < c->n && lo == hi)
			continue;
		cand = fmin(fmax((lo + hi) / 2, -CALIB_MAX_LG), CALIB_MAX_LG);
		right = met_below + (n_miss - (i - met_below));
		score = ((double)right / c->n +
			 ((double)met_below / n_met +
			  (double)(n_miss - (i - met_below)) / n_miss) / 2) / 2;
		/* ties: the threshold closest to the deadline itself */
		if (score > best + 1e-9 ||
		    (score > best - 1e-9 && fabs(cand) < fabs(thr))) {
			best = score;
			thr = cand;
		}
	}
	return fmin(fmax(1000.0 * exp2(thr), 1), 64000);
}

/* Tell the kernel; failures are counted (an older kernel, no sysfs). */
void calib_apply(struct calib *c, double permille, bool to_dev)
{
	FILE *f;

	c->permille = permille;
	if (!to_dev)
		return;
	f = fopen("/sys/module/kml/parameters/decision_permille", "w");
	if (!f || fprintf(f, "%.0f\n", permille) < 0 || fclose(f)) {
		c->writes_failed++;
		if (f)
			fclose(f);
	}
}
