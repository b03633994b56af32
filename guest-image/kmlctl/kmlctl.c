// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl: the guest-side tool for KML inside mq-deadline.
 *
 * Talks to /dev/kml (docs/kml-iosched.md, kernel/kml/kml_iosched_uapi.h):
 * reads the device geometry, publishes and removes models, drains the
 * sample ring into a trace file (docs/trace.md), trains a model in user
 * space from the ring ("shared user-kernel mode") and feeds the device the
 * malformed input the kernel's fault-injection tests need.
 *
 * It is linked statically against the user-space build of the very KML
 * sources the kernel compiles (kernel/kml/), so a model it saves is byte
 * for byte what the kernel's loader expects, and the guest needs no
 * libraries.  --ring-file makes every ring command work on a file that
 * holds a ring in the shared layout, so the host tests run it without a
 * kernel.
 *
 * Every error goes to stderr with the errno name, and the exit status is
 * non-zero.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "kml.h"
#include "kml_iosched_uapi.h"

#define KMLCTL_DEFAULT_DEV	"/dev/kml"
#define KMLCTL_WRITE_CHUNK	4096	/* bytes per write() of a model */
#define KMLCTL_MAX_FILE		(64U << 20)	/* sanity cap on files we read */

/* The on-disk trace: this header, then raw struct kml_dd_sample rows. */
#define KML_TRACE_MAGIC		"KMLTRC01"

struct kml_trace_hdr {
	char magic[8];		/*  0 "KMLTRC01", no NUL */
	__u32 abi_version;	/*  8 KML_DD_ABI_VERSION of the producer */
	__u32 record_size;	/* 12 bytes per row */
	__u32 n_features;	/* 16 meaningful entries of features[] */
	__u8 reserved[44];	/* 20 zero */
};

_Static_assert(sizeof(struct kml_trace_hdr) == 64, "trace header layout");
_Static_assert(sizeof(struct kml_dd_sample) == 128, "sample layout");

/* ------------------------------------------------------------- errors */

static const char *errname(int err)
{
	static __thread char buf[16];
	const char *name = strerrorname_np(err);

	if (name)
		return name;
	snprintf(buf, sizeof(buf), "E%d", err);
	return buf;
}

/* Print "kmlctl: <what>: ENAME (message)"; returns 1 for "return fail()". */
static int fail(int err, const char *fmt, ...)
{
	va_list ap;

	fputs("kmlctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	if (err)
		fprintf(stderr, ": %s (%s)", errname(err), strerror(err));
	fputc('\n', stderr);
	return 1;
}

/* ------------------------------------------------------------- options */

enum {
	OPT_DEV = 1 << 0,
	OPT_RING_FILE = 1 << 1,
	OPT_SECONDS = 1 << 2,
	OPT_MAX = 1 << 3,
	OPT_MODE = 1 << 4,
	OPT_RATE = 1 << 5,
	OPT_CPU_PCT = 1 << 6,
	OPT_WARM = 1 << 7,
	OPT_ARCH = 1 << 8,
	OPT_SAVE = 1 << 9,
	OPT_CURVE = 1 << 10,
	OPT_CURVE_EVERY = 1 << 11,
	OPT_PUBLISH_EVERY = 1 << 12,
	OPT_MAX_SAMPLES = 1 << 13,
	OPT_THREADS = 1 << 14,
	OPT_BUFFER = 1 << 15,
	OPT_LR = 1 << 16,
	OPT_BATCH = 1 << 17,
	OPT_SEED = 1 << 18,
	OPT_OUT = 1 << 19,
	OPT_PUBLISH_FILE = 1 << 20,
	OPT_HELP = 1 << 21,
};

struct opts {
	unsigned int seen;		/* OPT_* given on the command line */
	const char *dev;
	const char *ring_file;
	double seconds;			/* 0 = no limit */
	unsigned long long max;		/* records (trace); 0 = no limit */
	unsigned long long max_samples;	/* samples popped (train) */
	bool drop;			/* train --mode drop */
	double rate;			/* samples/s, 0 = no cap */
	double cpu_pct;			/* 0 = no cap */
	const char *warm;
	bool linear;			/* --arch linear */
	const char *save;
	const char *curve;
	unsigned long curve_every;
	unsigned long publish_every;	/* 0 = never */
	unsigned long threads;
	unsigned long buffer;		/* samples between consumer and trainer */
	double lr;
	unsigned long batch;
	unsigned long seed;
	const char *out;		/* fault: write the model here instead */
	const char *publish_file;	/* train --ring-file: publish to a file */
	int argc;			/* operands after the subcommand */
	char **argv;
};

static const struct option long_opts[] = {
	{ "dev", required_argument, NULL, OPT_DEV },
	{ "ring-file", required_argument, NULL, OPT_RING_FILE },
	{ "seconds", required_argument, NULL, OPT_SECONDS },
	{ "max", required_argument, NULL, OPT_MAX },
	{ "mode", required_argument, NULL, OPT_MODE },
	{ "rate", required_argument, NULL, OPT_RATE },
	{ "cpu-pct", required_argument, NULL, OPT_CPU_PCT },
	{ "warm", required_argument, NULL, OPT_WARM },
	{ "arch", required_argument, NULL, OPT_ARCH },
	{ "save", required_argument, NULL, OPT_SAVE },
	{ "curve", required_argument, NULL, OPT_CURVE },
	{ "curve-every", required_argument, NULL, OPT_CURVE_EVERY },
	{ "publish-every", required_argument, NULL, OPT_PUBLISH_EVERY },
	{ "max-samples", required_argument, NULL, OPT_MAX_SAMPLES },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "buffer", required_argument, NULL, OPT_BUFFER },
	{ "lr", required_argument, NULL, OPT_LR },
	{ "batch", required_argument, NULL, OPT_BATCH },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "out", required_argument, NULL, OPT_OUT },
	{ "publish-file", required_argument, NULL, OPT_PUBLISH_FILE },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

