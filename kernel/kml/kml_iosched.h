/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML for mq-deadline: the hooks block/mq-deadline.c calls.
 *
 * The scheduler embeds a struct kml_dd_queue in its deadline_data and calls
 * kml_dd_insert(), kml_dd_dispatch() and kml_dd_finish() at the three points
 * of a request's life.  Everything else (features, the model, the sample
 * ring, statistics, /dev/kml, the kernel trainer) lives in lib/kml/.
 *
 * With CONFIG_KML_IOSCHED=n every hook is an empty inline.  With kml_mode
 * "off" (the default) on every queue, the static key kml_dd_enabled is
 * false (kml_dd_on()): the insert hook is a nop, mq-deadline dispatches
 * with its copy without KML's hooks, which asks KML nothing, and the
 * completion tests the request's context, which only a queue that was on
 * can have given it.
 */
#ifndef _KML_IOSCHED_H
#define _KML_IOSCHED_H

#include <linux/blk-mq.h>
#include <linux/llist.h>
#include <linux/seq_file.h>
#include <linux/jump_label.h>
#include <linux/percpu.h>
#include "kml_iosched_uapi.h"
#include "kml_dd_feat.h"

enum kml_dd_mode {
	KML_DD_OFF = 0,		/* stock mq-deadline, no KML work */
	KML_DD_OBSERVE = 1,	/* collect and predict, change nothing */
	KML_DD_ACTIVE = 2,	/* predictions steer dispatch */
};

/*
 * What active mode does with the predictions (module parameter "policy",
 * kml_dd_policy).  expire: a FIFO head predicted to miss its deadline is
 * treated as expired (stock mq-deadline's order otherwise).  cost: of the
 * requests next to the head in sector order and the oldest of each
 * direction, the one with the least kml_dd_cost() goes next
 * (kml_dd_cost.c; built with KML_IOSCHED_COST).
 */
enum kml_dd_policy {
	KML_DD_POLICY_EXPIRE = 0,
	KML_DD_POLICY_COST = 1,
};

/* Per-request state, from a pool allocated with the scheduler. */
struct kml_dd_ctx {
	struct llist_node node;		/* free list / returned list */
	/*
	 * The request at its insert (its start, sector, size, direction,
	 * time to its deadline) and what its queue held then: the features'
	 * inputs, written once, in place.
	 */
	struct kml_dd_feat_in in;
	u64 dispatch_ns;		/* 0 while queued */
	u64 pred_issue_ns;
	u32 flags;			/* KML_DD_SAMPLE_* */
	u8 pred_valid;
	u8 pred_met;
	u8 steer;			/* predicted miss, model not aside */
	u8 score;			/* its kml_dd_score_bucket() */
	u8 svc_bucket;			/* policy cost: its seek's, or direction's */
	u8 warmup;			/* tracked, not predicted or counted */
	u8 svc_seq;			/* policy cost: it started at the head */
	u8 lazy;			/* seen taken, features and prediction not */
	u8 met;				/* dispatched within its deadline */
#ifdef CONFIG_KML_IOSCHED_COST
	u32 svc_sectors;		/* policy cost: its length at dispatch */
	u64 svc_pos;			/* policy cost: its start at dispatch */
	u64 svc_done_ns;		/* policy cost told a device: predicted end */
#endif
	union {
		s32 features[KML_DD_NR_FEATURES];
		/* active mode, lazily: what they read of the queue's state */
		struct kml_dd_feat_seen seen;
	};
};

/*
 * Policy cost's service-time model: per lg2 of the seek distance in
 * sectors (0 for a request starting where the last one ended), the
 * running mean of the time from a request's dispatch, or the completion
 * before it if later, to its own completion (kml_dd_cost.c).  Given a
 * disk's geometry (the cost_rev_ns, cost_track_sectors and
 * cost_cyl_sectors parameters), per lg2 of the seek distance in cylinders,
 * the seek time alone, and the platter's phase: the service time is then
 * the seek, the turn until the first sector is under the head, and the
 * transfer.  Given a flash device's channels instead (cost_channels and
 * cost_stripe_sectors), buckets 0 and 1 hold a read's and a write's time
 * on its channel, and each channel's queue is predicted.
 */
#define KML_DD_SVC_BUCKETS	48
#define KML_DD_MAX_CHANNELS	16	/* flash channels policy cost is told */
#define KML_DD_SVC_NONE		KML_DD_SVC_BUCKETS	/* no seek measured */

