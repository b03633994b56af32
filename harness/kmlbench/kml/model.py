"""A KML model (linear / logistic regression or a small MLP): create, load,
save, predict and train through ``libkml.so``, on NumPy arrays.

    m = Model.mlp(8, hidden=[16], activation="relu", output="sigmoid")
    m.fit(X, y, epochs=20, lr=1e-2, batch=32, loss="bce", pos_weight=4.0)
    p = m.predict(X)
    m.save("model.kml"); m2 = Model.load("model.kml")

``dtype="fixed"`` runs everything in Q16.16 integer arithmetic (the path the
kernel can use without an FPU section); inputs and outputs are converted at
the boundary and the values must lie within +-32767.
"""

from __future__ import annotations

import ctypes as C
import errno
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kmlbench.kml.ffi import (
    ACTS,
    KML_F32,
    KML_Q16,
    MAX_LAYERS,
    KmlError,
    ModelCfg,
    TrainCfg,
    check,
    f32,
    from_q16,
    lib,
    ptr,
    q32,
    to_q16,
    u32_count,
)
from kmlbench.plan.schema import MODEL_DTYPES

__all__ = ["Model"]

ARCH_LINEAR, ARCH_LOGISTIC, ARCH_MLP = 0, 1, 2  # enum kml_arch
LOSSES = {"mse": 0, "bce": 1}  # enum kml_loss
OPTIMIZERS = {"sgd": 0, "adam": 1}  # enum kml_optim


