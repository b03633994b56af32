"""KML models end to end: regression against lstsq, classification, the
fixed-point path against float, normalisation, save/load, footprint."""

from __future__ import annotations

import errno
import itertools

import numpy as np
import pytest

from kmlbench.kml import ffi
from kmlbench.kml.ffi import KmlError
from kmlbench.kml.model import Model


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def regression(rng, n=2000, d=8, noise=0.1):
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    w = rng.normal(size=d)
    y = X @ w + 1.5 + noise * rng.normal(size=n)
    return X, y


def lstsq(X, y):
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    return coef[:-1], coef[-1]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_linear_regression_matches_lstsq(rng, optimizer):
    """Documented tolerance: coefficients within 2e-3 (abs) of lstsq and the
    MSE within 0.1 % of the lstsq optimum.

    sgd: full-batch gradient descent with momentum (deterministic, converges);
    adam: mini-batches of 32, then a second pass with a 100x smaller rate.
    """
    X, y = regression(rng, n=1000)
    w, b = lstsq(X, y)
    m = Model.linear(8, normalize=True)
    if optimizer == "sgd":
        m.fit(X, y, epochs=300, lr=0.1, batch=1000, optimizer="sgd", momentum=0.9)
    else:
        m.fit(X, y, epochs=40, lr=0.01, batch=32, optimizer="adam")
        m.fit(X, y, epochs=20, lr=1e-4, batch=32, optimizer="adam")
    # fit in normalised space; map back: y = sum W (x - mean) * scale + b
    ((W, bias),) = m.layers()
    mean, scale = m.norm_params()
    w_k = W[0] * scale
    b_k = bias[0] - np.sum(w_k * mean)
    np.testing.assert_allclose(w_k, w, atol=2e-3)
    assert abs(b_k - b) < 5e-3
    mse_k = np.mean((m.predict(X) - y) ** 2)
    mse_ls = np.mean((X @ w + b - y) ** 2)
    assert mse_k <= mse_ls * 1.001


def test_fixed_linear_regression(rng):
    """Q16.16 training (SGD + momentum) of the same regression."""
    X, y = regression(rng, noise=0.05)
    w, b = lstsq(X, y)
    m = Model.linear(8, dtype="fixed", normalize=True)
    m.fit(X, y, epochs=40, lr=0.02, batch=32, momentum=0.9)
    mse_q = np.mean((m.predict(X) - y) ** 2)
    mse_ls = np.mean((X @ w + b - y) ** 2)
    assert mse_q <= mse_ls * 1.05 + 1e-3


@pytest.mark.parametrize("sizes", [[8], [6, 5], [4, 9]])
def test_fixed_training_that_diverges_stays_loadable(rng, sizes):
    """Q16.16 SGD run far too hot saturates its weights. Each layer's weights
    stop at S32_MAX / max(in_dim, out_dim) raw units, so a row's and a column's
    sum of |w| stay under 2^31 (what the loader's bound and the s64 sums of the
    forward and backward passes need) and the model saved loads again,
    predicting the same; at S32_MAX each the loader refused it (EDOM). The
    MSE loss saturates instead of wrapping: never negative."""
    X = rng.normal(size=(512, sizes[0])) * 100
    y = rng.normal(size=512) * 3e4
    if len(sizes) == 1:
        m = Model.linear(sizes[0], dtype="fixed")
    else:
        m = Model.mlp(sizes[0], hidden=sizes[1:], activation="relu", dtype="fixed")
    losses = m.fit(X, y, epochs=5, lr=1.0, batch=8, momentum=0.9, optimizer="sgd")
    assert min(losses) >= 0, losses
    raw = np.rint(m.params * 65536).astype(np.int64)
    dims = [sizes[0], *sizes[1:], 1]
    off, saturated = 0, 0
    for n_in, n_out in itertools.pairwise(dims):
        # [4, 9]: the first layer's bound is set by its 9 outputs (columns)
        w = raw[off : off + n_in * n_out].reshape(n_out, n_in)
        off += (n_in + 1) * n_out
        lim = (2**31 - 1) // max(n_in, n_out)
        assert np.abs(w).max() <= lim
        assert (np.abs(w).sum(axis=1) < 2**31).all()
        assert (np.abs(w).sum(axis=0) < 2**31).all()
        saturated += int((np.abs(w) == lim).sum())
    assert saturated, "the step did not diverge: the test tests nothing"
    again = Model.from_bytes(m.to_bytes())
    np.testing.assert_array_equal(again.predict(X[:64]), m.predict(X[:64]))


