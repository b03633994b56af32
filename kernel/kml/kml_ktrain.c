// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: the in-kernel trainer.
 *
 * A kernel thread pops samples from the ring, trains its own copy of the
 * model in mini-batches (full, or once the first has waited
 * KML_DD_BATCH_WAIT_MS) and publishes it through the same validated swap
 * as /dev/kml every ktrainer_publish samples.  It is capped in samples per
 * second (over the cap, samples stay in the ring in block mode or are
 * popped and skipped in drop mode) and in CPU share (it sleeps in
 * proportion to the time it trained).  Like the user trainer, it scores
 * each batch before training on it and, at each publish, recalibrates
 * decision_permille on those prequential scores.  With
 * ktrainer_publish_q16 it publishes a Q16.16 copy of its float model.
 * Start and stop it with /sys/module/kml/parameters/ktrainer.
 */
#include <linux/kthread.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/delay.h>
#include <linux/ktime.h>
#include "kml_internal.h"
#include "kml_dd.h"
#include "kml_dd_fpu.h"

static unsigned int ktrainer_rate;
module_param(ktrainer_rate, uint, 0644);
MODULE_PARM_DESC(ktrainer_rate, "kernel trainer: samples/s, 0 = no cap");

static unsigned int ktrainer_cpu_pct = 10;
module_param(ktrainer_cpu_pct, uint, 0644);
MODULE_PARM_DESC(ktrainer_cpu_pct, "kernel trainer: CPU share cap, percent");

static unsigned int ktrainer_publish = 512;
module_param(ktrainer_publish, uint, 0644);
MODULE_PARM_DESC(ktrainer_publish, "kernel trainer: publish every N samples");

static bool ktrainer_calibrate = true;
module_param(ktrainer_calibrate, bool, 0644);
MODULE_PARM_DESC(ktrainer_calibrate,
		 "kernel trainer: recalibrate decision_permille at each publish");

/*
 * Publish a Q16.16 copy of the float model it trains, which mq-deadline
 * compiles into integer dot products if it is small enough
 * (kml_dd_fast_compile()): a fresh model is then KML_DD_FAST_HIDDEN units
 * wide, not KML_DD_HIDDEN, so that every request's prediction costs about
 * a thousand instructions, not a float forward pass.  Read when it starts;
 * a warm start keeps its model's width (16 units do not compile).
 */
static bool ktrainer_publish_q16;
module_param(ktrainer_publish_q16, bool, 0644);
MODULE_PARM_DESC(ktrainer_publish_q16,
		 "kernel trainer: publish in Q16.16, fresh models 8 units wide");

#define KML_KT_BATCH	32
#define KML_KT_IDLE_MS	5

struct kml_ktrain {
	struct kml_model *model;
	u8 *file;			/* kml_model_save() output */
	size_t file_cap;
	struct kml_dd_sample batch[KML_KT_BATCH];
	u32 n;				/* samples in @batch */
	u64 first_ns;			/* when the first of them was popped */
	/* float storage; only kml_dd_fpu.c and KML's float code touch it */
	u32 x[KML_KT_BATCH * KML_DD_NR_FEATURES];
	u32 y[KML_KT_BATCH];
	u32 yhat[KML_KT_BATCH];
	struct kml_dd_resid resid[KML_KT_BATCH];
	/* decision calibration: residuals scored before their batch trained */
	struct kml_dd_cal cal;
	u64 allowance_ns;		/* rate cap: time credit, ns x rate */
	u64 last_ns;
	u64 owed_sleep_ns;		/* CPU cap */
	u64 since_publish;
	bool fresh;			/* not warm-started, no step yet */
	bool publish_q16;		/* ktrainer_publish_q16 at the start */
};

static struct task_struct *kml_kt_task;	/* under kml_kt_lock */
static DEFINE_MUTEX(kml_kt_lock);

/*
 * Warm start from the float model in use if there is one (it trains in
 * float: a Q16.16 one, its own copy from an earlier run among them, is
 * not), else a fresh MLP.
 */
static int kml_kt_model(struct kml_ktrain *kt)
{
	struct kml_train_cfg tc = {
		.optimizer = KML_OPT_ADAM,
		.loss = KML_LOSS_MSE,
		.max_batch = KML_KT_BATCH,
		.lr = KML_Q32_ONE / 100,
	};
	struct kml_model_cfg mc = {
		.dtype = KML_F32,
		.arch = KML_ARCH_MLP,
		.n_layers = 2,
		.sizes = { KML_DD_NR_FEATURES, KML_DD_HIDDEN, 1 },
		.hidden_act = KML_ACT_RELU,
		.out_act = KML_ACT_NONE,
		.norm = KML_NORM_STANDARD,
	};
	long len;
	int ret;

	kt->publish_q16 = READ_ONCE(ktrainer_publish_q16);
	if (kt->publish_q16)
		mc.sizes[1] = KML_DD_FAST_HIDDEN;
	kt->file_cap = KML_MODEL_MAX_FILE;
	kt->file = kvmalloc(kt->file_cap, GFP_KERNEL);
	if (!kt->file)
		return -ENOMEM;
	len = kml_dd_model_save(kt->file, kt->file_cap, KML_F32);
	if (len > 0 && !kml_model_load(kt->file, len, &kt->model)) {
		ret = kml_model_train_setup(kt->model, &tc);
		if (!ret)
			return 0;
		kml_model_free(kt->model);
		kt->model = NULL;	/* kml_kt_free() if the create fails */
	}
	ret = kml_model_create(&mc, &kt->model);
	if (ret)
		return ret;
	kt->fresh = true;
	ret = kml_model_train_setup(kt->model, &tc);
	if (ret) {
		kml_model_free(kt->model);
		kt->model = NULL;
	}
	return ret;
}