static const char usage_text[] =
"usage: kmlctl [--dev PATH | --ring-file PATH] COMMAND [ARGS] [OPTIONS]\n"
"\n"
"  info                       device geometry as 'key value' lines\n"
"  load MODEL                 publish a model file (write + commit)\n"
"  unload                     remove the model\n"
"  trace OUT [--seconds S] [--max N]\n"
"                             drain the ring into a trace ('-' = stdout)\n"
"  train [--mode block|drop] [--rate N] [--cpu-pct P] [--warm MODEL]\n"
"        [--arch linear|mlp] [--save FILE] [--curve FILE]\n"
"        [--curve-every N] [--publish-every N] [--publish-file FILE]\n"
"        [--seconds S] [--max-samples N] [--buffer N] [--lr X]\n"
"        [--batch N] [--seed N] [--threads 1]\n"
"                             train from the ring, publish models\n"
"  fault KIND [--out FILE]    garbage-ioctl nan-model wrong-shape truncated\n"
"                             die-mid-update big-write\n"
"\n"
"  --dev PATH        the KML device (default /dev/kml)\n"
"  --ring-file PATH  a file holding a ring in the shared layout instead\n";

static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("kmlctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\n\n", stderr);
	fputs(usage_text, stderr);
	return 2;
}

static int parse_ull(const char *s, unsigned long long *v)
{
	char *end;

	errno = 0;
	if (!*s || *s == '-')
		return -EINVAL;
	*v = strtoull(s, &end, 0);
	if (errno || *end)
		return -EINVAL;
	return 0;
}

static int parse_ul(const char *s, unsigned long *v)
{
	unsigned long long x;

	if (parse_ull(s, &x) || x > ULONG_MAX)
		return -EINVAL;
	*v = x;
	return 0;
}

static int parse_nonneg(const char *s, double *v)
{
	char *end;

	errno = 0;
	*v = strtod(s, &end);
	if (errno || !*s || *end || !(*v >= 0) || isinf(*v))
		return -EINVAL;
	return 0;
}

/* One option's argument into @o; returns 0 or -EINVAL. */
static int set_opt(struct opts *o, int id, const char *arg)
{
	switch (id) {
	case OPT_DEV:
		o->dev = arg;
		return 0;
	case OPT_RING_FILE:
		o->ring_file = arg;
		return 0;
	case OPT_SECONDS:
		return parse_nonneg(arg, &o->seconds);
	case OPT_MAX:
		return parse_ull(arg, &o->max);
	case OPT_MAX_SAMPLES:
		return parse_ull(arg, &o->max_samples);
	case OPT_MODE:
		if (strcmp(arg, "block") && strcmp(arg, "drop"))
			return -EINVAL;
		o->drop = !strcmp(arg, "drop");
		return 0;
	case OPT_RATE:
		return parse_nonneg(arg, &o->rate);
	case OPT_CPU_PCT:
		if (parse_nonneg(arg, &o->cpu_pct) || o->cpu_pct > 100)
			return -EINVAL;
		return 0;
	case OPT_WARM:
		o->warm = arg;
		return 0;
	case OPT_ARCH:
		if (strcmp(arg, "linear") && strcmp(arg, "mlp"))
			return -EINVAL;
		o->linear = !strcmp(arg, "linear");
		return 0;
	case OPT_SAVE:
		o->save = arg;
		return 0;
	case OPT_CURVE:
		o->curve = arg;
		return 0;
	case OPT_CURVE_EVERY:
		return parse_ul(arg, &o->curve_every) || !o->curve_every ?
		       -EINVAL : 0;
	case OPT_PUBLISH_EVERY:
		return parse_ul(arg, &o->publish_every);
	case OPT_THREADS:
		return parse_ul(arg, &o->threads) || !o->threads ? -EINVAL : 0;
	case OPT_BUFFER:
		return parse_ul(arg, &o->buffer) || !o->buffer ? -EINVAL : 0;
	case OPT_LR:
		return parse_nonneg(arg, &o->lr) || !o->lr ? -EINVAL : 0;
	case OPT_BATCH:
		return parse_ul(arg, &o->batch) || !o->batch || o->batch > 1024 ?
		       -EINVAL : 0;
	case OPT_SEED:
		return parse_ul(arg, &o->seed);
	case OPT_OUT:
		o->out = arg;
		return 0;
	case OPT_PUBLISH_FILE:
		o->publish_file = arg;
		return 0;
	}
	return -EINVAL;
}

static const char *opt_name(int id)
{
	const struct option *lo;

	for (lo = long_opts; lo->name; lo++)
		if (lo->val == id)
			return lo->name;
	return "?";
}

/*
 * GNU getopt permutes, so options may come before or after the command;
 * the first operand is the command, the rest are its arguments.  Returns
 * 0, or 2 after a usage message.
 */
static int parse_args(int argc, char **argv, struct opts *o)
{
	int c;

	memset(o, 0, sizeof(*o));
	o->dev = KMLCTL_DEFAULT_DEV;
	o->curve_every = 256;
	o->threads = 1;
	o->buffer = 4096;
	o->lr = 0.01;
	o->batch = 32;
	o->seed = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		if (c == 'h' || c == OPT_HELP) {
			o->seen |= OPT_HELP;
			continue;
		}
		if (c == '?' || c == ':')
			return usage_error("unknown option or missing value: %s",
					   argv[optind - 1]);
		if (set_opt(o, c, optarg))
			return usage_error("bad value for --%s: '%s'",
					   opt_name(c), optarg);
		o->seen |= c;
	}
	o->argc = argc - optind;
	o->argv = argv + optind;
	return 0;
}

/* Refuse options the command does not take, rather than ignore them. */
static int check_opts(const struct opts *o, const char *cmd,
		      unsigned int allowed, int min_args, int max_args)
{
	unsigned int extra = o->seen & ~(allowed | OPT_DEV | OPT_RING_FILE);
	int n = o->argc - 1;

	if (extra)
		return usage_error("%s does not take --%s", cmd,
				   opt_name(extra & -extra));
	if (n < min_args || n > max_args)
		return usage_error("%s: wrong number of arguments", cmd);
	if ((o->seen & OPT_DEV) && (o->seen & OPT_RING_FILE))
		return usage_error("--dev and --ring-file exclude each other");
	return 0;
}

/* ------------------------------------------------------------- time */

