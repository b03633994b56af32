// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl fault: malformed input for the kernel's fault-injection tests.
 * Each kind prints what the kernel answered and exits 0 only if it refused
 * the way docs/kml-iosched.md says.  With --out FILE the model-making
 * kinds write the bad model to FILE instead (host tests check it with
 * KML's loader).
 */
#include "kmlctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

/* A valid float MLP n_in-16-1 with normalisation, saved into a buffer. */
static int valid_model(u32 n_in, void **bufp, size_t *lenp)
{
	struct opts o;
	struct kml_model *m;
	int ret;

	memset(&o, 0, sizeof(o));
	o.seed = 1;
	ret = model_new(&o, n_in, &m);
	if (ret)
		return ret;
	ret = model_bytes(m, bufp, lenp);
	kml_model_free(m);
	return ret;
}

/*
 * NaN and +Inf in the first two weights, CRC recomputed: magic, sizes and
 * checksum are right, so only the loader's value check can refuse it.
 * The weights follow the header and the normalisation block (u64 count,
 * mean[n_in] 4 bytes each, var[n_in] 8 bytes each; kml_format.c).
 */
static void poison_model(u8 *buf, size_t len, u32 n_in)
{
	size_t params = KML_MODEL_HDR_SIZE + 8 + (size_t)n_in * 12;

	put_le32(buf + params, 0x7fc00000U);		/* quiet NaN */
	put_le32(buf + params + 4, 0x7f800000U);	/* +Inf */
	model_file_recrc(buf, len);
}

/* The bad model of @kind; @want is the errno the kernel must answer. */
static int fault_model(const char *kind, void **bufp, size_t *lenp, int *want)
{
	u32 n_in = KML_DD_NR_FEATURES;
	int ret;

	if (!strcmp(kind, "wrong-shape"))
		n_in = KML_DD_NR_FEATURES - 4;
	ret = valid_model(n_in, bufp, lenp);
	if (ret)
		return fail(-ret, "building a model");
	if (!strcmp(kind, "nan-model")) {
		poison_model(*bufp, *lenp, n_in);
		*want = EDOM;
	} else if (!strcmp(kind, "wrong-shape")) {
		*want = EPROTO;
	} else if (!strcmp(kind, "truncated")) {
		*lenp /= 2;
		*want = EBADMSG;
	} else {		/* die-mid-update sends half of a valid one */
		*lenp /= 2;
		*want = 0;
	}
	return 0;
}

static u64 generation(int fd)
{
	struct kml_dev_info info;

	return dev_info(fd, &info) ? (u64)-1 : info.model_generation;
}

static int verdict(const char *kind, int got, int want)
{
	bool ok = got == want;

	printf("fault %s: got %s, expected %s: %s\n", kind,
	       got ? errname(got) : "success", errname(want),
	       ok ? "ok" : "FAIL");
	return ok ? 0 : 1;
}

/* Publish the bad model; the kernel must refuse with @want, no swap. */
static int fault_publish(const struct opts *o, const char *kind)
{
	bool at_write;
	size_t len;
	void *buf;
	u64 gen;
	int fd, want, ret;

	if (fault_model(kind, &buf, &len, &want))
		return 1;
	if (o->out) {
		ret = write_file_atomic(o->out, buf, len);
		free(buf);
		if (ret)
			return fail(-ret, "write %s", o->out);
		printf("fault %s: wrote %zu bytes to %s\n", kind, len, o->out);
		return 0;
	}
	if (open_dev(o, &fd)) {
		free(buf);
		return 1;
	}
	gen = generation(fd);
	ret = publish_model(fd, buf, len, &at_write);
	free(buf);
	if (ret)
		printf("fault %s: refused at %s\n", kind,
		       at_write ? "write" : "KML_IOC_COMMIT");
	else
		printf("fault %s: accepted\n", kind);
	if (generation(fd) != gen) {
		printf("fault %s: model_generation changed: FAIL\n", kind);
		close(fd);
		return 1;
	}
	close(fd);
	return verdict(kind, -ret, want);
}

/* Write half a valid model and die without committing or closing. */
static int fault_die_mid_update(const struct opts *o)
{
	size_t len, done = 0;
	void *buf;
	int fd, want, ret;

	if (o->out)
		return fault_publish(o, "die-mid-update");
	if (fault_model("die-mid-update", &buf, &len, &want))
		return 1;
	if (open_dev(o, &fd)) {
		free(buf);
		return 1;
	}
	ret = write_chunks(fd, buf, len, KMLCTL_WRITE_CHUNK, &done);
	free(buf);
	if (ret) {
		close(fd);
		return fail(-ret, "write after %zu bytes", done);
	}
	printf("fault die-mid-update: wrote %zu bytes (half a model), exiting "
	       "without KML_IOC_COMMIT\n", done);
	fflush(stdout);
	_exit(0);	/* the kernel's release() must drop the staged bytes */
}

/* More than max_model_bytes: some write() must fail. */
static int fault_big_write(const struct opts *o)
{
	struct kml_dev_info info;
	size_t len, done = 0;
	void *buf;
	int fd, ret;

	if (open_dev(o, &fd))
		return 1;
	ret = dev_info(fd, &info);
	if (ret) {
		close(fd);
		return fail(-ret, "KML_IOC_INFO");
	}
	len = (size_t)info.max_model_bytes + 2 * KMLCTL_WRITE_CHUNK;
	buf = calloc(1, len);
	if (!buf) {
		close(fd);
		return fail(ENOMEM, "buffer");
	}
	ret = write_chunks(fd, buf, len, KMLCTL_WRITE_CHUNK, &done);
	free(buf);
	ioctl(fd, KML_IOC_DISCARD);
	close(fd);
	printf("fault big-write: max_model_bytes %u, accepted %zu of %zu\n",
	       info.max_model_bytes, done, len);
	if (!ret || done > info.max_model_bytes) {
		printf("fault big-write: got %s after %zu bytes: FAIL\n",
		       ret ? errname(-ret) : "success", done);
		return 1;
	}
	printf("fault big-write: got %s: ok\n", errname(-ret));
	return 0;
}

/* ---- garbage-ioctl */

struct bad_ioctl {
	const char *what;
	unsigned long cmd;
	int arg_kind;		/* enum below */
	int want;
};

enum { ARG_NONE, ARG_NULL, ARG_ONE, ARG_KERNEL, ARG_RDONLY, ARG_STRADDLE };

static const struct bad_ioctl bad_ioctls[] = {
	{ "unknown nr", _IO(KML_IOC_MAGIC, 0x7f), ARG_NONE, ENOTTY },
	{ "INFO nr, wrong size", _IOR(KML_IOC_MAGIC, 0, __u32), ARG_NONE,
	  ENOTTY },
	{ "COMMIT nr, with data", _IOW(KML_IOC_MAGIC, 1, __u64), ARG_NONE,
	  ENOTTY },
	{ "other magic", _IO(KML_IOC_MAGIC + 1, 0), ARG_NONE, ENOTTY },
	{ "TCGETS", 0x5401, ARG_NONE, ENOTTY },
	{ "zero", 0, ARG_NONE, ENOTTY },
	{ "all ones", 0xffffffffUL, ARG_NONE, ENOTTY },
	{ "INFO to NULL", KML_IOC_INFO, ARG_NULL, EFAULT },
	{ "INFO to address 1", KML_IOC_INFO, ARG_ONE, EFAULT },
	{ "INFO to kernel text", KML_IOC_INFO, ARG_KERNEL, EFAULT },
	{ "INFO to read-only page", KML_IOC_INFO, ARG_RDONLY, EFAULT },
	{ "INFO across into an unmapped page", KML_IOC_INFO, ARG_STRADDLE,
	  EFAULT },
};

/*
 * Two pages: the first read-only, the second inaccessible; an INFO that
 * starts a few bytes before the second page has to fault half-way.
 */
static void *bad_ioctl_arg(int kind, u8 *pages, long page)
{
	switch (kind) {
	case ARG_NULL:
		return NULL;
	case ARG_ONE:
		return (void *)1UL;
	case ARG_KERNEL:
		return (void *)0xffffffff81000000UL;
	case ARG_RDONLY:
		return pages;
	case ARG_STRADDLE:
		return pages + page - 8;
	}
	return NULL;
}

static int fault_garbage_ioctl(const struct opts *o)
{
	long page = sysconf(_SC_PAGESIZE);
	struct kml_dev_info info;
	const struct bad_ioctl *b;
	int fd, err, bad = 0;
	u8 *pages;
	size_t i;

	if (open_dev(o, &fd))
		return 1;
	pages = mmap(NULL, 2 * page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
		     -1, 0);
	if (pages == MAP_FAILED || mprotect(pages + page, page, PROT_NONE)) {
		close(fd);
		return fail(errno, "mmap");
	}
	for (i = 0; i < sizeof(bad_ioctls) / sizeof(bad_ioctls[0]); i++) {
		b = &bad_ioctls[i];
		err = ioctl(fd, b->cmd, bad_ioctl_arg(b->arg_kind, pages, page))
		      ? errno : 0;
		printf("ioctl %-36s 0x%08lx: got %s, expected %s: %s\n",
		       b->what, b->cmd, err ? errname(err) : "success",
		       errname(b->want), err == b->want ? "ok" : "FAIL");
		bad += err != b->want;
	}
	/* the device still answers a good call */
	err = dev_info(fd, &info);
	printf("ioctl %-36s %10s: got %s, expected success: %s\n",
	       "INFO, valid", "", err ? errname(-err) : "success",
	       err ? "FAIL" : "ok");
	bad += err != 0;
	munmap(pages, 2 * page);
	close(fd);
	printf("fault garbage-ioctl: %s\n", bad ? "FAIL" : "ok");
	return bad ? 1 : 0;
}

int cmd_fault(const struct opts *o)
{
	const char *kind;

	if (check_opts(o, "fault", OPT_OUT, 1, 1))
		return 2;
	kind = o->argv[1];
	if (!strcmp(kind, "nan-model") || !strcmp(kind, "wrong-shape") ||
	    !strcmp(kind, "truncated"))
		return fault_publish(o, kind);
	if (o->out && strcmp(kind, "die-mid-update"))
		return usage_error("fault %s does not take --out", kind);
	if (!strcmp(kind, "die-mid-update"))
		return fault_die_mid_update(o);
	if (!strcmp(kind, "big-write"))
		return fault_big_write(o);
	if (!strcmp(kind, "garbage-ioctl"))
		return fault_garbage_ioctl(o);
	return usage_error("unknown fault kind '%s'", kind);
}
