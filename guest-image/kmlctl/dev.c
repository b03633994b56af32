// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl: device I/O -- /dev/kml (open, KML_IOC_INFO, publishing a model
 * by write() + KML_IOC_COMMIT) and its sample ring, mapped from the device
 * or from a --ring-file; and the commands that are just that: info, load
 * and unload.
 */
#include "kmlctl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* ------------------------------------------------------------- device */

/*
 * Open the KML device.  It must be a character device: a regular file
 * would happily take a model's bytes (and an ioctl on it says ENOTTY
 * only after we wrote), so refuse anything else up front.
 */
int open_dev(const struct opts *o, int *fdp)
{
	struct stat st;
	int fd;

	if (o->ring_file)
		return fail(EINVAL, "this command needs the device (--dev), "
			    "not --ring-file");
	fd = open(o->dev, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail(errno, "open %s", o->dev);
	if (fstat(fd, &st)) {
		int err = errno;

		close(fd);
		return fail(err, "stat %s", o->dev);
	}
	if (!S_ISCHR(st.st_mode)) {
		close(fd);
		return fail(ENOTTY, "%s is not a character device", o->dev);
	}
	*fdp = fd;
	return 0;
}

int dev_info(int fd, struct kml_dev_info *info)
{
	memset(info, 0, sizeof(*info));
	if (ioctl(fd, KML_IOC_INFO, info))
		return -errno;
	return 0;
}

/* write() all of @buf in chunks; returns 0 or -errno of the failed write. */
int write_chunks(int fd, const void *buf, size_t len, size_t chunk,
		 size_t *written)
{
	const char *p = buf;
	size_t done = 0;
	ssize_t n;

	while (done < len) {
		n = write(fd, p + done, len - done < chunk ? len - done : chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (written)
				*written = done;
			return n ? -errno : -EIO;
		}
		done += n;
	}
	if (written)
		*written = done;
	return 0;
}

/* Stage @buf and commit it: 0 or the -errno of the write or the commit. */
int publish_model(int fd, const void *buf, size_t len, bool *at_write)
{
	int ret;

	*at_write = true;
	ret = write_chunks(fd, buf, len, KMLCTL_WRITE_CHUNK, NULL);
	if (ret)
		goto discard;
	*at_write = false;
	if (ioctl(fd, KML_IOC_COMMIT) == 0)
		return 0;
	ret = -errno;
discard:
	/* drop whatever was staged, so the next publication starts clean */
	ioctl(fd, KML_IOC_DISCARD);
	return ret;
}

/* ------------------------------------------------------------- ring */

/* A ring file has no KML_IOC_INFO: describe it from its header. */
static void ring_file_info(struct ring_src *rs)
{
	struct kml_ring_shared *sh = rs->mem;

	memset(&rs->info, 0, sizeof(rs->info));
	rs->info.abi_version = KML_DD_ABI_VERSION;
	rs->info.record_size = sh->record_size;
	rs->info.ring_capacity = sh->capacity;
	rs->info.ring_mode = sh->mode;
	rs->info.ring_bytes = rs->bytes;
	rs->info.n_features = KML_DD_NR_FEATURES;
	rs->info.max_model_bytes = KML_MODEL_MAX_FILE;
}

static int map_ring_file(const struct opts *o, struct ring_src *rs)
{
	struct stat st;

	rs->fd = open(o->ring_file, O_RDWR | O_CLOEXEC);
	if (rs->fd < 0)
		return fail(errno, "open %s", o->ring_file);
	if (fstat(rs->fd, &st))
		return fail(errno, "stat %s", o->ring_file);
	if (!S_ISREG(st.st_mode) || st.st_size < KML_RING_HDR_SIZE)
		return fail(EINVAL, "%s: not a ring file", o->ring_file);
	rs->bytes = st.st_size;
	rs->mem = mmap(NULL, rs->bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		       rs->fd, 0);
	if (rs->mem == MAP_FAILED)
		return fail(errno, "mmap %s", o->ring_file);
	ring_file_info(rs);
	return 0;
}

static int map_ring_dev(const struct opts *o, struct ring_src *rs)
{
	int ret;

	if (open_dev(o, &rs->fd))
		return 1;
	ret = dev_info(rs->fd, &rs->info);
	if (ret)
		return fail(-ret, "%s: KML_IOC_INFO", o->dev);
	if (rs->info.abi_version != KML_DD_ABI_VERSION)
		return fail(EPROTO, "%s: ABI version %u, kmlctl speaks %u",
			    o->dev, rs->info.abi_version, KML_DD_ABI_VERSION);
	if (rs->info.ktrainer_running)
		fprintf(stderr, "kmlctl: note: the kernel trainer is running; "
			"mapping the ring will likely fail with EBUSY\n");
	if (!rs->info.ring_bytes)
		return fail(ENODEV, "%s: the kernel has no sample ring", o->dev);
	rs->bytes = rs->info.ring_bytes;
	rs->mem = mmap(NULL, rs->bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		       rs->fd, 0);
	if (rs->mem == MAP_FAILED)
		return fail(errno, "mmap %s (%zu bytes)", o->dev, rs->bytes);
	return 0;
}

/*
 * Map the ring (device or file) and attach to it.  kml_ring_attach()
 * validates the header; we also insist on our record layout, since a
 * ring of other records would train on garbage.
 */
int open_ring(const struct opts *o, struct ring_src *rs)
{
	int ret;

	memset(rs, 0, sizeof(*rs));
	rs->fd = -1;
	rs->mem = MAP_FAILED;
	if (o->ring_file ? map_ring_file(o, rs) : map_ring_dev(o, rs))
		return 1;
	ret = kml_ring_attach(&rs->ring, rs->mem, rs->bytes);
	if (ret)
		return fail(-ret, "%s: not a valid ring",
			    o->ring_file ? o->ring_file : o->dev);
	if (rs->ring.record_size != sizeof(struct kml_dd_sample))
		return fail(EPROTO, "ring records are %u bytes, expected %zu",
			    rs->ring.record_size,
			    sizeof(struct kml_dd_sample));
	return 0;
}

void close_ring(struct ring_src *rs)
{
	if (rs->mem != MAP_FAILED)
		munmap(rs->mem, rs->bytes);
	if (rs->fd >= 0)
		close(rs->fd);
}

/* ------------------------------------------------------------- info */

static const char *ring_mode_name(u32 mode)
{
	return mode == KML_RING_DROP ? "drop" : mode == KML_RING_BLOCK ?
	       "block" : "unknown";
}

static void print_dev_info(const struct kml_dev_info *info)
{
	printf("abi_version %u\n", info->abi_version);
	printf("record_size %u\n", info->record_size);
	printf("ring_capacity %u\n", info->ring_capacity);
	printf("ring_mode %s\n", ring_mode_name(info->ring_mode));
	printf("ring_bytes %llu\n", (unsigned long long)info->ring_bytes);
	printf("n_features %u\n", info->n_features);
	printf("max_model_bytes %u\n", info->max_model_bytes);
	printf("model_generation %llu\n",
	       (unsigned long long)info->model_generation);
	printf("ktrainer_running %u\n", info->ktrainer_running);
}

/* A ring file: its header and counters (what a test wants to see). */
static int info_ring_file(const struct opts *o)
{
	struct ring_src rs;
	struct kml_ring_shared *sh;
	u64 produced, consumed, dropped;

	if (open_ring(o, &rs)) {
		close_ring(&rs);
		return 1;
	}
	sh = rs.mem;
	kml_ring_counters(&rs.ring, &produced, &consumed, &dropped);
	print_dev_info(&rs.info);
	printf("ring_head %lld\n",
	       (long long)kml_atomic64_load_acquire(&sh->head));
	printf("ring_tail %lld\n",
	       (long long)kml_atomic64_load_acquire(&sh->tail));
	printf("ring_produced %llu\n", (unsigned long long)produced);
	printf("ring_consumed %llu\n", (unsigned long long)consumed);
	printf("ring_dropped %llu\n", (unsigned long long)dropped);
	close_ring(&rs);
	return 0;
}

int cmd_info(const struct opts *o)
{
	struct kml_dev_info info;
	int fd, ret;

	if (check_opts(o, "info", 0, 0, 0))
		return 2;
	if (o->ring_file)
		return info_ring_file(o);
	if (open_dev(o, &fd))
		return 1;
	ret = dev_info(fd, &info);
	close(fd);
	if (ret)
		return fail(-ret, "%s: KML_IOC_INFO", o->dev);
	print_dev_info(&info);
	return 0;
}

/* ------------------------------------------------------------- load */

int cmd_load(const struct opts *o)
{
	struct kml_dev_info info;
	bool at_write;
	size_t len;
	void *buf;
	int fd, ret;

	if (check_opts(o, "load", 0, 1, 1))
		return 2;
	ret = read_file(o->argv[1], &buf, &len);
	if (ret)
		return fail(-ret, "read %s", o->argv[1]);
	if (open_dev(o, &fd)) {
		free(buf);
		return 1;
	}
	ret = publish_model(fd, buf, len, &at_write);
	free(buf);
	if (ret) {
		close(fd);
		fail(-ret, "%s refused the model (%s)", o->dev,
		     at_write ? "write" : "KML_IOC_COMMIT");
		if (ret == -EOPNOTSUPP)
			fail(0, "this kernel has no float models (built without CONFIG_KML_FLOAT): load a Q16.16 one");
		return 1;
	}
	if (dev_info(fd, &info) == 0)
		printf("loaded %zu bytes, model_generation %llu\n", len,
		       (unsigned long long)info.model_generation);
	close(fd);
	return 0;
}

int cmd_unload(const struct opts *o)
{
	int fd, err;

	if (check_opts(o, "unload", 0, 0, 0))
		return 2;
	if (open_dev(o, &fd))
		return 1;
	if (ioctl(fd, KML_IOC_UNLOAD)) {
		err = errno;
		close(fd);
		return fail(err, "%s: KML_IOC_UNLOAD", o->dev);
	}
	close(fd);
	printf("unloaded\n");
	return 0;
}
