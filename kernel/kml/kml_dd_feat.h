/* SPDX-License-Identifier: GPL-2.0 */
/*
 * KML for mq-deadline: a request's features (enum kml_dd_feature), defined
 * once for the kernel's insert hook and for kmlbench trace import, which
 * replays a CSV of requests through the same code in libkml.so.
 *
 * The queue's running state (struct kml_dd_feat_state) changes at two
 * events: kml_dd_feat_insert() computes a request's features from it and
 * from what the caller counts (queued and in-flight requests, the FIFO's
 * oldest request, the batch direction), then notes the insert (in two
 * steps, kml_dd_feat_take() and kml_dd_feat_compute(), for a caller that
 * computes them later);
 * kml_dd_feat_dispatch() updates the averages when a request goes to the
 * driver.  Integer only, no allocation, no locking: the kernel calls both
 * under the scheduler lock (and kml_dd_feat_compute() at a completion too,
 * on a request's own copy).
 */
#ifndef _KML_DD_FEAT_H
#define _KML_DD_FEAT_H

#include "kml.h"
#include "kml_iosched_uapi.h"
#include "kml_dd_calib.h"

/*
 * Every feature is in [0, KML_DD_FEAT_MAX]: the flags and fractions are at
 * most 1.0 (1 << 16), an lg() at most 64 (lg(U64_MAX)).
 */
#define KML_DD_FEAT_MAX		(64 << 16)

/*
 * The largest value feature @i can take: 1.0 for the flags and fractions
 * (the sector is clamped to the capacity; the miss share, a running
 * average of 0 and 1.0 from 0, has 1.0 as its fixed point), KML_DD_FEAT_MAX
 * for an lg().  What a compiled model's hidden unit can reach is bounded
 * with it (kml_dd_fast_compile()).
 */
static inline s32 kml_dd_feat_max(unsigned int i)
{
	switch (i) {
	case KML_DD_F_OP:
	case KML_DD_F_SECTOR:
	case KML_DD_F_SAME_DIR:
	case KML_DD_F_MISS_EWMA:
		return KML_Q16_ONE;
	default:
		return KML_DD_FEAT_MAX;
	}
}

#define KML_DD_SECTOR_SHIFT	9	/* 512-byte sectors */

/* The queue's state the features read; zero at the start. */
struct kml_dd_feat_state {
	u64 last_insert_ns;
	u64 last_dispatch_ns;
	u64 last_end;			/* sector after the last dispatch */
	u64 issue_ewma_ns[2];		/* per direction */
	u64 dispatch_gap_ewma_ns;
	u32 miss_ewma[2];		/* Q16.16 share of misses, per direction */
};

/* A request at insert, and what its queue holds then. */
struct kml_dd_feat_in {
	u64 insert_ns;			/* its start (kml_iosched.c), ns */
	u64 sector;
	u64 capacity;			/* of the disk, sectors; 0 unknown */
	u64 deadline_ns;		/* insert -> deadline */
	u64 head_insert_ns;		/* insert_ns of the FIFO's oldest */
	u32 bytes;
	s32 queued[2];			/* requests queued, per direction */
	s32 inflight;			/* dispatched, not yet completed */
	u8 op;				/* 0 read, 1 write */
	u8 same_dir;			/* the current batch is this direction */
	u8 has_head;			/* head_insert_ns is meaningful */
};

/* @now - @then, or 0 if @then is later (stamps not taken in order). */
static inline u64 kml_dd_since(u64 then, u64 now)
{
	return now > then ? now - then : 0;
}

/*
 * lg(x) = log2(1 + x) in Q16.16, integer only: the exponent from fls64()
 * and the mantissa interpolated linearly (at most 0.086 below log2).
 * With v = x + 1 and n = floor(log2 v), v shifted to 17 bits is 2^16 plus
 * the mantissa, so lg = (n - 1) << 16 plus that: no subtraction of 2^n,
 * and inline, since a request's features take nine of them.
 */
static __always_inline s32 __kml_dd_lg(u64 x)
{
	u64 v = x + 1;
	unsigned int n;

	if (unlikely(v == 0))		/* x == U64_MAX */
		return 64 << 16;
	n = fls64(v) - 1;
	v = n > 16 ? v >> (n - 16) : v << (16 - n);
	return (s32)((((u64)n - 1) << 16) + v);
}

/* The same, out of line, for libkml.so's callers and the KUnit tests. */
KML_API s32 kml_dd_lg(u64 x);

/*
 * What a request's features read of its queue's state (of its own
 * direction where the state keeps one per direction).
 */
struct kml_dd_feat_seen {
	u64 last_insert_ns;
	u64 last_end;
	u64 issue_ewma_ns;
	u64 dispatch_gap_ewma_ns;
	u32 miss_ewma;
};

/*
 * Where the values of struct kml_dd_feat_seen are: in the queue's state
 * (kml_dd_feat_state_src()) or in a request's copy of them.  The features
 * read them by address, so that computing them at insert reads the state
 * where each formula uses it: a copy taken first keeps five values live
 * across the stores to the features (12 instructions more per request).
 */
