// SPDX-License-Identifier: GPL-2.0
/*
 * C-side timing loops for kmlbench (user space only, not in the kernel
 * build): measure the library itself, without the FFI call per sample.
 */
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
