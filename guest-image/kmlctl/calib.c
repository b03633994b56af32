// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl train: how well the trainer does -- prequential scores of its
 * meet/miss calls -- and the decision calibration that chooses the
 * threshold (decision_permille) those calls are made with.
 */
#include "kmlctl.h"


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
 * Decision calibration: the model predicts lg(issue us); the kernel says
 * "meet" when the predicted issue time is at most deadline * permille /
 * 1000 (/sys/module/kml/parameters/decision_permille).  Regression to the
 * mean pulls predictions toward the majority class, so the deadline itself
 * is rarely the best threshold.  score_batch() keeps the last
 * KML_DD_CAL_WINDOW prequential residuals and, at each publish, the
 * threshold that maximises the mean of accuracy and balanced accuracy goes
 * to the kernel; balanced accuracy alone would give up a lot of accuracy
 * on a rare "miss" class for little (replaying a TCG trace: 0.82 / 0.87
 * against 0.87 / 0.84).  The model itself stays unbiased.  The residuals
 * and the threshold are KML's (kernel/kml/kml_dd_calib.h): the kernel
 * trainer and kmlbench train run the same code.
 */

/* The permille for the window, or the current one while a class is rare. */
u32 calib_fit(struct calib *c)
{
	s32 thr;

	if (!kml_dd_cal_fit(c->window.r, c->window.n, c->window.scratch, &thr))
		return c->permille;
	return kml_dd_lg_q16_to_permille(thr);
}

/* Tell the kernel; failures are counted (an older kernel, no sysfs). */
void calib_apply(struct calib *c, u32 permille, bool to_dev)
{
	FILE *f;
	bool bad;

	c->permille = permille;
	if (!to_dev)
		return;
	f = fopen("/sys/module/kml/parameters/decision_permille", "w");
	if (!f) {
		c->writes_failed++;
		return;
	}
	bad = fprintf(f, "%u\n", permille) < 0;
	if (fclose(f) || bad)
		c->writes_failed++;
}
