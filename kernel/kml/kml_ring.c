// SPDX-License-Identifier: GPL-2.0
/*
 * Bounded multi-producer / single-consumer ring of fixed-size records
 * (D. Vyukov's bounded queue with per-slot sequence numbers).
 *
 * Producers reserve a position with a compare-and-swap on head, copy the
 * record, then publish it with a store-release of the slot's sequence
 * number (pos + 1).  The consumer load-acquires the sequence number, copies
 * the record and frees the slot with a store-release of pos + capacity.
 * No locks anywhere; a producer never waits for another producer except
 * through the bounded wait below in blocking mode.
 *
 * The shared memory (struct kml_ring_shared + slots) holds no pointers and
 * can be mmap()ed by a user-space trainer; the private struct kml_ring
 * keeps the geometry so that a corrupted shared header cannot make the
 * kernel index out of bounds.  kml_ring_attach() reads every header field
 * exactly once (kml_read_once()) into locals, validates the locals and
 * binds those: the mapper changing the header meanwhile cannot get an
 * unvalidated geometry bound.
 */
#include "kml_internal.h"

static_assert(sizeof(struct kml_ring_shared) == KML_RING_HDR_SIZE,
	      "ring header layout");
static_assert(sizeof(struct kml_atomic64) == 8, "64-bit atomics");
/* harness/kmlbench/kml.py allocates 64 bytes for a struct kml_ring */
static_assert(sizeof(struct kml_ring) <= 64, "ring handle size");

static u32 kml_ring_slot_size(u32 record_size)
{
	return 8 + ((record_size + 7) & ~7U);
}

size_t kml_ring_bytes(u32 capacity, u32 record_size)
{
	return KML_RING_HDR_SIZE +
	       (size_t)capacity * kml_ring_slot_size(record_size);
}
EXPORT_SYMBOL_GPL(kml_ring_bytes);

static int kml_ring_check_geom(u32 capacity, u32 record_size, u32 mode)
{
	if (!capacity || (capacity & (capacity - 1)) || capacity > (1U << 24))
		return -EINVAL;
	if (!record_size || record_size > 4096)
		return -EINVAL;
	if (mode > KML_RING_DROP)
		return -EINVAL;
	return 0;
}

/* Bind validated geometry; never re-reads the shared header. */
static void kml_ring_bind(struct kml_ring *r, void *mem, u32 capacity,
			  u32 record_size, u32 slot_size, u32 mode)
{
	memset(r, 0, sizeof(*r));
	r->sh = mem;
	r->slots = (u8 *)mem + KML_RING_HDR_SIZE;
	r->mask = capacity - 1;
	r->slot_size = slot_size;
	r->record_size = record_size;
	r->mode = mode;
}

static struct kml_ring_slot *kml_ring_slot(struct kml_ring *r, s64 pos)
{
	return (struct kml_ring_slot *)(r->slots +
					(size_t)((u64)pos & r->mask) *
					r->slot_size);
}

int kml_ring_init(struct kml_ring *r, void *mem, size_t bytes, u32 capacity,
		  u32 record_size, u32 mode)
{
	struct kml_ring_shared *sh = mem;
	u32 i;
	int ret;

	ret = kml_ring_check_geom(capacity, record_size, mode);
	if (ret)
		return ret;
	if (!mem || bytes < kml_ring_bytes(capacity, record_size))
		return -EINVAL;
	memset(sh, 0, KML_RING_HDR_SIZE);
	sh->magic = KML_RING_MAGIC;
	sh->version = KML_RING_VERSION;
	sh->capacity = capacity;
	sh->record_size = record_size;
	sh->slot_size = kml_ring_slot_size(record_size);
	sh->mode = mode;
	sh->hdr_size = KML_RING_HDR_SIZE;
	kml_ring_bind(r, mem, capacity, record_size,
		      kml_ring_slot_size(record_size), mode);
	for (i = 0; i < capacity; i++)
		kml_atomic64_store_relaxed(&kml_ring_slot(r, i)->seq, i);
	kml_atomic64_store_release(&sh->head, 0);
	return 0;
}
EXPORT_SYMBOL_GPL(kml_ring_init);

