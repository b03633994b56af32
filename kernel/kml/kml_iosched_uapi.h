/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * KML for mq-deadline: the interface between the kernel and its users.
 *
 * This header is shared by the kernel (lib/kml/), the guest tool kmlctl and
 * the host harness (which mirrors the layouts in Python); see
 * docs/kml-iosched.md.  Everything here is ABI: change KML_DD_ABI_VERSION
 * when a layout changes.
 *
 *   /dev/kml			misc device: mmap the sample ring, publish
 *				models (write() + KML_IOC_COMMIT)
 *   /sys/kernel/debug/kml/iosched	statistics ("key value" lines)
 *   /sys/module/kml/parameters/	ring mode, sample filter, kernel trainer
 *   /sys/block/<dev>/queue/iosched/kml_mode	off | observe | active
 */
#ifndef _KML_IOSCHED_UAPI_H
#define _KML_IOSCHED_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define KML_DD_ABI_VERSION	2

/*
 * Features of a request, computed at insert (under the scheduler lock, in
 * integer arithmetic), each a Q16.16 fixed-point s32.  "lg(x)" is
 * log2(1 + x) with a linear interpolation of the mantissa (error < 0.09).
 * A model's inputs are the first KML_DD_NR_FEATURES of them, in this order.
 */
enum kml_dd_feature {
	KML_DD_F_OP = 0,		/* 0 read, 1 write (ordinalised op) */
	KML_DD_F_SECTOR = 1,		/* start sector / capacity, in [0, 1] */
	KML_DD_F_LG_BYTES = 2,		/* lg(request bytes) */
	KML_DD_F_LG_QUEUED_SAME = 3,	/* lg(requests queued, same direction) */
	KML_DD_F_LG_QUEUED_OTHER = 4,	/* lg(requests queued, other direction) */
	KML_DD_F_LG_INFLIGHT = 5,	/* lg(dispatched, not yet completed) */
	KML_DD_F_LG_SEEK = 6,		/* lg(|sector - end of last dispatch|) */
	KML_DD_F_LG_GAP_US = 7,		/* lg(us since the previous insert) */
	KML_DD_F_LG_EXPIRE_US = 8,	/* lg(us to this request's deadline) */
	KML_DD_F_LG_ISSUE_EWMA_US = 9,	/* lg(recent issue time, this dir, us) */
	KML_DD_F_LG_DISPATCH_EWMA_US = 10, /* lg(recent us between dispatches) */
	KML_DD_F_SAME_DIR = 11,		/* 1 if the current batch is this dir */
	/* lg(us the oldest queued request of this direction has waited) */
	KML_DD_F_LG_HEAD_AGE_US = 12,
	/* recent share of this direction's requests that missed, [0, 1] */
	KML_DD_F_MISS_EWMA = 13,
	KML_DD_NR_FEATURES = 14,
};

#define KML_DD_MAX_FEATURES	16	/* slots in a sample; rest are zero */

/*
 * The model predicts the issue time (start -> dispatch) of a request as
 * y = lg(issue time in us); the request is predicted to meet its deadline
 * when the predicted issue time is at most deadline_ns.
 */

/* sample.flags */
#define KML_DD_SAMPLE_URGENT	(1U << 0)	/* active mode moved it ahead */
#define KML_DD_SAMPLE_REQUEUED	(1U << 1)	/* inserted more than once */
/* active mode predicted a miss and left it alone, to measure the model */
#define KML_DD_SAMPLE_HOLDOUT	(1U << 2)
/* active mode predicted a miss and acted on it (moved ahead or not) */
#define KML_DD_SAMPLE_STEERED	(1U << 3)

/* One record of the sample ring and one row of a trace: 128 bytes, LE. */
struct kml_dd_sample {
	__u64 insert_ns;	/*   0 start: blk-mq's rq->start_time_ns */
	__u64 sector;		/*   8 start sector (512 B units) */
	__u64 issue_ns;		/*  16 start -> dispatch */
	__u64 deadline_ns;	/*  24 insert -> deadline (the fifo expiry) */
	__u64 completion_ns;	/*  32 start -> completion */
	__u64 pred_issue_ns;	/*  40 predicted issue time; 0 if none */
	__u32 bytes;		/*  48 request size */
	__u8 op;		/*  52 0 read, 1 write */
	__u8 met;		/*  53 issue_ns <= deadline_ns */
	__u8 pred_valid;	/*  54 a model made a prediction */
	__u8 pred_met;		/*  55 pred_issue_ns <= deadline_ns */
	__u32 flags;		/*  56 KML_DD_SAMPLE_* */
	__u32 dev;		/*  60 new_encode_dev() of the disk */
	__s32 features[KML_DD_MAX_FEATURES];	/* 64 Q16.16 */
};

/* KML_IOC_INFO */
struct kml_dev_info {
	__u32 abi_version;	/* KML_DD_ABI_VERSION */
	__u32 record_size;	/* sizeof(struct kml_dd_sample) */
	__u32 ring_capacity;	/* records */
	__u32 ring_mode;	/* enum kml_ring_mode: 0 block, 1 drop */
	__u64 ring_bytes;	/* length to mmap() at offset 0 */
	__u32 n_features;	/* KML_DD_NR_FEATURES */
	__u32 max_model_bytes;	/* largest model file write() accepts */
	__u64 model_generation;	/* bumped by every model swap */
	__u32 ktrainer_running;	/* the kernel trainer owns the ring */
	__u32 reserved[7];
};

#define KML_IOC_MAGIC		0xb7
#define KML_IOC_INFO		_IOR(KML_IOC_MAGIC, 0, struct kml_dev_info)
/* validate the bytes write()n since open/last commit and swap the model in */
#define KML_IOC_COMMIT		_IO(KML_IOC_MAGIC, 1)
/* forget the staged bytes */
#define KML_IOC_DISCARD		_IO(KML_IOC_MAGIC, 2)
/* remove the model: predictions stop, the scheduler runs stock */
#define KML_IOC_UNLOAD		_IO(KML_IOC_MAGIC, 3)

#endif /* _KML_IOSCHED_UAPI_H */
