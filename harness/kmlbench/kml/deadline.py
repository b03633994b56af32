"""The deadline model's training target and meet/miss calibration, as KML
computes them (``kernel/kml/kml_dd_calib.h``).

``kmlbench train``, ``kmlctl train`` and the kernel trainer all run this one
C code, so the same samples give the same targets, residuals and threshold:
:func:`dd_targets` (lg issue us), :func:`dd_residuals` (prediction minus lg
deadline us, with the met label), :func:`dd_cal_fit` (the meet/miss
threshold, chosen for balanced accuracy), :func:`dd_calibrate` (the same
with why it refused, and the balanced accuracy and AUC it saw) and
:func:`dd_permille` (that threshold as ``decision_permille``).

The inverse is KML's too, the very code of the kernel's hot path:
:func:`dd_meets` turns predictions back into issue times (ns) and makes the
meet/miss call at a permille (``kml_dd_decide``: ``kml_dd_lg_us_to_ns`` and
``kml_dd_meets``), :func:`dd_meets_q16` the same for a Q16 model's outputs.
"""

from __future__ import annotations

import ctypes as C
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kmlbench.kml.ffi import CalResult, f32, lib, ptr, u32_count

__all__ = [
    "CAL_STATUS",
    "DD_CAL_MAX_LG",
    "DD_CAL_MIN_CLASS",
    "DD_RESID",
    "DD_SAMPLE_BYTES",
    "Calibration",
    "dd_cal_fit",
    "dd_calibrate",
    "dd_lg_us",
    "dd_meets",
    "dd_meets_q16",
    "dd_permille",
    "dd_residuals",
    "dd_targets",
]

DD_SAMPLE_BYTES = 128  # struct kml_dd_sample (kml_iosched_uapi.h)
DD_RESID = np.dtype([("r", "<i4"), ("met", "<u4")])  # struct kml_dd_resid
DD_CAL_MIN_CLASS = 32  # KML_DD_CAL_MIN_CLASS
DD_CAL_MAX_LG = 3 << 16  # KML_DD_CAL_MAX_LG: thresholds stay within a factor 8 either way
DD_CAL_ONE = float(1 << 20)  # KML_DD_CAL_ONE: 1.0 in a result's figures
# enum kml_dd_cal_status, by value: what kmlctl prints too
CAL_STATUS = ("ok", "few-met", "few-missed", "no-skill")


@dataclass(frozen=True)
class Calibration:
    """What ``kml_dd_cal_fit`` found on a set of residuals.

    ``thr`` is the threshold (Q16.16) when ``status`` is ``"ok"``, else None
    (the caller keeps its threshold): ``"few-met"`` / ``"few-missed"`` when a
    class has fewer than ``DD_CAL_MIN_CLASS``, ``"no-skill"`` when no split
    has a balanced accuracy above 0.5. ``balanced`` and ``accuracy`` are of
    the best split (0 for a rare class), ``auc`` that of the residuals as a
    score for "missed" (threshold-free; 0 without both classes).
    """

    thr: int | None
    status: str
    n_met: int
    n_missed: int
    balanced: float
    accuracy: float
    auc: float


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
        lib().kml_dd_targets(ptr(samples), u32_count(len(samples)), ptr(y))
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
        lib().kml_dd_residuals(ptr(y), ptr(samples), u32_count(len(samples)), ptr(out))
    return out


def dd_calibrate(resid: npt.ArrayLike) -> Calibration:
    """KML's calibration (``kml_dd_cal_fit``) on residuals (``DD_RESID``): the
    threshold of best balanced accuracy, or why there is none, and the figures."""
    res = np.ascontiguousarray(resid, DD_RESID)
    n = u32_count(len(res))
    scratch = np.empty_like(res)
    out = CalResult()
    ok = bool(lib().kml_dd_cal_fit(ptr(res), n, ptr(scratch), C.byref(out)))
    status = CAL_STATUS[out.status] if out.status < len(CAL_STATUS) else str(out.status)
    return Calibration(
        thr=int(out.thr) if ok else None,
        status=status,
        n_met=int(out.n_met),
        n_missed=int(out.n_missed),
        balanced=out.balanced / DD_CAL_ONE,
        accuracy=out.accuracy / DD_CAL_ONE,
        auc=out.auc / DD_CAL_ONE,
    )


def dd_cal_fit(resid: npt.ArrayLike) -> int | None:
    """The meet/miss threshold (Q16.16 lg units) on residuals (``DD_RESID``), or
    None when :func:`dd_calibrate` refuses (a class rarer than ``DD_CAL_MIN_CLASS``,
    or no split better than chance)."""
    return dd_calibrate(resid).thr


def dd_permille(thr: int) -> int:
    """decision_permille of a threshold: 1000 * 2**(thr / 65536), rounded, in [1, 64000]."""
    return int(lib().kml_dd_lg_q16_to_permille(int(thr)))


def _deadlines(deadline_ns: npt.ArrayLike, n: int) -> npt.NDArray[np.uint64]:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(deadline_ns, np.uint64), (n,)))


def _permille(permille: int) -> int:
    p = int(permille)
    if not 0 <= p < 2**32:
        raise ValueError(f"permille {p} out of range")
    return p


def dd_meets(
    y: npt.ArrayLike, deadline_ns: npt.ArrayLike, permille: int = 1000
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Issue times (ns) of float predictions ``y`` = lg(issue us) and whether each
    meets its deadline at ``permille``, as the kernel decides (``kml_dd_decide``):
    issue_ns = trunc(1000 * (2**y - 1)) in float32 (0 for y <= 0, -1 for NaN,
    saturating at y = 40), met = issue_ns <= floor(deadline_ns * permille / 1000)
    in integer ns (a NaN prediction is a predicted miss)."""
    return _decide(lib().kml_dd_decide, f32(y).reshape(-1), deadline_ns, permille)


def dd_meets_q16(
    yq: npt.ArrayLike, deadline_ns: npt.ArrayLike, permille: int = 1000
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """:func:`dd_meets` for a Q16 model's outputs (Q16.16 lg(issue us)), with the
    kernel's integer inverse (``kml_dd_decide_q16``: ``kml_dd_lg_q16_to_ns``)."""
    q = np.ascontiguousarray(np.asarray(yq, np.int32).reshape(-1))
    return _decide(lib().kml_dd_decide_q16, q, deadline_ns, permille)


def _decide(
    decide: Any, y: npt.NDArray[Any], deadline_ns: npt.ArrayLike, permille: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Call ``kml_dd_decide`` or its Q16 twin on ``y``: (issue_ns, met) arrays."""
    n = len(y)
    d = _deadlines(deadline_ns, n)
    issue = np.empty(n, np.int64)
    met = np.empty(n, np.uint8)
    if n:
        decide(ptr(y), ptr(d), n, _permille(permille), ptr(issue), ptr(met))
    return issue, met.astype(bool)
