/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML: a small machine-learning library for the Linux kernel and user space.
 *
 * The API never passes a float by value: data are arrays of elements of the
 * model's dtype (float or Q16.16 s32) passed by pointer, hyper-parameters are
 * Q32.32 fixed-point s64 values.  Kernel callers of the float path therefore
 * only need the FPU for their own arithmetic, not for calling KML.
 */
#ifndef _KML_H
#define _KML_H

#include "kml_platform.h"

/* ---------------------------------------------------------------- dtypes */

enum kml_dtype {
	KML_F32 = 0,	/* IEEE-754 binary32 */
	KML_Q16 = 1,	/* s32, Q16.16 fixed point, s64 accumulation */
};

#define KML_Q16_ONE	65536
#define KML_Q32_ONE	(1LL << 32)

/* ---------------------------------------------------------------- tensors */

#define KML_MAX_DIMS 4

struct kml_tensor {
	u32 dtype;			/* enum kml_dtype; all dtypes are 4 bytes */
	u32 ndim;
	u32 shape[KML_MAX_DIMS];
	u32 numel;
	void *data;			/* contiguous, row-major, not owned */
};

KML_API void kml_tensor_init(struct kml_tensor *t, u32 dtype, void *data,
			     u32 ndim, const u32 *shape);
KML_API size_t kml_tensor_bytes(const struct kml_tensor *t);

/* ---------------------------------------------------------------- math */

enum kml_math_fn {
	KML_FN_EXP = 0,
	KML_FN_LOG = 1,
	KML_FN_SQRT = 2,
	KML_FN_TANH = 3,
	KML_FN_SIGMOID = 4,
};

/* Float math without libm.  Call inside an FPU section. */
KML_API float kml_expf(float x);
KML_API float kml_logf(float x);
KML_API float kml_sqrtf(float x);
KML_API float kml_tanhf(float x);
KML_API float kml_sigmoidf(float x);

/* Q16.16 math: no FPU. */
KML_API s32 kml_q16_mul(s32 a, s32 b);
KML_API s32 kml_q16_exp(s32 x);
KML_API s32 kml_q16_sigmoid(s32 x);
KML_API s32 kml_q16_tanh(s32 x);
KML_API u32 kml_isqrt64(u64 x);

/* Apply @fn elementwise; takes its own FPU section for KML_F32. */
KML_API int kml_math_apply(u32 fn, u32 dtype, const void *x, void *y, u32 n);

/* ------------------------------------------------------- layers (float) */
/*
 * llm.c style: one forward and one backward per layer over a batch of @B
 * rows.  Backward functions accumulate (+=) into parameter gradients and
 * write (=) the input gradient.  Float versions run inside an FPU section.
 */
KML_API void kml_linear_forward(float *out, const float *in, const float *w,
				const float *b, u32 B, u32 in_dim, u32 out_dim);
KML_API void kml_linear_backward(float *din, float *dw, float *db,
				 const float *dout, const float *in,
				 const float *w, u32 B, u32 in_dim, u32 out_dim);
KML_API void kml_act_forward(u32 act, float *out, const float *in, u32 n);
KML_API void kml_act_backward(u32 act, float *din, const float *dout,
			      const float *in, const float *out, u32 n);
KML_API float kml_mse_forward(const float *pred, const float *y, u32 n);
KML_API void kml_mse_backward(float *dpred, const float *pred, const float *y,
			      u32 n);
KML_API float kml_bce_forward(const float *p, const float *y, u32 n,
			      float pos_weight);
KML_API void kml_bce_backward(float *dp, const float *p, const float *y, u32 n,
			      float pos_weight);

/* Q16.16 versions (no FPU). */
KML_API void kml_linear_forward_q16(s32 *out, const s32 *in, const s32 *w,
				    const s32 *b, u32 B, u32 in_dim,
				    u32 out_dim);
KML_API void kml_linear_backward_q16(s32 *din, s64 *dw, s64 *db,
				     const s32 *dout, const s32 *in,
				     const s32 *w, u32 B, u32 in_dim,
				     u32 out_dim);
KML_API void kml_act_forward_q16(u32 act, s32 *out, const s32 *in, u32 n);
KML_API void kml_act_backward_q16(u32 act, s32 *din, const s32 *dout,
				  const s32 *in, const s32 *out, u32 n);

/* ---------------------------------------------------------------- models */

enum kml_act {
	KML_ACT_NONE = 0,	/* identity (linear output) */
	KML_ACT_RELU = 1,
	KML_ACT_SIGMOID = 2,
	KML_ACT_TANH = 3,
};

enum kml_arch {
	KML_ARCH_LINEAR = 0,
	KML_ARCH_LOGISTIC = 1,
	KML_ARCH_MLP = 2,
};

