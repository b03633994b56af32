// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl fuzz: a bounded, seeded fuzzer for everything user space can reach
 * of KML in mq-deadline -- /dev/kml's ioctls and write()s, models mutated
 * byte by byte, mmap() of the sample ring with odd lengths and offsets and
 * scribbles into it, KML's module parameters, the queue's kml_mode and
 * scheduler, the debugfs files -- while the caller runs I/O.
 *
 * Reproducible: every operation is drawn from the seed before it runs, with
 * the same number of random draws whatever the kernel answers, so the
 * sequence depends only on --seed and the files found (sorted).  --list
 * prints the sequence without running it (on any machine); a crash is
 * pinned by the checkpoints written to /dev/kmsg ("kmlctl fuzz: seed S
 * ops N: op K"), which reach the serial console before the kernel dies.
 *
 * Exit status: 0 when all operations ran (whatever errno each got: the
 * point is that the kernel survives them), non-zero if the fuzzer itself
 * could not run.
 */
#include "kmlctl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#define FUZZ_FDS		3	/* open files of /dev/kml in rotation */
#define FUZZ_MAX_FILES		64
#define FUZZ_CHECKPOINT		64	/* ops between /dev/kmsg checkpoints */
#define FUZZ_PATH_MAX		256

enum fuzz_kind {
	FZ_IOCTL,
	FZ_WRITE,
	FZ_MODEL,
	FZ_MMAP,
	FZ_SCRIBBLE,
	FZ_SYSFS,
	FZ_REOPEN,
	FZ_SCHED,
	FZ_NR_KINDS,
};

static const char * const kind_names[FZ_NR_KINDS] = {
	"ioctl", "write", "model", "mmap", "scribble", "sysfs", "reopen",
	"sched",
};

/* Out of 100: sysfs and ioctls most, scheduler switches rarely. */
static const unsigned int kind_weight[FZ_NR_KINDS] = {
	20, 10, 15, 10, 10, 25, 5, 5,
};

/* One operation: its kind and four draws that fix every argument. */
struct fuzz_op {
	enum fuzz_kind kind;
	u64 a, b, c, d;
};

/* Values written to the sysfs files: the valid ones and the edges. */
static const char * const words[] = {
	"off", "observe", "active", "block", "drop", "all", "uncertain",
	"0", "1", "-1", "1000", "8000", "8001", "4294967295",
	"18446744073709551616", "Y", "N", "", " ", "\n", "active\n",
	"0x10", "1e3",
};

static const char * const schedulers[] = {
	"mq-deadline", "mq-deadline", "mq-deadline", "none", "kyber", "bfq",
	"mq-deadlinex",
};

struct fuzz {
	const struct opts *o;
	u64 state;			/* splitmix64 */
	char files[FUZZ_MAX_FILES][FUZZ_PATH_MAX];
	int n_files;
	char sched_file[FUZZ_PATH_MAX];
	int fd[FUZZ_FDS];
	void *map;			/* the current mapping, or NULL */
	size_t map_len;
	bool map_writable;
	u8 *model;			/* a valid model, mutated per op */
	size_t model_len;
	u64 ring_bytes;
	int kmsg;
	u64 ok, refused;
};

static u64 splitmix64(u64 *state)
{
	u64 z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void draw(struct fuzz *fz, struct fuzz_op *op)
{
	unsigned int pick = splitmix64(&fz->state) % 100, k;

	for (k = 0; k < FZ_NR_KINDS - 1 && pick >= kind_weight[k]; k++)
		pick -= kind_weight[k];
	op->kind = k;
	op->a = splitmix64(&fz->state);
	op->b = splitmix64(&fz->state);
	op->c = splitmix64(&fz->state);
	op->d = splitmix64(&fz->state);
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(x, y);
}

/*
 * The files under @dir, appended to fz->files in name order: all of them
 * are sorted before any is cut at FUZZ_MAX_FILES, so the list never
 * depends on the order readdir() gives.
 */
static void add_dir(struct fuzz *fz, const char *dir)
{
	static char names[4 * FUZZ_MAX_FILES][FUZZ_PATH_MAX];
	struct dirent *de;
	DIR *d = opendir(dir);
	int n = 0, i;

	if (!d)
		return;
	while ((de = readdir(d)) && n < (int)ARRAY_SIZE(names)) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(names[n++], FUZZ_PATH_MAX, "%s/%s", dir, de->d_name);
	}
	closedir(d);
	qsort(names, n, FUZZ_PATH_MAX, cmp_str);
	for (i = 0; i < n && fz->n_files < FUZZ_MAX_FILES; i++)
		memcpy(fz->files[fz->n_files++], names[i], FUZZ_PATH_MAX);
}

static void add_file(struct fuzz *fz, const char *path)
{
	if (fz->n_files < FUZZ_MAX_FILES)
		snprintf(fz->files[fz->n_files++], FUZZ_PATH_MAX, "%s", path);
}

/* The files sysfs ops write: KML's parameters, debugfs, the queue's. */
static void find_files(struct fuzz *fz, const char *blk)
{
	char path[FUZZ_PATH_MAX];

	add_dir(fz, KML_PARAMS_DIR);
	add_dir(fz, KML_DEBUGFS_DIR);
	if (!blk)
		return;
	snprintf(path, sizeof(path), "/sys/block/%s/queue/iosched/kml_mode",
		 blk);
	add_file(fz, path);
	snprintf(path, sizeof(path), "/sys/block/%s/queue/nr_requests", blk);
	add_file(fz, path);
	snprintf(fz->sched_file, sizeof(fz->sched_file),
		 "/sys/block/%s/queue/scheduler", blk);
}

/* An ioctl argument: NULL, a real buffer, or addresses that must fault. */
static unsigned long ioctl_arg(u64 c, void *buf)
{
	switch (c % 5) {
	case 0:
		return 0;
	case 1:
		return (unsigned long)buf;
	case 2:
		return 1;
	case 3:
		return 0xffffffff81000000UL;	/* kernel text */
	default:
		return 0x10000;			/* unmapped user page */
	}
}

static unsigned int ioctl_cmd(u64 a, u64 b)
{
	static const unsigned int known[] = {
		KML_IOC_INFO, KML_IOC_COMMIT, KML_IOC_DISCARD, KML_IOC_UNLOAD,
	};

	switch (a % 4) {
	case 0:
	case 1:
		return known[b % 4];
	case 2:		/* KML's magic, any direction, number and size */
		return _IOC(b & 3, KML_IOC_MAGIC, (b >> 2) & 0xff,
			    (b >> 10) & 0x3fff);
	default:
		return (unsigned int)b;
	}
}

/* mmap() lengths and offsets around the ring's size. */
static const char * const map_len_names[] = {
	"page", "ring", "ring+page", "0", "random-pages",
};

static size_t map_len(const struct fuzz *fz, u64 a)
{
	size_t page = 4096;

	switch (a % 5) {
	case 0:
		return page;
	case 1:
		return fz->ring_bytes;
	case 2:
		return fz->ring_bytes + page;
	case 3:
		return 0;
	default:
		return ((a >> 8) % (2 * fz->ring_bytes / page + 1)) * page;
	}
}

static off_t map_off(u64 b)
{
	switch (b % 3) {
	case 0:
	case 1:
		return 0;
	default:
		return (off_t)(((b >> 8) % 16) + 1) * 4096;
	}
}

/* A value for a sysfs write: a word, a number, or raw bytes. */
static size_t sysfs_value(u64 b, u64 c, u64 d, char *buf, size_t cap)
{
	u64 st = d;
	size_t i, n;

	switch (b % 3) {
	case 0:
		return snprintf(buf, cap, "%s",
				words[c % ARRAY_SIZE(words)]);
	case 1:
		return snprintf(buf, cap, "%lld", (long long)c >> (d % 64));
	default:
		n = d % 48;
		for (i = 0; i < n && i < cap; i++)
			buf[i] = splitmix64(&st);
		return i;
	}
}

static void describe(const struct fuzz *fz, const struct fuzz_op *op,
		     char *out, size_t cap)
{
	const char *name = kind_names[op->kind];

	switch (op->kind) {
	case FZ_IOCTL:
		snprintf(out, cap, "%s fd%d cmd=%#x arg#%d", name,
			 (int)(op->d % FUZZ_FDS), ioctl_cmd(op->a, op->b),
			 (int)(op->c % 5));
		return;
	case FZ_WRITE:
		snprintf(out, cap, "%s fd%d %zu random bytes%s", name,
			 (int)(op->d % FUZZ_FDS), (size_t)(op->b % 9000),
			 op->c & 1 ? " + commit" : "");
		return;
	case FZ_MODEL:
		snprintf(out, cap,
			 "%s fd%d %d byte flips, tail %d, crc %s, chunk %zu",
			 name, (int)(op->a % FUZZ_FDS), 1 + (int)(op->b % 8),
			 (int)(op->c % 4), op->c & 4 ? "fixed" : "stale",
			 1 + (size_t)(op->a >> 8) % 4096);
		return;
	case FZ_MMAP:	/* lengths by name: the ring's size is the guest's */
		snprintf(out, cap, "%s fd%d len=%s off=%lld %s %s", name,
			 (int)(op->d % FUZZ_FDS), map_len_names[op->a % 5],
			 (long long)map_off(op->b),
			 op->c & 1 ? "rw" : "r",
			 op->c & 2 ? "private" : "shared");
		return;
	case FZ_SCRIBBLE:
		snprintf(out, cap, "%s %d words into the mapping", name,
			 1 + (int)(op->a % 32));
		return;
	case FZ_SYSFS:
		if (fz->n_files)
			snprintf(out, cap, "%s %s value#%d", name,
				 fz->files[op->a % fz->n_files],
				 (int)(op->b % 3));
		else	/* --list away from the guest: the index, unreduced */
			snprintf(out, cap, "%s file a=%#llx value#%d", name,
				 (unsigned long long)op->a, (int)(op->b % 3));
		return;
	case FZ_REOPEN:
		snprintf(out, cap, "%s fd%d", name, (int)(op->a % FUZZ_FDS));
		return;
	case FZ_SCHED:
		snprintf(out, cap, "%s %s", name,
			 schedulers[op->a % ARRAY_SIZE(schedulers)]);
		return;
	default:
		snprintf(out, cap, "?");
	}
}

static int fd_of(struct fuzz *fz, u64 x)
{
	int *fd = &fz->fd[x % FUZZ_FDS];

	if (*fd < 0)
		*fd = open(fz->o->dev, O_RDWR | O_CLOEXEC);
	return *fd;
}

static void count(struct fuzz *fz, long ret)
{
	if (ret < 0)
		fz->refused++;
	else
		fz->ok++;
}

static void unmap(struct fuzz *fz)
{
	if (fz->map)
		munmap(fz->map, fz->map_len);
	fz->map = NULL;
}

static void write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (write(fd, buf, len) < 0)
		errno = 0;
	close(fd);
}

