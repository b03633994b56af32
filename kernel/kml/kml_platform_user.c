// SPDX-License-Identifier: GPL-2.0
/*
 * KML platform layer, user-space side (libkml.so).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <time.h>
#include <sched.h>
#include <sys/random.h>
#include "kml_internal.h"

void *kml_zalloc(size_t size)
{
	return calloc(1, size);
}

void kml_free(void *p)
{
	free(p);
}

KML_API u64 kml_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (u64)ts.tv_sec * 1000000000ULL + (u64)ts.tv_nsec;
}

u32 kml_random_u32(void)
{
	u32 v = 0;

	if (getrandom(&v, sizeof(v), 0) != sizeof(v))
		v = (u32)kml_now_ns() * 2654435761U;
	return v;
}

s64 kml_div_s64(s64 a, s64 b)
{
	return a / b;
}

KML_API int kml_fpu_begin(void)
{
	return 0;
}

KML_API void kml_fpu_end(void)
{
}

/* User space may always wait: spin briefly, then yield the CPU. */
int kml_ring_wait(u32 spins)
{
	if (spins < 64)
		kml_cpu_relax();
	else
		sched_yield();
	return 0;
}