enum kml_norm_mode {
	KML_NORM_NONE = 0,
	KML_NORM_STANDARD = 1,	/* running mean / variance (Welford) */
};

enum kml_loss {
	KML_LOSS_MSE = 0,
	KML_LOSS_BCE = 1,	/* needs a sigmoid output */
};

enum kml_optim {
	KML_OPT_SGD = 0,	/* SGD with momentum (momentum 0 = plain SGD) */
	KML_OPT_ADAM = 1,	/* Q16: beta1 >= 0.5, beta2 >= 0.9 */
};

#define KML_MAX_LAYERS	4	/* linear layers */
#define KML_MAX_WIDTH	64	/* inputs / units per layer (stack scratch) */

struct kml_model_cfg {
	u32 dtype;			/* enum kml_dtype */
	u32 arch;			/* enum kml_arch */
	u32 n_layers;			/* number of linear layers */
	u32 sizes[KML_MAX_LAYERS + 1];	/* sizes[0] = inputs, sizes[n] = outputs */
	u32 hidden_act;			/* enum kml_act between layers */
	u32 out_act;			/* enum kml_act after the last layer */
	u32 norm;			/* enum kml_norm_mode */
	u32 seed;			/* weight init; 0 = random */
};

/* Training hyper-parameters, all Q32.32 (value * 2^32, rounded). */
struct kml_train_cfg {
	u32 optimizer;			/* enum kml_optim */
	u32 loss;			/* enum kml_loss */
	u32 max_batch;			/* rows per train step, >= 1 */
	u32 reserved;
	s64 lr;
	s64 momentum;			/* SGD */
	s64 beta1, beta2, eps;		/* Adam; 0 = defaults 0.9, 0.999, 1e-8 */
	s64 pos_weight;			/* BCE weight of y=1 terms; 0 = 1.0 */
};

struct kml_model;

/*
 * A kernel built without CONFIG_KML_FLOAT refuses float models (create,
 * load, kml_math_apply()) with -EOPNOTSUPP; one built without
 * CONFIG_KML_TRAIN answers it to norm_update, the training calls and
 * kml_model_save().  libkml.so has both.
 */
KML_API int kml_model_create(const struct kml_model_cfg *cfg,
			     struct kml_model **out);
KML_API void kml_model_free(struct kml_model *m);
KML_API int kml_model_get_cfg(const struct kml_model *m,
			      struct kml_model_cfg *cfg);
/* Bytes of memory the model holds (inference + training state). */
KML_API size_t kml_model_footprint(const struct kml_model *m);
KML_API u32 kml_model_n_params(const struct kml_model *m);
/* Flat parameter / gradient blocks: per layer W[out][in] then b[out]. */
KML_API void *kml_model_params(struct kml_model *m);
KML_API void *kml_model_grads(struct kml_model *m);

/* Feature normalisation: update running statistics with @n rows. */
KML_API int kml_model_norm_update(struct kml_model *m, const void *x, u32 n);
/* Normalisation parameters for inspection: mean[n_in], scale[n_in]. */
KML_API int kml_model_norm_get(const struct kml_model *m, void *mean,
			       void *scale);

/*
 * Inference over @n rows; float models take one short FPU section per
 * chunk of about KML_FPU_MACS multiply-adds, whatever @n.
 */
KML_API int kml_model_predict(struct kml_model *m, const void *x, u32 n,
			      void *y);
/* Same, but the caller already holds an FPU section (float models). */
KML_API int kml_model_predict_nofpu(struct kml_model *m, const void *x, u32 n,
				    void *y);

/* Training: allocate optimiser state and activation buffers once. */
KML_API int kml_model_train_setup(struct kml_model *m,
				  const struct kml_train_cfg *cfg);
/* forward (keeps activations) + loss -> *loss (dtype element) */
KML_API int kml_model_forward(struct kml_model *m, const void *x, u32 n,
			      const void *y, void *loss);
/* backward of the last forward: accumulates into grads (zeroed by step) */
KML_API int kml_model_backward(struct kml_model *m, const void *y, u32 n);
/* optimiser step, then zero the gradients */
KML_API int kml_model_step(struct kml_model *m);
/*
 * forward + backward + step on a mini-batch; float models take one short
 * FPU section per chunk of rows and per chunk of parameters.
 */
KML_API int kml_model_train_batch(struct kml_model *m, const void *x,
				  const void *y, u32 n, void *loss);

/* ------------------------------------------------------------ model files */

#define KML_MODEL_MAGIC		0x4d4c4d4bU	/* "KMLM" little endian */
#define KML_MODEL_VERSION	1U
#define KML_MODEL_HDR_SIZE	64U
#define KML_MODEL_MAX_FILE	(1U << 20)
/*
 * Largest Q16.16 running variance (s64) a model may hold: 2^31 in real
 * units, above the 2^30 that inputs within +-32768 can produce.  Keeps
 * var << 16 within 63 bits for the integer square root; model files with
 * a larger variance are refused (-EDOM).
 */
