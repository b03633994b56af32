// SPDX-License-Identifier: GPL-2.0
/*
 * C-side timing loops for kmlbench (user space only, not in the kernel
 * build): measure the library itself, without the FFI call per sample.
 */
#include <pthread.h>
#include <sched.h>
#include "kml_internal.h"

/* Mean ns per kml_model_predict() call on @batch rows, over @iters calls. */
KML_API u64 kml_bench_predict(struct kml_model *m, const void *x, u32 batch,
			      u32 iters, void *y)
{
	u64 t0, t1;
	u32 i;

	if (!iters)
		return 0;
	kml_model_predict(m, x, batch, y);	/* warm up */
	t0 = kml_now_ns();
	for (i = 0; i < iters; i++) {
		kml_model_predict(m, x, batch, y);
		__asm__ __volatile__("" : : "r"(y) : "memory");
	}
	t1 = kml_now_ns();
	return (t1 - t0) / iters;
}

/* Total ns for @epochs passes of kml_model_train_batch() over @n rows. */
KML_API u64 kml_bench_train(struct kml_model *m, const void *x, const void *y,
			    u32 n, u32 batch, u32 epochs)
{
	u32 n_in = m->cfg.sizes[0], n_out = kml_out_dim(m), e, r, b;
	const u8 *xb = x, *yb = y;
	u32 loss;
	u64 t0;

	t0 = kml_now_ns();
	for (e = 0; e < epochs; e++) {
		for (r = 0; r < n; r += batch) {
			b = n - r < batch ? n - r : batch;
			kml_model_train_batch(m, xb + (size_t)r * n_in * 4,
					      yb + (size_t)r * n_out * 4, b,
					      &loss);
		}
	}
	return kml_now_ns() - t0;
}

/* ---- ring stress test entry point (tests/test_kml_ring.py) ---- */

struct kml_stress_producer {
	struct kml_ring *ring;
	pthread_t thread;
	u32 id;
	u32 count;
	u64 pushed;
	u64 refused;
	int finished;
};

static void *kml_stress_produce(void *arg)
{
	struct kml_stress_producer *p = arg;
	u64 rec[2];
	u32 i;

	for (i = 0; i < p->count; i++) {
		rec[0] = p->id;
		rec[1] = i;
		if (kml_ring_push(p->ring, rec) == 0)
			p->pushed++;
		else
			p->refused++;
	}
	__atomic_store_n(&p->finished, 1, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * @n_producers threads push @per_producer 16-byte records {id, seq} each
 * while this thread consumes.  Checks that every producer's records arrive
 * in order without duplicates.  out[0] = records consumed, out[1] = pushes
 * that succeeded, out[2] = pushes refused.  Returns 0, -EPROTO on a
 * lost, duplicated or reordered record, or the negative pthread_create()
 * error if a producer thread could not be started (the producers already
 * started are still drained and joined, out[] counts what they did).
 */
KML_API int kml_ring_stress(struct kml_ring *r, u32 n_producers,
			    u32 per_producer, u64 *out)
{
	struct kml_stress_producer prod[64];
	u64 next[64] = { 0 }, rec[2], consumed = 0, pushed = 0, refused = 0;
	u32 i, done, started;
	int ret = 0, err = 0;

	if (n_producers > 64 || r->record_size != 16)
		return -EINVAL;
	for (started = 0; started < n_producers; started++) {
		i = started;
		prod[i] = (struct kml_stress_producer){ .ring = r, .id = i,
			.count = per_producer };
		err = pthread_create(&prod[i].thread, NULL, kml_stress_produce,
				     &prod[i]);
		if (err)
			break;
	}
	/* consume for the producers that run (they may block on a full ring) */
	n_producers = started;
	for (done = 0;;) {
		if (kml_ring_pop(r, rec) == 0) {
			consumed++;
			if (rec[0] >= n_producers || rec[1] < next[rec[0]])
				ret = -EPROTO;
			else
				next[rec[0]] = rec[1] + 1;
			continue;
		}
		if (done == n_producers)
			break;
		/* empty: see whether all producers have finished */
		done = 0;
		for (i = 0; i < n_producers; i++)
			done += __atomic_load_n(&prod[i].finished, __ATOMIC_ACQUIRE);
		sched_yield();
	}
	for (i = 0; i < n_producers; i++) {
		pthread_join(prod[i].thread, NULL);
		pushed += prod[i].pushed;
		refused += prod[i].refused;
	}
	while (kml_ring_pop(r, rec) == 0)
		consumed++;
	out[0] = consumed;
	out[1] = pushed;
	out[2] = refused;
	return err ? -err : ret;
}

/* ---- attach against a racing mapper (tests/test_kml_ring.py) ---- */

struct kml_attach_flipper {
	u32 *capacity;
	u32 good;
	u32 bad;
	int stop;
};

static void *kml_attach_flip(void *arg)
{
	struct kml_attach_flipper *f = arg;

	while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
		__atomic_store_n(f->capacity, f->bad, __ATOMIC_RELAXED);
		__atomic_store_n(f->capacity, f->good, __ATOMIC_RELAXED);
	}
	return NULL;
}

/*
 * A thread flips the capacity in the shared header of the ring in @mem
 * between its valid value and @bad while this thread calls
 * kml_ring_attach() @iters times.  out[0] = attaches that succeeded,
 * out[1] = attaches refused, out[2] = successful attaches whose bound
 * mask is not the valid capacity - 1 (must stay 0).
 */
KML_API int kml_ring_attach_race(void *mem, size_t bytes, u32 bad, u32 iters,
				 u64 *out)
{
	struct kml_ring_shared *sh = mem;
	struct kml_attach_flipper f = { .capacity = &sh->capacity,
					.good = sh->capacity, .bad = bad };
	struct kml_ring a;
	pthread_t t;
	u32 i;
	int err;

	out[0] = out[1] = out[2] = 0;
	err = pthread_create(&t, NULL, kml_attach_flip, &f);
	if (err)
		return -err;
	for (i = 0; i < iters; i++) {
		if (kml_ring_attach(&a, mem, bytes)) {
			out[1]++;
			continue;
		}
		out[0]++;
		if (a.mask != f.good - 1)
			out[2]++;
	}
	__atomic_store_n(&f.stop, 1, __ATOMIC_RELAXED);
	pthread_join(t, NULL);
	sh->capacity = f.good;
	return 0;
}
