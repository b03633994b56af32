// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl train: the trainer thread and the command.
 *
 * Shared user-kernel mode: the kernel pushes one sample per completed
 * request into the ring, we train and publish models back.  Two threads:
 *
 *   consumer  pops the ring (1 ms sleeps when empty) into a bounded FIFO;
 *             in drop mode it discards (and counts) what the trainer could
 *             not take: FIFO full, over the rate cap, or the trainer is
 *             sleeping for its CPU cap.  In block mode it stops popping
 *             while the FIFO is full, so back-pressure reaches the kernel
 *             ring (whose own ring_mode then decides).  (train_feed.c)
 *   trainer   takes mini-batches from the FIFO; for each it first predicts
 *             (prequential evaluation: the curve scores data the model has
 *             not trained on yet), then updates the normalisation and
 *             takes one Adam step; publishes every --publish-every samples.
 *
 * One trainer thread: KML training calls need a single caller, and a
 * n-16-1 MLP step on 32 rows takes microseconds, far below the ring rate
 * a guest disk produces.
 */
#include "kmlctl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define TRAIN_STOP_GRACE_S	1.0	/* draining after --seconds/a signal */
#define IDLE_WAIT_S		0.05	/* no sample: look for the end again */
#define TRAIN_MAX_REFUSAL_MSGS	5

/* ---- model and batches */

static s64 to_q32(double v)
{
	return (s64)llround(v * 4294967296.0);
}

static int trainer_setup(struct trainer *t)
{
	const struct opts *o = t->o;
	struct kml_train_cfg tc;
	int ret;

	if (o->warm) {
		if (model_warm(o->warm, t->n_features, &t->m))
			return 1;
	} else {
		ret = model_new(o, t->n_features, &t->m);
		if (ret)
			return fail(-ret, "kml_model_create");
	}
	memset(&tc, 0, sizeof(tc));
	tc.optimizer = KML_OPT_ADAM;
	tc.loss = KML_LOSS_MSE;
	tc.max_batch = o->batch;
	tc.lr = to_q32(o->lr);
	ret = kml_model_train_setup(t->m, &tc);
	if (ret)
		return fail(-ret, "kml_model_train_setup");
	t->x = calloc((size_t)o->batch * t->n_features, sizeof(float));
	t->y = calloc(o->batch, sizeof(float));
	t->yhat = calloc(o->batch, sizeof(float));
	t->batch = calloc(o->batch, sizeof(*t->batch));
	t->resid = calloc(o->batch, sizeof(*t->resid));
	if (!t->x || !t->y || !t->yhat || !t->batch || !t->resid)
		return fail(ENOMEM, "trainer buffers");
	return 0;
}

/* The model's inputs of a sample: its Q16.16 features as float. */
static void sample_row(const struct kml_dd_sample *s, u32 nf, float *x)
{
	u32 i;

	for (i = 0; i < nf; i++)
		x[i] = s->features[i] / 65536.0f;
}

/*
 * Score the predictions of a batch the model has not trained on yet, and
 * keep their residuals (and labels: KML's, kml_dd_calib.h) for the
 * decision calibration.
 */
static void score_batch(struct trainer *t, u32 n)
{
	const struct kml_dd_sample *s;
	double pred_us, actual_us;
	bool met, pred_met;
	s64 pred_ns;
	u32 i;

	kml_dd_residuals(t->yhat, t->batch, n, t->resid);
	kml_dd_cal_add(&t->cal.window, t->resid, t->batch, n);
	for (i = 0; i < n; i++) {
		s = &t->batch[i];
		/* KML's inverse and call, as the kernel makes them */
		pred_ns = kml_dd_lg_us_to_ns(t->yhat[i]);
		pred_met = kml_dd_meets(pred_ns, s->deadline_ns,
					t->cal.permille);
		pred_us = pred_ns > 0 ? pred_ns / 1000.0 : 0;	/* NaN: "now" */
		actual_us = s->issue_ns / 1000.0;
		met = t->resid[i].met;
		scores_add(&t->window, met, pred_met, fabs(pred_us - actual_us));
		scores_add(&t->total, met, pred_met, fabs(pred_us - actual_us));
	}
}

/*
 * A fresh model starts with its output bias at the mean target of the
 * first batch.  Targets are lg(issue us), around 5..12: from a zero bias,
 * Adam at lr 0.01 needs about a thousand steps just to walk the bias
 * there (a linear model's error is huge all that time); this makes the
 * first curve windows about the features instead.  The bias is the last
 * parameter (per layer W then b, one output).
 */
static void init_output_bias(struct trainer *t, u32 n)
{
	float *params = kml_model_params(t->m);
	double sum = 0;
	u32 i;

	for (i = 0; i < n; i++)
		sum += t->y[i];
	params[kml_model_n_params(t->m) - 1] = (float)(sum / n);
}

