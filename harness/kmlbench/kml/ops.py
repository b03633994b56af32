"""KML's elementwise math and float layer functions, one call each, on NumPy
arrays: what ``tests/test_kml_math.py`` and ``tests/test_kml_grad.py`` check
against NumPy, below the :class:`kmlbench.kml.model.Model` level."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kmlbench.kml.ffi import ACTS, KML_F32, KML_Q16, check, f32, fptr, from_q16, lib, ptr, to_q16

__all__ = [
    "act_backward",
    "act_forward",
    "bce_backward",
    "bce_forward",
    "linear_backward",
    "linear_forward",
    "math",
    "mse_backward",
    "mse_forward",
]

F32 = npt.NDArray[np.float32]
MATH_FNS = {"exp": 0, "log": 1, "sqrt": 2, "tanh": 3, "sigmoid": 4}  # enum kml_math_fn


def math(fn: str, x: npt.ArrayLike, dtype: str = "float32") -> npt.NDArray[Any]:
    """Apply KML's ``exp|log|sqrt|tanh|sigmoid`` elementwise (float32 or fixed)."""
    if dtype == "fixed":
        xi = to_q16(x)
        y = np.empty_like(xi)
        check(lib().kml_math_apply(MATH_FNS[fn], KML_Q16, ptr(xi), ptr(y), xi.size), fn)
        return from_q16(y)
    xf = f32(x)
    yf = np.empty_like(xf)
    check(lib().kml_math_apply(MATH_FNS[fn], KML_F32, ptr(xf), ptr(yf), xf.size), fn)
    return yf


def linear_forward(x: npt.ArrayLike, w: npt.ArrayLike, b: npt.ArrayLike) -> F32:
    """``x @ w.T + b`` by ``kml_linear_forward``; x is (B, in), w is (out, in)."""
    xa, wa, ba = f32(x), f32(w), f32(b)
    out = np.empty((xa.shape[0], wa.shape[0]), np.float32)
    lib().kml_linear_forward(
        fptr(out), fptr(xa), fptr(wa), fptr(ba), xa.shape[0], xa.shape[1], wa.shape[0]
    )
    return out


def linear_backward(
    dout: npt.ArrayLike, x: npt.ArrayLike, w: npt.ArrayLike
) -> tuple[F32, F32, F32]:
    """Returns (dx, dw, db) for a linear layer."""
    da, xa, wa = f32(dout), f32(x), f32(w)
    dx = np.empty_like(xa)
    dw = np.zeros_like(wa)
    db = np.zeros(wa.shape[0], np.float32)
    lib().kml_linear_backward(
        fptr(dx), fptr(dw), fptr(db), fptr(da), fptr(xa), fptr(wa),
        xa.shape[0], xa.shape[1], wa.shape[0],
    )  # fmt: skip
    return dx, dw, db


def act_forward(act: str, x: npt.ArrayLike) -> F32:
    """An activation (``ACTS``) applied elementwise."""
    xa = f32(x)
    out = np.empty_like(xa)
    lib().kml_act_forward(ACTS[act], fptr(out), fptr(xa), xa.size)
    return out


def act_backward(act: str, dout: npt.ArrayLike, x: npt.ArrayLike) -> F32:
    """The input gradient of an activation given its output gradient ``dout``."""
    xa, da = f32(x), f32(dout)
    out = act_forward(act, xa)
    din = np.empty_like(xa)
    lib().kml_act_backward(ACTS[act], fptr(din), fptr(da), fptr(xa), fptr(out), xa.size)
    return din


def mse_forward(pred: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Mean squared error."""
    pa, ya = f32(pred), f32(y)
    return float(lib().kml_mse_forward(fptr(pa), fptr(ya), pa.size))


def mse_backward(pred: npt.ArrayLike, y: npt.ArrayLike) -> F32:
    """Gradient of the mean squared error with respect to ``pred``."""
    pa, ya = f32(pred), f32(y)
    d = np.empty_like(pa)
    lib().kml_mse_backward(fptr(d), fptr(pa), fptr(ya), pa.size)
    return d


def bce_forward(p: npt.ArrayLike, y: npt.ArrayLike, pos_weight: float = 1.0) -> float:
    """Binary cross-entropy, the y=1 terms scaled by ``pos_weight``."""
    pa, ya = f32(p), f32(y)
    return float(lib().kml_bce_forward(fptr(pa), fptr(ya), pa.size, pos_weight))


def bce_backward(p: npt.ArrayLike, y: npt.ArrayLike, pos_weight: float = 1.0) -> F32:
    """Gradient of the binary cross-entropy with respect to ``p``."""
    pa, ya = f32(p), f32(y)
    d = np.empty_like(pa)
    lib().kml_bce_backward(fptr(d), fptr(pa), fptr(ya), pa.size, pos_weight)
    return d
