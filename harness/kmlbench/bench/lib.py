"""``kmlbench bench lib [--json]``: KML against NumPy and PyTorch.

Two models: ``linear`` (8 inputs) and ``mlp`` (8-16-1, ReLU hidden, sigmoid
output).  Implementations: ``kml-float``, ``kml-fixed`` (Q16.16), ``numpy``
and ``torch`` (if importable; otherwise reported as unavailable).

Inference latency is reported three ways per (model, implementation):

* ``sample``: ns per single-sample prediction.  For KML it is timed by a C
  loop inside libkml.so (``kml_bench_predict``), so it measures the library
  and not the FFI; for NumPy/PyTorch it is the Python call (their real
  per-sample cost).
* ``batch64``: ns per sample when predicting batches of 64 (C-timed for KML).
* ``sample_python``: ns per single-sample ``Model.predict`` call from Python
  (KML through ctypes), for comparison with NumPy/PyTorch's per-call figure.

Training throughput (``train_samples_per_s``) is samples/s of mini-batch
training (batch 64, Adam for float implementations, SGD+momentum for
kml-fixed) over 4096 samples, plus ``batch1`` (per-sample training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kmlbench.bench import footprint as kfp
from kmlbench.kml.build import KmlBuildError, build_libkml
from kmlbench.kml.model import Model

MODELS = ("linear", "mlp")
IMPLS = ("kml-float", "kml-fixed", "numpy", "torch")
N_IN, HIDDEN = 8, 16
N_TRAIN = 4096
GOALS_NS = {"linear": 20.0, "mlp": 200.0}


def _best_of(fn: Callable[[], float], repeat: int = 5) -> float:
    """Minimum over ``repeat`` runs of fn() (each returns a time)."""
    return float(min(fn() for _ in range(repeat)))


def _py_loop_ns(call: Callable[[], object], iters: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        call()
    return (time.perf_counter_ns() - t0) / iters


def _data(model: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N_TRAIN, N_IN))
    if model == "linear":
        y = X @ rng.normal(size=N_IN) + 0.3
    else:
        y = ((X[:, 0] ** 2 + X[:, 1]) > 1.0).astype(float)
    return X, y


def _kml_model(model: str, dtype: str) -> Model:
    if model == "linear":
        return Model.linear(N_IN, dtype=dtype)
    return Model.mlp(N_IN, hidden=[HIDDEN], activation="relu", output="sigmoid", dtype=dtype)


# ------------------------------------------------------------------ KML


def bench_kml(model: str, dtype: str, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    X, y = _data(model)
    m = _kml_model(model, dtype)
    it = 20_000 if quick else 200_000
    x1 = X[:1]
    x64 = X[:64]
    inf = {
        "sample": _best_of(lambda: m.bench_predict_ns(x1, it)),
        "batch64": _best_of(lambda: m.bench_predict_ns(x64, it // 64 + 1)) / 64,
        "sample_python": _best_of(lambda: _py_loop_ns(lambda: m.predict(x1), it // 50), repeat=3),
    }
    opt = "sgd" if dtype == "fixed" else "adam"
    lr = 0.01
    epochs = 2 if quick else 10
    m.train_setup(lr=lr, batch=64, optimizer=opt, momentum=0.9 if opt == "sgd" else 0.0)
    t64 = _best_of(lambda: m.bench_train_ns(X, y, 64, epochs), repeat=3)
    m.train_setup(lr=lr, batch=1, optimizer=opt, momentum=0.9 if opt == "sgd" else 0.0)
    t1 = _best_of(lambda: m.bench_train_ns(X, y, 1, max(1, epochs // 2)), repeat=3)
    train = {
        "batch64": N_TRAIN * epochs / (t64 / 1e9),
        "batch1": N_TRAIN * max(1, epochs // 2) / (t1 / 1e9),
    }
    return inf, train


# ---------------------------------------------------------------- NumPy


class _NumpyModel:
    """Reference float32 implementation with Adam, written plainly."""

    def __init__(self, model: str) -> None:
        rng = np.random.default_rng(0)
        sizes = [N_IN, 1] if model == "linear" else [N_IN, HIDDEN, 1]
        self.mlp = model == "mlp"
        self.p = []
        for i in range(1, len(sizes)):
            lim = np.sqrt(6 / (sizes[i - 1] + sizes[i]))
            self.p += [
                rng.uniform(-lim, lim, (sizes[i - 1], sizes[i])).astype(np.float32),
                np.zeros(sizes[i], np.float32),
            ]
        self.m = [np.zeros_like(q) for q in self.p]
        self.v = [np.zeros_like(q) for q in self.p]
        self.t = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not self.mlp:
            return np.asarray(x @ self.p[0] + self.p[1])
        h = np.maximum(x @ self.p[0] + self.p[1], 0)
        return np.asarray(1 / (1 + np.exp(-(h @ self.p[2] + self.p[3]))))

    def train_batch(self, x: np.ndarray, y: np.ndarray, lr: float = 0.01) -> None:
        n = x.shape[0]
        if not self.mlp:
            d = (2.0 / n) * (x @ self.p[0] + self.p[1] - y)
            grads = [x.T @ d, d.sum(0)]
        else:
            z = x @ self.p[0] + self.p[1]
            h = np.maximum(z, 0)
            p = 1 / (1 + np.exp(-(h @ self.p[2] + self.p[3])))
            d2 = (p - y) / n
            dh = (d2 @ self.p[2].T) * (z > 0)
            grads = [x.T @ dh, dh.sum(0), h.T @ d2, d2.sum(0)]
        self.t += 1
        c1, c2 = 1 - 0.9**self.t, 1 - 0.999**self.t
        for q, g, m, v in zip(self.p, grads, self.m, self.v, strict=True):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            q -= lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)


def bench_numpy(model: str, quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    X, y = _data(model)
    X = X.astype(np.float32)
    y = y.astype(np.float32).reshape(-1, 1)
    nm = _NumpyModel(model)
    it = 2000 if quick else 20_000
    x1, x64 = X[:1], X[:64]
    inf = {
        "sample": _best_of(lambda: _py_loop_ns(lambda: nm.predict(x1), it), repeat=3),
        "batch64": _best_of(lambda: _py_loop_ns(lambda: nm.predict(x64), it // 4), repeat=3) / 64,
        "sample_python": None,
    }

    def train(batch: int, n: int) -> float:
        t0 = time.perf_counter_ns()
        for s in range(0, n, batch):
            nm.train_batch(X[s : s + batch], y[s : s + batch])
        return time.perf_counter_ns() - t0

    n1 = 512 if quick else 2048
    train_res = {
        "batch64": N_TRAIN / (_best_of(lambda: train(64, N_TRAIN), repeat=3) / 1e9),
        "batch1": n1 / (_best_of(lambda: train(1, n1), repeat=2) / 1e9),
    }
    inf["sample_python"] = inf["sample"]
    return inf, train_res


# ---------------------------------------------------------------- torch


def _torch() -> Any:
    """The torch module, or None when PyTorch is not installed."""
    try:
        import torch  # late: optional, and importing it takes seconds
    except ImportError:
        return None
    return torch


def bench_torch(model: str, quick: bool) -> tuple[dict[str, Any], dict[str, Any]] | None:
    torch = _torch()
    if torch is None:
        return None
    torch.set_num_threads(1)
    X, y = _data(model)
    Xt = torch.tensor(X, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32).reshape(-1, 1)
    if model == "linear":
        net = torch.nn.Linear(N_IN, 1)
        loss_fn = torch.nn.MSELoss()
    else:
        net = torch.nn.Sequential(
            torch.nn.Linear(N_IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1)
        )
        loss_fn = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    it = 1000 if quick else 10_000
    x1, x64 = Xt[:1], Xt[:64]

    def infer(x: Any) -> Any:
        with torch.no_grad():
            out = net(x)
            return torch.sigmoid(out) if model == "mlp" else out

    inf = {
        "sample": _best_of(lambda: _py_loop_ns(lambda: infer(x1), it), repeat=3),
        "batch64": _best_of(lambda: _py_loop_ns(lambda: infer(x64), it // 4), repeat=3) / 64,
    }
    inf["sample_python"] = inf["sample"]

    def train(batch: int, n: int) -> float:
        t0 = time.perf_counter_ns()
        for s in range(0, n, batch):
            opt.zero_grad()
            loss = loss_fn(net(Xt[s : s + batch]), yt[s : s + batch])
            loss.backward()
            opt.step()
        return time.perf_counter_ns() - t0

    n1 = 256 if quick else 1024
    train_res = {
        "batch64": N_TRAIN / (_best_of(lambda: train(64, N_TRAIN), repeat=3) / 1e9),
        "batch1": n1 / (_best_of(lambda: train(1, n1), repeat=2) / 1e9),
    }
    return inf, train_res


# ------------------------------------------------------------- footprint


def footprint(kernel_build: Path | None) -> tuple[dict[str, Any], str | None]:
    """``footprint_bytes`` (ints or None; ``kernel_kml_by_object`` the resident
    bytes per object, or None) and the kernel object measured."""
    so = build_libkml()
    kobj = kfp.find_kernel_kml(kernel_build)
    loaded = {}
    for model in MODELS:
        m = _kml_model(model, "float32")
        loaded[model] = Model.from_bytes(m.to_bytes()).footprint_bytes
    # one read of the object, so that the sum and the parts agree
    read = kfp.allocated_sections(kobj) if kobj else None
    sums = kfp.sum_sections(read) if read is not None else None
    return {
        "libkml_so": so.stat().st_size,
        "kernel_kml": sums["resident"] if sums else None,
        "kernel_kml_init": sums["init"] if sums else None,
        "kernel_kml_per_cpu": sums["per_cpu"] if sums else None,
        "kernel_kml_text_data": kfp.text_and_data(read) if read is not None else None,
        "kernel_kml_by_object": kfp.resident_by_object(read) if read is not None else None,
        "model_linear": loaded["linear"],
        "model_mlp": loaded["mlp"],
    }, (str(kobj) if kobj else None)


# ----------------------------------------------------------------- main


def run(quick: bool = False, kernel_build: Path | None = None) -> dict[str, Any]:
    inference: dict[str, dict[str, Any]] = {m: {} for m in MODELS}
    training: dict[str, dict[str, Any]] = {m: {} for m in MODELS}
    for model in MODELS:
        for dtype, name in (("float32", "kml-float"), ("fixed", "kml-fixed")):
            inference[model][name], training[model][name] = bench_kml(model, dtype, quick)
        inference[model]["numpy"], training[model]["numpy"] = bench_numpy(model, quick)
        t = bench_torch(model, quick)
        if t is None:
            inference[model]["torch"] = training[model]["torch"] = None
        else:
            inference[model]["torch"], training[model]["torch"] = t
    torch = _torch()
    torch_version = None if torch is None else torch.__version__
    fp, kobj = footprint(kernel_build)
    return {
        "inference_ns": inference,
        "train_samples_per_s": training,
        "footprint_bytes": fp,
        "goals": {
            "linear_sample_ns": GOALS_NS["linear"],
            "mlp_sample_ns": GOALS_NS["mlp"],
            "libkml_so_bytes": 64 * 1024,
            "kernel_kml_bytes": 100 * 1024,
            "model_bytes": 4096,
        },
        "environment": {
            "numpy": np.__version__,
            "torch": torch_version or "unavailable",
            "cpu": _cpu_name(),
            "quick": quick,
            "kernel_kml_object": kobj,
        },
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _fmt_ns(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def table(res: dict[str, Any]) -> str:
    lines = []
    inf, tr = res["inference_ns"], res["train_samples_per_s"]
    for model in MODELS:
        ref = inf[model]["kml-float"]
        lines.append(f"\n{model}  (inference ns/sample; ratio = impl / kml-float)")
        lines.append(
            f"  {'impl':10} {'sample':>10} {'ratio':>8} {'batch64':>10} {'ratio':>8}"
            f" {'py call':>10}   {'train b64/s':>12} {'train b1/s':>12}"
        )
        for impl in IMPLS:
            r = inf[model][impl]
            t = tr[model][impl]
            if r is None:
                lines.append(f"  {impl:10} unavailable (not importable)")
                continue
            lines.append(
                f"  {impl:10} {_fmt_ns(r['sample']):>10} {r['sample'] / ref['sample']:>7.1f}x"
                f" {_fmt_ns(r['batch64']):>10} {r['batch64'] / ref['batch64']:>7.1f}x"
                f" {_fmt_ns(r['sample_python']):>10}   {t['batch64']:>12,.0f} {t['batch1']:>12,.0f}"
            )
        goal = GOALS_NS[model]
        got = inf[model]["kml-float"]["sample"]
        verdict = "meets" if got <= goal else "MISSES"
        lines.append(f"  goal: kml-float sample <= {goal:g} ns: {verdict} ({got:.1f} ns)")
    fp = res["footprint_bytes"]
    lines.append("\nfootprint (bytes)")
    lines.append(f"  libkml.so      {fp['libkml_so']:>8,}  (goal <= 65,536)")
    kk = fp["kernel_kml"]
    lines.append(
        f"  kernel KML     {kk:>8,}  (resident; goal <= 102,400;"
        f" {res['environment']['kernel_kml_object']})"
        if kk is not None
        else "  kernel KML          n/a  (no built kernel found)"
    )
    for name, size in (fp["kernel_kml_by_object"] or {}).items():
        lines.append(f"    {name:<22s} {size:>8,}")
    if fp["kernel_kml_per_cpu"] is not None:
        lines.append(f"  kernel per CPU {fp['kernel_kml_per_cpu']:>8,}  (for each possible CPU)")
    if fp["kernel_kml_init"] is not None:
        lines.append(f"  kernel init    {fp['kernel_kml_init']:>8,}  (freed after boot)")
    if fp["kernel_kml_text_data"] is not None:
        lines.append(
            f"  kernel size(1) {fp['kernel_kml_text_data']:>8,}  (text+data of the objects:"
            " all the above, and what the link drops)"
        )
    lines.append(f"  model linear   {fp['model_linear']:>8,}  (loaded; goal <= 4,096)")
    lines.append(f"  model mlp      {fp['model_mlp']:>8,}  (loaded; goal <= 4,096)")
    env = res["environment"]
    lines.append(f"\ncpu: {env['cpu']}; numpy {env['numpy']}; torch {env['torch']}")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``kmlbench bench lib``: run the benchmark and print a table or JSON."""
    try:
        res = run(quick=args.quick, kernel_build=args.kernel_build)
    except KmlBuildError as exc:
        print(f"bench lib: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(table(res))
    return 0
