"""Loading ``libkml.so`` with ctypes: the C signatures, structs, enum codes,
errors and array marshalling the other ``kmlbench.kml`` modules call through.

ctypes releases the GIL during every call.  The library is built on first
use by :func:`kmlbench.kml.build.build_libkml`.  ``dtype="fixed"`` values
cross the boundary as Q16.16 ``int32`` (:func:`to_q16`, :func:`from_q16`).
"""

from __future__ import annotations

import ctypes as C
import errno
import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from kmlbench.kml.build import build_libkml

__all__ = [
    "CalResult",
    "FeatIn",
    "FeatState",
    "KmlError",
    "from_q16",
    "lib",
    "model_file_to_q16",
    "to_q16",
]

# enum kml_dtype, enum kml_act and KML_MAX_LAYERS (kernel/kml/kml.h)
KML_F32, KML_Q16 = 0, 1
ACTS = {"none": 0, "linear": 0, "identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
MAX_LAYERS = 4
Q16_ONE = 65536.0
Q16_MAX = (2**31 - 1) / Q16_ONE


class KmlError(OSError):
    """A KML call failed; ``errno`` holds the (positive) error number."""


class ModelCfg(C.Structure):
    """``struct kml_model_cfg``."""

    _fields_ = [
        ("dtype", C.c_uint32),
        ("arch", C.c_uint32),
        ("n_layers", C.c_uint32),
        ("sizes", C.c_uint32 * (MAX_LAYERS + 1)),
        ("hidden_act", C.c_uint32),
        ("out_act", C.c_uint32),
        ("norm", C.c_uint32),
        ("seed", C.c_uint32),
    ]


class TrainCfg(C.Structure):
    """``struct kml_train_cfg`` (real numbers as Q32.32)."""

    _fields_ = [
        ("optimizer", C.c_uint32),
        ("loss", C.c_uint32),
        ("max_batch", C.c_uint32),
        ("reserved", C.c_uint32),
        ("lr", C.c_int64),
        ("momentum", C.c_int64),
        ("beta1", C.c_int64),
        ("beta2", C.c_int64),
        ("eps", C.c_int64),
        ("pos_weight", C.c_int64),
    ]


class FeatState(C.Structure):
    """``struct kml_dd_feat_state`` (``kernel/kml/kml_dd_feat.h``): a queue's state."""

    _fields_ = [
        ("last_insert_ns", C.c_uint64),
        ("last_dispatch_ns", C.c_uint64),
        ("last_end", C.c_uint64),
        ("issue_ewma_ns", C.c_uint64 * 2),
        ("dispatch_gap_ewma_ns", C.c_uint64),
        ("miss_ewma", C.c_uint32 * 2),
    ]


class FeatIn(C.Structure):
    """``struct kml_dd_feat_in``: a request at insert and what its queue holds."""

    _fields_ = [
        ("insert_ns", C.c_uint64),
        ("sector", C.c_uint64),
        ("capacity", C.c_uint64),
        ("deadline_ns", C.c_uint64),
        ("head_insert_ns", C.c_uint64),
        ("bytes", C.c_uint32),
        ("queued", C.c_int32 * 2),
        ("inflight", C.c_int32),
        ("op", C.c_uint8),
        ("same_dir", C.c_uint8),
        ("has_head", C.c_uint8),
    ]


class CalResult(C.Structure):
    """``struct kml_dd_cal_result``: what the calibration found (``kml_dd_calib.h``)."""

    _fields_ = [
        ("thr", C.c_int32),
        ("status", C.c_uint32),
        ("n_met", C.c_uint32),
        ("n_missed", C.c_uint32),
        ("balanced", C.c_uint32),
        ("accuracy", C.c_uint32),
        ("auc", C.c_uint32),
        ("reserved", C.c_uint32),
    ]


_P = C.c_void_p
_U32 = C.c_uint32
U64 = C.c_uint64
_INT = C.c_int
FP = C.POINTER(C.c_float)
_SIGS: dict[str, tuple[Any, list[Any]]] = {
    "kml_model_create": (_INT, [C.POINTER(ModelCfg), C.POINTER(_P)]),
    "kml_model_free": (None, [_P]),
    "kml_model_footprint": (C.c_size_t, [_P]),
    "kml_model_n_params": (_U32, [_P]),
    "kml_model_params": (_P, [_P]),
    "kml_model_grads": (_P, [_P]),
    "kml_model_get_cfg": (_INT, [_P, C.POINTER(ModelCfg)]),
    "kml_model_norm_update": (_INT, [_P, _P, _U32]),
    "kml_model_norm_get": (_INT, [_P, _P, _P]),
    "kml_model_predict": (_INT, [_P, _P, _U32, _P]),
    "kml_model_train_setup": (_INT, [_P, C.POINTER(TrainCfg)]),
    "kml_model_forward": (_INT, [_P, _P, _U32, _P, _P]),
    "kml_model_backward": (_INT, [_P, _P, _U32]),
    "kml_model_step": (_INT, [_P]),
    "kml_model_train_batch": (_INT, [_P, _P, _P, _U32, _P]),
    "kml_model_file_size": (C.c_size_t, [_P]),
    "kml_model_save": (C.c_long, [_P, _P, C.c_size_t]),
    "kml_model_load": (_INT, [_P, C.c_size_t, C.POINTER(_P)]),
    "kml_model_file_to_q16": (_INT, [_P, C.c_size_t]),
    "kml_crc32": (_U32, [_U32, _P, C.c_size_t]),
    "kml_math_apply": (_INT, [_U32, _U32, _P, _P, _U32]),
    "kml_linear_forward": (None, [FP, FP, FP, FP, _U32, _U32, _U32]),
    "kml_linear_backward": (None, [FP, FP, FP, FP, FP, FP, _U32, _U32, _U32]),
    "kml_act_forward": (None, [_U32, FP, FP, _U32]),
    "kml_act_backward": (None, [_U32, FP, FP, FP, FP, _U32]),
    "kml_mse_forward": (C.c_float, [FP, FP, _U32]),
    "kml_mse_backward": (None, [FP, FP, FP, _U32]),
    "kml_bce_forward": (C.c_float, [FP, FP, _U32, C.c_float]),
    "kml_bce_backward": (None, [FP, FP, FP, _U32, C.c_float]),
    "kml_ring_create": (_INT, [C.POINTER(_P), _U32, _U32, _U32]),
    "kml_ring_destroy": (None, [_P]),
    "kml_ring_init": (_INT, [_P, _P, C.c_size_t, _U32, _U32, _U32]),
    "kml_ring_attach": (_INT, [_P, _P, C.c_size_t]),
    "kml_ring_push": (_INT, [_P, _P]),
    "kml_ring_pop": (_INT, [_P, _P]),
    "kml_ring_counters": (None, [_P, C.POINTER(U64), C.POINTER(U64), C.POINTER(U64)]),
    "kml_ring_shared": (_P, [_P]),
    "kml_ring_bytes": (C.c_size_t, [_U32, _U32]),
    "kml_ring_stress": (_INT, [_P, _U32, _U32, C.POINTER(U64)]),
    "kml_bench_predict": (U64, [_P, _P, _U32, _U32, _P]),
    "kml_bench_train": (U64, [_P, _P, _P, _U32, _U32, _U32]),
    "kml_dd_lg_us": (C.c_float, [U64]),
    "kml_dd_targets": (None, [_P, _U32, _P]),
    "kml_dd_residuals": (None, [_P, _P, _U32, _P]),
    "kml_dd_cal_fit": (C.c_bool, [_P, _U32, _P, C.POINTER(CalResult)]),
    "kml_dd_lg_q16_to_permille": (_U32, [C.c_int32]),
    "kml_dd_decide": (None, [_P, _P, _U32, _U32, _P, _P]),
    "kml_dd_decide_q16": (None, [_P, _P, _U32, _U32, _P, _P]),
    "kml_dd_lg": (C.c_int32, [U64]),
    "kml_dd_feat_insert": (None, [C.POINTER(FeatState), C.POINTER(FeatIn), _P]),
    "kml_dd_feat_dispatch": (None, [C.POINTER(FeatState), C.c_uint8, U64, _U32, U64, U64, U64]),
}

_lib: C.CDLL | None = None
_lib_lock = threading.Lock()


def lib() -> C.CDLL:
    """The loaded libkml.so (built on first use)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            handle = C.CDLL(str(build_libkml()))
            for name, (res, args) in _SIGS.items():
                fn = getattr(handle, name)
                fn.restype = res
                fn.argtypes = args
            _lib = handle
    return _lib


def check(ret: int, what: str) -> int:
    """``ret`` if it is not a negative errno, else raise :class:`KmlError`."""
    if ret < 0:
        err = -ret
        raise KmlError(err, f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")
    return ret


def q32(x: float) -> int:
    """A real number as Q32.32 (``struct kml_train_cfg``)."""
    return round(float(x) * 2**32)


def u32_count(n: int) -> int:
    """``n`` as the u32 row count KML's calls take; ctypes would cut a larger
    one short (2^32 + 5 rows passed as 5), so it is refused."""
    if n > 0xFFFFFFFF:
        raise ValueError(f"{n} rows: KML takes at most {0xFFFFFFFF} in one call")
    return n


def ptr(a: npt.NDArray[Any]) -> int:
    """The address of an array's data, for a ``void *`` argument."""
    return int(a.ctypes.data)


def fptr(a: npt.NDArray[np.float32]) -> Any:
    """The data of a float32 array as a ``float *`` argument."""
    return a.ctypes.data_as(FP)


def f32(a: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """A C-contiguous float32 copy (or view) of ``a``."""
    return np.ascontiguousarray(a, dtype=np.float32)


def to_q16(a: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """Float array -> Q16.16 int32 (rounded, saturated)."""
    x = np.asarray(a, dtype=np.float64) * Q16_ONE
    return np.ascontiguousarray(np.clip(np.rint(x), -(2**31), 2**31 - 1).astype(np.int32))


def model_file_to_q16(data: bytes) -> bytes:
    """A float model file as the same model in Q16.16 (``kml_model_file_to_q16``,
    the conversion kmlctl's ``--publish-dtype fixed`` and the kernel trainer's
    ``ktrainer_publish_q16`` make): each weight, bias and mean as
    :func:`to_q16` rounds it. Raises :class:`KmlError` (EINVAL, EBADMSG, EDOM)."""
    buf = C.create_string_buffer(bytes(data), len(data))
    check(int(lib().kml_model_file_to_q16(buf, len(data))), "float model file to Q16.16")
    return buf.raw


def from_q16(a: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Q16.16 int32 array -> float64."""
    return np.asarray(a, dtype=np.float64) / Q16_ONE
