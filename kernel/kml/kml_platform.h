/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML platform layer: the only place where the kernel and user-space builds
 * differ.  Everything else in KML is plain C that uses the types and helpers
 * declared here: allocation, atomics, time, random numbers, logging,
 * checksums, kernel export markers and the FPU section.
 *
 * Kernel: __KERNEL__ is defined, helpers map to kmalloc/atomic64/ktime/...
 * User space: C11 atomics, malloc, clock_gettime, stdio.
 */
#ifndef _KML_PLATFORM_H
#define _KML_PLATFORM_H

#ifdef __KERNEL__

#include <linux/types.h>
#include <linux/errno.h>
#include <linux/string.h>
#include <linux/atomic.h>
#include <linux/compiler.h>
#include <linux/export.h>
#include <linux/printk.h>
#include <linux/limits.h>
#include <linux/math64.h>
#include <linux/bitops.h>
#include <linux/build_bug.h>
#include <linux/crc32.h>
#include <kunit/visibility.h>
#include <asm/processor.h>

/* Kernel callers see no visibility attribute; exports use EXPORT_SYMBOL_GPL. */
#define KML_API

/*
 * The parts a kernel may leave out (lib/kml/Kconfig): float models and
 * training.  Tested with if (), not #ifdef, where the code can stay
 * visible to the compiler, which then drops the calls it cannot reach.
 */
#define KML_HAS_FLOAT	IS_ENABLED(CONFIG_KML_FLOAT)
#define KML_HAS_TRAIN	IS_ENABLED(CONFIG_KML_TRAIN)
/* mq-deadline's kernel trainer and what only it calls */
#define KML_HAS_KTRAINER IS_ENABLED(CONFIG_KML_IOSCHED_KTRAINER)

struct kml_atomic64 {
	atomic64_t v;
};

static inline s64 kml_atomic64_load_acquire(struct kml_atomic64 *a)
{
	return atomic64_read_acquire(&a->v);
}

static inline s64 kml_atomic64_load_relaxed(struct kml_atomic64 *a)
{
	return atomic64_read(&a->v);
}

static inline void kml_atomic64_store_release(struct kml_atomic64 *a, s64 v)
{
	atomic64_set_release(&a->v, v);
}

static inline void kml_atomic64_store_relaxed(struct kml_atomic64 *a, s64 v)
{
	atomic64_set(&a->v, v);
}

/* Returns true and updates nothing else on success; on failure *old = current. */
static inline bool kml_atomic64_cmpxchg(struct kml_atomic64 *a, s64 *old, s64 new)
{
	return atomic64_try_cmpxchg(&a->v, old, new);
}

static inline void kml_atomic64_inc(struct kml_atomic64 *a)
{
	atomic64_inc(&a->v);
}

static inline void kml_cpu_relax(void)
{
	cpu_relax();
}

/* One untorn read of memory another party may change (shared ring header). */
#define kml_read_once(x) READ_ONCE(x)
#define kml_write_once(x, v) WRITE_ONCE(x, v)

#define kml_log(fmt, ...) pr_info("kml: " fmt, ##__VA_ARGS__)
#define kml_warn(fmt, ...) pr_warn("kml: " fmt, ##__VA_ARGS__)

/*
 * The reflected IEEE CRC-32 register after @len bytes (no pre- or
 * post-inversion).  lib/crc32.c's tables: a few instructions a byte where
 * the bitwise loop takes about forty, and a model is checked at every
 * publish.
 */
static inline u32 kml_crc32_le(u32 crc, const u8 *p, size_t len)
{
	return crc32_le(crc, p, len);
}

#else /* user space */

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <assert.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int8_t s8;
typedef int16_t s16;
typedef int32_t s32;
typedef int64_t s64;

#define KML_API __attribute__((visibility("default")))
/* libkml.so has every part: kmlbench trains and converts models with it. */
#define KML_HAS_FLOAT	1
#define KML_HAS_TRAIN	1
#define KML_HAS_KTRAINER 1
/* Kernel export markers are no-ops in the shared library. */
#define EXPORT_SYMBOL_GPL(sym) extern int kml_export_marker_unused
#define EXPORT_SYMBOL_IF_KUNIT EXPORT_SYMBOL_GPL
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define S32_MAX INT32_MAX
#define S32_MIN INT32_MIN
#define S64_MAX INT64_MAX
#define S64_MIN INT64_MIN
#define U32_MAX UINT32_MAX

