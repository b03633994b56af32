"""Python binding to the user-space KML library (``libkml.so``).

The library is built from ``kernel/kml/`` -- the very sources the kernel
compiles -- on first use (:func:`build_libkml`) and loaded with ctypes, which
releases the GIL during every call.  Arrays go in and out as NumPy arrays.

    m = Model.mlp(8, hidden=[16], activation="relu", output="sigmoid")
    m.fit(X, y, epochs=20, lr=1e-2, batch=32, loss="bce", pos_weight=4.0)
    p = m.predict(X)
    m.save("model.kml"); m2 = Model.load("model.kml")

``dtype="fixed"`` runs everything in Q16.16 integer arithmetic (the path the
kernel can use without an FPU section); inputs and outputs are converted at
the boundary and the values must lie within +-32767.

``dd_targets``, ``dd_residuals``, ``dd_cal_fit`` and ``dd_permille`` are the
deadline model's target and meet/miss calibration
(``kernel/kml/kml_dd_calib.h``), the code the kernel trainer and ``kmlctl
train`` run.
"""

from __future__ import annotations

import ctypes as C
import errno as _errno
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kmlbench import paths, procs

__all__ = [
    "KmlBuildError",
    "KmlError",
    "Model",
    "Ring",
    "build_libkml",
    "dd_cal_fit",
    "dd_lg_us",
    "dd_permille",
    "dd_residuals",
    "dd_targets",
    "lib",
    "math",
]

