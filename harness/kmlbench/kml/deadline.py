"""The deadline model's training target and meet/miss calibration, as KML
computes them (``kernel/kml/kml_dd_calib.h``).

``kmlbench train``, ``kmlctl train`` and the kernel trainer all run this one
C code, so the same samples give the same targets, residuals and threshold:
:func:`dd_targets` (lg issue us), :func:`dd_residuals` (prediction minus lg
deadline us, with the met label), :func:`dd_cal_fit` (the meet/miss
threshold) and :func:`dd_permille` (that threshold as ``decision_permille``).
"""

from __future__ import annotations

import ctypes as C
from typing import Any

import numpy as np
import numpy.typing as npt

from kmlbench.kml.ffi import f32, lib, ptr

__all__ = [
    "DD_CAL_MIN_CLASS",
    "DD_RESID",
    "DD_SAMPLE_BYTES",
    "dd_cal_fit",
    "dd_lg_us",
    "dd_permille",
    "dd_residuals",
    "dd_targets",
]

DD_SAMPLE_BYTES = 128  # struct kml_dd_sample (kml_iosched_uapi.h)
DD_RESID = np.dtype([("r", "<i4"), ("met", "<u4")])  # struct kml_dd_resid
DD_CAL_MIN_CLASS = 32  # KML_DD_CAL_MIN_CLASS


def _dd_samples(rows: npt.ArrayLike) -> npt.NDArray[Any]:
    arr = np.ascontiguousarray(rows)
    fields = set(arr.dtype.names or ())
    if arr.ndim != 1 or arr.dtype.itemsize != DD_SAMPLE_BYTES or "issue_ns" not in fields:
        raise ValueError(f"rows must be a 1-d array of kml_dd_sample records ({DD_SAMPLE_BYTES} B)")
    return arr


def dd_lg_us(ns: int) -> float:
    """lg(us) of a time in ns, ``log2(1 + ns / 1000)`` as KML computes it (float32)."""
    return float(lib().kml_dd_lg_us(int(ns)))


def dd_targets(rows: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The training targets of sample records: lg(issue us), float32 (``kml_dd_targets``)."""
    samples = _dd_samples(rows)
    y = np.empty(len(samples), np.float32)
    if len(samples):
        lib().kml_dd_targets(ptr(samples), len(samples), ptr(y))
    return y


def dd_residuals(y_hat: npt.ArrayLike, rows: npt.ArrayLike) -> npt.NDArray[Any]:
    """Residuals (Q16.16 ``r``) and labels (``met``) of predictions ``y_hat`` on
    sample records, as the trainers calibrate on them (``kml_dd_residuals``)."""
    samples = _dd_samples(rows)
    y = f32(y_hat).reshape(-1)
    if y.shape[0] != len(samples):
        raise ValueError(f"{y.shape[0]} predictions for {len(samples)} rows")
    out = np.empty(len(samples), DD_RESID)
    if len(samples):
        lib().kml_dd_residuals(ptr(y), ptr(samples), len(samples), ptr(out))
    return out


def dd_cal_fit(resid: npt.ArrayLike) -> int | None:
    """The meet/miss threshold (Q16.16 lg units) on residuals (``DD_RESID``), or
    None while met or missed has fewer than ``DD_CAL_MIN_CLASS`` (``kml_dd_cal_fit``)."""
    res = np.ascontiguousarray(resid, DD_RESID)
    scratch = np.empty_like(res)
    thr = C.c_int32()
    if not lib().kml_dd_cal_fit(ptr(res), len(res), ptr(scratch), C.byref(thr)):
        return None
    return int(thr.value)


def dd_permille(thr: int) -> int:
    """decision_permille of a threshold: 1000 * 2**(thr / 65536), rounded, in [1, 64000]."""
    return int(lib().kml_dd_lg_q16_to_permille(int(thr)))