struct kml_atomic64 {
	_Atomic int64_t v;
};

static inline s64 kml_atomic64_load_acquire(struct kml_atomic64 *a)
{
	return atomic_load_explicit(&a->v, memory_order_acquire);
}

static inline s64 kml_atomic64_load_relaxed(struct kml_atomic64 *a)
{
	return atomic_load_explicit(&a->v, memory_order_relaxed);
}

static inline void kml_atomic64_store_release(struct kml_atomic64 *a, s64 v)
{
	atomic_store_explicit(&a->v, v, memory_order_release);
}

static inline void kml_atomic64_store_relaxed(struct kml_atomic64 *a, s64 v)
{
	atomic_store_explicit(&a->v, v, memory_order_relaxed);
}

static inline bool kml_atomic64_cmpxchg(struct kml_atomic64 *a, s64 *old, s64 new)
{
	return atomic_compare_exchange_weak_explicit(&a->v, (int64_t *)old, new,
						     memory_order_acq_rel,
						     memory_order_relaxed);
}

static inline void kml_atomic64_inc(struct kml_atomic64 *a)
{
	atomic_fetch_add_explicit(&a->v, 1, memory_order_relaxed);
}

static inline void kml_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

/* One untorn read of memory another party may change (shared ring header). */
#define kml_read_once(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define kml_write_once(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

#define kml_log(fmt, ...) fprintf(stderr, "kml: " fmt, ##__VA_ARGS__)
#define kml_warn(fmt, ...) fprintf(stderr, "kml: warning: " fmt, ##__VA_ARGS__)

/* @a * @mul / @div, the product in 128 bits, as <linux/math64.h>'s. */
static inline u64 mul_u64_u32_div(u64 a, u32 mul, u32 div)
{
	return (u64)((__uint128_t)a * mul / div);
}

/* <linux/math64.h>'s divisions and <linux/bitops.h>'s fls64(). */
static inline u64 div_u64(u64 a, u32 b)
{
	return a / b;
}

static inline u64 div64_u64(u64 a, u64 b)
{
	return a / b;
}

static inline int fls64(u64 x)
{
	return x ? 64 - __builtin_clzll(x) : 0;
}

/* The kernel's crc32_le(): bit by bit, off the hot path in user space. */
static inline u32 kml_crc32_le(u32 crc, const u8 *p, size_t len)
{
	u32 k;

	while (len--) {
		crc ^= *p++;
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xedb88320U & (0U - (crc & 1)));
	}
	return crc;
}

#endif /* __KERNEL__ */

/* ---- implemented in kml_platform_kernel.c / kml_platform_user.c ---- */

/* Zeroed allocation; may sleep in the kernel (GFP_KERNEL): never call it in
 * an FPU section, in atomic context or on a hot path.
 */
void *kml_zalloc(size_t size);
void kml_free(void *p);

/* Monotonic clock in nanoseconds. */
u64 kml_now_ns(void);

/* Non-deterministic 32-bit random number (seeds for model initialisation). */
u32 kml_random_u32(void);

/*
 * FPU section.  kml_fpu_begin() returns 0 when floating point may be used
 * until the matching kml_fpu_end(), or -EBUSY when it may not (the kernel
 * is in a context where the FPU is unusable, e.g. some interrupts): callers
 * then skip the float path (or use a fixed-point model).  In between: no
 * sleeping, no allocation, no spinning on locks.  No-op in user space.
 */
int kml_fpu_begin(void);
void kml_fpu_end(void);

/*
 * Called by a blocking ring producer while the ring is full.  @spins counts
 * the calls for this push so far.  Returns 0 to keep waiting, -EAGAIN to
 * give up.  User space: pause, then sched_yield(); never gives up.
 * Kernel: cpu_relax() for a bounded number of spins, never sleeps.
 */
int kml_ring_wait(u32 spins);

#endif /* _KML_PLATFORM_H */
