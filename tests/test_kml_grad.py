"""Finite-difference checks of every KML layer and loss backward, and of
whole-model gradients (float path), plus results against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from kmlbench.kml.model import Model
from kmlbench.kml.ops import (
    act_backward,
    act_forward,
    bce_backward,
    bce_forward,
    linear_backward,
    linear_forward,
    mse_backward,
    mse_forward,
)

H = 1e-2  # central differences on float32 code
RTOL = 2e-2


def fd(f, x: np.ndarray, h: float = H) -> np.ndarray:
    """d(sum f)/dx by central differences, evaluated in float64 around float32 code."""
    g = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = float(f())
        flat[i] = old - h
        down = float(f())
        flat[i] = old
        g.reshape(-1)[i] = (up - down) / (2 * h)
    return g


def close(a, b, rtol=RTOL, atol=1e-3):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def test_linear_forward_matches_numpy(rng):
    x = rng.normal(size=(5, 7))
    w = rng.normal(size=(3, 7))
    b = rng.normal(size=3)
    close(linear_forward(x, w, b), x @ w.T + b, rtol=1e-5, atol=1e-5)


def test_linear_backward_finite_differences(rng):
    x = rng.normal(size=(4, 5)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    dout = rng.normal(size=(4, 3)).astype(np.float32)

    def loss():
        return float(np.sum(linear_forward(x, w, b).astype(np.float64) * dout))

    dx, dw, db = linear_backward(dout, x, w)
    close(dx, fd(loss, x))
    close(dw, fd(loss, w))
    close(db, fd(loss, b))
    # against the closed form too
    close(dx, dout @ w, rtol=1e-5)
    close(dw, dout.T @ x, rtol=1e-5)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "none"])
def test_activation_backward_finite_differences(rng, act):
    x = rng.normal(scale=2.0, size=40).astype(np.float32)
    if act == "relu":  # keep away from the kink
        x[np.abs(x) < 2 * H] += 4 * H
    dout = rng.normal(size=40).astype(np.float32)

    def loss():
        return float(np.sum(act_forward(act, x).astype(np.float64) * dout))

    close(act_backward(act, dout, x), fd(loss, x))


def test_activation_forward_matches_numpy(rng):
    x = rng.normal(scale=3.0, size=1000)
    close(act_forward("relu", x), np.maximum(x, 0), rtol=1e-7, atol=0)
    close(act_forward("sigmoid", x), 1 / (1 + np.exp(-x)), rtol=3e-7, atol=1e-7)
    close(act_forward("tanh", x), np.tanh(x), rtol=3e-7, atol=1e-7)


def test_mse_forward_backward(rng):
    p = rng.normal(size=20).astype(np.float32)
    y = rng.normal(size=20).astype(np.float32)
    close(mse_forward(p, y), np.mean((p.astype(np.float64) - y) ** 2), rtol=1e-5)
    close(mse_backward(p, y), fd(lambda: mse_forward(p, y), p))


@pytest.mark.parametrize("pos_weight", [1.0, 5.0])
def test_bce_forward_backward(rng, pos_weight):
    p = rng.uniform(0.1, 0.9, size=20).astype(np.float32)
    y = (rng.uniform(size=20) > 0.5).astype(np.float32)
    pd, yd = p.astype(np.float64), y.astype(np.float64)
    want = -np.mean(pos_weight * yd * np.log(pd) + (1 - yd) * np.log(1 - pd))
    close(bce_forward(p, y, pos_weight), want, rtol=1e-5)
    # smaller step: BCE curvature is large near 0/1
    g = fd(lambda: bce_forward(p, y, pos_weight), p, h=1e-3)
    close(bce_backward(p, y, pos_weight), g, rtol=3e-2, atol=2e-3)


@pytest.mark.parametrize(
    "output,loss,act",
    [("linear", "mse", "relu"), ("sigmoid", "bce", "tanh"), ("sigmoid", "mse", "sigmoid")],
)
def test_model_gradients_finite_differences(rng, output, loss, act):
    m = Model.mlp(4, hidden=[6, 5], activation=act, output=output, seed=5)
    x = rng.normal(size=(8, 4))
    y = rng.uniform(size=8) if loss == "mse" else (rng.uniform(size=8) > 0.5) * 1.0
    m.train_setup(lr=1e-3, batch=8, optimizer="sgd", loss=loss, pos_weight=3.0)
    p0 = m.params.astype(np.float32)
    m.forward(x, y)
    m.backward(y)
    g = m.grads
    p = p0.copy()

    def lossfn():
        m.params = p
        return m.forward(x, y)

    # small step: a ReLU unit must not cross its kink within +-h
    num = fd(lossfn, p, h=1e-3)
    m.params = p0
    close(g, num, rtol=3e-2, atol=2e-3)


def test_model_forward_matches_numpy(rng):
    m = Model.mlp(8, hidden=[16, 8], activation="tanh", output="sigmoid", seed=9)
    x = rng.normal(size=(50, 8))
    a = x
    layers = m.layers()
    for i, (w, b) in enumerate(layers):
        a = a @ w.T + b
        a = np.tanh(a) if i < len(layers) - 1 else 1 / (1 + np.exp(-a))
    close(m.predict(x), a[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss,output", [("mse", "linear"), ("bce", "sigmoid")])
def test_chunked_batches_match_finite_differences(rng, loss, output):
    """A wide model: float batches are split into several FPU sections
    (KML_FPU_MACS), forward, backward and step alike; the gradients of the
    whole batch must not depend on the split."""
    m = Model.mlp(16, hidden=[64, 64], activation="tanh", output=output, seed=8)
    x = rng.normal(size=(12, 16))
    y = rng.uniform(size=12) if loss == "mse" else (rng.uniform(size=12) > 0.5) * 1.0
    m.train_setup(lr=1e-3, batch=12, optimizer="sgd", loss=loss, pos_weight=2.0)
    p0 = m.params.astype(np.float32)
    m.forward(x, y)
    m.backward(y)
    g = m.grads
    idx = rng.choice(p0.size, size=40, replace=False)
    num = np.empty(idx.size)
    for k, i in enumerate(idx):
        p = p0.copy()
        p[i] += 1e-3
        m.params = p
        up = m.forward(x, y)
        p[i] -= 2e-3
        m.params = p
        down = m.forward(x, y)
        num[k] = (up - down) / 2e-3
    m.params = p0
    close(g[idx], num, rtol=5e-2, atol=2e-4)
    # and predictions over many rows (chunked too) match NumPy
    xs = rng.normal(size=(300, 16))
    a = xs
    for i, (w, b) in enumerate(m.layers()):
        a = a @ w.T + b
        a = np.tanh(a) if i < 2 else (a if output == "linear" else 1 / (1 + np.exp(-a)))
    close(m.predict(xs), a[:, 0], rtol=1e-4, atol=1e-5)