static double now_s(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double mono_s(void)
{
	return now_s(CLOCK_MONOTONIC);
}

/* Sleep; a signal cuts it short, which is what the stop flag wants. */
static void sleep_s(double s)
{
	struct timespec ts;

	if (s <= 0)
		return;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------- signals */

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
	stop_signal = sig;
}

/*
 * SIGTERM/SIGINT only set a flag: the loops notice it, flush what they
 * have and exit normally.  No SA_RESTART, so a sleep ends at once.
 * SIGPIPE is ignored so a closed stdout is a write error we can report.
 */
static void install_stop_handlers(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* ------------------------------------------------------------- files */

/* Read a whole (small) file; returns 0 or -errno. */
static int read_file(const char *path, void **bufp, size_t *lenp)
{
	struct stat st;
	size_t done = 0;
	void *buf;
	ssize_t n;
	int fd, err = 0;

	*bufp = NULL;
	*lenp = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		err = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode) || st.st_size > KMLCTL_MAX_FILE) {
		err = S_ISREG(st.st_mode) ? -EFBIG : -EINVAL;
		goto out;
	}
	buf = malloc(st.st_size ? st.st_size : 1);
	if (!buf) {
		err = -ENOMEM;
		goto out;
	}
	while (done < (size_t)st.st_size) {
		n = read(fd, (char *)buf + done, st.st_size - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n ? -errno : -EIO;
			free(buf);
			goto out;
		}
		done += n;
	}
	*bufp = buf;
	*lenp = done;
out:
	close(fd);
	return err;
}

/* Write a file via a temporary name, so readers never see half of it. */
static int write_file_atomic(const char *path, const void *buf, size_t len)
{
	char tmp[4096];
	FILE *f;
	int err = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp%d", path, (int)getpid()) >=
	    (int)sizeof(tmp))
		return -ENAMETOOLONG;
	f = fopen(tmp, "wb");
	if (!f)
		return -errno;
	if (fwrite(buf, 1, len, f) != len)
		err = -errno ? -errno : -EIO;
	if (fclose(f) && !err)
		err = -errno;
	if (!err && rename(tmp, path))
		err = -errno;
	if (err)
		unlink(tmp);
	return err;
}

/* ------------------------------------------------------------- device */

/*
 * Open the KML device.  It must be a character device: a regular file
 * would happily take a model's bytes (and an ioctl on it says ENOTTY
 * only after we wrote), so refuse anything else up front.
 */
static int open_dev(const struct opts *o, int *fdp)
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

static int dev_info(int fd, struct kml_dev_info *info)
{
	memset(info, 0, sizeof(*info));
	if (ioctl(fd, KML_IOC_INFO, info))
		return -errno;
	return 0;
}

/* write() all of @buf in chunks; returns 0 or -errno of the failed write. */
static int write_chunks(int fd, const void *buf, size_t len, size_t chunk,
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
static int publish_model(int fd, const void *buf, size_t len, bool *at_write)
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

struct ring_src {
	int fd;
	void *mem;
	size_t bytes;
	struct kml_ring ring;
	struct kml_dev_info info;	/* from the device, or from the file */
};

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
static int open_ring(const struct opts *o, struct ring_src *rs)
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

static void close_ring(struct ring_src *rs)
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

static int cmd_info(const struct opts *o)
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

static int cmd_load(const struct opts *o)
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
		return fail(-ret, "%s refused the model (%s)", o->dev,
			    at_write ? "write" : "KML_IOC_COMMIT");
	}
	if (dev_info(fd, &info) == 0)
		printf("loaded %zu bytes, model_generation %llu\n", len,
		       (unsigned long long)info.model_generation);
	close(fd);
	return 0;
}

static int cmd_unload(const struct opts *o)
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

/* ------------------------------------------------------------- trace */

static int write_trace_hdr(FILE *out, const struct kml_dev_info *info)
{
	struct kml_trace_hdr h;

	memset(&h, 0, sizeof(h));
	memcpy(h.magic, KML_TRACE_MAGIC, sizeof(h.magic));
	h.abi_version = info->abi_version;
	h.record_size = sizeof(struct kml_dd_sample);
	h.n_features = info->n_features;
	return fwrite(&h, sizeof(h), 1, out) == 1 ? 0 : -EIO;
}

/*
 * Pop records into @out until a limit or a stop signal.  When the ring is
 * empty: flush (so the file is current while the ring is idle), check the
 * limits, sleep 1 ms.  The clock is read every 256 records otherwise.
 */
static int trace_loop(const struct opts *o, struct ring_src *rs, FILE *out,
		      unsigned long long *np)
{
	double end = o->seconds > 0 ? mono_s() + o->seconds : 0;
	unsigned long long n = 0;
	struct kml_dd_sample s;
	int ret = 0;

	while (!stop_signal && !(o->max && n >= o->max)) {
		ret = kml_ring_pop(&rs->ring, &s);
		if (ret == -EAGAIN) {
			ret = 0;
			if (fflush(out))
				break;
			if (end && mono_s() >= end)
				break;
			sleep_s(0.001);
			continue;
		}
		if (ret)
			break;
		if (fwrite(&s, sizeof(s), 1, out) != 1)
			break;
		n++;
		if (end && !(n & 255) && mono_s() >= end)
			break;
	}
	*np = n;
	if (ret)
		return fail(-ret, "ring pop");
	if (fflush(out) || ferror(out))
		return fail(errno ? errno : EIO, "writing the trace");
	return 0;
}

static int cmd_trace(const struct opts *o)
{
	const char *path;
	unsigned long long n = 0;
	struct ring_src rs;
	FILE *out, *report;
	int ret;

	if (check_opts(o, "trace", OPT_SECONDS | OPT_MAX, 1, 1))
		return 2;
	path = o->argv[1];
	install_stop_handlers();
	if (open_ring(o, &rs)) {
		close_ring(&rs);
		return 1;
	}
	out = strcmp(path, "-") ? fopen(path, "wb") : stdout;
	if (!out) {
		ret = fail(errno, "open %s", path);
		close_ring(&rs);
		return ret;
	}
	setvbuf(out, NULL, _IOFBF, 1 << 16);
	ret = write_trace_hdr(out, &rs.info) ? fail(EIO, "writing %s", path) :
	      trace_loop(o, &rs, out, &n);
	if (out != stdout && fclose(out) && !ret)
		ret = fail(errno, "close %s", path);
	close_ring(&rs);
	/* the summary must not mix with trace rows on stdout */
	report = out == stdout ? stderr : stdout;
	fprintf(report, "records %llu\n", n);
	fprintf(report, "stopped_by %s\n", stop_signal ? strsignal(stop_signal) :
		(o->max && n >= o->max) ? "max" : ret ? "error" : "seconds");
	return ret;
}