/* Attach to a ring another party initialised (e.g. mmap()ed). */
int kml_ring_attach(struct kml_ring *r, void *mem, size_t bytes)
{
	struct kml_ring_shared *sh = mem;
	u32 capacity, record_size, slot_size, mode;
	int ret;

	if (!mem || bytes < KML_RING_HDR_SIZE)
		return -EINVAL;
	if (kml_read_once(sh->magic) != KML_RING_MAGIC ||
	    kml_read_once(sh->version) != KML_RING_VERSION ||
	    kml_read_once(sh->hdr_size) != KML_RING_HDR_SIZE)
		return -EINVAL;
	/* each geometry field read once: validate and bind the same values */
	capacity = kml_read_once(sh->capacity);
	record_size = kml_read_once(sh->record_size);
	slot_size = kml_read_once(sh->slot_size);
	mode = kml_read_once(sh->mode);
	ret = kml_ring_check_geom(capacity, record_size, mode);
	if (ret)
		return ret;
	if (slot_size != kml_ring_slot_size(record_size) ||
	    bytes < kml_ring_bytes(capacity, record_size))
		return -EINVAL;
	kml_ring_bind(r, mem, capacity, record_size, slot_size, mode);
	return 0;
}
EXPORT_SYMBOL_GPL(kml_ring_attach);

int kml_ring_create(struct kml_ring **out, u32 capacity, u32 record_size,
		    u32 mode)
{
	struct kml_ring *r;
	size_t bytes;
	int ret;

	ret = kml_ring_check_geom(capacity, record_size, mode);
	if (ret)
		return ret;
	bytes = kml_ring_bytes(capacity, record_size);
	r = kml_zalloc(sizeof(*r) + bytes + 63);
	if (!r)
		return -ENOMEM;
	/* shared header on a 64-byte boundary, as an mmap()ed page would be */
	ret = kml_ring_init(r, (void *)(((unsigned long)(r + 1) + 63) & ~63UL),
			    bytes, capacity, record_size, mode);
	if (ret) {
		kml_free(r);
		return ret;
	}
	r->owned = true;
	*out = r;
	return 0;
}
EXPORT_SYMBOL_GPL(kml_ring_create);

void kml_ring_destroy(struct kml_ring *r)
{
	if (r && r->owned)
		kml_free(r);
}
EXPORT_SYMBOL_GPL(kml_ring_destroy);

/*
 * Bound on claim attempts: legitimate retries only happen when another
 * producer succeeded, so this is only reached if the shared memory was
 * corrupted (e.g. by a buggy or malicious user-space consumer): never loop
 * forever in the kernel because of it.
 */
#define KML_RING_MAX_TRIES (1U << 16)

/*
 * The shared memory holds a state no sequence of pushes and pops can make
 * (a consumer wrote over it): stop using the ring rather than spin on it.
 */
static int kml_ring_corrupt(struct kml_ring *r)
{
	kml_write_once(r->broken, true);
	kml_atomic64_inc(&r->sh->dropped);
	return -EIO;
}

int kml_ring_push(struct kml_ring *r, const void *rec)
{
	struct kml_ring_shared *sh = r->sh;
	struct kml_ring_slot *slot;
	s64 pos, seq, dif, head, lap = (s64)r->mask + 1;
	u32 spins = 0, tries = 0;

	if (kml_read_once(r->broken)) {
		kml_atomic64_inc(&sh->dropped);
		return -EIO;
	}
	pos = kml_atomic64_load_relaxed(&sh->head);
	for (;;) {
		slot = kml_ring_slot(r, pos);
		seq = kml_atomic64_load_acquire(&slot->seq);
		dif = seq - pos;
		/* no slot is ever more than one lap behind the head */
		if (unlikely(dif < -lap))
			return kml_ring_corrupt(r);
		if (dif == 0) {
			/* slot free for this lap: try to claim position pos */
			if (kml_atomic64_cmpxchg(&sh->head, &pos, pos + 1))
				break;
			/* pos now holds the current head: retry */
			tries++;
		} else if (dif < 0) {
			/* slot still holds the record of the previous lap: full */
			if (kml_read_once(r->mode) == KML_RING_DROP) {
				kml_atomic64_inc(&sh->dropped);
				return -ENOSPC;
			}
			if (kml_ring_wait(spins++)) {
				kml_atomic64_inc(&sh->full_waits);
				return -EAGAIN;
			}
			pos = kml_atomic64_load_relaxed(&sh->head);
		} else {
			/* another producer took pos: head has moved past it */
			head = kml_atomic64_load_relaxed(&sh->head);
			if (unlikely(head == pos))
				return kml_ring_corrupt(r);
			pos = head;
			tries++;
		}
		if (unlikely(tries > KML_RING_MAX_TRIES))
			return kml_ring_corrupt(r);
	}
	memcpy(slot->data, rec, r->record_size);
	kml_atomic64_store_release(&slot->seq, pos + 1);
	kml_atomic64_inc(&sh->produced);
	return 0;
}
EXPORT_SYMBOL_GPL(kml_ring_push);