struct kml_dd_queue {
	int mode;			/* enum kml_dd_mode, READ_ONCE() */
	u32 dev;			/* new_encode_dev() of the disk */
	struct request_queue *q;	/* its disk's capacity: a feature's */
	bool zoned;			/* zone write locks: no policy cost (at init) */
	/* under the scheduler lock */
	struct llist_node *free;	/* contexts ready for insert */
	struct kml_dd_feat_state feat;	/* what the features read */
	u32 holdout_seq;		/* steering predicted misses */
	u32 predict_seq;		/* predictions, for KML_DD_TIME_EVERY */
	u32 observe_pos;		/* observe_every: place in its window */
	u32 observe_skip;		/* observe_every: inserts to let pass */
	u32 observe_every;		/* the N observe_skip was counted for */
	/* any context */
	struct llist_head returned;	/* contexts freed at completion */
	atomic_t queued[2];		/* tracked requests in the scheduler */
	atomic_t inflight;		/* tracked requests at the driver */
	struct kml_dd_ctx *pool;
	u32 pool_size;
#ifdef CONFIG_KML_IOSCHED_COST
	/* policy cost: under the scheduler lock */
	sector_t head;			/* sector after the last dispatch */
	/*
	 * head is where the device is: not after kml_dd_svc_forget(), which
	 * clears it without the lock (hence READ_ONCE/WRITE_ONCE)
	 */
	bool head_known;
	/*
	 * Policy cost's table, ns: written at completion, read under the
	 * scheduler lock; a line of its own, away from the mode every hook
	 * reads.
	 */
	u32 svc_ns[KML_DD_SVC_BUCKETS] ____cacheline_aligned_in_smp;
	u64 svc_last_done;		/* the last completion, ns */
	/* a geometry: svc_ns is each bucket's seek's upper bound, this its lower */
	u32 svc_lo_ns[KML_DD_SVC_BUCKETS];
	/* a geometry: when the platter's sector 0 is under the head, mod rev */
	u64 svc_phase_ns;
	bool svc_phase_known;
	/* a geometry: predicted end of the last request dispatched, ns */
	u64 svc_busy_until;
	/*
	 * a geometry: the share of the requests dispatched lately that were
	 * past their deadline, Q16.16 (kml_dd.h, KML_DD_COST_MISSED_SHIFT)
	 */
	u32 svc_missed;
	/* the mean wait, insert to dispatch, ns (KML_DD_COST_WAIT_SHIFT) */
	u64 svc_wait_ns;
	/* the waits in svc_wait_ns, counted up to 2^KML_DD_COST_WAIT_SHIFT */
	u32 svc_wait_n;
	/* kml_dd.svc_gen when this queue last learned afresh */
	unsigned int svc_gen;
	/* flash channels: each one's predicted end and last completion, ns */
	u64 chan_busy_until[KML_DD_MAX_CHANNELS];
	u64 chan_last_done[KML_DD_MAX_CHANNELS];
#endif
};

#ifdef CONFIG_KML_IOSCHED

extern unsigned int kml_dd_policy;	/* enum kml_dd_policy */
extern unsigned int kml_dd_observe_every;	/* observe mode: 1 window in N */
/* the statistic "unobserved", counted in mq-deadline's insert */
DECLARE_PER_CPU(u64, kml_dd_unobserved);
/* some queue's kml_mode is not off (kml_dd_mode_store()) */
DECLARE_STATIC_KEY_FALSE(kml_dd_enabled);

int kml_dd_init(struct kml_dd_queue *kq, struct request_queue *q);
void kml_dd_exit(struct kml_dd_queue *kq);
void __kml_dd_insert(struct kml_dd_queue *kq, struct request *rq,
		     struct request *fifo_head, unsigned long expire,
		     bool same_dir, enum kml_dd_mode mode);
void __kml_dd_dispatch(struct kml_dd_queue *kq, struct request *rq);
void __kml_dd_finish(struct kml_dd_queue *kq, struct request *rq);
void kml_dd_note_urgent(struct request *rq);
void __kml_dd_predict_lazy(struct kml_dd_queue *kq, struct kml_dd_ctx *ctx);
ssize_t kml_dd_mode_show(struct kml_dd_queue *kq, char *page);
ssize_t kml_dd_mode_store(struct kml_dd_queue *kq, const char *page,
			  size_t count);