def classification(rng, n=3000):
    X = rng.normal(size=(n, 8))
    y = ((X[:, 0] ** 2 + X[:, 1] - 0.5 * X[:, 2]) > 0.8).astype(float)
    return X, y


@pytest.mark.parametrize("dtype", ["float32", "fixed"])
def test_mlp_classifier_learns(rng, dtype):
    X, y = classification(rng)
    m = Model.mlp(8, hidden=[16], activation="relu", output="sigmoid", dtype=dtype)
    if dtype == "fixed":
        m.fit(X, y, epochs=30, lr=0.1, batch=32, momentum=0.9)
    else:
        m.fit(X, y, epochs=30, lr=0.01, batch=32)
    acc = np.mean((m.predict(X) > 0.5) == y)
    assert acc > 0.95, acc


def test_logistic_regression_and_pos_weight(rng):
    X = rng.normal(size=(4000, 3))
    logits = X @ np.array([2.0, -1.0, 0.5]) - 2.0
    y = (rng.uniform(size=4000) < 1 / (1 + np.exp(-logits))).astype(float)
    plain = Model.logistic(3)
    plain.fit(X, y, epochs=30, lr=0.02, batch=64)
    ((W, b),) = plain.layers()
    np.testing.assert_allclose(W[0], [2.0, -1.0, 0.5], atol=0.25)
    assert abs(b[0] + 2.0) < 0.25
    # weighting the positives raises recall
    weighted = Model.logistic(3)
    weighted.fit(X, y, epochs=30, lr=0.02, batch=64, pos_weight=5.0)
    pos = y == 1
    recall_plain = np.mean(plain.predict(X)[pos] > 0.5)
    recall_weighted = np.mean(weighted.predict(X)[pos] > 0.5)
    assert recall_weighted > recall_plain + 0.1


def test_per_sample_training_equals_batch_of_one(rng):
    X, y = regression(rng, n=64)
    a = Model.linear(8, seed=3)
    b = Model.linear(8, seed=3)
    a.fit(X, y, epochs=1, lr=1e-3, batch=1, optimizer="sgd", shuffle=False)
    b.train_setup(lr=1e-3, batch=1, optimizer="sgd")
    for i in range(64):
        b.forward(X[i : i + 1], y[i : i + 1])
        b.backward(y[i : i + 1])
        b.step()
    np.testing.assert_array_equal(a.params, b.params)


def test_fixed_vs_float_inference(rng):
    """Same seed, same initial weights: Q16 vs float predictions (documented)."""
    X = rng.normal(size=(2000, 8))
    for act, out in [("relu", "linear"), ("tanh", "sigmoid")]:
        f = Model.mlp(8, hidden=[16], activation=act, output=out, seed=77)
        q = Model.mlp(8, hidden=[16], activation=act, output=out, seed=77, dtype="fixed")
        q.params = f.params
        err = np.abs(f.predict(X) - q.predict(X))
        assert err.max() < 2e-3, (act, err.max())


def test_normalisation_running_stats(rng):
    X = rng.normal(loc=[1, -2, 3], scale=[0.5, 2, 4], size=(5000, 3))
    for dtype, tol in [("float32", 1e-4), ("fixed", 2e-3)]:
        m = Model.linear(3, normalize=True, dtype=dtype)
        m.norm_update(X[:2000])
        m.norm_update(X[2000:])
        mean, scale = m.norm_params()
        np.testing.assert_allclose(mean, X.mean(axis=0), atol=tol * 10)
        np.testing.assert_allclose(1 / scale, X.std(axis=0), rtol=tol * 5)


@pytest.mark.parametrize("dtype", ["float32", "fixed"])
def test_save_load_round_trip_bit_exact(tmp_path, rng, dtype):
    X, y = classification(rng, n=500)
    m = Model.mlp(8, hidden=[16, 8], activation="tanh", output="sigmoid",
                      dtype=dtype, normalize=True)  # fmt: skip
    m.fit(X, y, epochs=2, lr=0.05, batch=16, optimizer="sgd", momentum=0.5)
    path = tmp_path / "m.kml"
    m.save(path)
    m2 = Model.load(path)
    assert m2.to_bytes() == path.read_bytes()
    np.testing.assert_array_equal(m2.params, m.params)
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    assert m2.sizes == [8, 16, 8, 1] and m2.dtype == dtype


