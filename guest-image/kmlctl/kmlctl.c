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
