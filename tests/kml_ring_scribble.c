// SPDX-License-Identifier: GPL-2.0
/*
 * A buggy ring consumer for tests/test_kml_faults.py: map /dev/kml's sample
 * ring and write a sequence number far ahead of every position into every
 * slot (what a consumer with a stray pointer or a wrong slot size might
 * do), then exit.  Built static on the host and copied into the guest.
 *
 *   kml_ring_scribble            once
 *   kml_ring_scribble SECONDS    again and again for SECONDS: map, scribble,
 *                                wait until a producer has found it (a push
 *                                counted dropped, at most FOUND_WAIT_MS),
 *                                unmap and close, so that the kernel repairs
 *                                the ring each round while I/O goes on.  A
 *                                fixed 1 ms wait let a loaded host's rounds
 *                                all pass unseen, and nothing was repaired.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kml.h"
#include "kml_iosched_uapi.h"

#define FOUND_WAIT_MS	1000

static int scribble(unsigned int *capacity, size_t *slot_size, int wait_found)
{
	struct kml_dev_info info;
	struct kml_ring_shared *sh;
	unsigned char *mem;
	int fd, ms;
	s64 dropped;
	size_t i;

	fd = open("/dev/kml", O_RDWR | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, KML_IOC_INFO, &info)) {
		fprintf(stderr, "kml_ring_scribble: /dev/kml: %s\n", strerror(errno));
		return 1;
	}
	mem = mmap(NULL, info.ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		   fd, 0);
	if (mem == MAP_FAILED) {
		fprintf(stderr, "kml_ring_scribble: mmap: %s\n", strerror(errno));
		close(fd);
		return 1;
	}
	sh = (struct kml_ring_shared *)mem;
	*capacity = info.ring_capacity;
	*slot_size = sh->slot_size;
	for (i = 0; i < info.ring_capacity; i++) {
		struct kml_ring_slot *slot = (struct kml_ring_slot *)
			(mem + KML_RING_HDR_SIZE + i * *slot_size);

		slot->seq.v = (s64)1 << 62;
	}
	/* every slot is scribbled: the next push to count a drop found it */
	dropped = __atomic_load_n(&sh->dropped.v, __ATOMIC_ACQUIRE);
	ms = 0;
	do {
		usleep(1000);
	} while (wait_found && ++ms < FOUND_WAIT_MS &&
		 __atomic_load_n(&sh->dropped.v, __ATOMIC_ACQUIRE) == dropped);
	munmap(mem, info.ring_bytes);
	close(fd);
	return 0;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double end = argc > 1 ? now_s() + atof(argv[1]) : 0;
	unsigned int capacity = 0;
	size_t slot_size = 0;
	long rounds = 0;

	do {
		if (scribble(&capacity, &slot_size, argc > 1))
			return 1;
		rounds++;
	} while (now_s() < end);
	printf("scribbled %u slots of %zu bytes, %ld rounds\n", capacity,
	       slot_size, rounds);
	return 0;
}