static int train_batch(struct trainer *t, u32 n)
{
	float loss;
	u32 i, nf = t->n_features;
	int ret;

	for (i = 0; i < n; i++)
		sample_row(&t->batch[i], nf, t->x + (size_t)i * nf);
	kml_dd_targets(t->batch, n, t->y);	/* lg(issue us), KML's */
	ret = kml_model_predict(t->m, t->x, n, t->yhat);
	if (ret)
		return ret;
	score_batch(t, n);
	if (!t->steps && !t->o->warm)
		init_output_bias(t, n);
	ret = kml_model_norm_update(t->m, t->x, n);
	if (ret)
		return ret;
	ret = kml_model_train_batch(t->m, t->x, t->y, n, &loss);
	if (ret)
		return ret;
	t->trained += n;
	t->steps++;
	return 0;
}

/* ---- curve, publishing, caps */

static void curve_line(struct trainer *t)
{
	u64 consumed;

	if (!t->curve || !t->window.n)
		return;
	pthread_mutex_lock(&t->lock);
	consumed = t->consumed;
	pthread_mutex_unlock(&t->lock);
	fprintf(t->curve, "{\"samples_seen\": %llu, \"samples_consumed\": %llu, "
		"\"accuracy\": %.6f, \"balanced_accuracy\": %.6f, "
		"\"mae_us\": %.3f, \"n\": %llu, \"decision_permille\": %u}\n",
		(unsigned long long)t->trained, (unsigned long long)consumed,
		scores_accuracy(&t->window), scores_balanced(&t->window),
		scores_mae(&t->window), (unsigned long long)t->window.n,
		t->cal.permille);
	memset(&t->window, 0, sizeof(t->window));
}


/* The current weights to the device or to --publish-file: 0 or -errno. */
static int publish_bytes(struct trainer *t)
{
	bool at_write;
	size_t len;
	void *buf;
	int ret;

	ret = model_bytes(t->m, &buf, &len);
	if (ret)
		return ret;
	if (t->publish_q16)
		ret = kml_model_file_to_q16(buf, len);
	if (!ret && t->to_dev)
		ret = publish_model(t->rs.fd, buf, len, &at_write);
	else if (!ret)
		ret = write_file_atomic(t->o->publish_file, buf, len);
	free(buf);
	return ret;
}

/*
 * Publish the current weights: to the device (write + commit; a refusal
 * is counted, not fatal: the kernel keeps the previous model), or with
 * --ring-file to --publish-file, or nowhere.  A kernel built without
 * float models (CONFIG_KML_FLOAT=n) refuses a float one with EOPNOTSUPP:
 * from then on the model goes out in Q16.16, as --publish-dtype fixed
 * sends it from the start.
 */
static void publish(struct trainer *t)
{
	int ret;

	calib_apply(&t->cal, calib_fit(&t->cal), t->to_dev);
	if (!t->to_dev && !t->o->publish_file)
		return;
	ret = publish_bytes(t);
	if (ret == -EOPNOTSUPP && t->to_dev && !t->publish_q16) {
		fputs("kmlctl: train: the kernel has no float models: publishing in Q16.16\n",
		      stderr);
		t->publish_q16 = true;
		ret = publish_bytes(t);
	}
	t->last_published_at = t->trained;
	if (!ret) {
		t->published++;
		return;
	}
	if (t->refused++ < TRAIN_MAX_REFUSAL_MSGS)
		fail(-ret, "publishing after %llu samples refused",
		     (unsigned long long)t->trained);
}

/*
 * --cpu-pct: keep CPU time / wall time of the process (trainer and
 * consumer: both are the cost of training) under the cap, per window of
 * at most a second, by sleeping.  The consumer drops meanwhile in drop
 * mode.  The next window starts where the sleep paid the debt off, with
 * the CPU reading taken before it: what the consumer burns while we sleep
 * is charged to that next window.  Sleeps come in slices so a stop is
 * noticed.
 */
static void cpu_pace(struct trainer *t)
{
	double now, cpu_now, need, left;

	if (!t->o->cpu_pct)
		return;
	now = mono_s();
	cpu_now = now_s(CLOCK_PROCESS_CPUTIME_ID);
	need = (cpu_now - t->cpu0) * 100.0 / t->o->cpu_pct -
	       (now - t->cpu_wall0);
	if (need >= 0.002) {
		t->throttled = true;
		t->cap_sleep += need;
		for (left = need; left > 0 && !stop_signal; left -= 0.05)
			sleep_s(left < 0.05 ? left : 0.05);
		t->throttled = false;
		t->cpu_wall0 = now + need;
		t->cpu0 = cpu_now;
	} else if (now - t->cpu_wall0 >= 1.0) {
		t->cpu_wall0 = now;	/* no credit banked beyond a second */
		t->cpu0 = cpu_now;
	}
}