/*
 * KML's context of @rq, or NULL: dd_prepare_request() clears it, and
 * kml_dd_insert_head() clears what a request mq-deadline never prepared
 * holds there.  Read as it is: it is read several times a request.
 */
static inline struct kml_dd_ctx *kml_dd_ctx(struct request *rq)
{
	return rq->elv.priv[1];
}

/*
 * Called for every request mq-deadline inserts at the head, whatever the
 * key.  In 6.1 a request the scheduler never prepared (no RQF_ELVPRIV: a
 * FUA or PREFLUSH write that bypassed the flush machinery) reaches it only
 * so, requeued without RQF_DONTPREP, and its elv.priv[] shares memory with
 * the flush fields, which may hold a list pointer from the tag's last
 * flush: the dispatch hook would take it for a context and write through
 * it.  Only requeues insert at the head; out of line, so that the common
 * path's code is not moved about by it.
 */
void kml_dd_insert_head(struct request *rq);

/*
 * Whether any queue has kml_mode other than off: with none, a nop.
 * mq-deadline asks it at the insert and for each priority level a
 * dispatch tries, and dispatches with KML's hooks only while it is true.
 */
static __always_inline bool kml_dd_on(void)
{
	return static_branch_unlikely(&kml_dd_enabled);
}

/*
 * Observe mode between two of its windows (observe_every N > 1, kml_dd.h):
 * @rq goes untracked, counted by a countdown and a per-CPU increment, in
 * line, without a call (N - 1 requests in N).  The windows themselves and
 * a pause counted for another N are left to kml_dd_watching(), a request
 * inserted again to kml_dd_reinsert().  Under the scheduler lock.
 */
static __always_inline bool kml_dd_passing(struct kml_dd_queue *kq,
					   struct request *rq)
{
	u32 skip = READ_ONCE(kq->observe_skip);

	if (!skip || kq->observe_every != READ_ONCE(kml_dd_observe_every) ||
	    kml_dd_ctx(rq))
		return false;
	WRITE_ONCE(kq->observe_skip, skip - 1);
	this_cpu_inc(kml_dd_unobserved);
	return true;
}

/* The request ahead of @rq, just added to the tail of @fifo: its first. */
static __always_inline struct request *kml_dd_ahead(struct list_head *fifo,
						    struct request *rq)
{
	struct request *head = list_first_entry(fifo, struct request,
						queuelist);

	return head != rq ? head : NULL;
}

/*
 * Called with the scheduler lock held, just after @rq joined the tail of
 * its FIFO @fifo: last, so that mq-deadline keeps nothing across the call.
 * The request ahead of it is looked up only on the paths that call, as
 * the compiler does not sink an argument's loads below a test; the mode
 * is passed on as read.  A request observe mode lets pass between its
 * windows makes no call (kml_dd_passing()).  @expire is in jiffies.  A
 * request inserted again with a context (no path in 6.1 does) is seen
 * only while the key is on.
 */
static __always_inline void kml_dd_insert(struct kml_dd_queue *kq,
					  struct request *rq,
					  struct list_head *fifo,
					  unsigned long expire, bool same_dir)
{
	enum kml_dd_mode mode;

	if (!kml_dd_on())
		return;
	mode = READ_ONCE(kq->mode);
	if (mode == KML_DD_ACTIVE ||
	    (mode == KML_DD_OBSERVE && !kml_dd_passing(kq, rq)) ||
	    (mode == KML_DD_OFF && kml_dd_ctx(rq)))
		__kml_dd_insert(kq, rq, kml_dd_ahead(fifo, rq), expire,
				same_dir, mode);
}

/*
 * Called with the scheduler lock held, for every request dispatched while
 * kml_dd_on().  One dispatched while it was not (its queue switched off
 * after its insert) is handed back at its completion as never dispatched.
 */
static __always_inline void kml_dd_dispatch(struct kml_dd_queue *kq,
					    struct request *rq)
{
	if (kml_dd_ctx(rq))
		__kml_dd_dispatch(kq, rq);
}

/*
 * Called when the request is freed, from any context, even with the key
 * off: blk-mq finishes only requests with RQF_ELVPRIV to the scheduler,
 * whose elv.priv[1] is NULL or a context.
 */
static __always_inline void kml_dd_finish(struct kml_dd_queue *kq,
					  struct request *rq)
{
	if (kml_dd_ctx(rq))
		__kml_dd_finish(kq, rq);
}

