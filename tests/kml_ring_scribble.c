// SPDX-License-Identifier: GPL-2.0
/*
 * A buggy ring consumer for tests/test_kml_faults.py: map /dev/kml's sample
 * ring and write a sequence number far ahead of every position into every
 * slot (what a consumer with a stray pointer or a wrong slot size might
 * do), then exit.  Built static on the host and copied into the guest.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kml.h"
#include "kml_iosched_uapi.h"

int main(void)
{
	struct kml_dev_info info;
	struct kml_ring_shared *sh;
	size_t slot_size, i;
	unsigned char *mem;
	int fd;

	fd = open("/dev/kml", O_RDWR | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, KML_IOC_INFO, &info)) {
		fprintf(stderr, "kml_ring_scribble: /dev/kml: %s\n", strerror(errno));
		return 1;
	}
	mem = mmap(NULL, info.ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		   fd, 0);
	if (mem == MAP_FAILED) {
		fprintf(stderr, "kml_ring_scribble: mmap: %s\n", strerror(errno));
		return 1;
	}
	sh = (struct kml_ring_shared *)mem;
	slot_size = sh->slot_size;
	for (i = 0; i < info.ring_capacity; i++) {
		struct kml_ring_slot *slot = (struct kml_ring_slot *)
			(mem + KML_RING_HDR_SIZE + i * slot_size);

		slot->seq.v = (s64)1 << 62;
	}
	printf("scribbled %u slots of %zu bytes\n", info.ring_capacity, slot_size);
	return 0;
}