def test_loaded_model_footprint(rng):
    """A loaded linear or 8-16-1 MLP model holds <= 4 KB (target)."""
    for m in (Model.linear(8, normalize=True),
              Model.mlp(8, hidden=[16], output="sigmoid", normalize=True)):  # fmt: skip
        loaded = Model.from_bytes(m.to_bytes())
        assert loaded.footprint_bytes <= 4096, loaded.footprint_bytes


def test_invalid_configs_refused():
    with pytest.raises(ValueError):
        Model.mlp(8, hidden=[16, 16, 16, 16])
    with pytest.raises(KmlError):
        Model.mlp(8, hidden=[65])  # wider than KML_MAX_WIDTH
    m = Model.linear(4, dtype="fixed")
    with pytest.raises(KmlError):  # Q16 Adam: beta2 must be >= 0.9
        m.train_setup(optimizer="adam", beta2=0.5)
    lin = Model.linear(4)
    with pytest.raises(KmlError):
        lin.fit(np.zeros((4, 4)), np.zeros(4), loss="bce")  # BCE needs a sigmoid output


@pytest.mark.parametrize("dtype", ["float32", "fixed"])
def test_adam_both_dtypes(rng, dtype):
    """Adam in float and in Q16 integer arithmetic reach the same quality."""
    X, y = regression(rng, n=1000, noise=0.05)
    w, b = lstsq(X, y)
    m = Model.linear(8, dtype=dtype, normalize=True)
    m.fit(X, y, epochs=40, lr=0.02, batch=32, optimizer="adam")
    m.fit(X, y, epochs=10, lr=0.002, batch=32, optimizer="adam")
    mse = np.mean((m.predict(X) - y) ** 2)
    mse_ls = np.mean((X @ w + b - y) ** 2)
    assert mse <= mse_ls * 1.05 + 1e-4, (mse, mse_ls)
    Xc, yc = classification(rng)
    c = Model.mlp(8, hidden=[16], output="sigmoid", dtype=dtype)
    c.fit(Xc, yc, epochs=30, lr=0.01, batch=32, optimizer="adam")
    assert np.mean((c.predict(Xc) > 0.5) == yc) > 0.95


def test_concurrent_predict_from_threads(rng):
    """predict() may be called from many threads on one model (KML's predict
    is reentrant; the binding's small-batch buffers are never shared)."""
    import threading

    m = Model.mlp(8, hidden=[16], output="sigmoid", seed=3)
    xs = [rng.normal(size=(int(rng.integers(1, 80)), 8)) for _ in range(64)]
    want = [m.predict(x) for x in xs]
    errors = []

    def worker(k):
        for _ in range(200):
            i = (k * 7 + _) % len(xs)
            if not np.array_equal(m.predict(xs[i]), want[i]):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("n_in", [3, 64])
def test_float_norm_update_chunked_is_exact(rng, n_in):
    """kml_model_norm_update takes one FPU section per ~2048 inputs (whole
    rows); one call over many rows equals row-by-row updates bit for bit."""
    X = rng.normal(loc=1.5, scale=3.0, size=(3000, n_in))
    a = Model.linear(n_in, normalize=True, seed=1)
    b = Model.linear(n_in, normalize=True, seed=1)
    a.norm_update(X)
    for i in range(0, len(X), 7):
        b.norm_update(X[i : i + 7])
    for pa, pb in zip(a.norm_params(), b.norm_params(), strict=True):
        np.testing.assert_array_equal(pa.view(np.uint32), pb.view(np.uint32))


def test_concurrent_first_predictions_on_a_fresh_model(rng, monkeypatch):
    """Threads predicting small batches on a model nobody predicted with yet get
    what one thread gets (the small-batch buffers once appeared on first use,
    and two threads could each install their own under the other)."""
    import threading
    import time

    allocate = Model._small_buffers

    def slow_allocate(self):  # widen the window in which a first-use race shows
        time.sleep(0.002)
        allocate(self)

    monkeypatch.setattr(Model, "_small_buffers", slow_allocate)
    template = Model.mlp(6, hidden=(32, 32), activation="relu", seed=7)
    data = template.to_bytes()
    n_threads, trials = 8, 60
    inputs = [rng.normal(size=(int(rng.integers(1, 65)), 6)) for _ in range(n_threads)]
    expected = [template.predict(X) for X in inputs]
    for _ in range(trials):
        model = Model.from_bytes(data)
        barrier = threading.Barrier(n_threads)
        got: list = [None] * n_threads
        errors: list = []

        def work(i, model=model, barrier=barrier, got=got, errors=errors):
            barrier.wait()
            try:
                got[i] = [model.predict(inputs[i]) for _ in range(20)]
            except Exception as e:  # e.g. "release unlocked lock"
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for i in range(n_threads):
            for y in got[i]:
                np.testing.assert_array_equal(y, expected[i])