#define KML_Q16_VAR_MAX		(1LL << 47)

KML_API u32 kml_crc32(u32 crc, const void *buf, size_t len);
KML_API size_t kml_model_file_size(const struct kml_model *m);
/* Writes the model into @buf; returns bytes written or a negative errno. */
KML_API long kml_model_save(const struct kml_model *m, void *buf, size_t cap);
/* Validates everything; returns 0 or -EINVAL/-EBADMSG/-E2BIG/-ENOMEM/... */
KML_API int kml_model_load(const void *buf, size_t len, struct kml_model **out);
/* A float model file as the same model in Q16.16, in place (kml_format.c). */
KML_API int kml_model_file_to_q16(void *buf, size_t len);

/* ---------------------------------------------------------------- ring */

#define KML_RING_MAGIC		0x474e524bU	/* "KRNG" */
#define KML_RING_VERSION	1U
#define KML_RING_HDR_SIZE	256U

enum kml_ring_mode {
	KML_RING_BLOCK = 0,	/* producer waits for space (see kml_ring_wait) */
	KML_RING_DROP = 1,	/* full ring: discard the record, count it */
};

/*
 * Shared-memory layout (little endian, all offsets fixed, 256-byte header
 * followed by @capacity slots of @slot_size bytes).  Each slot is a 64-bit
 * sequence number followed by the record.  See docs/kml.md.
 */
struct kml_ring_shared {
	u32 magic;				/*   0 */
	u32 version;				/*   4 */
	u32 capacity;				/*   8 power of two */
	u32 record_size;			/*  12 payload bytes per record */
	u32 slot_size;				/*  16 8 + record_size rounded to 8 */
	u32 mode;				/*  20 enum kml_ring_mode */
	u32 hdr_size;				/*  24 KML_RING_HDR_SIZE */
	u32 reserved0;				/*  28 */
	u8 pad0[32];				/*  32 */
	struct kml_atomic64 head;		/*  64 producers' next position */
	u8 pad1[56];
	struct kml_atomic64 tail;		/* 128 consumer's next position */
	struct kml_atomic64 consumed;		/* 136 */
	u8 pad2[48];
	struct kml_atomic64 produced;		/* 192 */
	struct kml_atomic64 dropped;		/* 200 */
	struct kml_atomic64 full_waits;		/* 208 blocking pushes given up */
	u8 pad3[40];
};

struct kml_ring_slot {
	struct kml_atomic64 seq;
	u8 data[];
};

/* Private handle: geometry is copied from the header once and trusted. */
struct kml_ring {
	struct kml_ring_shared *sh;
	u8 *slots;
	u32 mask;
	u32 slot_size;
	u32 record_size;
	u32 mode;
	bool owned;
	bool broken;	/* shared state found corrupted: pushes fail fast */
};

KML_API size_t kml_ring_bytes(u32 capacity, u32 record_size);
KML_API int kml_ring_init(struct kml_ring *r, void *mem, size_t bytes,
			  u32 capacity, u32 record_size, u32 mode);
KML_API int kml_ring_attach(struct kml_ring *r, void *mem, size_t bytes);
KML_API int kml_ring_create(struct kml_ring **out, u32 capacity,
			    u32 record_size, u32 mode);
KML_API void kml_ring_destroy(struct kml_ring *r);
/*
 * Any number of concurrent producers: 0, -ENOSPC (dropped), -EAGAIN
 * (blocking mode gave up, kernel only) or -EIO (corrupted shared state:
 * the ring is then marked broken and every later push fails at once, until
 * kml_ring_init() makes it anew; see kml_ring_broken()).
 */
KML_API int kml_ring_push(struct kml_ring *r, const void *rec);
/*
 * In drop mode, whether a push would find the ring full; if so the drop is
 * counted as kml_ring_push() counts it.  A producer can then skip making a
 * record that nobody would read.  False in blocking mode, or when only a
 * push can tell (a broken or corrupted ring).
 */
KML_API bool kml_ring_drops(struct kml_ring *r);
/* One consumer: 0 or -EAGAIN when empty. */
KML_API int kml_ring_pop(struct kml_ring *r, void *rec);
KML_API void kml_ring_counters(struct kml_ring *r, u64 *produced,
			       u64 *consumed, u64 *dropped);
KML_API void *kml_ring_shared(struct kml_ring *r);
KML_API bool kml_ring_broken(struct kml_ring *r);
/*
 * With no consumer running: false (and the ring broken) if the shared
 * header holds positions or counters no pushes and pops can make.
 */
KML_API bool kml_ring_check(struct kml_ring *r);

#endif /* _KML_H */