/* ------------------------------------------------------------- train */
/*
 * Shared user-kernel mode: the kernel pushes one sample per completed
 * request into the ring, we train and publish models back.  Two threads:
 *
 *   consumer  pops the ring (1 ms sleeps when empty) into a bounded FIFO;
 *             in drop mode it discards (and counts) what the trainer could
 *             not take: FIFO full, over the rate cap, or the trainer is
 *             sleeping for its CPU cap.  In block mode it stops popping
 *             while the FIFO is full, so back-pressure reaches the kernel
 *             ring (whose own ring_mode then decides).
 *   trainer   takes mini-batches from the FIFO; for each it first predicts
 *             (prequential evaluation: the curve scores data the model has
 *             not trained on yet), then updates the normalisation and
 *             takes one Adam step; publishes every --publish-every samples.
 *
 * One trainer thread: KML training calls need a single caller, and a
 * n-16-1 MLP step on 32 rows takes microseconds, far below the ring rate
 * a guest disk produces.
 */

#define TRAIN_POP_CHUNK		64	/* records popped per lock round */
#define TRAIN_BATCH_WAIT_S	0.05	/* train a partial batch after this */
#define TRAIN_STOP_GRACE_S	1.0	/* draining after --seconds/a signal */
#define TRAIN_MAX_REFUSAL_MSGS	5

/* Token bucket for --rate: @rate tokens/s, at most @burst banked. */
struct bucket {
	double rate, burst, tokens, last;
};

static void bucket_init(struct bucket *b, double rate, double burst)
{
	b->rate = rate;
	b->burst = burst;
	b->tokens = burst;
	b->last = mono_s();
}

static void bucket_refill(struct bucket *b)
{
	double now = mono_s();

	b->tokens += (now - b->last) * b->rate;
	if (b->tokens > b->burst)
		b->tokens = b->burst;
	b->last = now;
}

/* Take @n tokens if there are; rate 0 means no cap. */
static bool bucket_take(struct bucket *b, double n)
{
	if (!b->rate)
		return true;
	bucket_refill(b);
	if (b->tokens < n)
		return false;
	b->tokens -= n;
	return true;
}

/* Seconds until @n tokens are there. */
static double bucket_wait_s(struct bucket *b, double n)
{
	if (!b->rate)
		return 0;
	bucket_refill(b);
	return b->tokens >= n ? 0 : (n - b->tokens) / b->rate;
}

/* Prequential scores over a window of samples. */
struct scores {
	u64 n, correct, pos, tp, neg, tn;
	double abs_err_us;
};

static void scores_add(struct scores *sc, bool met, bool pred_met,
		       double err_us)
{
	sc->n++;
	sc->correct += met == pred_met;
	sc->pos += met;
	sc->tp += met && pred_met;
	sc->neg += !met;
	sc->tn += !met && !pred_met;
	sc->abs_err_us += err_us;
}

static double scores_accuracy(const struct scores *sc)
{
	return sc->n ? (double)sc->correct / sc->n : 0;
}

/* Mean recall of the classes present (= accuracy if only one is). */
static double scores_balanced(const struct scores *sc)
{
	double sum = 0;
	int k = 0;

	if (sc->pos) {
		sum += (double)sc->tp / sc->pos;
		k++;
	}
	if (sc->neg) {
		sum += (double)sc->tn / sc->neg;
		k++;
	}
	return k ? sum / k : 0;
}

static double scores_mae(const struct scores *sc)
{
	return sc->n ? sc->abs_err_us / sc->n : 0;
}

/*
 * Decision calibration.  The model predicts lg(issue us); the kernel says
 * "meet" when the predicted issue time is at most deadline * permille /
 * 1000 (/sys/module/kml/parameters/decision_permille).  Regression to the
 * mean pulls predictions toward the majority class, so the deadline itself
 * is rarely the best threshold.  We keep the last CALIB_WINDOW prequential
 * residuals r = yhat - lg(deadline us) and, at each publish, pick the
 * threshold (within a factor of 8 of the deadline) that maximises the mean
 * of accuracy and balanced accuracy: the two figures we report, one
 * rewarding the majority class and one the minority.  Balanced accuracy
 * alone would give up a lot of accuracy on a rare "miss" class for little
 * (replaying a TCG trace: 0.82 / 0.87 against 0.87 / 0.84).  The model
 * itself stays unbiased.
 */
#define CALIB_WINDOW	2048
#define CALIB_MIN_CLASS	32
#define CALIB_MAX_LG	3.0	/* at most a factor 8 either way */

struct calib {
	float r[CALIB_WINDOW];
	u8 met[CALIB_WINDOW];
	u32 n, pos;
	double permille;	/* in use by the kernel (as far as we know) */
	u64 writes_failed;
};

static void calib_add(struct calib *c, float r, bool met)
{
	c->r[c->pos] = r;
	c->met[c->pos] = met;
	c->pos = (c->pos + 1) % CALIB_WINDOW;
	if (c->n < CALIB_WINDOW)
		c->n++;
}

static const struct calib *calib_sort_ctx;

static int calib_cmp(const void *a, const void *b)
{
	float ra = calib_sort_ctx->r[*(const u32 *)a];
	float rb = calib_sort_ctx->r[*(const u32 *)b];

	return ra < rb ? -1 : ra > rb;
}

/*
 * Best threshold on r: predict meet when r <= thr.  Returns the permille
 * 1000 * 2^thr, or the current one when a class has too few samples.
 */