bool kml_ring_drops(struct kml_ring *r)
{
	struct kml_ring_shared *sh = r->sh;
	s64 pos, dif;

	if (kml_read_once(r->mode) != KML_RING_DROP || kml_read_once(r->broken))
		return false;
	pos = kml_atomic64_load_relaxed(&sh->head);
	dif = kml_atomic64_load_acquire(&kml_ring_slot(r, pos)->seq) - pos;
	/* the slot holds the previous lap's record, as in kml_ring_push() */
	if (dif >= 0 || dif < -(s64)r->mask - 1)
		return false;
	kml_atomic64_inc(&sh->dropped);
	return true;
}
EXPORT_SYMBOL_GPL(kml_ring_drops);

int kml_ring_pop(struct kml_ring *r, void *rec)
{
	struct kml_ring_shared *sh = r->sh;
	struct kml_ring_slot *slot;
	s64 pos = kml_atomic64_load_relaxed(&sh->tail);

	slot = kml_ring_slot(r, pos);
	if (kml_atomic64_load_acquire(&slot->seq) != pos + 1)
		return -EAGAIN;		/* empty, or the producer is still copying */
	memcpy(rec, slot->data, r->record_size);
	kml_atomic64_store_release(&slot->seq, pos + r->mask + 1);
	kml_atomic64_store_release(&sh->tail, pos + 1);
	kml_atomic64_inc(&sh->consumed);
	return 0;
}
EXPORT_SYMBOL_GPL(kml_ring_pop);

void kml_ring_counters(struct kml_ring *r, u64 *produced, u64 *consumed,
		       u64 *dropped)
{
	*produced = kml_atomic64_load_acquire(&r->sh->produced);
	*consumed = kml_atomic64_load_acquire(&r->sh->consumed);
	*dropped = kml_atomic64_load_acquire(&r->sh->dropped);
}
EXPORT_SYMBOL_GPL(kml_ring_counters);

void *kml_ring_shared(struct kml_ring *r)
{
	return r->sh;
}
EXPORT_SYMBOL_GPL(kml_ring_shared);

/*
 * The shared header's positions and counters are in memory the consumer can
 * write.  With no consumer running, check that they hold a state pushes and
 * pops can make: the tail at most a lap behind the head and not past it,
 * and no more popped than the tail has passed (a pop moves the tail, then
 * counts; a consumer killed in between leaves one fewer).  The popped count
 * is not checked against the pushed one: a push publishes its record
 * before it counts it, so a record can be popped before it is counted.
 * Read the consumer's side first: producers only move the head forward.  A
 * state they cannot make breaks the ring, as a corrupt slot does.
 */
bool kml_ring_check(struct kml_ring *r)
{
	struct kml_ring_shared *sh = r->sh;
	s64 tail = kml_atomic64_load_acquire(&sh->tail);
	s64 consumed = kml_atomic64_load_acquire(&sh->consumed);
	s64 head = kml_atomic64_load_acquire(&sh->head);

	if (tail < 0 || tail > head || head - tail > (s64)r->mask + 1 ||
	    consumed < 0 || consumed > tail) {
		kml_ring_corrupt(r);
		return false;
	}
	return true;
}
EXPORT_SYMBOL_GPL(kml_ring_check);

bool kml_ring_broken(struct kml_ring *r)
{
	return kml_read_once(r->broken);
}
EXPORT_SYMBOL_GPL(kml_ring_broken);
