// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl: the meet/miss calls -- how well they do (the trainer's
 * prequential scores) and the decision calibration that chooses their
 * threshold, decision_permille: the trainer's, and the calibrate command.
 */
#include "kmlctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define KML_DECISION_PERMILLE	KML_PARAMS_DIR "/decision_permille"

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
 * KML_DD_CAL_CLASS prequential residuals of each class (met, missed) and,
 * at each publish, the threshold that maximises balanced accuracy goes to
 * the kernel (accuracy is gamed by class imbalance: with 1% misses,
 * "always meet" is 99% accurate and has no skill).  The model itself
 * stays unbiased.  The residuals and the threshold are KML's
 * (kernel/kml/kml_dd_calib.h): the kernel trainer and kmlbench train run
 * the same code.
 */

static const char *const calib_status_names[] = {
	[KML_DD_CAL_OK] = "ok",
	[KML_DD_CAL_FEW_MET] = "few-met",
	[KML_DD_CAL_FEW_MISSED] = "few-missed",
	[KML_DD_CAL_NO_SKILL] = "no-skill",
};

/* The name of a kml_dd_cal_fit() status. */
const char *calib_status(u32 status)
{
	return status < 4 ? calib_status_names[status] : "?";
}

/*
 * The permille for the window, or the current one when the fit refuses
 * (a class rarer than KML_DD_CAL_MIN_CLASS, or no split better than
 * chance): counted, and said once per kind on stderr.
 */
u32 calib_fit(struct calib *c)
{
	static u32 said;

	if (kml_dd_cal_fit_window(&c->window, &c->last))
		return kml_dd_lg_q16_to_permille(c->last.thr);
	c->refused++;
	if (!(said & (1U << c->last.status))) {
		said |= 1U << c->last.status;
		fprintf(stderr, "kmlctl: calibration refused (%s: %u met, %u missed); "
			"keeping decision_permille %u\n",
			calib_status(c->last.status), c->last.n_met,
			c->last.n_missed, c->permille);
	}
	return c->permille;
}

/* Tell the kernel; failures are counted (an older kernel, no sysfs). */
void calib_apply(struct calib *c, u32 permille, bool to_dev)
{
	FILE *f;
	bool bad;

	c->permille = permille;
	if (!to_dev)
		return;
	f = fopen(KML_DECISION_PERMILLE, "w");
	if (!f) {
		c->writes_failed++;
		return;
	}
	bad = fprintf(f, "%u\n", permille) < 0;
	if (fclose(f) || bad)
		c->writes_failed++;
}

/* ------------------------------------------------------------- calibrate */

#define CALIBRATE_CHUNK		256	/* rows predicted per call */

/* Predict @n samples into @yhat (lg us), as the kernel reads features. */
static int calibrate_predict(struct kml_model *m, bool q16,
			     const struct kml_dd_sample *s, u32 n, u32 nf,
			     float *yhat)
{
	union {
		s32 q[CALIBRATE_CHUNK * KML_DD_MAX_FEATURES];
		float f[CALIBRATE_CHUNK * KML_DD_MAX_FEATURES];
	} x;
	union {
		s32 q[CALIBRATE_CHUNK];
		float f[CALIBRATE_CHUNK];
	} y;
	u32 i, j;
	int ret;

	for (i = 0; i < n; i++)
		for (j = 0; j < nf; j++) {
			if (q16)
				x.q[i * nf + j] = s[i].features[j];
			else
				x.f[i * nf + j] = s[i].features[j] / 65536.0f;
		}
	ret = kml_model_predict(m, &x, n, &y);
	if (ret)
		return ret;
	for (i = 0; i < n; i++)
		yhat[i] = q16 ? y.q[i] / 65536.0f : y.f[i];
	return 0;
}

/*
 * calibrate, without operands: the threshold of a model no trainer
 * calibrates, from its own predictions since the statistics' reset (the
 * kernel's score histograms, docs/kml-iosched.md), set in the kernel's
 * decision_permille.  The split kml_dd_cal_fit_hist() finds within the
 * trainers' factor 8 of the deadline, at a bucket's edge; refused (the
 * threshold kept, "calibrated 0") when a class has too few predictions or
 * nothing beats chance.  An error (EBUSY) once a prediction since the
 * reset was acted on: the histograms then hold outcomes the act changed.
 */