static double calib_fit(struct calib *c)
{
	u32 idx[CALIB_WINDOW], i, n_met = 0, n_miss, met_below = 0, right;
	double best = -1, thr = 0, score, lo, hi, cand;

	for (i = 0; i < c->n; i++)
		n_met += c->met[i];
	n_miss = c->n - n_met;
	if (n_met < CALIB_MIN_CLASS || n_miss < CALIB_MIN_CLASS)
		return c->permille;
	for (i = 0; i < c->n; i++)
		idx[i] = i;
	calib_sort_ctx = c;
	qsort(idx, c->n, sizeof(idx[0]), calib_cmp);
	/* split after i sorted residuals: the first i are predicted "meet" */
	for (i = 0; i <= c->n; i++) {
		if (i > 0)
			met_below += c->met[idx[i - 1]];
		lo = i > 0 ? c->r[idx[i - 1]] : -CALIB_MAX_LG;
		hi = i < c->n ? c->r[idx[i]] : CALIB_MAX_LG;
		if (i > 0 && i < c->n && lo == hi)
			continue;
		cand = fmin(fmax((lo + hi) / 2, -CALIB_MAX_LG), CALIB_MAX_LG);
		right = met_below + (n_miss - (i - met_below));
		score = ((double)right / c->n +
			 ((double)met_below / n_met +
			  (double)(n_miss - (i - met_below)) / n_miss) / 2) / 2;
		/* ties: the threshold closest to the deadline itself */
		if (score > best + 1e-9 ||
		    (score > best - 1e-9 && fabs(cand) < fabs(thr))) {
			best = score;
			thr = cand;
		}
	}
	return fmin(fmax(1000.0 * exp2(thr), 1), 64000);
}

/* Tell the kernel; failures are counted (an older kernel, no sysfs). */
static void calib_apply(struct calib *c, double permille, bool to_dev)
{
	FILE *f;

	c->permille = permille;
	if (!to_dev)
		return;
	f = fopen("/sys/module/kml/parameters/decision_permille", "w");
	if (!f || fprintf(f, "%.0f\n", permille) < 0 || fclose(f)) {
		c->writes_failed++;
		if (f)
			fclose(f);
	}
}

struct trainer {
	const struct opts *o;
	struct ring_src rs;
	u32 n_features;
	bool to_dev;			/* publish to the device (not --ring-file) */

	/* FIFO between the threads, under @lock */
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* samples arrived, or the consumer ended */
	struct kml_dd_sample *fifo;
	size_t fifo_cap, fifo_head, fifo_count;
	bool consumer_done;		/* no more samples will come */
	bool stop_now;			/* --seconds or a signal: drain briefly */
	double stop_at;
	int consumer_err;
	u64 consumed;			/* popped from the ring */
	u64 dropped;			/* popped and discarded (drop mode) */

	/* consumer-only */
	struct bucket admit;		/* drop mode --rate */
	/* written by the trainer, read by the consumer */
	volatile bool throttled;	/* sleeping for the CPU cap */

	/* trainer-only */
	struct kml_model *m;
	struct bucket pace;		/* block mode --rate */
	float *x, *y, *yhat;
	struct kml_dd_sample *batch;
	struct scores window, total;
	struct calib cal;
	u64 trained, steps, published, refused, unprocessed;
	u64 last_published_at;
	FILE *curve;
	double cpu_wall0, cpu0;		/* CPU-cap window */
	double cap_sleep;		/* seconds slept for the CPU cap */
	double trainer_cpu;		/* thread CPU seconds at exit */
	int trainer_err;
	const char *stopped_by;
};

/* ---- consumer thread */

static void fifo_put(struct trainer *t, const struct kml_dd_sample *s)
{
	size_t i = (t->fifo_head + t->fifo_count) % t->fifo_cap;

	t->fifo[i] = *s;
	t->fifo_count++;
}

/* Decide, under the lock, whether one popped sample is kept. */
static void consumer_admit(struct trainer *t, const struct kml_dd_sample *s)
{
	if (t->o->drop && (t->fifo_count == t->fifo_cap || t->throttled ||
			   !bucket_take(&t->admit, 1))) {
		t->dropped++;
		return;
	}
	fifo_put(t, s);		/* block mode popped only what fits */
}

/* How many records to pop now: the limit, and the free room in block mode. */
static size_t consumer_want(struct trainer *t)
{
	size_t want = TRAIN_POP_CHUNK;
	u64 left;

	if (t->o->max_samples) {
		left = t->o->max_samples - t->consumed;
		if (left < want)
			want = left;
	}
	if (!t->o->drop) {
		pthread_mutex_lock(&t->lock);
		if (t->fifo_cap - t->fifo_count < want)
			want = t->fifo_cap - t->fifo_count;
		pthread_mutex_unlock(&t->lock);
	}
	return want;
}

/* Returns true when the consumer should stop for time or a signal. */
static bool consumer_stop_requested(struct trainer *t, double end)
{
	if (stop_signal) {
		t->stopped_by = strsignal(stop_signal);
		return true;
	}
	if (end && mono_s() >= end) {
		t->stopped_by = "seconds";
		return true;
	}
	return false;
}

