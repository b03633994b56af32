// SPDX-License-Identifier: GPL-2.0
/*
 * KML for mq-deadline: a request's features and the queue state they read
 * (see kml_dd_feat.h).  Built into the kernel and into libkml.so.
 */
#include "kml_dd_feat.h"

#define KML_DD_NS_PER_US	1000U

s32 kml_dd_lg(u64 x)
{
	return __kml_dd_lg(x);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_lg);

static s32 kml_dd_lg_usec(u64 ns)
{
	return __kml_dd_lg(div_u64(ns, KML_DD_NS_PER_US));
}

/* The features of @in, inserted into a queue of which it saw @q. */
static __always_inline void kml_dd_feat_of(const struct kml_dd_feat_src q,
					   const struct kml_dd_feat_in *in,
					   s32 *f)
{
	const int dir = in->op ? 1 : 0;
	u64 sector = in->sector < in->capacity ? in->sector : in->capacity;
	u64 last_end = *q.last_end;
	u64 seek = in->sector > last_end ?
		   in->sector - last_end : last_end - in->sector;

	f[KML_DD_F_OP] = dir ? KML_Q16_ONE : 0;
	f[KML_DD_F_SECTOR] = in->capacity ?
		(s32)div64_u64(sector << 16, in->capacity) : 0;
	f[KML_DD_F_LG_BYTES] = __kml_dd_lg(in->bytes);
	f[KML_DD_F_LG_QUEUED_SAME] = __kml_dd_lg(in->queued[dir]);
	f[KML_DD_F_LG_QUEUED_OTHER] = __kml_dd_lg(in->queued[!dir]);
	f[KML_DD_F_LG_INFLIGHT] = __kml_dd_lg(in->inflight);
	f[KML_DD_F_LG_SEEK] = __kml_dd_lg(seek);
	f[KML_DD_F_LG_GAP_US] = *q.last_insert_ns ?
		kml_dd_lg_usec(kml_dd_since(*q.last_insert_ns,
					    in->insert_ns)) : 0;
	f[KML_DD_F_LG_EXPIRE_US] = kml_dd_lg_usec(in->deadline_ns);
	f[KML_DD_F_LG_ISSUE_EWMA_US] = kml_dd_lg_usec(*q.issue_ewma_ns);
	f[KML_DD_F_LG_DISPATCH_EWMA_US] =
		kml_dd_lg_usec(*q.dispatch_gap_ewma_ns);
	f[KML_DD_F_SAME_DIR] = in->same_dir ? KML_Q16_ONE : 0;
	/* in a FIFO, a new request waits about as long as the head has */
	f[KML_DD_F_LG_HEAD_AGE_US] = in->has_head ?
		kml_dd_lg_usec(kml_dd_since(in->head_insert_ns, in->insert_ns)) :
		0;
	f[KML_DD_F_MISS_EWMA] = *q.miss_ewma;
}

void kml_dd_feat_compute(const struct kml_dd_feat_in *in,
			 const struct kml_dd_feat_seen *seen, s32 *f)
{
	const struct kml_dd_feat_src q = {
		.last_insert_ns = &seen->last_insert_ns,
		.last_end = &seen->last_end,
		.issue_ewma_ns = &seen->issue_ewma_ns,
		.dispatch_gap_ewma_ns = &seen->dispatch_gap_ewma_ns,
		.miss_ewma = &seen->miss_ewma,
	};

	kml_dd_feat_of(q, in, f);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_feat_compute);

void kml_dd_feat_insert(struct kml_dd_feat_state *st,
			const struct kml_dd_feat_in *in, s32 *f)
{
	kml_dd_feat_of(kml_dd_feat_state_src(st, in->op ? 1 : 0), in, f);
	st->last_insert_ns = in->insert_ns;
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_feat_insert);

void kml_dd_feat_dispatch(struct kml_dd_feat_state *st, u8 op, u64 sector,
			  u32 bytes, u64 insert_ns, u64 deadline_ns, u64 now)
{
	__kml_dd_feat_dispatch(st, op ? 1 : 0, sector, bytes, insert_ns,
			       deadline_ns, now);
}
EXPORT_SYMBOL_IF_KUNIT(kml_dd_feat_dispatch);
