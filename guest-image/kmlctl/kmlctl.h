/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kmlctl's one header: what its files share -- the parsed command line,
 * the helpers every command uses, the device and its ring, and the
 * trainer's state.  Include it first (it defines _GNU_SOURCE).
 *
 *   kmlctl.c      the command line: options, usage, dispatch
 *   util.c        error reports, clocks and sleeps, stop signals, files
 *   dev.c         /dev/kml and its sample ring; info, load, unload
 *   trace.c       trace files: the trace command, reading one back
 *   model.c       a fresh or warm-started model, and its bytes
 *   train.c       train: the trainer thread and the command
 *   train_feed.c  train: the consumer thread and the rate cap
 *   calib.c       prequential scores, decision calibration; calibrate
 *   fault.c       fault: malformed input for the kernel's tests
 *   fuzz.c        fuzz: seeded random operations on everything user space reaches
 */
#ifndef KMLCTL_H
#define KMLCTL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>

#include "kml.h"
#include "kml_iosched_uapi.h"
#include "kml_dd_calib.h"

#define KMLCTL_WRITE_CHUNK	4096	/* bytes per write() of a model */

/* KML's files besides /dev/kml (docs/kml-iosched.md) */
#define KML_DEBUGFS_DIR		"/sys/kernel/debug/kml"
#define KML_PARAMS_DIR		"/sys/module/kml/parameters"
#define KML_STATS_FILE		KML_DEBUGFS_DIR "/iosched"

#ifndef ARRAY_SIZE
#define ARRAY_SIZE(a)		(sizeof(a) / sizeof((a)[0]))
#endif

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
	OPT_OPS = 1 << 22,
	OPT_LIST = 1 << 23,
	OPT_PUBLISH_DTYPE = 1 << 24,
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
	bool publish_q16;		/* train --publish-dtype fixed */
	unsigned long long ops;		/* fuzz: operations to run */
	int argc;			/* operands after the subcommand */
	char **argv;
};

/*
 * kmlctl.c: usage_error() prints the message and the usage and returns 2,
 * the exit status of a usage error; check_opts() returns 0, or 2 after a
 * usage message (options the command does not take, operands).
 */
int usage_error(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));
int check_opts(const struct opts *o, const char *cmd, unsigned int allowed,
	       int min_args, int max_args);

/* ------------------------------------------------------------- util.c */

const char *errname(int err);
/* Print "kmlctl: <what>: ENAME (message)"; returns 1 for "return fail()". */
int fail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
double now_s(clockid_t clk);
double mono_s(void);
void sleep_s(double s);
extern volatile sig_atomic_t stop_signal;
void install_stop_handlers(void);
int read_file(const char *path, void **bufp, size_t *lenp);
int write_file_atomic(const char *path, const void *buf, size_t len);

/* ------------------------------------------------------------- dev.c */

struct ring_src {
	int fd;
	void *mem;
	size_t bytes;
	struct kml_ring ring;
	struct kml_dev_info info;	/* from the device, or from the file */
};

int open_dev(const struct opts *o, int *fdp);
int dev_info(int fd, struct kml_dev_info *info);
int write_chunks(int fd, const void *buf, size_t len, size_t chunk,
		 size_t *written);
int publish_model(int fd, const void *buf, size_t len, bool *at_write);
int open_ring(const struct opts *o, struct ring_src *rs);
void close_ring(struct ring_src *rs);

/* ------------------------------------------------------------- model.c */

int model_new(const struct opts *o, u32 n_in, struct kml_model **m);
int model_load_file(const char *path, u32 n_in, const char *who, bool f32_only,
		    struct kml_model **m, struct kml_model_cfg *cfg);
int model_warm(const char *path, u32 n_in, struct kml_model **m);
int model_bytes(struct kml_model *m, void **bufp, size_t *lenp);
void put_le32(u8 *p, u32 v);
/* a model file's CRC made again after an edit */
void model_file_recrc(u8 *buf, size_t len);

/* ------------------------------------------------------------- train */

/* Token bucket for --rate: @rate tokens/s, at most @burst banked. */
struct bucket {
	double rate, burst, tokens, last;
};

void bucket_init(struct bucket *b, double rate, double burst);
bool bucket_take(struct bucket *b, double n);
double bucket_wait_s(struct bucket *b, double n);

/* Prequential scores over a window of samples. */
struct scores {
	u64 n, correct, pos, tp, neg, tn;
	double abs_err_us;
};

void scores_add(struct scores *sc, bool met, bool pred_met, double err_us);
double scores_accuracy(const struct scores *sc);
double scores_balanced(const struct scores *sc);
double scores_mae(const struct scores *sc);

/* The last prequential residuals (a KML window), and the threshold in use. */
struct calib {
	struct kml_dd_cal window;
	u32 permille;		/* in use by the kernel (as far as we know) */
	u64 writes_failed;
	u64 refused;		/* fits that kept the threshold (rare class, no skill) */
	struct kml_dd_cal_result last;	/* of the last fit */
};

u32 calib_fit(struct calib *c);
const char *calib_status(u32 status);
void calib_apply(struct calib *c, u32 permille, bool to_dev);

struct trainer {
	const struct opts *o;
	struct ring_src rs;
	u32 n_features;
	bool to_dev;			/* publish to the device (not --ring-file) */

	/* FIFO between the threads, under @lock */
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* samples arrived, or the consumer ended */
	struct kml_dd_sample *fifo;
	double *fifo_at;		/* mono_s() each sample was put */
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
	struct kml_dd_resid *resid;	/* of the batch, for the scores */
	struct scores window, total;
	struct calib cal;
	u64 trained, steps, published, refused, unprocessed;
	bool publish_q16;		/* publishes converted to Q16.16 */
	u64 last_published_at;
	FILE *curve;
	double cpu_wall0, cpu0;		/* CPU-cap window */
	double cap_sleep;		/* seconds slept for the CPU cap */
	double trainer_cpu;		/* thread CPU seconds at exit */
	int trainer_err;
	const char *stopped_by;
};

/* train_feed.c: the consumer thread's body; @arg is the struct trainer. */
void *consumer_main(void *arg);

/* ------------------------------------------------------------- trace.c */

int read_trace(const char *path, struct kml_dd_sample **sp, size_t *np,
	       u32 *n_features);

/* ------------------------------------------------------------- commands */

int cmd_info(const struct opts *o);
int cmd_load(const struct opts *o);
int cmd_unload(const struct opts *o);
int cmd_trace(const struct opts *o);
int cmd_train(const struct opts *o);
int cmd_fault(const struct opts *o);
int cmd_calibrate(const struct opts *o);
int cmd_fuzz(const struct opts *o);

#endif /* KMLCTL_H */