static void *consumer_main(void *arg)
{
	struct trainer *t = arg;
	double end = t->o->seconds > 0 ? mono_s() + t->o->seconds : 0;
	struct kml_dd_sample recs[TRAIN_POP_CHUNK];
	bool stop_now = false;
	size_t want, n, i;
	int ret = 0;

	for (;;) {
		if (consumer_stop_requested(t, end)) {
			stop_now = true;
			break;
		}
		if (t->o->max_samples && t->consumed >= t->o->max_samples) {
			t->stopped_by = "max-samples";
			break;
		}
		want = consumer_want(t);
		for (n = 0; n < want; n++) {
			ret = kml_ring_pop(&t->rs.ring, &recs[n]);
			if (ret)
				break;
		}
		if (n) {
			pthread_mutex_lock(&t->lock);
			for (i = 0; i < n; i++)
				consumer_admit(t, &recs[i]);
			t->consumed += n;
			pthread_cond_signal(&t->cond);
			pthread_mutex_unlock(&t->lock);
		}
		if (ret && ret != -EAGAIN)
			break;		/* -EIO: the shared ring is corrupt */
		ret = 0;
		if (!n)
			sleep_s(0.001);	/* empty ring, or a full FIFO */
	}
	pthread_mutex_lock(&t->lock);
	t->consumer_done = true;
	t->consumer_err = ret;
	if (ret)
		t->stopped_by = "error";
	t->stop_now = stop_now;
	t->stop_at = mono_s();
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

/* ---- model */

static s64 to_q32(double v)
{
	return (s64)llround(v * 4294967296.0);
}

static int model_new(const struct opts *o, u32 n_in, struct kml_model **m)
{
	struct kml_model_cfg cfg;

	memset(&cfg, 0, sizeof(cfg));
	cfg.dtype = KML_F32;
	cfg.norm = KML_NORM_STANDARD;
	cfg.seed = o->seed;
	cfg.sizes[0] = n_in;
	if (o->linear) {
		cfg.arch = KML_ARCH_LINEAR;
		cfg.n_layers = 1;
		cfg.sizes[1] = 1;
	} else {
		cfg.arch = KML_ARCH_MLP;
		cfg.n_layers = 2;
		cfg.sizes[1] = 16;
		cfg.sizes[2] = 1;
		cfg.hidden_act = KML_ACT_RELU;
	}
	return kml_model_create(&cfg, m);
}

/* --warm: continue from a saved model, which must fit the samples. */
static int model_warm(const char *path, u32 n_in, struct kml_model **m)
{
	struct kml_model_cfg cfg;
	size_t len;
	void *buf;
	int ret;

	ret = read_file(path, &buf, &len);
	if (ret)
		return fail(-ret, "read %s", path);
	ret = kml_model_load(buf, len, m);
	free(buf);
	if (ret)
		return fail(-ret, "%s: not a valid model", path);
	kml_model_get_cfg(*m, &cfg);
	if (cfg.dtype != KML_F32)
		return fail(EINVAL, "%s: kmlctl trains float32 models only", path);
	if (cfg.sizes[0] != n_in || cfg.sizes[cfg.n_layers] != 1)
		return fail(EPROTO, "%s: %u inputs and %u outputs, the samples "
			    "need %u and 1", path, cfg.sizes[0],
			    cfg.sizes[cfg.n_layers], n_in);
	return 0;
}

static int trainer_setup(struct trainer *t)
{
	const struct opts *o = t->o;
	struct kml_train_cfg tc;
	int ret;

	if (o->warm) {
		if (model_warm(o->warm, t->n_features, &t->m))
			return 1;
	} else {
		ret = model_new(o, t->n_features, &t->m);
		if (ret)
			return fail(-ret, "kml_model_create");
	}
	memset(&tc, 0, sizeof(tc));
	tc.optimizer = KML_OPT_ADAM;
	tc.loss = KML_LOSS_MSE;
	tc.max_batch = o->batch;
	tc.lr = to_q32(o->lr);
	ret = kml_model_train_setup(t->m, &tc);
	if (ret)
		return fail(-ret, "kml_model_train_setup");
	t->x = calloc((size_t)o->batch * t->n_features, sizeof(float));
	t->y = calloc(o->batch, sizeof(float));
	t->yhat = calloc(o->batch, sizeof(float));
	t->batch = calloc(o->batch, sizeof(*t->batch));
	if (!t->x || !t->y || !t->yhat || !t->batch)
		return fail(ENOMEM, "trainer buffers");
	return 0;
}

/* The model's view of a sample: Q16.16 features as float, lg(issue us). */
static void sample_row(const struct kml_dd_sample *s, u32 nf, float *x,
		       float *y)
{
	u32 i;

	for (i = 0; i < nf; i++)
		x[i] = s->features[i] / 65536.0f;
	*y = (float)log2(1.0 + s->issue_ns / 1000.0);
}

/* Score the predictions of a batch the model has not trained on yet. */
static void score_batch(struct trainer *t, u32 n)
{
	const struct kml_dd_sample *s;
	double pred_us, actual_us;
	bool met, pred_met;
	u32 i;

	for (i = 0; i < n; i++) {
		s = &t->batch[i];
		pred_us = exp2(t->yhat[i]) - 1.0;
		if (!(pred_us >= 0))
			pred_us = 0;	/* NaN or below zero: say "now" */
		actual_us = s->issue_ns / 1000.0;
		met = s->issue_ns <= s->deadline_ns;
		pred_met = pred_us * 1000.0 <=
			   (double)s->deadline_ns * t->cal.permille / 1000.0;
		calib_add(&t->cal, t->yhat[i] -
			  (float)log2(1.0 + s->deadline_ns / 1000.0), met);
		scores_add(&t->window, met, pred_met, fabs(pred_us - actual_us));
		scores_add(&t->total, met, pred_met, fabs(pred_us - actual_us));
	}
}

/*
 * A fresh model starts with its output bias at the mean target of the
 * first batch.  Targets are lg(issue us), around 5..12: from a zero bias,
 * Adam at lr 0.01 needs about a thousand steps just to walk the bias
 * there (a linear model's error is huge all that time); this makes the
 * first curve windows about the features instead.  The bias is the last
 * parameter (per layer W then b, one output).
 */
static void init_output_bias(struct trainer *t, u32 n)
{
	float *params = kml_model_params(t->m);
	double sum = 0;
	u32 i;

	for (i = 0; i < n; i++)
		sum += t->y[i];
	params[kml_model_n_params(t->m) - 1] = (float)(sum / n);
}

static int train_batch(struct trainer *t, u32 n)
{
	float loss;
	u32 i, nf = t->n_features;
	int ret;

	for (i = 0; i < n; i++)
		sample_row(&t->batch[i], nf, t->x + (size_t)i * nf, &t->y[i]);
	ret = kml_model_predict(t->m, t->x, n, t->yhat);
	if (ret)
		return ret;
	score_batch(t, n);
	if (!t->steps && !t->o->warm)
		init_output_bias(t, n);
	ret = kml_model_norm_update(t->m, t->x, n);
	if (ret)
		return ret;
	ret = kml_model_train_batch(t->m, t->x, t->y, n, &loss);
	if (ret)
		return ret;
	t->trained += n;
	t->steps++;
	return 0;
}

/* ---- curve, publishing, caps */

static void curve_line(struct trainer *t)
{
	u64 consumed;

	if (!t->curve || !t->window.n)
		return;
	pthread_mutex_lock(&t->lock);
	consumed = t->consumed;
	pthread_mutex_unlock(&t->lock);
	fprintf(t->curve, "{\"samples_seen\": %llu, \"samples_consumed\": %llu, "
		"\"accuracy\": %.6f, \"balanced_accuracy\": %.6f, "
		"\"mae_us\": %.3f, \"n\": %llu, \"decision_permille\": %.0f}\n",
		(unsigned long long)t->trained, (unsigned long long)consumed,
		scores_accuracy(&t->window), scores_balanced(&t->window),
		scores_mae(&t->window), (unsigned long long)t->window.n,
		t->cal.permille);
	memset(&t->window, 0, sizeof(t->window));
}

/* Serialise the model; the caller frees. */
static int model_bytes(struct kml_model *m, void **bufp, size_t *lenp)
{
	size_t len = kml_model_file_size(m);
	void *buf = malloc(len);
	long ret;

	*bufp = NULL;
	*lenp = 0;
	if (!buf)
		return -ENOMEM;
	ret = kml_model_save(m, buf, len);
	if (ret < 0) {
		free(buf);
		return (int)ret;
	}
	*bufp = buf;
	*lenp = (size_t)ret;
	return 0;
}

/*
 * Publish the current weights: to the device (write + commit; a refusal
 * is counted, not fatal: the kernel keeps the previous model), or with
 * --ring-file to --publish-file, or nowhere.
 */
static void publish(struct trainer *t)
{
	bool at_write;
	size_t len;
	void *buf;
	int ret;

	calib_apply(&t->cal, calib_fit(&t->cal), t->to_dev);
	if (!t->to_dev && !t->o->publish_file)
		return;
	ret = model_bytes(t->m, &buf, &len);
	if (!ret) {
		if (t->to_dev)
			ret = publish_model(t->rs.fd, buf, len, &at_write);
		else
			ret = write_file_atomic(t->o->publish_file, buf, len);
		free(buf);
	}
	t->last_published_at = t->trained;
	if (!ret) {
		t->published++;
		return;
	}
	if (t->refused++ < TRAIN_MAX_REFUSAL_MSGS)
		fail(-ret, "publishing after %llu samples refused",
		     (unsigned long long)t->trained);
}

/*
 * --cpu-pct: keep CPU time / wall time of the process (trainer and
 * consumer: both are the cost of training) under the cap, per window of
 * at most a second, by sleeping.  The consumer drops meanwhile in drop
 * mode.  The next window starts where the sleep paid the debt off, with
 * the CPU reading taken before it: what the consumer burns while we sleep
 * is charged to that next window.  Sleeps come in slices so a stop is
 * noticed.
 */
static void cpu_pace(struct trainer *t)
{
	double now, cpu_now, need, left;

	if (!t->o->cpu_pct)
		return;
	now = mono_s();
	cpu_now = now_s(CLOCK_PROCESS_CPUTIME_ID);
	need = (cpu_now - t->cpu0) * 100.0 / t->o->cpu_pct -
	       (now - t->cpu_wall0);
	if (need >= 0.002) {
		t->throttled = true;
		t->cap_sleep += need;
		for (left = need; left > 0 && !stop_signal; left -= 0.05)
			sleep_s(left < 0.05 ? left : 0.05);
		t->throttled = false;
		t->cpu_wall0 = now + need;
		t->cpu0 = cpu_now;
	} else if (now - t->cpu_wall0 >= 1.0) {
		t->cpu_wall0 = now;	/* no credit banked beyond a second */
		t->cpu0 = cpu_now;
	}
}

/* Block mode --rate: sleep until the bucket holds a batch's tokens. */
static void rate_pace(struct trainer *t, u32 n)
{
	double wait;

	if (t->o->drop)
		return;
	while ((wait = bucket_wait_s(&t->pace, n)) > 0 && !stop_signal)
		sleep_s(wait < 0.05 ? wait : 0.05);
	bucket_take(&t->pace, n);
}

/* ---- trainer thread */

/*
 * Wait for a batch and copy it out of the FIFO.  Returns the number of
 * samples, 0 when there is nothing more to train on.
 */
static u32 take_batch(struct trainer *t)
{
	struct timespec until;
	u32 n = 0;
	double wait_end = mono_s() + TRAIN_BATCH_WAIT_S;

	pthread_mutex_lock(&t->lock);
	while (t->fifo_count < t->o->batch && !t->consumer_done &&
	       mono_s() < wait_end) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 10 * 1000 * 1000;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&t->cond, &t->lock, &until);
	}
	if (t->stop_now && mono_s() > t->stop_at + TRAIN_STOP_GRACE_S)
		goto out;	/* leftovers are counted as unprocessed */
	while (n < t->o->batch && t->fifo_count) {
		t->batch[n++] = t->fifo[t->fifo_head];
		t->fifo_head = (t->fifo_head + 1) % t->fifo_cap;
		t->fifo_count--;
	}
