// SPDX-License-Identifier: GPL-2.0
/*
 * KML platform layer, kernel side: allocation, time, random numbers, the
 * x86 FPU section and the ring producer's bounded wait.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/ktime.h>
#include <linux/random.h>
#include <linux/math64.h>
#include <asm/fpu/api.h>
#include "kml_internal.h"

void *kml_zalloc(size_t size)
{
	return kzalloc(size, GFP_KERNEL);
}

void kml_free(void *p)
{
	kfree(p);
}

u64 kml_now_ns(void)
{
	return ktime_get_ns();
}

u32 kml_random_u32(void)
{
	return get_random_u32();
}

s64 kml_div_s64(s64 a, s64 b)
{
	return div64_s64(a, b);
}

/*
 * kernel_fpu_begin() disables preemption and saves the user FPU state
 * lazily; it must not be used where the FPU is unusable (some interrupt
 * contexts), so refuse there instead of warning.
 */
int kml_fpu_begin(void)
{
	if (!irq_fpu_usable())
		return -EBUSY;
	kernel_fpu_begin();
	return 0;
}
EXPORT_SYMBOL_GPL(kml_fpu_begin);

void kml_fpu_end(void)
{
	kernel_fpu_end();
}
EXPORT_SYMBOL_GPL(kml_fpu_end);

/*
 * Blocking ring producers in the kernel never sleep (they may run in atomic
 * context): spin with cpu_relax() for about KML_RING_SPIN_LIMIT iterations,
 * then give up with -EAGAIN, counted in full_waits.
 */
#define KML_RING_SPIN_LIMIT 4096

int kml_ring_wait(u32 spins)
{
	if (spins >= KML_RING_SPIN_LIMIT)
		return -EAGAIN;
	cpu_relax();
	return 0;
}

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("KML: in-kernel machine learning library");