/* Block mode --rate: sleep until the bucket holds a batch's tokens. */
static void rate_pace(struct trainer *t, u32 n)
{
	double wait;

	if (t->o->drop)
		return;
	while ((wait = bucket_wait_s(&t->pace, n)) > 0 && !stop_signal)
		sleep_s(wait < 0.05 ? wait : 0.05);
	bucket_take(&t->pace, n);
}

/* ---- trainer thread */

/*
 * Wait for a batch and copy it out of the FIFO: a full one (or a full
 * FIFO, when --buffer is the smaller), or what there is once the oldest
 * sample has waited KML_DD_BATCH_WAIT_MS since it was put (the kernel
 * trainer's rule too: kml_dd_calib.h), or once the consumer is done.
 * Returns the number of samples, 0 when there are none yet or nothing
 * more to train on.
 */
static u32 take_batch(struct trainer *t)
{
	size_t want = t->o->batch < t->fifo_cap ? t->o->batch : t->fifo_cap;
	struct timespec until;
	double wait_end;
	u32 n = 0;

	pthread_mutex_lock(&t->lock);
	wait_end = mono_s() + IDLE_WAIT_S;
	while (t->fifo_count < want && !t->consumer_done) {
		if (t->fifo_count)
			wait_end = t->fifo_at[t->fifo_head] +
				   KML_DD_BATCH_WAIT_MS / 1000.0;
		if (mono_s() >= wait_end)
			break;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 10 * 1000 * 1000;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&t->cond, &t->lock, &until);
	}
	if (t->stop_now && mono_s() > t->stop_at + TRAIN_STOP_GRACE_S)
		goto out;	/* leftovers are counted as unprocessed */
	while (n < t->o->batch && t->fifo_count) {
		t->batch[n++] = t->fifo[t->fifo_head];
		t->fifo_head = (t->fifo_head + 1) % t->fifo_cap;
		t->fifo_count--;
	}
out:
	pthread_mutex_unlock(&t->lock);
	return n;
}

static bool trainer_finished(struct trainer *t)
{
	bool done;

	pthread_mutex_lock(&t->lock);
	done = t->consumer_done && (!t->fifo_count || (t->stop_now &&
		mono_s() > t->stop_at + TRAIN_STOP_GRACE_S));
	pthread_mutex_unlock(&t->lock);
	return done;
}

static void *trainer_main(void *arg)
{
	struct trainer *t = arg;
	u32 n;
	int ret;

	t->cpu_wall0 = mono_s();
	t->cpu0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
	while (!trainer_finished(t)) {
		n = take_batch(t);
		if (!n)
			continue;
		rate_pace(t, n);
		ret = train_batch(t, n);
		if (ret) {
			t->trainer_err = ret;
			fail(-ret, "training step");
			break;
		}
		if (t->window.n >= t->o->curve_every)
			curve_line(t);
		if (t->o->publish_every &&
		    t->trained - t->last_published_at >= t->o->publish_every)
			publish(t);
		cpu_pace(t);
	}
	curve_line(t);		/* the partial last window, "n" says how big */
	if (t->o->publish_every && t->trained > t->last_published_at)
		publish(t);
	t->trainer_cpu = now_s(CLOCK_THREAD_CPUTIME_ID);
	return NULL;
}

/* ---- command */

static int train_open(struct trainer *t, const struct opts *o)
{
	memset(t, 0, sizeof(*t));
	t->o = o;
	t->rs.fd = -1;
	t->rs.mem = MAP_FAILED;
	t->stopped_by = "error";
	if (o->threads != 1)
		return fail(EINVAL, "--threads: one trainer thread is "
			    "implemented (KML training calls need one caller)");
	if (o->publish_file && !o->ring_file)
		return fail(EINVAL, "--publish-file is for --ring-file runs; "
			    "with the device, models are published to it");
	if (open_ring(o, &t->rs))
		return 1;
	t->to_dev = !o->ring_file;
	t->publish_q16 = o->publish_q16;
	t->cal.permille = 1000;
	t->n_features = t->rs.info.n_features;
	if (!t->n_features || t->n_features > KML_DD_MAX_FEATURES ||
	    t->n_features > KML_MAX_WIDTH)
		return fail(EPROTO, "device reports %u features",
			    t->n_features);
	t->fifo_cap = o->buffer;
	t->fifo = calloc(t->fifo_cap, sizeof(*t->fifo));
	t->fifo_at = calloc(t->fifo_cap, sizeof(*t->fifo_at));
	if (!t->fifo || !t->fifo_at)
		return fail(ENOMEM, "sample buffer");
	if (o->curve) {
		t->curve = fopen(o->curve, "w");
		if (!t->curve)
			return fail(errno, "open %s", o->curve);
		setvbuf(t->curve, NULL, _IOLBF, 0);
	}
	/* drop mode admits a tenth of a second's worth in a burst */
	bucket_init(&t->admit, o->rate, fmax(o->batch, o->rate / 10));
	bucket_init(&t->pace, o->rate, fmax(o->batch, o->rate / 10));
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	return trainer_setup(t);
}