out:
	pthread_mutex_unlock(&t->lock);
	return n;
}

static bool trainer_finished(struct trainer *t)
{
	bool done;

	pthread_mutex_lock(&t->lock);
	done = t->consumer_done && (!t->fifo_count || (t->stop_now &&
		mono_s() > t->stop_at + TRAIN_STOP_GRACE_S));
	pthread_mutex_unlock(&t->lock);
	return done;
}

static void *trainer_main(void *arg)
{
	struct trainer *t = arg;
	u32 n;
	int ret;

	t->cpu_wall0 = mono_s();
	t->cpu0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
	while (!trainer_finished(t)) {
		n = take_batch(t);
		if (!n)
			continue;
		rate_pace(t, n);
		ret = train_batch(t, n);
		if (ret) {
			t->trainer_err = ret;
			fail(-ret, "training step");
			break;
		}
		if (t->window.n >= t->o->curve_every)
			curve_line(t);
		if (t->o->publish_every &&
		    t->trained - t->last_published_at >= t->o->publish_every)
			publish(t);
		cpu_pace(t);
	}
	curve_line(t);		/* the partial last window, "n" says how big */
	if (t->o->publish_every && t->trained > t->last_published_at)
		publish(t);
	t->trainer_cpu = now_s(CLOCK_THREAD_CPUTIME_ID);
	return NULL;
}

/* ---- command */