def _file_arrays(data: bytes, n_in: int, q16: bool):
    """A model file's norm block and parameters (docs/kml.md, "Model file format")."""
    p = 64 + 8
    mean = np.frombuffer(data, "<i4" if q16 else "<f4", n_in, p)
    p += 4 * n_in
    var = np.frombuffer(data, "<i8" if q16 else "<f4", n_in, p)
    if not q16:  # f32 bits, then 4 zero bytes
        var = np.frombuffer(data, "<f4", 2 * n_in, p)[0::2]
    p += 8 * n_in
    params = np.frombuffer(data, "<i4" if q16 else "<f4", (len(data) - 4 - p) // 4, p)
    return mean, var, params


def test_float_file_to_q16_rounds_as_rint_and_saturates(rng):
    """kml_model_file_to_q16 (integer code, in the kernel trainer and kmlctl):
    every weight, bias and mean is rint(v * 2^16), ties to even, saturated
    to s32, and every variance the same within [0, 2^47]; checked against
    NumPy in float64, which holds any float times 2^16 exactly, on halves of
    a unit of both parities, subnormals, values past the range and random
    ones. A model's copy loads and predicts alike; a file that is not a float
    model, whose CRC is wrong or that holds a NaN is refused."""
    n_in = 4
    m = Model.mlp(n_in, hidden=[16], normalize=True, seed=5)
    # features of std 0.01 to 1e5: the last one's variance saturates
    m.norm_update(rng.normal(3.0, [1e-2, 1.0, 300.0, 1e5], size=(500, n_in)))
    ties = np.arange(-20, 21) + 0.5  # half a unit, both parities
    special = [*ties / 65536, 1e-40, -1e-40, 32767.99999, 40000.0, -40000.0, 3e38, -3e38]
    values = np.concatenate([special, rng.normal(0, 3, m.n_params - len(special))])
    m.params = values
    data = m.to_bytes()
    out = ffi.model_file_to_q16(data)
    mean_f, var_f, params_f = _file_arrays(data, n_in, q16=False)
    mean_q, var_q, params_q = _file_arrays(out, n_in, q16=True)

    def rint(v, lo, hi):
        return np.clip(np.rint(v.astype(np.float64) * 65536), lo, hi).astype(np.int64)

    np.testing.assert_array_equal(params_q, rint(params_f, -(2**31), 2**31 - 1))
    np.testing.assert_array_equal(params_q, ffi.to_q16(params_f))
    np.testing.assert_array_equal(mean_q, rint(mean_f, -(2**31), 2**31 - 1))
    np.testing.assert_array_equal(var_q, rint(var_f, 0, 2**47))
    assert var_q[-1] == 2**47 and 0 < var_q[0] < 2**16
    # the ties go to even: -1.5 -> -2, -0.5 -> 0, 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    assert list(params_q[18:23]) == [-2, 0, 0, 2, 2], params_q[18:23]
    assert list(params_q[41:48]) == [0, 0, 2**31 - 1, 2**31 - 1, -(2**31), 2**31 - 1, -(2**31)]
    # saturated weights sum past what a Q16.16 row may (the loader refuses
    # that): a model of ordinary weights, on inputs within Q16.16's range
    m = Model.mlp(n_in, hidden=[16], normalize=True, seed=6)
    X = rng.normal(3.0, [0.5, 1.0, 30.0, 300.0], size=(500, n_in))
    m.norm_update(X)
    m.params = rng.normal(0, 0.3, m.n_params)
    q = Model.from_bytes(ffi.model_file_to_q16(m.to_bytes()))
    assert q.dtype == "fixed" and q.sizes == m.sizes
    np.testing.assert_allclose(q.predict(X), m.predict(X), atol=0.01)
    m.params = np.where(np.arange(m.n_params) == 7, np.nan, values)
    for bad, err in [
        (out, errno.EINVAL),
        (data[:-1] + bytes([data[-1] ^ 1]), errno.EBADMSG),
        (m.to_bytes(), errno.EDOM),
    ]:
        with pytest.raises(KmlError) as e:
            ffi.model_file_to_q16(bad)
        assert e.value.errno == err
