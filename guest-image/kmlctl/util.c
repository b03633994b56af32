// SPDX-License-Identifier: GPL-2.0
/*
 * kmlctl: what every command uses -- error reports with the errno name,
 * clocks and sleeps, the stop signals, and reading and writing whole files.
 */
#include "kmlctl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#define KMLCTL_MAX_FILE		(64U << 20)	/* sanity cap on files we read */

/* ------------------------------------------------------------- errors */

const char *errname(int err)
{
	static __thread char buf[16];
	const char *name = strerrorname_np(err);

	if (name)
		return name;
	snprintf(buf, sizeof(buf), "E%d", err);
	return buf;
}

/* Print "kmlctl: <what>: ENAME (message)"; returns 1 for "return fail()". */
int fail(int err, const char *fmt, ...)
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

/* ------------------------------------------------------------- time */

double now_s(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double mono_s(void)
{
	return now_s(CLOCK_MONOTONIC);
}

/* Sleep; a signal cuts it short, which is what the stop flag wants. */
void sleep_s(double s)
{
	struct timespec ts;

	if (s <= 0)
		return;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------- signals */

volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
	stop_signal = sig;
}

/*
 * SIGTERM/SIGINT only set a flag: the loops notice it, flush what they
 * have and exit normally.  No SA_RESTART, so a sleep ends at once.
 * SIGPIPE is ignored so a closed stdout is a write error we can report.
 */
void install_stop_handlers(void)
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
int read_file(const char *path, void **bufp, size_t *lenp)
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
int write_file_atomic(const char *path, const void *buf, size_t len)
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