/* Rate cap: may another sample be taken now? */
static bool kml_kt_rate_ok(struct kml_ktrain *kt, u64 now)
{
	unsigned int rate = READ_ONCE(ktrainer_rate);

	if (!rate)
		return true;
	/* credit in ns x rate: one sample costs NSEC_PER_SEC of it */
	kt->allowance_ns += (now - kt->last_ns) * rate;
	kt->last_ns = now;
	if (kt->allowance_ns > (u64)NSEC_PER_SEC * KML_KT_BATCH)
		kt->allowance_ns = (u64)NSEC_PER_SEC * KML_KT_BATCH;
	if (kt->allowance_ns < NSEC_PER_SEC)
		return false;
	kt->allowance_ns -= NSEC_PER_SEC;
	return true;
}

/* Pop samples into the batch, up to a full one; returns how many it holds. */
static u32 kml_kt_fill(struct kml_ktrain *kt)
{
	u32 n = kt->n;

	while (n < KML_KT_BATCH) {
		if (!kml_kt_rate_ok(kt, ktime_get_ns())) {
			if (kml_dd_ring_blocks())
				break;	/* leave it to the producers to wait */
			if (kml_dd_ring_pop(&kt->batch[n]))
				break;
			kml_dd_stat_inc(KML_DD_S_KTRAINER_SKIPPED);
			continue;
		}
		if (kml_dd_ring_pop(&kt->batch[n]))
			break;
		n++;
	}
	if (n && !kt->n)
		kt->first_ns = ktime_get_ns();
	kt->n = n;
	return n;
}

/*
 * Train once the batch is full, or once its first sample has waited
 * KML_DD_BATCH_WAIT_MS since it was popped (kml_dd_calib.h: the user
 * trainer's rule too, counted from its consumer's pop): a
 * disk serves about 60 requests a second, so taking what the ring holds
 * made steps of one sample each, and Adam's steps as noisy as one sample.
 */
static bool kml_kt_batch_ready(struct kml_ktrain *kt)
{
	return kt->n == KML_KT_BATCH ||
	       (kt->n && ktime_get_ns() - kt->first_ns >=
			 (u64)KML_DD_BATCH_WAIT_MS * NSEC_PER_MSEC);
}

/*
 * Recalibrate decision_permille on the window (kml_dd_calib.h).  A refusal
 * (a class too rare, or no split better than chance) keeps the threshold
 * in use and is counted; the balanced accuracy and AUC of the window are
 * shown either way.
 */
static void kml_kt_calibrate(struct kml_ktrain *kt)
{
	struct kml_dd_cal_result res;
	u32 permille;

	if (!READ_ONCE(ktrainer_calibrate))
		return;
	if (!kml_dd_cal_fit_window(&kt->cal, &res)) {
		kml_dd_stat_inc(KML_DD_S_KTRAINER_CAL_REFUSED);
		if (res.status == KML_DD_CAL_NO_SKILL)
			kml_dd_note_calibration(res.balanced, res.auc);
		return;
	}
	kml_dd_note_calibration(res.balanced, res.auc);
	if (kml_fpu_begin())
		return;
	permille = kml_dd_lg_q16_to_permille(res.thr);
	kml_fpu_end();
	kml_dd_set_decision_permille(permille);
	kml_dd_stat_inc(KML_DD_S_KTRAINER_CALIBRATIONS);
}

/*
 * Publish the model, or its Q16.16 copy: a value the copy cannot hold (not
 * finite) is refused as the loader would refuse it, and counted so.
 */
static void kml_kt_publish(struct kml_ktrain *kt)
{
	long len = kml_model_save(kt->model, kt->file, kt->file_cap);

	if (len <= 0)
		return;
	if (kt->publish_q16 && kml_model_file_to_q16(kt->file, len)) {
		kml_dd_stat_inc(KML_DD_S_UPDATES_REFUSED);
		return;
	}
	kml_dd_publish(kt->file, len);
}