static int train_open(struct trainer *t, const struct opts *o)
{
	memset(t, 0, sizeof(*t));
	t->o = o;
	t->rs.fd = -1;
	t->rs.mem = MAP_FAILED;
	t->stopped_by = "error";
	if (o->threads != 1)
		return fail(EINVAL, "--threads: one trainer thread is "
			    "implemented (KML training calls need one caller)");
	if (o->publish_file && !o->ring_file)
		return fail(EINVAL, "--publish-file is for --ring-file runs; "
			    "with the device, models are published to it");
	if (open_ring(o, &t->rs))
		return 1;
	t->to_dev = !o->ring_file;
	t->cal.permille = 1000;
	t->n_features = t->rs.info.n_features;
	if (!t->n_features || t->n_features > KML_DD_MAX_FEATURES ||
	    t->n_features > KML_MAX_WIDTH)
		return fail(EPROTO, "device reports %u features",
			    t->n_features);
	t->fifo_cap = o->buffer;
	t->fifo = calloc(t->fifo_cap, sizeof(*t->fifo));
	if (!t->fifo)
		return fail(ENOMEM, "sample buffer");
	if (o->curve) {
		t->curve = fopen(o->curve, "w");
		if (!t->curve)
			return fail(errno, "open %s", o->curve);
		setvbuf(t->curve, NULL, _IOLBF, 0);
	}
	/* drop mode admits a tenth of a second's worth in a burst */
	bucket_init(&t->admit, o->rate, fmax(o->batch, o->rate / 10));
	bucket_init(&t->pace, o->rate, fmax(o->batch, o->rate / 10));
	pthread_mutex_init(&t->lock, NULL);
	pthread_cond_init(&t->cond, NULL);
	return trainer_setup(t);
}

static int train_save(struct trainer *t)
{
	size_t len;
	void *buf;
	int ret;

	if (!t->o->save)
		return 0;
	ret = model_bytes(t->m, &buf, &len);
	if (!ret) {
		ret = write_file_atomic(t->o->save, buf, len);
		free(buf);
	}
	return ret ? fail(-ret, "save %s", t->o->save) : 0;
}

/* @wall and @cpu: seconds since the threads started (setup not counted). */
static void train_summary(struct trainer *t, double wall, double cpu)
{
	printf("samples %llu\n", (unsigned long long)t->trained);
	printf("consumed %llu\n", (unsigned long long)t->consumed);
	printf("dropped_by_trainer %llu\n", (unsigned long long)t->dropped);
	printf("unprocessed %llu\n", (unsigned long long)t->unprocessed);
	printf("steps %llu\n", (unsigned long long)t->steps);
	printf("published %llu\n", (unsigned long long)t->published);
	printf("refused %llu\n", (unsigned long long)t->refused);
	printf("accuracy %.6f\n", scores_accuracy(&t->total));
	printf("balanced_accuracy %.6f\n", scores_balanced(&t->total));
	printf("mae_us %.3f\n", scores_mae(&t->total));
	printf("decision_permille %.0f\n", t->cal.permille);
	printf("decision_writes_failed %llu\n",
	       (unsigned long long)t->cal.writes_failed);
	printf("seconds %.3f\n", wall);
	printf("cpu_pct %.2f\n", wall > 0 ? 100.0 * cpu / wall : 0);
	printf("trainer_cpu_pct %.2f\n",
	       wall > 0 ? 100.0 * t->trainer_cpu / wall : 0);
	printf("cpu_cap_sleep_s %.3f\n", t->cap_sleep);
	printf("stopped_by %s\n", t->stopped_by);
}

static void train_close(struct trainer *t)
{
	if (t->curve)
		fclose(t->curve);
	kml_model_free(t->m);
	free(t->x);
	free(t->y);
	free(t->yhat);
	free(t->batch);
	free(t->fifo);
	close_ring(&t->rs);
}

static int cmd_train(const struct opts *o)
{
	const unsigned int allowed = OPT_SECONDS | OPT_MAX_SAMPLES | OPT_MODE |
		OPT_RATE | OPT_CPU_PCT | OPT_WARM | OPT_ARCH | OPT_SAVE |
		OPT_CURVE | OPT_CURVE_EVERY | OPT_PUBLISH_EVERY |
		OPT_PUBLISH_FILE | OPT_THREADS | OPT_BUFFER | OPT_LR |
		OPT_BATCH | OPT_SEED;
	pthread_t consumer, trainer;
	struct trainer t;
	double t0, cpu0;
	int ret;

	if (check_opts(o, "train", allowed, 0, 0))
		return 2;
	if ((o->seen & OPT_WARM) && (o->seen & OPT_ARCH))
		return usage_error("--warm takes the architecture of the model");
	install_stop_handlers();
	if (train_open(&t, o)) {
		train_close(&t);
		return 1;
	}
	t0 = mono_s();
	cpu0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
	if (pthread_create(&trainer, NULL, trainer_main, &t) ||
	    pthread_create(&consumer, NULL, consumer_main, &t)) {
		/* only at startup, nothing to unwind but the process */
		return fail(EAGAIN, "pthread_create");
	}
	pthread_join(consumer, NULL);
	pthread_join(trainer, NULL);
	t.unprocessed = t.fifo_count;
	ret = t.consumer_err ? fail(-t.consumer_err, "ring pop") : 0;
	ret |= t.trainer_err ? 1 : 0;
	ret |= train_save(&t);
	train_summary(&t, mono_s() - t0,
		      now_s(CLOCK_PROCESS_CPUTIME_ID) - cpu0);
	train_close(&t);
	return ret;
}

/* ------------------------------------------------------------- fault */
/*
 * Malformed input for the kernel's fault-injection tests.  Each kind
 * prints what the kernel answered and exits 0 only if it refused the way
 * docs/kml-iosched.md says.  With --out FILE the model-making kinds write
 * the bad model to FILE instead (host tests check it with KML's loader).
 */

static void put_le32(u8 *p, u32 v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

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
	put_le32(buf + len - 4, kml_crc32(0, buf, len - 4));
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

static int cmd_fault(const struct opts *o)
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

/* ------------------------------------------------------------- main */

struct command {
	const char *name;
	int (*fn)(const struct opts *o);
};

static const struct command commands[] = {
	{ "info", cmd_info },
	{ "load", cmd_load },
	{ "unload", cmd_unload },
	{ "trace", cmd_trace },
	{ "train", cmd_train },
	{ "fault", cmd_fault },
};

int main(int argc, char **argv)
{
	struct opts o;
	size_t i;
	int ret;

	ret = parse_args(argc, argv, &o);
	if (ret)
		return ret;
	if (o.seen & OPT_HELP) {
		fputs(usage_text, stdout);
		return 0;
	}
	if (o.argc < 1)
		return usage_error("no command given");
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(o.argv[0], commands[i].name))
			return commands[i].fn(&o);
	return usage_error("unknown command '%s'", o.argv[0]);
}
