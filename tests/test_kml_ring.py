"""KML's lock-free MPSC ring: exact counters under concurrent producers."""

from __future__ import annotations

import struct
import threading

import pytest

from kmlbench import kml


def test_layout_header():
    r = kml.Ring(16, 12, mode="dropping")
    hdr = r.shared_header()
    magic, version, cap, rec, slot, mode, hdr_size = struct.unpack_from("<7I", hdr)
    assert (magic, version, cap, rec, slot, mode, hdr_size) == (
        0x474E524B, 1, 16, 12, 8 + 16, 1, 256,
    )  # fmt: skip
    assert r.shared_bytes == 256 + 16 * 24
    r.push(b"x" * 12)
    (head,) = struct.unpack_from("<q", r.shared_header(), 64)
    produced, dropped = struct.unpack_from("<qq", r.shared_header(), 192)
    assert (head, produced, dropped) == (1, 1, 0)


def test_invalid_geometry():
    for cap, size in [(0, 8), (12, 8), (16, 0), (16, 5000)]:
        with pytest.raises(kml.KmlError):
            kml.Ring(cap, size)


def test_fifo_and_drop_counts_single_thread():
    r = kml.Ring(8, 4, mode="dropping")
    results = [r.push(struct.pack("<I", i)) for i in range(20)]
    assert results == [True] * 8 + [False] * 12
    got = []
    while (rec := r.pop()) is not None:
        got.append(struct.unpack("<I", rec)[0])
    assert got == list(range(8))
    assert r.counters == {"produced": 8, "consumed": 8, "dropped": 12}
    # wraps around correctly
    for lap in range(5):
        for i in range(8):
            assert r.push(struct.pack("<I", lap * 8 + i))
        assert [struct.unpack("<I", r.pop())[0] for _ in range(8)] == [
            lap * 8 + i for i in range(8)
        ]
    assert r.pop() is None


@pytest.mark.parametrize("mode", ["blocking", "dropping"])
@pytest.mark.parametrize("n_producers", [1, 4, 8])
def test_c_threads_exact_counts(mode, n_producers):
    per = 50_000
    r = kml.Ring(64, 16, mode=mode)
    res = r.stress(n_producers, per)  # raises on reordering / duplicates
    c = r.counters
    total = n_producers * per
    assert c["produced"] == res["pushed"]
    assert c["consumed"] == res["consumed"] == c["produced"]
    assert c["produced"] + c["dropped"] == total
    assert res["refused"] == c["dropped"]
    if mode == "blocking":
        assert c["dropped"] == 0 and c["produced"] == total


@pytest.mark.parametrize("mode", ["blocking", "dropping"])
def test_python_threads_exact_counts(mode):
    """Python producers (ctypes drops the GIL in every push) and a consumer."""
    n_prod, per = 4, 5000
    r = kml.Ring(32, 8, mode=mode)
    ok = [0] * n_prod
    seen: list[list[int]] = [[] for _ in range(n_prod)]
    stop = threading.Event()

    def produce(pid):
        for i in range(per):
            if r.push(struct.pack("<II", pid, i)):
                ok[pid] += 1

    def consume():
        while True:
            rec = r.pop()
            if rec is None:
                if stop.is_set():
                    rec = r.pop()
                    if rec is None:
                        return
                else:
                    continue
            pid, i = struct.unpack("<II", rec)
            seen[pid].append(i)

    cons = threading.Thread(target=consume)
    cons.start()
    prods = [threading.Thread(target=produce, args=(p,)) for p in range(n_prod)]
    for t in prods:
        t.start()
    for t in prods:
        t.join()
    stop.set()
    cons.join()
    c = r.counters
    assert c["produced"] == sum(ok) == c["consumed"]
    assert c["produced"] + c["dropped"] == n_prod * per
    for pid in range(n_prod):
        assert seen[pid] == sorted(set(seen[pid]))  # per-producer FIFO, no duplicates
        assert len(seen[pid]) == ok[pid]
    if mode == "blocking":
        assert c["dropped"] == 0


def test_shared_buffer_producer_and_attached_consumer():
    """The mmap use case: one side lays the ring out in shared memory and
    produces, the other attaches to the same bytes and consumes."""
    buf = bytearray(kml.Ring.bytes_needed(16, 8))
    producer = kml.Ring.in_buffer(buf, 16, 8, mode="dropping")
    consumer = kml.Ring.attach(buf)
    assert (consumer.capacity, consumer.record_size, consumer.mode) == (16, 8, "dropping")
    for i in range(20):
        producer.push(struct.pack("<Q", i))
    got = []
    while (rec := consumer.pop()) is not None:
        got.append(struct.unpack("<Q", rec)[0])
    assert got == list(range(16))
    assert consumer.counters == {"produced": 16, "consumed": 16, "dropped": 4}
    assert producer.counters == consumer.counters  # the counters live in the shared bytes


def test_attach_refuses_bad_headers():
    buf = bytearray(kml.Ring.bytes_needed(16, 8))
    kml.Ring.in_buffer(buf, 16, 8)
    for off, value in [(0, 0), (4, 2), (8, 12), (16, 99), (24, 128)]:
        bad = bytearray(buf)
        struct.pack_into("<I", bad, off, value)
        with pytest.raises(kml.KmlError):
            kml.Ring.attach(bad)
    with pytest.raises(kml.KmlError):
        kml.Ring.attach(buf[:-1])  # shorter than the header says
    with pytest.raises(kml.KmlError):
        kml.Ring.in_buffer(bytearray(100), 16, 8)