/* Whether @kq is in active mode: mq-deadline's dispatch with KML asks. */
static __always_inline bool kml_dd_active(struct kml_dd_queue *kq)
{
	return READ_ONCE(kq->mode) == KML_DD_ACTIVE;
}

/*
 * True if @rq should be dispatched now, ahead of stock order: only in
 * active mode, for a request the model predicted to miss its deadline
 * while it was not standing aside (its recent skill no better than the
 * baseline's, decided when predicted: see kml_dd_core.c).  @next is the
 * request mq-deadline dispatches if @rq is not urgent (NULL if that is not
 * one request).  A request inserted with the lazy parameter set has no
 * prediction yet: it is made now, from its insert's features, unless @rq
 * is @next.  That one is dispatched next either way; only the batch and
 * starvation counts would differ (an urgent head ends the sorted batch),
 * and lazily they run on as stock mq-deadline's do.
 */
static inline bool kml_dd_urgent(struct kml_dd_queue *kq, struct request *rq,
				 struct request *next)
{
	struct kml_dd_ctx *ctx;

	if (!kml_dd_active(kq) || !rq)
		return false;
	ctx = kml_dd_ctx(rq);
	if (!ctx)
		return false;
	if (unlikely(ctx->lazy)) {
		if (rq == next)
			return false;
		__kml_dd_predict_lazy(kq, ctx);
	}
	return ctx->pred_valid && ctx->steer;
}

#else /* !CONFIG_KML_IOSCHED */

static inline int kml_dd_init(struct kml_dd_queue *kq, struct request_queue *q)
{
	return 0;
}

static inline void kml_dd_exit(struct kml_dd_queue *kq) {}
static inline void kml_dd_insert(struct kml_dd_queue *kq, struct request *rq,
				 struct list_head *fifo,
				 unsigned long expire, bool same_dir) {}
static inline void kml_dd_dispatch(struct kml_dd_queue *kq,
				   struct request *rq) {}
static inline void kml_dd_insert_head(struct request *rq) {}
static inline void kml_dd_finish(struct kml_dd_queue *kq,
				 struct request *rq) {}
static inline bool kml_dd_on(void)
{
	return false;
}

static inline bool kml_dd_active(struct kml_dd_queue *kq)
{
	return false;
}

static inline bool kml_dd_urgent(struct kml_dd_queue *kq, struct request *rq,
				 struct request *next)
{
	return false;
}

static inline void kml_dd_note_urgent(struct request *rq) {}

#endif /* CONFIG_KML_IOSCHED */

/* Policy cost (kml_dd_cost.c), with KML_IOSCHED_COST. */
#ifdef CONFIG_KML_IOSCHED_COST

void kml_dd_svc_show(struct kml_dd_queue *kq, struct seq_file *m);
sector_t kml_dd_head(struct kml_dd_queue *kq);
u64 kml_dd_now(void);
s64 kml_dd_cost(struct kml_dd_queue *kq, struct request *rq, sector_t head,
		u64 now, unsigned long expire);
unsigned int kml_dd_cost_span(bool *by_age, unsigned int in_flight);

/*
 * Whether @kq dispatches by policy cost: the policy, active, and a device
 * without zone write locks.  Inline, as it is asked at every dispatch and
 * completion: the policy first, so that under any other policy, active or
 * not, the question is one load.
 */
static __always_inline bool kml_dd_policy_cost(struct kml_dd_queue *kq)
{
	return READ_ONCE(kml_dd_policy) == KML_DD_POLICY_COST &&
	       kml_dd_active(kq) && !kq->zoned;
}

#else /* !CONFIG_KML_IOSCHED_COST: never, and nothing keeps any of it */

static inline bool kml_dd_policy_cost(struct kml_dd_queue *kq)
{
	return false;
}

static inline void kml_dd_svc_show(struct kml_dd_queue *kq,
				   struct seq_file *m) {}

static inline sector_t kml_dd_head(struct kml_dd_queue *kq)
{
	return 0;
}

static inline u64 kml_dd_now(void)
{
	return 0;
}

static inline s64 kml_dd_cost(struct kml_dd_queue *kq, struct request *rq,
			      sector_t head, u64 now, unsigned long expire)
{
	return 0;
}

static inline unsigned int kml_dd_cost_span(bool *by_age,
					    unsigned int in_flight)
{
	*by_age = false;
	return 1;
}

#endif /* CONFIG_KML_IOSCHED_COST */

#endif /* _KML_IOSCHED_H */