KML_F32, KML_Q16 = 0, 1
ACTS = {"none": 0, "linear": 0, "identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
ARCH_LINEAR, ARCH_LOGISTIC, ARCH_MLP = 0, 1, 2
LOSSES = {"mse": 0, "bce": 1}
OPTIMIZERS = {"sgd": 0, "adam": 1}
MATH_FNS = {"exp": 0, "log": 1, "sqrt": 2, "tanh": 3, "sigmoid": 4}
RING_MODES = {"blocking": 0, "dropping": 1}
MAX_LAYERS = 4
Q16_ONE = 65536.0
Q16_MAX = (2**31 - 1) / Q16_ONE


class KmlError(OSError):
    """A KML call failed; ``errno`` holds the (positive) error number."""


class KmlBuildError(RuntimeError):
    """libkml.so could not be built (missing compiler, compile error)."""


# --------------------------------------------------------------------- build


def _sources() -> list[Path]:
    src = paths.KML_SRC_DIR
    return sorted([*src.glob("*.c"), *src.glob("*.h"), src / "Makefile.user", src / "Makefile"])


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in _sources():
        if p.exists():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _lib_root() -> Path:
    root = Path(__file__).resolve().parent / "_lib"
    try:
        root.mkdir(exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return paths.cache_dir() / "libkml"


def build_libkml(force: bool = False, cc: str | None = None) -> Path:
    """Build ``libkml.so`` from ``kernel/kml`` into ``harness/kmlbench/_lib``.

    Equivalent to ``make -C kernel/kml -f Makefile.user OUT=<dir>``.  The
    result is keyed by a hash of the sources, so edits trigger a rebuild and
    concurrent users never see a half-written library.  ``KML_LIB`` in the
    environment names a prebuilt library instead.
    """
    env_lib = os.environ.get("KML_LIB")
    if env_lib and not force:
        return Path(env_lib)
    out_dir = _lib_root() / _source_hash()
    target = out_dir / "libkml.so"
    if target.exists() and not force:
        return target
    cc = cc or os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise KmlBuildError(
            f"cannot build libkml.so: C compiler {cc!r} not found in PATH "
            "(install gcc, e.g. `apt-get install gcc make`, or set CC)"
        )
    if shutil.which("make") is None:
        raise KmlBuildError("cannot build libkml.so: 'make' not found in PATH")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        cmd = ["make", "-s", "-C", str(paths.KML_SRC_DIR), "-f", "Makefile.user", f"OUT={tmp}"]
        proc = procs.run(
            cmd, capture_output=True, text=True, env={**os.environ, "CC": cc}, check=False
        )
        if proc.returncode != 0:
            raise KmlBuildError(
                f"building libkml.so failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}"
            )
        os.replace(Path(tmp) / "libkml.so", target)
    return target


# ------------------------------------------------------------------ ctypes


class _ModelCfg(C.Structure):
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


class _TrainCfg(C.Structure):
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


_P = C.c_void_p
_U32 = C.c_uint32
_U64 = C.c_uint64
_INT = C.c_int
_FP = C.POINTER(C.c_float)
_SIGS: dict[str, tuple[object, list[object]]] = {
    "kml_model_create": (_INT, [C.POINTER(_ModelCfg), C.POINTER(_P)]),
    "kml_model_free": (None, [_P]),
    "kml_model_footprint": (C.c_size_t, [_P]),
    "kml_model_n_params": (_U32, [_P]),
    "kml_model_params": (_P, [_P]),
    "kml_model_grads": (_P, [_P]),
    "kml_model_get_cfg": (_INT, [_P, C.POINTER(_ModelCfg)]),
    "kml_model_norm_update": (_INT, [_P, _P, _U32]),
    "kml_model_norm_get": (_INT, [_P, _P, _P]),
    "kml_model_predict": (_INT, [_P, _P, _U32, _P]),
    "kml_model_train_setup": (_INT, [_P, C.POINTER(_TrainCfg)]),
    "kml_model_forward": (_INT, [_P, _P, _U32, _P, _P]),
    "kml_model_backward": (_INT, [_P, _P, _U32]),
    "kml_model_step": (_INT, [_P]),
    "kml_model_train_batch": (_INT, [_P, _P, _P, _U32, _P]),
    "kml_model_file_size": (C.c_size_t, [_P]),
    "kml_model_save": (C.c_long, [_P, _P, C.c_size_t]),
    "kml_model_load": (_INT, [_P, C.c_size_t, C.POINTER(_P)]),
    "kml_crc32": (_U32, [_U32, _P, C.c_size_t]),
    "kml_math_apply": (_INT, [_U32, _U32, _P, _P, _U32]),
    "kml_linear_forward": (None, [_FP, _FP, _FP, _FP, _U32, _U32, _U32]),
    "kml_linear_backward": (None, [_FP, _FP, _FP, _FP, _FP, _FP, _U32, _U32, _U32]),
    "kml_act_forward": (None, [_U32, _FP, _FP, _U32]),
    "kml_act_backward": (None, [_U32, _FP, _FP, _FP, _FP, _U32]),
    "kml_mse_forward": (C.c_float, [_FP, _FP, _U32]),
    "kml_mse_backward": (None, [_FP, _FP, _FP, _U32]),
    "kml_bce_forward": (C.c_float, [_FP, _FP, _U32, C.c_float]),
    "kml_bce_backward": (None, [_FP, _FP, _FP, _U32, C.c_float]),
    "kml_ring_create": (_INT, [C.POINTER(_P), _U32, _U32, _U32]),
    "kml_ring_destroy": (None, [_P]),
    "kml_ring_init": (_INT, [_P, _P, C.c_size_t, _U32, _U32, _U32]),
    "kml_ring_attach": (_INT, [_P, _P, C.c_size_t]),
    "kml_ring_push": (_INT, [_P, _P]),
    "kml_ring_pop": (_INT, [_P, _P]),
    "kml_ring_counters": (None, [_P, C.POINTER(_U64), C.POINTER(_U64), C.POINTER(_U64)]),
    "kml_ring_shared": (_P, [_P]),
    "kml_ring_bytes": (C.c_size_t, [_U32, _U32]),
    "kml_ring_stress": (_INT, [_P, _U32, _U32, C.POINTER(_U64)]),
    "kml_bench_predict": (_U64, [_P, _P, _U32, _U32, _P]),
    "kml_bench_train": (_U64, [_P, _P, _P, _U32, _U32, _U32]),
    "kml_dd_lg_us": (C.c_float, [_U64]),
    "kml_dd_targets": (None, [_P, _U32, _P]),
    "kml_dd_residuals": (None, [_P, _P, _U32, _P]),
    "kml_dd_cal_fit": (C.c_bool, [_P, _U32, _P, C.POINTER(C.c_int32)]),
    "kml_dd_lg_q16_to_permille": (_U32, [C.c_int32]),
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


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret
        raise KmlError(err, f"{what}: {os.strerror(err)} ({_errno.errorcode.get(err, err)})")
    return ret


def _q32(x: float) -> int:
    return round(float(x) * 2**32)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _fptr(a: np.ndarray):
    return a.ctypes.data_as(_FP)


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def to_q16(a) -> np.ndarray:
    """Float array -> Q16.16 int32 (rounded, saturated)."""
    x = np.asarray(a, dtype=np.float64) * Q16_ONE
    return np.ascontiguousarray(np.clip(np.rint(x), -(2**31), 2**31 - 1).astype(np.int32))


def from_q16(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64) / Q16_ONE


# -------------------------------------------------------------------- math


def math(fn: str, x, dtype: str = "float32") -> np.ndarray:
    """Apply KML's ``exp|log|sqrt|tanh|sigmoid`` elementwise (float32 or fixed)."""
    if dtype == "fixed":
        xi = to_q16(x)
        y = np.empty_like(xi)
        _check(lib().kml_math_apply(MATH_FNS[fn], KML_Q16, _ptr(xi), _ptr(y), xi.size), fn)
        return from_q16(y)
    xf = _f32(x)
    yf = np.empty_like(xf)
    _check(lib().kml_math_apply(MATH_FNS[fn], KML_F32, _ptr(xf), _ptr(yf), xf.size), fn)
    return yf


# ------------------------------------------- deadline target and calibration

DD_SAMPLE_BYTES = 128  # struct kml_dd_sample (kml_iosched_uapi.h)
DD_RESID = np.dtype([("r", "<i4"), ("met", "<u4")])  # struct kml_dd_resid
DD_CAL_MIN_CLASS = 32  # KML_DD_CAL_MIN_CLASS


def _dd_samples(rows) -> np.ndarray:
    rows = np.ascontiguousarray(rows)
    fields = set(rows.dtype.names or ())
    if rows.ndim != 1 or rows.dtype.itemsize != DD_SAMPLE_BYTES or "issue_ns" not in fields:
        raise ValueError(f"rows must be a 1-d array of kml_dd_sample records ({DD_SAMPLE_BYTES} B)")
    return rows


def dd_lg_us(ns: int) -> float:
    """lg(us) of a time in ns, ``log2(1 + ns / 1000)`` as KML computes it (float32)."""
    return float(lib().kml_dd_lg_us(int(ns)))


def dd_targets(rows) -> np.ndarray:
    """The training targets of sample records: lg(issue us), float32 (``kml_dd_targets``)."""
    rows = _dd_samples(rows)
    y = np.empty(len(rows), np.float32)
    if len(rows):
        lib().kml_dd_targets(_ptr(rows), len(rows), _ptr(y))
    return y


def dd_residuals(y_hat, rows) -> np.ndarray:
    """Residuals (Q16.16 ``r``) and labels (``met``) of predictions ``y_hat`` on
    sample records, as the trainers calibrate on them (``kml_dd_residuals``)."""
    rows = _dd_samples(rows)
    y = _f32(y_hat).reshape(-1)
    if y.shape[0] != len(rows):
        raise ValueError(f"{y.shape[0]} predictions for {len(rows)} rows")
    out = np.empty(len(rows), DD_RESID)
    if len(rows):
        lib().kml_dd_residuals(_ptr(y), _ptr(rows), len(rows), _ptr(out))
    return out


def dd_cal_fit(resid) -> int | None:
    """The meet/miss threshold (Q16.16 lg units) on residuals (``DD_RESID``), or
    None while met or missed has fewer than ``DD_CAL_MIN_CLASS`` (``kml_dd_cal_fit``)."""
    resid = np.ascontiguousarray(resid, DD_RESID)
    scratch = np.empty_like(resid)
    thr = C.c_int32()
    if not lib().kml_dd_cal_fit(_ptr(resid), len(resid), _ptr(scratch), C.byref(thr)):
        return None
    return int(thr.value)


def dd_permille(thr: int) -> int:
    """decision_permille of a threshold: 1000 * 2**(thr / 65536), rounded, in [1, 64000]."""
    return int(lib().kml_dd_lg_q16_to_permille(int(thr)))


# ----------------------------------------------------- float layer functions


def linear_forward(x, w, b) -> np.ndarray:
    """``x @ w.T + b`` by ``kml_linear_forward``; x is (B, in), w is (out, in)."""
    x, w, b = _f32(x), _f32(w), _f32(b)
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    lib().kml_linear_forward(
        _fptr(out), _fptr(x), _fptr(w), _fptr(b), x.shape[0], x.shape[1], w.shape[0]
    )
    return out


def linear_backward(dout, x, w) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (dx, dw, db) for a linear layer."""
    dout, x, w = _f32(dout), _f32(x), _f32(w)
    dx = np.empty_like(x)
    dw = np.zeros_like(w)
    db = np.zeros(w.shape[0], np.float32)
    lib().kml_linear_backward(
        _fptr(dx), _fptr(dw), _fptr(db), _fptr(dout), _fptr(x), _fptr(w),
        x.shape[0], x.shape[1], w.shape[0],
    )  # fmt: skip
    return dx, dw, db


def act_forward(act: str, x) -> np.ndarray:
    x = _f32(x)
    out = np.empty_like(x)
    lib().kml_act_forward(ACTS[act], _fptr(out), _fptr(x), x.size)
    return out


def act_backward(act: str, dout, x) -> np.ndarray:
    x, dout = _f32(x), _f32(dout)
    out = act_forward(act, x)
    din = np.empty_like(x)
    lib().kml_act_backward(ACTS[act], _fptr(din), _fptr(dout), _fptr(x), _fptr(out), x.size)
    return din


def mse_forward(pred, y) -> float:
    pred, y = _f32(pred), _f32(y)
    return float(lib().kml_mse_forward(_fptr(pred), _fptr(y), pred.size))


def mse_backward(pred, y) -> np.ndarray:
    pred, y = _f32(pred), _f32(y)
    d = np.empty_like(pred)
    lib().kml_mse_backward(_fptr(d), _fptr(pred), _fptr(y), pred.size)
    return d


def bce_forward(p, y, pos_weight: float = 1.0) -> float:
    p, y = _f32(p), _f32(y)
    return float(lib().kml_bce_forward(_fptr(p), _fptr(y), p.size, pos_weight))


def bce_backward(p, y, pos_weight: float = 1.0) -> np.ndarray:
    p, y = _f32(p), _f32(y)
    d = np.empty_like(p)
    lib().kml_bce_backward(_fptr(d), _fptr(p), _fptr(y), p.size, pos_weight)
    return d


# ------------------------------------------------------------------- model


class Model:
    """A KML model (linear / logistic regression or a small MLP)."""

    def __init__(self, handle: int) -> None:
        """Wrap a ``struct kml_model *`` (use the classmethods to build one)."""
        self._lib = lib()
        self._h = C.c_void_p(handle)
        self._train_key: tuple | None = None
        cfg = _ModelCfg()
        self._lib.kml_model_get_cfg(self._h, C.byref(cfg))
        self._cfg = cfg
        # cached: ctypes field access is slow on the per-call path
        self._sizes = [int(cfg.sizes[i]) for i in range(cfg.n_layers + 1)]
        self._fixed = cfg.dtype == KML_Q16
        self._predict = self._lib.kml_model_predict
        # the small-batch buffers exist from construction: allocated lazily, two
        # threads' first predictions could each install theirs under the other
        self._small_lock = threading.Lock()
        if not self._fixed:
            self._small_buffers()

    # ---- construction
    @classmethod
    def _create(
        cls,
        arch: int,
        sizes: Sequence[int],
        hidden_act: str,
        out_act: str,
        dtype: str,
        normalize: bool,
        seed: int,
    ) -> Model:
        if dtype not in ("float32", "fixed"):
            raise ValueError(f"dtype must be 'float32' or 'fixed', not {dtype!r}")
        if len(sizes) - 1 > MAX_LAYERS:
            raise ValueError(f"at most {MAX_LAYERS} layers")
        if hidden_act not in ACTS or out_act not in ACTS:
            raise ValueError(f"activations must be among {sorted(ACTS)}")
        cfg = _ModelCfg()
        cfg.dtype = KML_Q16 if dtype == "fixed" else KML_F32
        cfg.arch = arch
        cfg.n_layers = len(sizes) - 1
        for i, s in enumerate(sizes):
            cfg.sizes[i] = int(s)
        cfg.hidden_act = ACTS[hidden_act]
        cfg.out_act = ACTS[out_act]
        cfg.norm = 1 if normalize else 0
        cfg.seed = int(seed) & 0xFFFFFFFF
        h = C.c_void_p()
        _check(lib().kml_model_create(C.byref(cfg), C.byref(h)), "kml_model_create")
        return cls(h.value)

    @classmethod
    def linear(
        cls, n_inputs: int, *, dtype: str = "float32", normalize: bool = False, seed: int = 1
    ) -> Model:
        return cls._create(ARCH_LINEAR, [n_inputs, 1], "none", "none", dtype, normalize, seed)

    @classmethod
    def logistic(
        cls, n_inputs: int, *, dtype: str = "float32", normalize: bool = False, seed: int = 1
    ) -> Model:
        return cls._create(ARCH_LOGISTIC, [n_inputs, 1], "none", "sigmoid", dtype, normalize, seed)

    @classmethod
    def mlp(
        cls,
        n_inputs: int,
        hidden: Sequence[int] = (16,),
        activation: str = "relu",
        output: str = "linear",
        *,
        n_outputs: int = 1,
        dtype: str = "float32",
        normalize: bool = False,
        seed: int = 1,
    ) -> Model:
        sizes = [n_inputs, *hidden, n_outputs]
        return cls._create(ARCH_MLP, sizes, activation, output, dtype, normalize, seed)

    def __del__(self) -> None:
        h = getattr(self, "_h", None)
        if h is not None and h.value:
            self._lib.kml_model_free(h)
            self._h = C.c_void_p()

    # ---- properties
    @property
    def dtype(self) -> str:
        return "fixed" if self._fixed else "float32"

    @property
    def sizes(self) -> list[int]:
        return list(self._sizes)

    @property
    def n_inputs(self) -> int:
        return self._sizes[0]

    @property
    def n_outputs(self) -> int:
        return self._sizes[-1]

    @property
    def output(self) -> str:
        return "sigmoid" if self._cfg.out_act == ACTS["sigmoid"] else "linear"

    @property
    def footprint_bytes(self) -> int:
        """Bytes of memory the model holds in the library (training state included)."""
        return int(self._lib.kml_model_footprint(self._h))

    @property
    def n_params(self) -> int:
        return int(self._lib.kml_model_n_params(self._h))

    def _raw(self, ptr: int | None) -> np.ndarray:
        if not ptr:
            raise KmlError(_errno.EINVAL, "no such buffer (call fit/train_setup first)")
        ctype = C.c_int32 if self._cfg.dtype == KML_Q16 else C.c_float
        buf = (ctype * self.n_params).from_address(ptr)
        return np.ctypeslib.as_array(buf)

    @property
    def params(self) -> np.ndarray:
        """Flat parameters as float64 copies: per layer W[out][in] then b[out]."""
        raw = self._raw(self._lib.kml_model_params(self._h))
        return from_q16(raw) if self.dtype == "fixed" else raw.astype(np.float64)

    @params.setter
    def params(self, values) -> None:
        raw = self._raw(self._lib.kml_model_params(self._h))
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size != raw.size:
            raise ValueError(f"expected {raw.size} parameters, got {v.size}")
        raw[:] = to_q16(v) if self.dtype == "fixed" else v.astype(np.float32)

    @property
    def grads(self) -> np.ndarray:
        """Accumulated gradients (float64 copy) since the last step."""
        ptr = self._lib.kml_model_grads(self._h)
        if not ptr:
            raise KmlError(_errno.EINVAL, "no gradients before train_setup")
        if self.dtype == "fixed":
            buf = (C.c_int64 * self.n_params).from_address(ptr)
            return np.ctypeslib.as_array(buf).astype(np.float64) / 2**32
        return self._raw(ptr).astype(np.float64)

    def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W, b) per layer, float64 copies."""
        p, out, off = self.params, [], 0
        s = self.sizes
        for i in range(1, len(s)):
            w = p[off : off + s[i] * s[i - 1]].reshape(s[i], s[i - 1])
            off += s[i] * s[i - 1]
            b = p[off : off + s[i]]
            off += s[i]
            out.append((w, b))
        return out

    # ---- conversions
    def _in(self, X) -> np.ndarray:
        n_in = self._sizes[0]
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(1, -1) if X.size == n_in else X.reshape(-1, 1)
        if X.ndim != 2 or X.shape[1] != n_in:
            raise ValueError(f"X must have shape (n, {n_in}), got {X.shape}")
        return to_q16(X) if self._fixed else _f32(X)

    def _target(self, y, n: int) -> np.ndarray:
        y = np.asarray(y).reshape(n, self.n_outputs)
        return to_q16(y) if self.dtype == "fixed" else _f32(y)

    def _out(self, raw: np.ndarray) -> np.ndarray:
        y = from_q16(raw) if self._fixed else raw
        return y[:, 0] if self._sizes[-1] == 1 else y

    # ---- inference
    _SMALL = 64  # rows predicted through the model's preallocated buffers

    def _small_buffers(self) -> None:
        ct = C.c_int32 if self._fixed else C.c_float
        xb = (ct * (self._SMALL * self._sizes[0]))()
        yb = (ct * (self._SMALL * self._sizes[-1]))()
        self._xs = np.ctypeslib.as_array(xb).reshape(self._SMALL, self._sizes[0])
        self._ys = np.ctypeslib.as_array(yb).reshape(self._SMALL, self._sizes[-1])
        self._xs_addr, self._ys_addr = C.addressof(xb), C.addressof(yb)
        self._small_keep = (xb, yb)

    def predict(self, X) -> np.ndarray:
        """Predictions for the rows of X: shape (n,) for one output, else (n, k)."""
        X = np.asarray(X)
        # small float batches: copy into buffers whose addresses are known,
        # which is much cheaper than asking NumPy for fresh pointers; a thread
        # that finds the buffers busy takes the general path below
        if (
            X.ndim == 2
            and 0 < X.shape[0] <= self._SMALL
            and X.shape[1] == self._sizes[0]
            and not self._fixed
            and self._small_lock.acquire(blocking=False)
        ):
            try:
                n = X.shape[0]
                self._xs[:n] = X
                ret = self._predict(self._h, self._xs_addr, n, self._ys_addr)
                if ret:
                    _check(ret, "predict")
                y = self._ys[:n].copy()
            finally:
                self._small_lock.release()
            return y[:, 0] if self._sizes[-1] == 1 else y
        x = self._in(X)
        n = x.shape[0]
        y = np.empty((n, self._sizes[-1]), dtype=x.dtype)
        if n:
            ret = self._predict(self._h, _ptr(x), n, _ptr(y))
            if ret:
                _check(ret, "predict")
        return self._out(y)

    # ---- normalisation
    def norm_update(self, X) -> None:
        """Update the model's running mean/variance with the rows of X."""
        x = self._in(X)
        _check(self._lib.kml_model_norm_update(self._h, _ptr(x), x.shape[0]), "norm_update")

    def norm_params(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale) of the feature normalisation; x' = (x - mean) * scale."""
        dt = np.int32 if self.dtype == "fixed" else np.float32
        mean = np.empty(self.n_inputs, dt)
        scale = np.empty(self.n_inputs, dt)
        _check(self._lib.kml_model_norm_get(self._h, _ptr(mean), _ptr(scale)), "norm_get")
        if self.dtype == "fixed":
            return from_q16(mean), from_q16(scale)
        return mean.astype(np.float64), scale.astype(np.float64)

    # ---- training
    def train_setup(
        self,
        *,
        lr: float = 1e-2,
        batch: int = 32,
        optimizer: str | None = None,
        momentum: float = 0.0,
        loss: str | None = None,
        pos_weight: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        """Allocate optimiser state and activation buffers (once per config)."""
        if optimizer is None:
            optimizer = "sgd" if self.dtype == "fixed" else "adam"
        if loss is None:
            loss = "bce" if self.output == "sigmoid" else "mse"
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}")
        key = (lr, batch, optimizer, momentum, loss, pos_weight, beta1, beta2, eps)
        if key == self._train_key:
            return
        t = _TrainCfg()
        t.optimizer = OPTIMIZERS[optimizer]
        t.loss = LOSSES[loss]
        t.max_batch = int(batch)
        t.lr = _q32(lr)
        t.momentum = _q32(momentum)
        t.beta1, t.beta2, t.eps = _q32(beta1), _q32(beta2), max(1, _q32(eps))
        t.pos_weight = _q32(pos_weight)
        _check(self._lib.kml_model_train_setup(self._h, C.byref(t)), "train_setup")
        self._train_key = key

    def _loss_buf(self) -> np.ndarray:
        return np.zeros(1, np.int32 if self.dtype == "fixed" else np.float32)

    def _loss_val(self, buf: np.ndarray) -> float:
        return float(from_q16(buf)[0]) if self.dtype == "fixed" else float(buf[0])

    def forward(self, X, y) -> float:
        """Training forward pass on one mini-batch (keeps activations); returns the loss."""
        x = self._in(X)
        t = self._target(y, x.shape[0])
        lb = self._loss_buf()
        _check(
            self._lib.kml_model_forward(self._h, _ptr(x), x.shape[0], _ptr(t), _ptr(lb)),
            "forward",
        )
        return self._loss_val(lb)

    def backward(self, y) -> None:
        """Backward pass of the last forward: accumulates into ``grads``."""
        y = np.asarray(y)
        n = y.size // self.n_outputs
        t = self._target(y, n)
        _check(self._lib.kml_model_backward(self._h, _ptr(t), n), "backward")

    def step(self) -> None:
        """Optimiser step, then zero the gradients."""
        _check(self._lib.kml_model_step(self._h), "step")

    def fit(
        self,
        X,
        y,
        *,
        epochs: int = 10,
        lr: float = 1e-2,
        batch: int = 32,
        optimizer: str | None = None,
        momentum: float = 0.0,
        loss: str | None = None,
        pos_weight: float = 1.0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> list[float]:
        """Mini-batch training; returns the mean loss of each epoch.

        optimizer: "adam" (default for float32; integer-only for
        dtype="fixed") or "sgd" (with ``momentum``; default for "fixed").
        loss: "mse" (default for a linear output) or "bce" (default for a
        sigmoid output; ``pos_weight`` scales the y=1 terms).  A model built
        with ``normalize=True`` first updates its running mean/variance
        with X.
        """
        x = self._in(X)
        n = x.shape[0]
        t = self._target(y, n)
        batch = max(1, min(int(batch), n))
        self.train_setup(
            lr=lr,
            batch=batch,
            optimizer=optimizer,
            momentum=momentum,
            loss=loss,
            pos_weight=pos_weight,
        )
        if self._cfg.norm:
            _check(self._lib.kml_model_norm_update(self._h, _ptr(x), n), "norm_update")
        rng = np.random.default_rng(seed)
        lb = self._loss_buf()
        history = []
        for _ in range(int(epochs)):
            if shuffle:
                idx = rng.permutation(n)
                xe, te = np.ascontiguousarray(x[idx]), np.ascontiguousarray(t[idx])
            else:
                xe, te = x, t
            total = 0.0
            for s in range(0, n, batch):
                b = min(batch, n - s)
                xs, ts = xe[s : s + b], te[s : s + b]
                _check(
                    self._lib.kml_model_train_batch(self._h, _ptr(xs), _ptr(ts), b, _ptr(lb)),
                    "train_batch",
                )
                total += self._loss_val(lb) * b
            history.append(total / n)
        return history

    # ---- files
    def to_bytes(self) -> bytes:
        size = int(self._lib.kml_model_file_size(self._h))
        buf = C.create_string_buffer(size)
        _check(int(self._lib.kml_model_save(self._h, buf, size)), "save")
        return buf.raw

    def save(self, path: str | os.PathLike) -> None:
        """Write the model in KML's binary format (readable by the kernel)."""
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Model:
        h = C.c_void_p()
        buf = C.create_string_buffer(bytes(data), len(data))
        _check(lib().kml_model_load(buf, len(data), C.byref(h)), "load")
        return cls(h.value)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read a model file; malformed files raise KmlError (errno says why)."""
        return cls.from_bytes(Path(path).read_bytes())

    # ---- C-side timing (kmlbench bench lib)
    def bench_predict_ns(self, X, iters: int) -> float:
        """Mean ns per ``kml_model_predict`` call on all rows of X, timed in C."""
        x = self._in(X)
        y = np.empty((x.shape[0], self.n_outputs), dtype=x.dtype)
        return float(self._lib.kml_bench_predict(self._h, _ptr(x), x.shape[0], iters, _ptr(y)))

    def bench_train_ns(self, X, y, batch: int, epochs: int) -> float:
        """Total ns for ``epochs`` passes of train_batch over X, timed in C."""
        x = self._in(X)
        t = self._target(y, x.shape[0])
        return float(
            self._lib.kml_bench_train(self._h, _ptr(x), _ptr(t), x.shape[0], batch, epochs)
        )


# -------------------------------------------------------------------- ring


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
        _check(
            self._lib.kml_ring_create(C.byref(h), capacity, record_size, RING_MODES[mode]),
            "ring_create",
        )
        self._h = h
        self._rec = C.create_string_buffer(self.record_size)

    # struct kml_ring (the private handle) is 40 bytes on x86-64
    _HANDLE_BYTES = 64

    @classmethod
    def _over(cls, buf, init: tuple[int, int, int] | None) -> Ring:
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
        _check(ret, what)
        self._mem, self._handle = mem, handle  # keep both alive
        self._h = C.c_void_p(C.addressof(handle))
        self._owned = False
        hdr = bytes(mem[:24])
        cap, rec, _slot, mode = (int.from_bytes(hdr[i : i + 4], "little") for i in (8, 12, 16, 20))
        self.capacity, self.record_size = cap, rec
        self.mode = "dropping" if mode == RING_MODES["dropping"] else "blocking"
        self._rec = C.create_string_buffer(rec)
        return self

    @classmethod
    def in_buffer(cls, buf, capacity: int, record_size: int, mode: str = "dropping") -> Ring:
        """Lay a new ring out in a caller-provided writable buffer (bytearray,
        mmap, ...) of at least ``Ring.bytes_needed(capacity, record_size)``."""
        return cls._over(buf, (capacity, record_size, RING_MODES[mode]))

    @classmethod
    def attach(cls, buf) -> Ring:
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

    def push(self, record) -> bool:
        """Push one record (bytes-like or NumPy array of record_size bytes)."""
        data = (
            bytes(np.ascontiguousarray(record).tobytes())
            if isinstance(record, np.ndarray)
            else bytes(record)
        )
        if len(data) != self.record_size:
            raise ValueError(f"record must be {self.record_size} bytes, got {len(data)}")
        ret = self._lib.kml_ring_push(self._h, data)
        if ret in (-_errno.ENOSPC, -_errno.EAGAIN):
            return False
        _check(ret, "ring_push")
        return True

    def pop(self) -> bytes | None:
        """Pop one record, or None when the ring is empty (single consumer)."""
        ret = self._lib.kml_ring_pop(self._h, self._rec)
        if ret == -_errno.EAGAIN:
            return None
        _check(ret, "ring_pop")
        return self._rec.raw

    @property
    def counters(self) -> dict[str, int]:
        p, c, d = _U64(), _U64(), _U64()
        self._lib.kml_ring_counters(self._h, C.byref(p), C.byref(c), C.byref(d))
        return {"produced": p.value, "consumed": c.value, "dropped": d.value}

    def stress(self, n_producers: int, per_producer: int) -> dict[str, int]:
        """C test entry point: ``n_producers`` pthreads push ``per_producer``
        16-byte records each while the calling thread consumes; raises
        KmlError(EPROTO) if a producer's records arrive out of order or twice.
        """
        out = (_U64 * 3)()
        ret = self._lib.kml_ring_stress(self._h, n_producers, per_producer, out)
        _check(ret, "ring_stress")
        return {"consumed": out[0], "pushed": out[1], "refused": out[2]}

    @property
    def shared_bytes(self) -> int:
        """Size of the shared (mmap-able) region: 256-byte header + slots."""
        return int(self._lib.kml_ring_bytes(self.capacity, self.record_size))

    def shared_header(self) -> bytes:
        """The raw 256-byte shared header (for layout checks)."""
        return C.string_at(self._lib.kml_ring_shared(self._h), 256)
