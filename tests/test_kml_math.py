"""KML's libm-free math against libm (NumPy, double precision).

The bounds asserted here are the ones documented in docs/kml.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from kmlbench.kml import ops
from kmlbench.kml.ffi import from_q16, to_q16

N = 200_000

# fn: (sampling, lo, hi, max relative error, max ulps) -- docs/kml.md table
BOUNDS = {
    "exp": ("lin", -87.3, 88.7, 2e-7, 2),
    "log": ("log", 1e-37, 3e38, 3e-7, 2),
    "sqrt": ("log", 1e-37, 3e38, 1.2e-7, 1),
    "tanh": ("lin", -12.0, 12.0, 3e-7, 2),
    "sigmoid": ("lin", -80.0, 80.0, 3e-7, 2),
}
REF = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def ordered(v):
        i = np.asarray(v, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(ordered(a) - ordered(b))


def sample(kind: str, lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    if kind == "log":
        x = np.exp(rng.uniform(np.log(lo), np.log(hi), N))
        near_one = np.linspace(0.5, 2.0, 20_001)
        x = np.concatenate([x, near_one])
    else:
        x = np.concatenate([rng.uniform(lo, hi, N), np.linspace(-1, 1, 20_001)])
    return x.astype(np.float32)


@pytest.mark.parametrize("fn", sorted(BOUNDS))
def test_float_accuracy_against_libm(fn):
    kind, lo, hi, max_rel, max_ulp = BOUNDS[fn]
    x = sample(kind, lo, hi)
    got = ops.math(fn, x).astype(np.float64)
    want = REF[fn](x.astype(np.float64))
    nz = want != 0
    rel = np.abs(got[nz] - want[nz]) / np.abs(want[nz])
    assert rel.max() <= max_rel, f"{fn}: max relative error {rel.max():.3g}"
    assert ulps(got, want.astype(np.float32)).max() <= max_ulp


def test_float_special_values():
    inf, nan = np.inf, np.nan
    assert ops.math("exp", [100.0])[0] == inf
    assert ops.math("exp", [-100.0])[0] == 0.0
    assert ops.math("exp", [0.0])[0] == 1.0
    assert ops.math("log", [0.0])[0] == -inf
    assert np.isnan(ops.math("log", [-1.0])[0])
    assert ops.math("log", [1.0])[0] == 0.0
    assert ops.math("log", [inf])[0] == inf
    assert np.isnan(ops.math("sqrt", [-1.0])[0])
    assert ops.math("sqrt", [inf])[0] == inf
    assert ops.math("tanh", [50.0])[0] == 1.0 and ops.math("tanh", [-50.0])[0] == -1.0
    assert ops.math("sigmoid", [0.0])[0] == 0.5
    for fn in REF:
        assert np.isnan(ops.math(fn, [nan])[0])
    # subnormal inputs
    x = np.array([1e-40, 1e-45], np.float32)
    np.testing.assert_allclose(ops.math("sqrt", x), np.sqrt(x.astype(np.float64)), rtol=2e-7)
    np.testing.assert_allclose(ops.math("log", x), np.log(x.astype(np.float64)), rtol=2e-7)


# fn: (lo, hi, max abs error in Q16 units [1/65536]) -- docs/kml.md table
Q16_BOUNDS = {
    "exp": (-12.0, 10.3, None),  # relative: 2 ulp + 2.5e-4 relative (input rounding)
    "sigmoid": (-20.0, 20.0, 2),
    "tanh": (-10.0, 10.0, 2),
    "log": (2.0**-16, 32767.0, 3),
    "sqrt": (0.0, 32767.0, 1),
}


@pytest.mark.parametrize("fn", sorted(Q16_BOUNDS))
def test_q16_accuracy(fn):
    lo, hi, max_q = Q16_BOUNDS[fn]
    rng = np.random.default_rng(3)
    x = from_q16(to_q16(rng.uniform(lo, hi, 100_000)))  # exact Q16 inputs
    x = x[x > 0] if fn in ("log", "sqrt") else x
    got = ops.math(fn, x, dtype="fixed")
    want = REF[fn](x)
    err = np.abs(got - want) * 65536
    if max_q is None:
        assert (err <= 2 + 2.5e-4 * want * 65536).all(), err.max()
    else:
        assert err.max() <= max_q, f"{fn}: {err.max():.2f} Q16 ulps"


@pytest.mark.parametrize("n", [1, 2047, 2048, 2049, 4096 + 3, 10_000])
def test_float_apply_chunks_match_elementwise(n):
    """kml_math_apply splits float arrays into bounded FPU sections (about
    KML_FPU_PARAMS = 2048 elements); the split must not change a result."""
    x = np.random.default_rng(n).uniform(-5, 5, n).astype(np.float32)
    for fn in sorted(BOUNDS):
        xin = np.abs(x) + np.float32(1e-3) if fn in ("log", "sqrt") else x
        whole = ops.math(fn, xin)
        pieces = np.concatenate([ops.math(fn, xin[i : i + 1000]) for i in range(0, n, 1000)])
        np.testing.assert_array_equal(whole.view(np.uint32), pieces.view(np.uint32))
