"""KML's lock-free MPSC ring: exact counters under concurrent producers."""

from __future__ import annotations

import struct
import threading

import pytest

from kmlbench.kml.ffi import KmlError, lib
from kmlbench.kml.ring import Ring


def test_layout_header():
    r = Ring(16, 12, mode="dropping")
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
        with pytest.raises(KmlError):
            Ring(cap, size)


def test_fifo_and_drop_counts_single_thread():
    r = Ring(8, 4, mode="dropping")
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
    r = Ring(64, 16, mode=mode)
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
    r = Ring(32, 8, mode=mode)
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
    buf = bytearray(Ring.bytes_needed(16, 8))
    producer = Ring.in_buffer(buf, 16, 8, mode="dropping")
    consumer = Ring.attach(buf)
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
    buf = bytearray(Ring.bytes_needed(16, 8))
    Ring.in_buffer(buf, 16, 8)
    for off, value in [(0, 0), (4, 2), (8, 12), (16, 99), (24, 128)]:
        bad = bytearray(buf)
        struct.pack_into("<I", bad, off, value)
        with pytest.raises(KmlError):
            Ring.attach(bad)
    with pytest.raises(KmlError):
        Ring.attach(buf[:-1])  # shorter than the header says
    with pytest.raises(KmlError):
        Ring.in_buffer(bytearray(100), 16, 8)


# ---- attach validates exactly what it binds (no double fetch of the header)


def _bound_geometry(ring) -> tuple[int, int, int, int]:
    """mask, slot_size, record_size, mode of the private struct kml_ring."""
    return struct.unpack_from("<4I", ring._handle.raw, 16)


def test_attach_binds_the_validated_geometry():
    buf = bytearray(Ring.bytes_needed(16, 12))
    Ring.in_buffer(buf, 16, 12, mode="dropping")
    r = Ring.attach(buf)
    assert _bound_geometry(r) == (15, 24, 12, 1)
    # the mapper rewriting the header after attach changes nothing bound
    struct.pack_into("<I", buf, 8, 0xFFFFFFFF)
    assert _bound_geometry(r) == (15, 24, 12, 1)
    for i in range(40):
        r.push(struct.pack("<III", i, i, i))
    got = 0
    while r.pop() is not None:
        got += 1
    assert got == 16


@pytest.mark.parametrize(
    "field, value",
    [
        (8, 0),  # capacity 0
        (8, 12),  # not a power of two
        (8, 0xFFFFFFFF),  # mask 2^32 - 2 would index far out of bounds
        (8, 1 << 25),  # power of two above the 2^24 limit
        (8, 32),  # power of two, but the region only holds 16 slots
        (12, 0),  # record size 0
        (12, 5000),  # record size above 4096
        (12, 20),  # slot_size no longer matches record_size
        (16, 32),  # slot_size inconsistent
        (20, 7),  # unknown mode
        (0, 0),  # magic
        (24, 128),  # hdr_size
    ],
)
def test_attach_refuses_bad_header(field, value):
    buf = bytearray(Ring.bytes_needed(16, 12))
    Ring.in_buffer(buf, 16, 12)
    struct.pack_into("<I", buf, field, value)
    with pytest.raises(KmlError):
        Ring.attach(buf)


def test_attach_refuses_short_region():
    buf = bytearray(Ring.bytes_needed(16, 12))
    Ring.in_buffer(buf, 16, 12)
    with pytest.raises(KmlError):
        Ring.attach(bytearray(buf[:-1]))


def test_attach_racing_mapper_never_binds_a_bad_capacity():
    """A thread flips capacity between a valid and an invalid value while
    the main thread attaches (ctypes drops the GIL in the call): every
    attach that succeeds must have bound capacity 16."""
    buf = bytearray(Ring.bytes_needed(16, 12))
    Ring.in_buffer(buf, 16, 12)
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            for cap in (0xFFFFFFFF, 16, 1 << 30, 16, 0, 16):
                struct.pack_into("<I", buf, 8, cap)

    t = threading.Thread(target=flip)
    t.start()
    ok = 0
    try:
        for _ in range(3000):
            try:
                r = Ring.attach(buf)
            except KmlError:
                continue
            ok += 1
            assert _bound_geometry(r)[0] == 15
    finally:
        stop.set()
        t.join()
    struct.pack_into("<I", buf, 8, 16)
    assert _bound_geometry(Ring.attach(buf))[0] == 15


_STRESS_NO_THREADS = r"""
import errno, resource, sys
from kmlbench.kml.ffi import KmlError, lib
from kmlbench.kml.ring import Ring
r = Ring(8, 16, mode="blocking")
lib()
vm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")][0]
# room for about two 8 MiB thread stacks: later pthread_create() calls fail
resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (20 << 20),) * 2)
try:
    r.stress(8, 20_000)
except KmlError as e:
    c = r.counters
    assert c["consumed"] == c["produced"], c
    print("refused", e.errno == errno.EAGAIN, c["produced"] % 20_000 == 0)
    sys.exit(0)
print("no error")
"""


def test_stress_thread_creation_failure_returns_an_error():
    """If pthread_create() fails, kml_ring_stress drains and joins the
    producers it started and returns the error instead of waiting forever
    for producers that never ran."""
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-c", _STRESS_NO_THREADS],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    if p.stdout.strip() == "no error":
        pytest.skip("could not make pthread_create fail under RLIMIT_AS here")
    assert p.stdout.split() == ["refused", "True", "True"], p.stdout


@pytest.mark.parametrize("bad", [0, 0xFFFFFFFF, 1 << 30, 12])
def test_attach_c_racing_mapper_never_binds_a_bad_capacity(bad):
    """Same race in C (no GIL): a pthread flips capacity between 16 and
    ``bad`` as fast as it can while attach runs 200 000 times."""
    import ctypes as C

    fn = lib().kml_ring_attach_race
    fn.restype = C.c_int
    fn.argtypes = [C.c_void_p, C.c_size_t, C.c_uint32, C.c_uint32, C.POINTER(C.c_uint64)]
    buf = bytearray(Ring.bytes_needed(16, 12))
    Ring.in_buffer(buf, 16, 12)
    mem = (C.c_char * len(buf)).from_buffer(buf)
    out = (C.c_uint64 * 3)()
    assert fn(C.addressof(mem), len(buf), bad, 200_000, out) == 0
    ok, refused, wrong = out
    assert ok + refused == 200_000
    assert wrong == 0, f"{wrong} attaches bound a capacity that was never validated"
    del mem