static void run_model(struct fuzz *fz, const struct fuzz_op *op, int fd)
{
	size_t len = fz->model_len, chunk = 1 + (op->a >> 8) % 4096, i;
	size_t cap = fz->model_len + 64;
	u8 *m = malloc(cap);
	u64 st = op->d;
	int flips = 1 + op->b % 8;

	if (!m)
		return;
	memcpy(m, fz->model, len);
	for (i = 0; i < (size_t)flips; i++) {
		u64 r = splitmix64(&st);

		m[r % len] ^= 1u << ((r >> 32) % 8);
	}
	if (op->c % 4 == 1)
		len = splitmix64(&st) % len;
	else if (op->c % 4 == 2)
		for (; len < cap; len++)
			m[len] = splitmix64(&st);
	if ((op->c & 4) && len > 4) {
		u32 crc = kml_crc32(0, m, len - 4);

		memcpy(m + len - 4, &crc, 4);
	}
	write_chunks(fd, m, len, chunk, &i);
	count(fz, ioctl(fd, KML_IOC_COMMIT));
	free(m);
}

static void run_op(struct fuzz *fz, const struct fuzz_op *op)
{
	u8 buf[9000];
	size_t len, i;
	void *p;
	int fd;

	switch (op->kind) {
	case FZ_IOCTL:
		fd = fd_of(fz, op->d);
		memset(buf, 0, sizeof(buf));
		count(fz, ioctl(fd, ioctl_cmd(op->a, op->b),
				ioctl_arg(op->c, buf)));
		break;
	case FZ_WRITE: {
		u64 st = op->a;

		fd = fd_of(fz, op->d);
		len = op->b % sizeof(buf);
		for (i = 0; i < len; i++)
			buf[i] = splitmix64(&st);
		count(fz, write(fd, buf, len));
		if (op->c & 1)
			count(fz, ioctl(fd, KML_IOC_COMMIT));
		break;
	}
	case FZ_MODEL:
		run_model(fz, op, fd_of(fz, op->a));
		break;
	case FZ_MMAP:
		unmap(fz);
		fd = fd_of(fz, op->d);
		len = map_len(fz, op->a);
		p = mmap(NULL, len, PROT_READ | (op->c & 1 ? PROT_WRITE : 0),
			 op->c & 2 ? MAP_PRIVATE : MAP_SHARED, fd,
			 map_off(op->b));
		count(fz, p == MAP_FAILED ? -1 : 0);
		if (p != MAP_FAILED) {
			fz->map = p;
			fz->map_len = len;
			fz->map_writable = op->c & 1;
		}
		break;
	case FZ_SCRIBBLE: {
		u64 st = op->b;
		int n = 1 + op->a % 32;

		if (!fz->map || !fz->map_writable || fz->map_len < 8)
			break;
		while (n--) {
			u64 r = splitmix64(&st);
			u64 *w = (u64 *)fz->map + r % (fz->map_len / 8);

			/* small values hit the indices' plausible range */
			*w = (r & 1) ? (r >> 1) : (r >> 40);
		}
		break;
	}
	case FZ_SYSFS:
		if (!fz->n_files)
			break;
		len = sysfs_value(op->b, op->c, op->d, (char *)buf, 64);
		write_file(fz->files[op->a % fz->n_files], buf, len);
		break;
	case FZ_REOPEN:
		fd = fz->fd[op->a % FUZZ_FDS];
		if (fd >= 0) {
			/* a mapping keeps the file (and the ring) held */
			close(fd);
			fz->fd[op->a % FUZZ_FDS] = -1;
		}
		break;
	case FZ_SCHED: {
		const char *s = schedulers[op->a % ARRAY_SIZE(schedulers)];

		if (fz->sched_file[0])
			write_file(fz->sched_file, s, strlen(s));
		break;
	}
	default:
		break;
	}
}

