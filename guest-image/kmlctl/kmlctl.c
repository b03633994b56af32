// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl: the guest-side tool for KML inside mq-deadline.  This file: the
 * command line -- options, usage, and the dispatch to a command.
 *
 * Talks to /dev/kml (docs/kml-iosched.md, kernel/kml/kml_iosched_uapi.h):
 * reads the device geometry, publishes and removes models, drains the
 * sample ring into a trace file (docs/trace.md), trains a model in user
 * space from the ring ("shared user-kernel mode") and feeds the device the
 * malformed input the kernel's fault-injection tests need; calibrates a
 * model's meet/miss threshold on a trace.  kmlctl.h maps the commands to
 * their files.
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
#include "kmlctl.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define KMLCTL_DEFAULT_DEV	"/dev/kml"

/* ------------------------------------------------------------- options */

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
	{ "publish-dtype", required_argument, NULL, OPT_PUBLISH_DTYPE },
	{ "ops", required_argument, NULL, OPT_OPS },
	{ "list", no_argument, NULL, OPT_LIST },
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
"        [--publish-dtype float32|fixed]\n"
"        [--seconds S] [--max-samples N] [--buffer N] [--lr X]\n"
"        [--batch N] [--seed N] [--threads 1]\n"
"                             train from the ring, publish models\n"
"  fault KIND [--out FILE]    garbage-ioctl nan-model wrong-shape truncated\n"
"                             die-mid-update big-write\n"
"  calibrate MODEL TRACE      decision_permille for MODEL's meet/miss calls,\n"
"                             calibrated on a trace file\n"
"  calibrate                  set decision_permille from the model's\n"
"                             predictions since the statistics' reset\n"
"  fuzz [BLOCKDEV] [--seed N] [--ops N] [--list]\n"
"                             N seeded random operations on /dev/kml, the\n"
"                             ring, KML's sysfs/debugfs files and BLOCKDEV's\n"
"                             queue; --list prints them without running\n"
"\n"
"  --dev PATH        the KML device (default /dev/kml)\n"
"  --ring-file PATH  a file holding a ring in the shared layout instead\n";

int usage_error(const char *fmt, ...)
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
	case OPT_PUBLISH_DTYPE:
		if (strcmp(arg, "float32") && strcmp(arg, "fixed"))
			return -EINVAL;
		o->publish_q16 = !strcmp(arg, "fixed");
		return 0;
	case OPT_OPS:
		return parse_ull(arg, &o->ops);
	case OPT_LIST:
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
	o->ops = 1000;
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
int check_opts(const struct opts *o, const char *cmd, unsigned int allowed,
	       int min_args, int max_args)
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
	{ "calibrate", cmd_calibrate },
	{ "fuzz", cmd_fuzz },
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
	for (i = 0; i < ARRAY_SIZE(commands); i++)
		if (!strcmp(o.argv[0], commands[i].name))
			return commands[i].fn(&o);
	return usage_error("unknown command '%s'", o.argv[0]);
}