static void kml_kt_step(struct kml_ktrain *kt, u32 n)
{
	bool scored = !kt->fresh;
	u32 loss;
	int ret;

	if (kml_fpu_begin())
		return;
	kml_dd_samples_to_f32(kt->batch, n, (float *)kt->x, (float *)kt->y);
	if (kt->fresh)
		kml_dd_init_output_bias(kt->model, (float *)kt->y, n);
	else	/* prequential: scored by the model before this batch */
		kml_dd_deadline_residuals(kt->model, (float *)kt->x, kt->batch,
					  n, (float *)kt->yhat, kt->resid);
	kml_fpu_end();
	kt->fresh = false;
	if (scored)
		kml_dd_cal_add(&kt->cal, kt->resid, kt->batch, n);
	/* a warm start from a model built without normalisation keeps none */
	ret = kt->model->cfg.norm == KML_NORM_NONE ? 0 :
		kml_model_norm_update(kt->model, kt->x, n);
	if (!ret)
		ret = kml_model_train_batch(kt->model, kt->x, kt->y, n, &loss);
	if (ret)
		return;
	kml_dd_stat_add(KML_DD_S_KTRAINER_SAMPLES, n);
	kml_dd_stat_inc(KML_DD_S_KTRAINER_STEPS);
	kt->since_publish += n;
	if (kt->since_publish >= max(READ_ONCE(ktrainer_publish), 1U)) {
		kt->since_publish = 0;
		kml_kt_calibrate(kt);
		kml_kt_publish(kt);
	}
}

/* CPU cap: after t ns of work, sleep t * (100 - pct) / pct. */
static void kml_kt_throttle(struct kml_ktrain *kt, u64 busy_ns)
{
	unsigned int pct = clamp(READ_ONCE(ktrainer_cpu_pct), 1U, 100U);

	kt->owed_sleep_ns += div_u64(busy_ns * (100 - pct), pct);
	if (kt->owed_sleep_ns >= NSEC_PER_MSEC) {
		u64 us = div_u64(kt->owed_sleep_ns, NSEC_PER_USEC);

		kt->owed_sleep_ns = 0;
		usleep_range(us, us + us / 8 + 1);
	}
}

static int kml_kt_thread(void *data)
{
	struct kml_ktrain *kt = data;
	u64 t0;
	u32 n;

	kt->last_ns = ktime_get_ns();
	while (!kthread_should_stop()) {
		n = kml_kt_fill(kt);
		if (!kml_kt_batch_ready(kt)) {
			msleep_interruptible(KML_KT_IDLE_MS);
			continue;
		}
		t0 = ktime_get_ns();
		kml_kt_step(kt, n);
		kt->n = 0;
		kml_kt_throttle(kt, ktime_get_ns() - t0);
		cond_resched();
	}
	if (kt->n)
		kml_kt_step(kt, kt->n);
	if (kt->since_publish)
		kml_kt_publish(kt);
	return 0;
}

static void kml_kt_free(struct kml_ktrain *kt)
{
	kml_model_free(kt->model);
	kvfree(kt->file);
	kvfree(kt);
}

static struct kml_ktrain *kml_kt_state;

/*
 * The trainer is the ring's consumer from here to kml_kt_stop(): the claim
 * is what refuses a /dev/kml mapping meanwhile, and the other way round.
 */
static int kml_kt_start(void)
{
	struct kml_ktrain *kt;
	struct task_struct *task;
	int ret;

	ret = kml_dd_ring_claim(KML_DD_OWNER_KERNEL);
	if (ret)
		return ret;
	kt = kvzalloc(sizeof(*kt), GFP_KERNEL);
	ret = kt ? kml_kt_model(kt) : -ENOMEM;
	if (ret)
		goto fail;
	task = kthread_run(kml_kt_thread, kt, "kml_ktrain");
	if (IS_ERR(task)) {
		ret = PTR_ERR(task);
		goto fail;
	}
	kml_kt_state = kt;
	kml_kt_task = task;
	return 0;
fail:
	if (kt)
		kml_kt_free(kt);
	kml_dd_ring_release(KML_DD_OWNER_KERNEL);
	return ret;
}

static void kml_kt_stop(void)
{
	kthread_stop(kml_kt_task);
	kml_kt_task = NULL;
	kml_kt_free(kml_kt_state);
	kml_kt_state = NULL;
	kml_dd_ring_release(KML_DD_OWNER_KERNEL);
}

static int ktrainer_set(const char *val, const struct kernel_param *kp)
{
	bool on;
	int ret;

	ret = kstrtobool(val, &on);
	if (ret)
		return ret;
	mutex_lock(&kml_kt_lock);
	if (on && !kml_kt_task)
		ret = kml_kt_start();
	else if (!on && kml_kt_task)
		kml_kt_stop();
	mutex_unlock(&kml_kt_lock);
	return ret;
}

static int ktrainer_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", kml_dd_ktrainer_running());
}

static const struct kernel_param_ops ktrainer_ops = {
	.set = ktrainer_set,
	.get = ktrainer_get,
};
module_param_cb(ktrainer, &ktrainer_ops, NULL, 0644);
MODULE_PARM_DESC(ktrainer, "1: run the kernel trainer on the sample ring");