static void checkpoint(struct fuzz *fz, unsigned long long k)
{
	char line[128];
	int n;

	if (fz->kmsg < 0)
		return;
	n = snprintf(line, sizeof(line), "kmlctl fuzz: seed %lu ops %llu: op %llu\n",
		     fz->o->seed, fz->o->ops, k);
	if (write(fz->kmsg, line, n) < 0)
		errno = 0;
}

static int load_valid_model(struct fuzz *fz)
{
	struct kml_model *m;
	void *buf;
	int ret;

	ret = model_new(fz->o, KML_DD_NR_FEATURES, &m);
	if (ret)
		return fail(-ret, "building a model");
	ret = model_bytes(m, &buf, &fz->model_len);
	kml_model_free(m);
	if (ret)
		return fail(-ret, "saving a model");
	fz->model = buf;
	return 0;
}

int cmd_fuzz(const struct opts *o)
{
	const char *blk = o->argc > 1 ? o->argv[1] : NULL;
	bool list = o->seen & OPT_LIST;
	struct kml_dev_info info;
	struct fuzz *fz;
	unsigned long long k;
	char text[FUZZ_PATH_MAX + 64];
	int i, ret = 0;

	if (check_opts(o, "fuzz", OPT_SEED | OPT_OPS | OPT_LIST, 0, 1))
		return 2;
	if (o->seen & OPT_RING_FILE)
		return usage_error("fuzz works on the device, not --ring-file");
	fz = calloc(1, sizeof(*fz));
	if (!fz)
		return fail(ENOMEM, "fuzz");
	fz->o = o;
	fz->state = o->seed;
	fz->kmsg = -1;
	for (i = 0; i < FUZZ_FDS; i++)
		fz->fd[i] = -1;
	fz->ring_bytes = 1 << 20;	/* --list without a device */
	find_files(fz, blk);
	if (!list) {
		if (open_dev(o, &fz->fd[0]) || dev_info(fz->fd[0], &info)) {
			ret = 1;
			goto out;
		}
		fz->ring_bytes = info.ring_bytes;
		ret = load_valid_model(fz);
		if (ret)
			goto out;
		fz->kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	}
	printf("fuzz: seed %lu, %llu ops, %d files, ring %llu bytes\n",
	       o->seed, o->ops, fz->n_files,
	       (unsigned long long)fz->ring_bytes);
	fflush(stdout);
	for (k = 0; k < o->ops; k++) {
		struct fuzz_op op;

		draw(fz, &op);
		if (list) {
			describe(fz, &op, text, sizeof(text));
			printf("op %llu: %s\n", k, text);
			continue;
		}
		if (k % FUZZ_CHECKPOINT == 0)
			checkpoint(fz, k);
		run_op(fz, &op);
	}
	if (!list) {
		checkpoint(fz, k);
		printf("fuzz: done: %llu ops, %llu succeeded, %llu refused\n",
		       k, (unsigned long long)fz->ok,
		       (unsigned long long)fz->refused);
	}
out:
	unmap(fz);
	for (i = 0; i < FUZZ_FDS; i++)
		if (fz->fd[i] >= 0)
			close(fz->fd[i]);
	if (fz->kmsg >= 0)
		close(fz->kmsg);
	free(fz->model);
	free(fz);
	return ret;
}
