// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl: trace files (docs/trace.md) -- the trace command, which drains
 * the sample ring into one until --seconds, --max or a stop signal, and
 * reading one back (for calibrate).
 */
#include "kmlctl.h"

#include <errno.h>
#include <stdlib.h>
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

/*
 * Read a trace file: its samples (*@sp, which the caller frees) and the
 * header's n_features, as kmlbench.trace reads it: ABI 1 to ours, rows of
 * record_size bytes of which the first sizeof(struct kml_dd_sample) are
 * kept (a newer kernel appends fields), a cut last row dropped.  Returns 0,
 * or 1 after an error message.
 */
int read_trace(const char *path, struct kml_dd_sample **sp, size_t *np,
	       u32 *n_features)
{
	const struct kml_trace_hdr *h;
	struct kml_dd_sample *s;
	size_t len, n, i;
	void *buf;
	int ret;

	*sp = NULL;
	*np = 0;
	ret = read_file(path, &buf, &len);
	if (ret)
		return fail(-ret, "read %s", path);
	h = buf;
	if (len < sizeof(*h) ||
	    memcmp(h->magic, KML_TRACE_MAGIC, sizeof(h->magic))) {
		free(buf);
		return fail(EINVAL, "%s: not a KML trace", path);
	}
	if (!h->abi_version || h->abi_version > KML_DD_ABI_VERSION ||
	    h->record_size < sizeof(*s) || !h->n_features ||
	    h->n_features > KML_DD_MAX_FEATURES) {
		ret = fail(EPROTO, "%s: ABI %u, %u-byte records, %u features",
			   path, h->abi_version, h->record_size,
			   h->n_features);
		free(buf);
		return ret;
	}
	n = (len - sizeof(*h)) / h->record_size;
	s = calloc(n ? n : 1, sizeof(*s));
	if (!s) {
		free(buf);
		return fail(ENOMEM, "%s: %zu samples", path, n);
	}
	for (i = 0; i < n; i++)
		memcpy(&s[i], (const char *)buf + sizeof(*h) +
		       i * h->record_size, sizeof(*s));
	*n_features = h->n_features;
	*sp = s;
	*np = n;
	free(buf);
	return 0;
}