static int calibrate_stats(void)
{
	const u32 nb = KML_DD_SCORE_BUCKETS, mid = nb / 2;
	const u32 reach = KML_DD_CAL_MAX_LG >> KML_DD_SCORE_SHIFT;
	unsigned long long acted = 0, predictions = 0, in_hist = 0, v;
	u64 hist[2][KML_DD_SCORE_BUCKETS] = { { 0 } };
	unsigned int b, hi, permille = 0;
	int o;
	struct kml_dd_cal_result res;
	char line[256], key[64];
	struct calib c = { 0 };
	bool found;
	u32 split;
	FILE *f;

	f = fopen(KML_STATS_FILE, "r");
	if (!f)
		return fail(errno, "%s", KML_STATS_FILE);
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%63s", key) != 1)
			continue;
		o = !strcmp(key, "score_met_hist") ? 0 :
		    !strcmp(key, "score_missed_hist") ? 1 : -1;
		if (o >= 0) {
			if (sscanf(line, "%*s %u %u %llu", &b, &hi, &v) == 3 &&
			    b < nb) {
				hist[o][b] = v;
				in_hist += v;
			}
		} else if (sscanf(line, "%*s %llu", &v) == 1) {
			if (!strcmp(key, "steered_met") ||
			    !strcmp(key, "steered_missed"))
				acted += v;
			else if (!strcmp(key, "decision_permille"))
				permille = v;
			else if (!strcmp(key, "predictions"))
				predictions = v;
		}
	}
	fclose(f);
	if (!permille)
		return fail(EPROTO, "%s: no decision_permille", KML_STATS_FILE);
	/* a kernel without the histograms, or one out of memory to sum them */
	if (predictions && !in_hist)
		return fail(EPROTO, "%s: %llu predictions, no score histograms",
			    KML_STATS_FILE, predictions);
	if (acted)
		return fail(EBUSY, "%llu acted on since the reset (calibrate after observe)",
			    acted);
	found = kml_dd_cal_fit_hist(hist[0], hist[1], nb, mid - reach,
				    mid + reach, &split, &res);
	if (found) {
		permille = kml_dd_lg_q16_to_permille(((s32)split - (s32)mid) *
						     (1 << KML_DD_SCORE_SHIFT));
		calib_apply(&c, permille, true);
		if (c.writes_failed)
			return fail(errno, "%s", KML_DECISION_PERMILLE);
	}
	printf("predictions %llu\n", (unsigned long long)res.n_met + res.n_missed);
	printf("met %u\n", res.n_met);
	printf("calibrated %d\n", found);
	printf("status %s\n", calib_status(res.status));
	printf("decision_permille %u\n", permille);
	printf("balanced_accuracy %.6f\n", res.balanced / (double)KML_DD_CAL_ONE);
	printf("auc %.6f\n", res.auc / (double)KML_DD_CAL_ONE);
	return 0;
}

/*
 * calibrate MODEL TRACE: the decision_permille for MODEL's calls on every
 * sample of TRACE (as kmlbench train calibrates; the trainers use their
 * last KML_DD_CAL_CLASS of each class), or 1000, the deadline, when the
 * fit refuses (status: few-met, few-missed, no-skill); with the balanced
 * accuracy of the split and the AUC of the residuals.
 */
int cmd_calibrate(const struct opts *o)
{
	struct kml_dd_resid *resid = NULL, *scratch = NULL;
	float yhat[CALIBRATE_CHUNK];
	struct kml_dd_sample *s = NULL;
	struct kml_model *m = NULL;
	struct kml_model_cfg cfg;
	size_t n = 0, i, k, met = 0;
	u32 nf, permille = 1000;
	struct kml_dd_cal_result res;
	bool found = false;
	int ret = 1;

	if (check_opts(o, "calibrate", 0, 0, 2) || o->argc == 2)
		return o->argc == 2 ?
		       usage_error("calibrate: MODEL TRACE, or nothing") : 2;
	if (o->argc == 1)
		return calibrate_stats();
	if (read_trace(o->argv[2], &s, &n, &nf) ||
	    model_load_file(o->argv[1], nf, "the trace needs", false, &m, &cfg))
		goto out;
	if (n > U32_MAX) {
		fail(EFBIG, "%s: %zu samples", o->argv[2], n);
		goto out;
	}
	resid = calloc(n ? n : 1, sizeof(*resid));
	scratch = calloc(n ? n : 1, sizeof(*scratch));
	if (!resid || !scratch) {
		fail(ENOMEM, "%zu residuals", n);
		goto out;
	}
	for (i = 0; i < n; i += k) {
		k = n - i < CALIBRATE_CHUNK ? n - i : CALIBRATE_CHUNK;
		ret = calibrate_predict(m, cfg.dtype == KML_Q16, s + i, k, nf,
					yhat);
		if (ret) {
			ret = fail(-ret, "kml_model_predict");
			goto out;
		}
		kml_dd_residuals(yhat, s + i, k, resid + i);
	}
	for (i = 0; i < n; i++)
		met += resid[i].met;
	found = kml_dd_cal_fit(resid, n, scratch, &res);
	if (found)
		permille = kml_dd_lg_q16_to_permille(res.thr);
	printf("samples %zu\n", n);
	printf("met %zu\n", met);
	printf("calibrated %d\n", found);
	printf("status %s\n", calib_status(res.status));
	printf("threshold_q16 %d\n", found ? res.thr : 0);
	printf("decision_permille %u\n", permille);
	printf("balanced_accuracy %.6f\n", res.balanced / (double)KML_DD_CAL_ONE);
	printf("auc %.6f\n", res.auc / (double)KML_DD_CAL_ONE);
	ret = 0;
out:
	kml_model_free(m);
	free(resid);
	free(scratch);
	free(s);
	return ret;
}