static int train_save(struct trainer *t)
{
	size_t len;
	void *buf;
	int ret;

	if (!t->o->save)
		return 0;
	ret = model_bytes(t->m, &buf, &len);
	if (!ret) {
		ret = write_file_atomic(t->o->save, buf, len);
		free(buf);
	}
	return ret ? fail(-ret, "save %s", t->o->save) : 0;
}

/* @wall and @cpu: seconds since the threads started (setup not counted). */
static void train_summary(struct trainer *t, double wall, double cpu)
{
	printf("samples %llu\n", (unsigned long long)t->trained);
	printf("consumed %llu\n", (unsigned long long)t->consumed);
	printf("dropped_by_trainer %llu\n", (unsigned long long)t->dropped);
	printf("unprocessed %llu\n", (unsigned long long)t->unprocessed);
	printf("steps %llu\n", (unsigned long long)t->steps);
	printf("published %llu\n", (unsigned long long)t->published);
	printf("refused %llu\n", (unsigned long long)t->refused);
	printf("publish_dtype %s\n", t->publish_q16 ? "fixed" : "float32");
	printf("accuracy %.6f\n", scores_accuracy(&t->total));
	printf("balanced_accuracy %.6f\n", scores_balanced(&t->total));
	printf("mae_us %.3f\n", scores_mae(&t->total));
	printf("decision_permille %u\n", t->cal.permille);
	printf("calibration_refused %llu\n",
	       (unsigned long long)t->cal.refused);
	printf("calibration_status %s\n", calib_status(t->cal.last.status));
	printf("calibration_balanced_accuracy %.6f\n",
	       t->cal.last.balanced / (double)KML_DD_CAL_ONE);
	printf("calibration_auc %.6f\n",
	       t->cal.last.auc / (double)KML_DD_CAL_ONE);
	printf("decision_writes_failed %llu\n",
	       (unsigned long long)t->cal.writes_failed);
	printf("seconds %.3f\n", wall);
	printf("cpu_pct %.2f\n", wall > 0 ? 100.0 * cpu / wall : 0);
	printf("trainer_cpu_pct %.2f\n",
	       wall > 0 ? 100.0 * t->trainer_cpu / wall : 0);
	printf("cpu_cap_sleep_s %.3f\n", t->cap_sleep);
	printf("stopped_by %s\n", t->stopped_by);
}

static void train_close(struct trainer *t)
{
	if (t->curve)
		fclose(t->curve);
	kml_model_free(t->m);
	free(t->x);
	free(t->y);
	free(t->yhat);
	free(t->batch);
	free(t->resid);
	free(t->fifo);
	free(t->fifo_at);
	close_ring(&t->rs);
}

int cmd_train(const struct opts *o)
{
	const unsigned int allowed = OPT_SECONDS | OPT_MAX_SAMPLES | OPT_MODE |
		OPT_RATE | OPT_CPU_PCT | OPT_WARM | OPT_ARCH | OPT_SAVE |
		OPT_CURVE | OPT_CURVE_EVERY | OPT_PUBLISH_EVERY |
		OPT_PUBLISH_FILE | OPT_PUBLISH_DTYPE | OPT_THREADS |
		OPT_BUFFER | OPT_LR | OPT_BATCH | OPT_SEED;
	pthread_t consumer, trainer;
	struct trainer t;
	double t0, cpu0;
	int ret;

	if (check_opts(o, "train", allowed, 0, 0))
		return 2;
	if ((o->seen & OPT_WARM) && (o->seen & OPT_ARCH))
		return usage_error("--warm takes the architecture of the model");
	install_stop_handlers();
	if (train_open(&t, o)) {
		train_close(&t);
		return 1;
	}
	t0 = mono_s();
	cpu0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
	if (pthread_create(&trainer, NULL, trainer_main, &t) ||
	    pthread_create(&consumer, NULL, consumer_main, &t)) {
		/* only at startup, nothing to unwind but the process */
		return fail(EAGAIN, "pthread_create");
	}
	pthread_join(consumer, NULL);
	pthread_join(trainer, NULL);
	t.unprocessed = t.fifo_count;
	ret = t.consumer_err ? fail(-t.consumer_err, "ring pop") : 0;
	ret |= t.trainer_err ? 1 : 0;
	ret |= train_save(&t);
	train_summary(&t, mono_s() - t0,
		      now_s(CLOCK_PROCESS_CPUTIME_ID) - cpu0);
	train_close(&t);
	return ret;
}