class Model:
    """A KML model (linear / logistic regression or a small MLP)."""

    def __init__(self, handle: int | None) -> None:
        """Wrap a ``struct kml_model *`` (use the classmethods to build one)."""
        self._lib = lib()
        self._h = C.c_void_p(handle)
        self._train_key: tuple[object, ...] | None = None
        cfg = ModelCfg()
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
        if dtype not in MODEL_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(MODEL_DTYPES)}, not {dtype!r}")
        if len(sizes) - 1 > MAX_LAYERS:
            raise ValueError(f"at most {MAX_LAYERS} layers")
        if hidden_act not in ACTS or out_act not in ACTS:
            raise ValueError(f"activations must be among {sorted(ACTS)}")
        cfg = ModelCfg()
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
        check(lib().kml_model_create(C.byref(cfg), C.byref(h)), "kml_model_create")
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

    def _raw(self, addr: int | None) -> np.ndarray:
        if not addr:
            raise KmlError(errno.EINVAL, "no such buffer (call fit/train_setup first)")
        ctype = C.c_int32 if self._cfg.dtype == KML_Q16 else C.c_float
        buf = (ctype * self.n_params).from_address(addr)
        return np.ctypeslib.as_array(buf)

    @property
    def params(self) -> np.ndarray:
        """Flat parameters as float64 copies: per layer W[out][in] then b[out]."""
        raw = self._raw(self._lib.kml_model_params(self._h))
        return from_q16(raw) if self.dtype == "fixed" else raw.astype(np.float64)

    @params.setter
    def params(self, values: npt.ArrayLike) -> None:
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
            raise KmlError(errno.EINVAL, "no gradients before train_setup")
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
    def _in(self, X: npt.ArrayLike) -> np.ndarray:
        n_in = self._sizes[0]
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(1, -1) if X.size == n_in else X.reshape(-1, 1)
        if X.ndim != 2 or X.shape[1] != n_in:
            raise ValueError(f"X must have shape (n, {n_in}), got {X.shape}")
        u32_count(X.shape[0])
        return to_q16(X) if self._fixed else f32(X)

    def _target(self, y: npt.ArrayLike, n: int) -> np.ndarray:
        y = np.asarray(y).reshape(n, self.n_outputs)
        return to_q16(y) if self.dtype == "fixed" else f32(y)

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

    def predict(self, X: npt.ArrayLike) -> np.ndarray:
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
                    check(ret, "predict")
                y = self._ys[:n].copy()
            finally:
                self._small_lock.release()
            return y[:, 0] if self._sizes[-1] == 1 else y
        x = self._in(X)
        n = x.shape[0]
        y = np.empty((n, self._sizes[-1]), dtype=x.dtype)
        if n:
            ret = self._predict(self._h, ptr(x), n, ptr(y))
            if ret:
                check(ret, "predict")
        return self._out(y)

    # ---- normalisation
    def norm_update(self, X: npt.ArrayLike) -> None:
        """Update the model's running mean/variance with the rows of X."""
        x = self._in(X)
        check(self._lib.kml_model_norm_update(self._h, ptr(x), x.shape[0]), "norm_update")

    def norm_params(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, scale) of the feature normalisation; x' = (x - mean) * scale."""
        dt = np.int32 if self.dtype == "fixed" else np.float32
        mean = np.empty(self.n_inputs, dt)
        scale = np.empty(self.n_inputs, dt)
        check(self._lib.kml_model_norm_get(self._h, ptr(mean), ptr(scale)), "norm_get")
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
        t = TrainCfg()
        t.optimizer = OPTIMIZERS[optimizer]
        t.loss = LOSSES[loss]
        t.max_batch = int(batch)
        t.lr = q32(lr)
        t.momentum = q32(momentum)
        t.beta1, t.beta2, t.eps = q32(beta1), q32(beta2), max(1, q32(eps))
        t.pos_weight = q32(pos_weight)
        check(self._lib.kml_model_train_setup(self._h, C.byref(t)), "train_setup")
        self._train_key = key

    def _loss_buf(self) -> np.ndarray:
        return np.zeros(1, np.int32 if self.dtype == "fixed" else np.float32)

    def _loss_val(self, buf: np.ndarray) -> float:
        return float(from_q16(buf)[0]) if self.dtype == "fixed" else float(buf[0])

    def forward(self, X: npt.ArrayLike, y: npt.ArrayLike) -> float:
        """Training forward pass on one mini-batch (keeps activations); returns the loss."""
        x = self._in(X)
        t = self._target(y, x.shape[0])
        lb = self._loss_buf()
        check(
            self._lib.kml_model_forward(self._h, ptr(x), x.shape[0], ptr(t), ptr(lb)),
            "forward",
        )
        return self._loss_val(lb)

    def backward(self, y: npt.ArrayLike) -> None:
        """Backward pass of the last forward: accumulates into ``grads``."""
        y = np.asarray(y)
        n = y.size // self.n_outputs
        t = self._target(y, n)
        check(self._lib.kml_model_backward(self._h, ptr(t), n), "backward")

    def step(self) -> None:
        """Optimiser step, then zero the gradients."""
        check(self._lib.kml_model_step(self._h), "step")

    def fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
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
            check(self._lib.kml_model_norm_update(self._h, ptr(x), n), "norm_update")
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
                check(
                    self._lib.kml_model_train_batch(self._h, ptr(xs), ptr(ts), b, ptr(lb)),
                    "train_batch",
                )
                total += self._loss_val(lb) * b
            history.append(total / n)
        return history

    # ---- files
    def to_bytes(self) -> bytes:
        size = int(self._lib.kml_model_file_size(self._h))
        buf = C.create_string_buffer(size)
        check(int(self._lib.kml_model_save(self._h, buf, size)), "save")
        return buf.raw

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model in KML's binary format (readable by the kernel)."""
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Model:
        h = C.c_void_p()
        buf = C.create_string_buffer(bytes(data), len(data))
        check(lib().kml_model_load(buf, len(data), C.byref(h)), "load")
        return cls(h.value)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Model:
        """Read a model file; malformed files raise KmlError (errno says why)."""
        return cls.from_bytes(Path(path).read_bytes())

    # ---- C-side timing (kmlbench bench lib)
    def bench_predict_ns(self, X: npt.ArrayLike, iters: int) -> float:
        """Mean ns per ``kml_model_predict`` call on all rows of X, timed in C."""
        x = self._in(X)
        y = np.empty((x.shape[0], self.n_outputs), dtype=x.dtype)
        return float(self._lib.kml_bench_predict(self._h, ptr(x), x.shape[0], iters, ptr(y)))

    def bench_train_ns(self, X: npt.ArrayLike, y: npt.ArrayLike, batch: int, epochs: int) -> float:
        """Total ns for ``epochs`` passes of train_batch over X, timed in C."""
        x = self._in(X)
        t = self._target(y, x.shape[0])
        return float(self._lib.kml_bench_train(self._h, ptr(x), ptr(t), x.shape[0], batch, epochs))
