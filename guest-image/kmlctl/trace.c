// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl trace: drain the sample ring into a trace file (docs/trace.md),
 * until --seconds, --max or a stop signal.
 */
#include "kmlctl.h"

#include <errno.h>
#include <string.h>

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

int cmd_trace(const struct opts *o)
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