struct kml_dd_feat_src {
	const u64 *last_insert_ns;
	const u64 *last_end;
	const u64 *issue_ewma_ns;
	const u64 *dispatch_gap_ewma_ns;
	const u32 *miss_ewma;
};

/*
 * What a request of direction @dir sees of @st, where it is.  @dir must be
 * 0 (read) or 1 (write): a struct kml_dd_feat_in's op as the kernel's
 * insert makes it; kml_dd_feat_insert() normalises its caller's.
 */
static __always_inline struct kml_dd_feat_src
kml_dd_feat_state_src(const struct kml_dd_feat_state *st, unsigned int dir)
{
	return (struct kml_dd_feat_src){
		.last_insert_ns = &st->last_insert_ns,
		.last_end = &st->last_end,
		.issue_ewma_ns = &st->issue_ewma_ns[dir],
		.dispatch_gap_ewma_ns = &st->dispatch_gap_ewma_ns,
		.miss_ewma = &st->miss_ewma[dir],
	};
}

/* Into @seen, what a request of direction @op (0 or 1) sees of @st. */
static __always_inline void kml_dd_feat_see(const struct kml_dd_feat_state *st,
					    u8 op, struct kml_dd_feat_seen *seen)
{
	const struct kml_dd_feat_src q = kml_dd_feat_state_src(st, op);

	seen->last_insert_ns = *q.last_insert_ns;
	seen->last_end = *q.last_end;
	seen->issue_ewma_ns = *q.issue_ewma_ns;
	seen->dispatch_gap_ewma_ns = *q.dispatch_gap_ewma_ns;
	seen->miss_ewma = *q.miss_ewma;
}

/*
 * @in is a request at its insert: note into @seen what it sees of the
 * queue's state, so that kml_dd_feat_compute() may run later (active mode
 * predicting lazily, kml_iosched.c) and give what kml_dd_feat_insert()
 * would have at insert; then note the insert.  @in->op must be 0 or 1, as
 * the kernel's insert makes it (it indexes @st's per-direction values).
 * The caller keeps @in where it is, and only the fields the features read
 * are copied: a struct copy is a string move, one counted instruction per
 * four bytes under QEMU's instruction counting.
 */
static inline void kml_dd_feat_take(struct kml_dd_feat_state *st,
				    const struct kml_dd_feat_in *in,
				    struct kml_dd_feat_seen *seen)
{
	kml_dd_feat_see(st, in->op, seen);
	st->last_insert_ns = in->insert_ns;
}

/*
 * The KML_DD_NR_FEATURES features of @in, which saw @seen, into @f, which
 * must overlap neither.
 */
KML_API void kml_dd_feat_compute(const struct kml_dd_feat_in *in,
				 const struct kml_dd_feat_seen *seen, s32 *f);

/* Both: the features of @in into @f; then notes the insert. */
KML_API void kml_dd_feat_insert(struct kml_dd_feat_state *st,
				const struct kml_dd_feat_in *in, s32 *f);

/* New average = 7/8 old + 1/8 sample: follows load changes within ~8 I/Os. */
static inline u64 kml_dd_ewma(u64 avg, u64 sample)
{
	return avg ? avg - (avg >> 3) + (sample >> 3) : sample;
}

/*
 * A request of direction @dir inserted at @insert_ns, due @deadline_ns
 * after it, covering @bytes from @sector, goes to the driver at @now.
 * Whether it met its deadline (kml_dd_met()).  Inline for the kernel's
 * dispatch hook, whose @dir is a struct kml_dd_feat_in's op, 0 or 1;
 * kml_dd_feat_dispatch() for everyone else, any op not 0 a write.
 */
static inline bool __kml_dd_feat_dispatch(struct kml_dd_feat_state *st,
					  unsigned int dir, u64 sector,
					  u32 bytes, u64 insert_ns,
					  u64 deadline_ns, u64 now)
{
	u64 issue;
	bool met;

	/* each value in turn, so that few are live at once */
	st->last_end = sector + (bytes >> KML_DD_SECTOR_SHIFT);
	if (st->last_dispatch_ns)
		st->dispatch_gap_ewma_ns =
			kml_dd_ewma(st->dispatch_gap_ewma_ns,
				    kml_dd_since(st->last_dispatch_ns, now));
	st->last_dispatch_ns = now;
	issue = kml_dd_since(insert_ns, now);
	st->issue_ewma_ns[dir] = kml_dd_ewma(st->issue_ewma_ns[dir], issue);
	met = kml_dd_met(issue, deadline_ns);
	/* an eighth of a miss (1.0 in Q16.16); of a deadline met, 0 */
	st->miss_ewma[dir] = st->miss_ewma[dir] - (st->miss_ewma[dir] >> 3) +
			     (met ? 0 : KML_Q16_ONE >> 3);
	return met;
}

KML_API void kml_dd_feat_dispatch(struct kml_dd_feat_state *st, u8 op,
				  u64 sector, u32 bytes, u64 insert_ns,
				  u64 deadline_ns, u64 now);

#endif /* _KML_DD_FEAT_H */
