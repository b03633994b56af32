"""KML's lock-free MPSC ring of fixed-size records (``kernel/kml/kml_ring.c``),
owned by the library, laid out in a caller's buffer, or attached to one
another party laid out (e.g. an mmap of the kernel's ring)."""

from __future__ import annotations

import ctypes as C
import errno
import mmap

import numpy as np

from kmlbench.kml.ffi import U64, check, lib

__all__ = ["RING_MODES", "Ring"]

# enum kml_ring_mode by the names ``Ring(mode=...)`` takes.  The kernel's
# ``ring_mode`` parameter, ``kmlctl --mode`` and the matrix
# (kmlbench.plan.matrix.RING_MODES) call the same two values "block" and
# "drop"; nothing in Python translates between the two vocabularies.
RING_MODES = {"blocking": 0, "dropping": 1}
_MODE_NAMES = {code: name for name, code in RING_MODES.items()}

# what a ring can be laid out in (ctypes' from_buffer needs it writable)
WritableBuffer = bytearray | memoryview | mmap.mmap


class Ring:
    """KML's lock-free MPSC ring of fixed-size records.

    ``mode="blocking"``: push waits while the ring is full (user space: spin,
    then sched_yield).  ``mode="dropping"``: push on a full ring discards the
    record, counts it in ``dropped`` and returns False.  ``push`` may be
    called from many threads at once (ctypes releases the GIL); ``pop`` from
    one consumer thread only.
    """

    def __init__(self, capacity: int, record_size: int, mode: str = "dropping") -> None:
        if mode not in RING_MODES:
            raise ValueError(f"mode must be one of {sorted(RING_MODES)}")
        self._lib = lib()
        self.capacity = int(capacity)
        self.record_size = int(record_size)
        self.mode = mode
        h = C.c_void_p()
        check(
            self._lib.kml_ring_create(C.byref(h), capacity, record_size, RING_MODES[mode]),
            "ring_create",
        )
        self._h = h
        self._rec = C.create_string_buffer(self.record_size)

    # set by _over only: the caller's memory and the handle laid out over it
    _mem: C.Array[C.c_char]
    _handle: C.Array[C.c_char]
    _owned: bool

    # struct kml_ring (the private handle) is 40 bytes on x86-64
    _HANDLE_BYTES = 64

    @classmethod
    def _over(cls, buf: WritableBuffer, init: tuple[int, int, int] | None) -> Ring:
        self = object.__new__(cls)
        self._lib = lib()
        mem = (C.c_char * len(buf)).from_buffer(buf)  # needs a writable buffer
        handle = C.create_string_buffer(cls._HANDLE_BYTES)
        if init is None:
            ret = self._lib.kml_ring_attach(handle, C.addressof(mem), len(buf))
            what = "ring_attach"
        else:
            ret = self._lib.kml_ring_init(handle, C.addressof(mem), len(buf), *init)
            what = "ring_init"
        check(ret, what)
        self._mem, self._handle = mem, handle  # keep both alive
        self._h = C.c_void_p(C.addressof(handle))
        self._owned = False
        hdr = C.string_at(C.addressof(mem), 24)
        cap, rec, _slot, mode = (int.from_bytes(hdr[i : i + 4], "little") for i in (8, 12, 16, 20))
        self.capacity, self.record_size = cap, rec
        self.mode = _MODE_NAMES.get(mode, "blocking")
        self._rec = C.create_string_buffer(rec)
        return self

    @classmethod
    def in_buffer(
        cls, buf: WritableBuffer, capacity: int, record_size: int, mode: str = "dropping"
    ) -> Ring:
        """Lay a new ring out in a caller-provided writable buffer (bytearray,
        mmap, ...) of at least ``Ring.bytes_needed(capacity, record_size)``."""
        return cls._over(buf, (capacity, record_size, RING_MODES[mode]))

    @classmethod
    def attach(cls, buf: WritableBuffer) -> Ring:
        """Use a ring another party laid out in ``buf`` (e.g. an mmap of the
        kernel's ring); the header is validated, the geometry copied."""
        return cls._over(buf, None)

    @staticmethod
    def bytes_needed(capacity: int, record_size: int) -> int:
        return int(lib().kml_ring_bytes(capacity, record_size))

    def __del__(self) -> None:
        h = getattr(self, "_h", None)
        if h is not None and h.value and getattr(self, "_owned", True):
            self._lib.kml_ring_destroy(h)
        self._h = C.c_void_p()

    def push(self, record: bytes | WritableBuffer | np.ndarray) -> bool:
        """Push one record (bytes-like or NumPy array of record_size bytes)."""
        data = (
            bytes(np.ascontiguousarray(record).tobytes())
            if isinstance(record, np.ndarray)
            else bytes(record)
        )
        if len(data) != self.record_size:
            raise ValueError(f"record must be {self.record_size} bytes, got {len(data)}")
        ret = self._lib.kml_ring_push(self._h, data)
        if ret in (-errno.ENOSPC, -errno.EAGAIN):
            return False
        check(ret, "ring_push")
        return True

    def pop(self) -> bytes | None:
        """Pop one record, or None when the ring is empty (single consumer)."""
        ret = self._lib.kml_ring_pop(self._h, self._rec)
        if ret == -errno.EAGAIN:
            return None
        check(ret, "ring_pop")
        return self._rec.raw

    @property
    def counters(self) -> dict[str, int]:
        p, c, d = U64(), U64(), U64()
        self._lib.kml_ring_counters(self._h, C.byref(p), C.byref(c), C.byref(d))
        return {"produced": p.value, "consumed": c.value, "dropped": d.value}

    def stress(self, n_producers: int, per_producer: int) -> dict[str, int]:
        """C test entry point: ``n_producers`` pthreads push ``per_producer``
        16-byte records each while the calling thread consumes; raises
        KmlError(EPROTO) if a producer's records arrive out of order or twice.
        """
        out = (U64 * 3)()
        ret = self._lib.kml_ring_stress(self._h, n_producers, per_producer, out)
        check(ret, "ring_stress")
        return {"consumed": out[0], "pushed": out[1], "refused": out[2]}

    @property
    def shared_bytes(self) -> int:
        """Size of the shared (mmap-able) region: 256-byte header + slots."""
        return int(self._lib.kml_ring_bytes(self.capacity, self.record_size))

    def shared_header(self) -> bytes:
        """The raw 256-byte shared header (for layout checks)."""
        return C.string_at(self._lib.kml_ring_shared(self._h), 256)
