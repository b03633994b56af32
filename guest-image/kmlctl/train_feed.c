// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl train: the consumer thread, which feeds the trainer from the
 * ring (train.c has the whole picture), and the token bucket of --rate
 * that both threads use.
 */
#include "kmlctl.h"

#include <errno.h>

#define TRAIN_POP_CHUNK		64	/* records popped per lock round */

/* ---- token bucket */

void bucket_init(struct bucket *b, double rate, double burst)
{
	b->rate = rate;
	b->burst = burst;
	b->tokens = burst;
	b->last = mono_s();
}

static void bucket_refill(struct bucket *b)
{
	double now = mono_s();

	b->tokens += (now - b->last) * b->rate;
	if (b->tokens > b->burst)
		b->tokens = b->burst;
	b->last = now;
}

/* Take @n tokens if there are; rate 0 means no cap. */
bool bucket_take(struct bucket *b, double n)
{
	if (!b->rate)
		return true;
	bucket_refill(b);
	if (b->tokens < n)
		return false;
	b->tokens -= n;
	return true;
}

/* Seconds until @n tokens are there. */
double bucket_wait_s(struct bucket *b, double n)
{
	if (!b->rate)
		return 0;
	bucket_refill(b);
	return b->tokens >= n ? 0 : (n - b->tokens) / b->rate;
}


/* ---- consumer thread */

static void fifo_put(struct trainer *t, const struct kml_dd_sample *s)
{
	size_t i = (t->fifo_head + t->fifo_count) % t->fifo_cap;

	t->fifo[i] = *s;
	t->fifo_at[i] = mono_s();
	t->fifo_count++;
}

/* Decide, under the lock, whether one popped sample is kept. */
static void consumer_admit(struct trainer *t, const struct kml_dd_sample *s)
{
	if (t->o->drop && (t->fifo_count == t->fifo_cap || t->throttled ||
			   !bucket_take(&t->admit, 1))) {
		t->dropped++;
		return;
	}
	fifo_put(t, s);		/* block mode popped only what fits */
}

/* How many records to pop now: the limit, and the free room in block mode. */
static size_t consumer_want(struct trainer *t)
{
	size_t want = TRAIN_POP_CHUNK;
	u64 left;

	if (t->o->max_samples) {
		left = t->o->max_samples - t->consumed;
		if (left < want)
			want = left;
	}
	if (!t->o->drop) {
		pthread_mutex_lock(&t->lock);
		if (t->fifo_cap - t->fifo_count < want)
			want = t->fifo_cap - t->fifo_count;
		pthread_mutex_unlock(&t->lock);
	}
	return want;
}

/* Returns true when the consumer should stop for time or a signal. */
static bool consumer_stop_requested(struct trainer *t, double end)
{
	if (stop_signal) {
		t->stopped_by = strsignal(stop_signal);
		return true;
	}
	if (end && mono_s() >= end) {
		t->stopped_by = "seconds";
		return true;
	}
	return false;
}

void *consumer_main(void *arg)
{
	struct trainer *t = arg;
	double end = t->o->seconds > 0 ? mono_s() + t->o->seconds : 0;
	struct kml_dd_sample recs[TRAIN_POP_CHUNK];
	bool stop_now = false;
	size_t want, n, i;
	int ret = 0;

	for (;;) {
		if (consumer_stop_requested(t, end)) {
			stop_now = true;
			break;
		}
		if (t->o->max_samples && t->consumed >= t->o->max_samples) {
			t->stopped_by = "max-samples";
			break;
		}
		want = consumer_want(t);
		for (n = 0; n < want; n++) {
			ret = kml_ring_pop(&t->rs.ring, &recs[n]);
			if (ret)
				break;
		}
		if (n) {
			pthread_mutex_lock(&t->lock);
			for (i = 0; i < n; i++)
				consumer_admit(t, &recs[i]);
			t->consumed += n;
			pthread_cond_signal(&t->cond);
			pthread_mutex_unlock(&t->lock);
		}
		if (ret && ret != -EAGAIN)
			break;		/* -EIO: the shared ring is corrupt */
		ret = 0;
		if (!n)
			sleep_s(0.001);	/* empty ring, or a full FIFO */
	}
	pthread_mutex_lock(&t->lock);
	t->consumer_done = true;
	t->consumer_err = ret;
	if (ret)
		t->stopped_by = "error";
	t->stop_now = stop_now;
	t->stop_at = mono_s();
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	return NULL;
}
