"""kmlctl, the guest tool, on the host: a ring file replaces /dev/kml.

The ring file holds a ring in the kernel's shared layout, laid out by the
same KML code (``Ring.in_buffer`` over an mmap of the file); the
records come from a small simulated queue whose issue time depends on the
queue-depth features in a known way, so what the trainer learns can be
checked against the truth.  Everything runs the real static binary the
guest image contains.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from kmlbench.build.image import build_kmlctl
from kmlbench.kml.ffi import KmlError, from_q16, to_q16
from kmlbench.kml.model import Model
from kmlbench.kml.ring import Ring
from kmlbench.paths import KML_SRC_DIR, cache_dir

# KML_DD_NR_FEATURES, from the ABI header kmlctl is compiled with
_UAPI = (KML_SRC_DIR / "kml_iosched_uapi.h").read_text()
N_FEATURES = int(re.search(r"KML_DD_NR_FEATURES\s*=\s*(\d+)", _UAPI).group(1))
ABI_VERSION = int(re.search(r"#define KML_DD_ABI_VERSION\s+(\d+)", _UAPI).group(1))
RECORD = np.dtype(
    [
        ("insert_ns", "<u8"),
        ("sector", "<u8"),
        ("issue_ns", "<u8"),
        ("deadline_ns", "<u8"),
        ("completion_ns", "<u8"),
        ("pred_issue_ns", "<u8"),
        ("bytes", "<u4"),
        ("op", "u1"),
        ("met", "u1"),
        ("pred_valid", "u1"),
        ("pred_met", "u1"),
        ("flags", "<u4"),
        ("dev", "<u4"),
        ("features", "<i4", 16),
    ]
)
assert RECORD.itemsize == 128


@pytest.fixture(scope="module")
def kmlctl() -> Path:
    return build_kmlctl(cache_dir())


def lg(x: np.ndarray) -> np.ndarray:
    return np.log2(1.0 + x)


def simulate(n: int, seed: int) -> np.ndarray:
    """Requests of a simulated queue: issue time grows with the queue depth.

    issue_us = (30 us read, 45 us write) per request queued ahead in the same
    direction, + 3 us per request of the other direction, times a small
    log-normal noise.  The deadline is drawn so about half the requests
    meet it; the features are the kernel's (lg of the counts, Q16.16).
    """
    rng = np.random.default_rng(seed)
    op = rng.integers(0, 2, n)
    same = rng.integers(0, 64, n)
    other = rng.integers(0, 64, n)
    inflight = rng.integers(0, 32, n)
    size = 4096 << rng.integers(0, 6, n)
    deadline_us = rng.uniform(100, 3000, n)
    issue_us = ((30 + 15 * op) * (1 + same) + 3 * other) * rng.lognormal(0, 0.05, n)
    feats = np.zeros((n, 16))
    feats[:, 0] = op
    feats[:, 1] = rng.uniform(0, 1, n)
    feats[:, 2] = lg(size)
    feats[:, 3] = lg(same)
    feats[:, 4] = lg(other)
    feats[:, 5] = lg(inflight)
    feats[:, 6] = lg(rng.integers(0, 1 << 20, n))
    feats[:, 7] = lg(rng.exponential(50, n))
    feats[:, 8] = lg(deadline_us)
    feats[:, 9] = lg(rng.uniform(10, 2000, n))
    feats[:, 10] = lg(rng.uniform(1, 100, n))
    feats[:, 11] = rng.integers(0, 2, n)
    feats[:, 12] = lg(rng.exponential(300, n))  # age of the FIFO head, us
    feats[:, 13] = rng.uniform(0, 1, n)  # recent miss share
    feats[:, N_FEATURES:] = 0  # slots past the ABI's features are zero
    rec = np.zeros(n, RECORD)
    rec["insert_ns"] = 10**9 + np.arange(n) * 1000
    rec["sector"] = rng.integers(0, 1 << 30, n)
    rec["issue_ns"] = np.round(issue_us * 1000)
    rec["deadline_ns"] = np.round(deadline_us * 1000)
    rec["completion_ns"] = rec["issue_ns"] + 80_000
    rec["bytes"] = size
    rec["op"] = op
    rec["met"] = rec["issue_ns"] <= rec["deadline_ns"]
    rec["flags"] = rng.integers(0, 4, n)
    rec["dev"] = (8 << 8) | 16
    rec["features"] = to_q16(feats)
    return rec


def features(rec: np.ndarray) -> np.ndarray:
    return from_q16(rec["features"][:, :N_FEATURES])


def target(rec: np.ndarray) -> np.ndarray:
    return np.log2(1 + rec["issue_ns"] / 1000.0)


@dataclass
class RingFile:
    """A ring in the shared layout inside a file, as kmlctl --ring-file maps it."""

    path: Path
    ring: Ring
    mm: mmap.mmap

    def push(self, rec: np.ndarray) -> int:
        return sum(self.ring.push(row.tobytes()) for row in rec)


def make_ring(path: Path, capacity: int = 1 << 15) -> RingFile:
    """An empty ring of ``capacity`` sample records in a new file."""
    size = Ring.bytes_needed(capacity, RECORD.itemsize)
    with path.open("wb") as handle:
        handle.truncate(size)
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    return RingFile(path, Ring.in_buffer(mm, capacity, RECORD.itemsize, "dropping"), mm)


@pytest.fixture
def ring_file(tmp_path: Path) -> RingFile:
    return make_ring(tmp_path / "ring")


def run(kmlctl: Path, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(kmlctl), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def keyvals(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def read_trace(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    raw = path.read_bytes()
    assert raw[:8] == b"KMLTRC01"
    abi, size, nfeat = (int(v) for v in np.frombuffer(raw, "<u4", 3, 8))
    assert raw[20:64] == bytes(44)
    return (abi, size, nfeat), np.frombuffer(raw, RECORD, (len(raw) - 64) // size, 64)


# ------------------------------------------------------------------ trace


def test_trace_round_trips_ring_records(kmlctl: Path, ring_file: RingFile, tmp_path: Path) -> None:
    rec = simulate(3000, seed=1)
    assert ring_file.push(rec) == len(rec)
    info = keyvals(run(kmlctl, "info", "--ring-file", ring_file.path).stdout)
    assert info["ring_produced"] == "3000" and info["record_size"] == "128"
    out = tmp_path / "t.trace"
    proc = run(kmlctl, "--ring-file", ring_file.path, "trace", out, "--max", "2000")
    assert keyvals(proc.stdout) == {"records": "2000", "stopped_by": "max"}
    header, rows = read_trace(out)
    assert header == (ABI_VERSION, 128, N_FEATURES)
    assert rows.tobytes() == rec[:2000].tobytes()  # every field, bit for bit
    # the rest, to stdout, until the time limit
    proc = subprocess.run(
        [str(kmlctl), "trace", "-", "--ring-file", str(ring_file.path), "--seconds", "0.3"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout[64:] == rec[2000:].tobytes()
    assert keyvals(proc.stderr.decode())["records"] == "1000"
    assert ring_file.ring.counters["consumed"] == 3000


def test_trace_sigterm_keeps_what_was_popped(
    kmlctl: Path, ring_file: RingFile, tmp_path: Path
) -> None:
    out = tmp_path / "t.trace"
    proc = subprocess.Popen(
        [str(kmlctl), "trace", str(out), "--ring-file", str(ring_file.path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    rec = simulate(5000, seed=2)
    ring_file.push(rec[:2500])
    time.sleep(0.1)
    ring_file.push(rec[2500:])  # arrives while kmlctl is already running
    deadline = time.monotonic() + 30
    while ring_file.ring.counters["consumed"] < len(rec) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert keyvals(stdout)["records"] == "5000"
    assert "Terminated" in keyvals(stdout)["stopped_by"]
    _, rows = read_trace(out)
    assert rows.tobytes() == rec.tobytes()


def test_bad_ring_file_and_device_errors(kmlctl: Path, ring_file: RingFile, tmp_path: Path) -> None:
    model = tmp_path / "m.kml"
    Model.linear(N_FEATURES).save(model)
    # the ring file is not a device: refused before a byte is written
    before = ring_file.path.read_bytes()
    proc = run(kmlctl, "--dev", ring_file.path, "load", model, check=False)
    assert proc.returncode == 1
    assert "not a character device: ENOTTY" in proc.stderr
    assert ring_file.path.read_bytes() == before
    proc = run(kmlctl, "--ring-file", ring_file.path, "load", model, check=False)
    assert proc.returncode == 1 and "EINVAL" in proc.stderr
    proc = run(kmlctl, "--dev", tmp_path / "none", "info", check=False)
    assert proc.returncode == 1 and "ENOENT" in proc.stderr
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00" * 4096)
    proc = run(kmlctl, "trace", "-", "--ring-file", garbage, "--max", "1", check=False)
    assert proc.returncode == 1 and "not a valid ring: EINVAL" in proc.stderr
    proc = run(kmlctl, "trace", "-", "--ring-file", ring_file.path, "--rate", "5", check=False)
    assert proc.returncode == 2 and "does not take --rate" in proc.stderr


# ------------------------------------------------------------------ train


def curve(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_train_learns_the_simulated_queue(
    kmlctl: Path, ring_file: RingFile, tmp_path: Path, arch: str
) -> None:
    rec = simulate(24000, seed=3)
    assert ring_file.push(rec) == len(rec)
    model, curve_file = tmp_path / "model.kml", tmp_path / "curve.jsonl"
    proc = run(
        kmlctl, "train", "--ring-file", ring_file.path, "--arch", arch,
        "--max-samples", len(rec), "--save", model, "--curve", curve_file,
        "--curve-every", "1024",
    )  # fmt: skip
    summary = keyvals(proc.stdout)
    assert summary["samples"] == "24000" and summary["consumed"] == "24000"
    assert summary["dropped_by_trainer"] == "0" and summary["unprocessed"] == "0"
    assert summary["steps"] == str(24000 // 32)
    assert summary["stopped_by"] == "max-samples"

    # the saved model: loads with the Python binding, predicts unseen requests
    m = Model.load(model)
    assert m.sizes == ([N_FEATURES, 16, 1] if arch == "mlp" else [N_FEATURES, 1])
    test = simulate(4000, seed=4)
    pred = m.predict(features(test))
    y = target(test)
    r2 = 1 - np.mean((pred - y) ** 2) / np.var(y)
    assert r2 > 0.95, r2
    met = test["issue_ns"] <= test["deadline_ns"]
    pred_met = (2.0**pred - 1) * 1000 <= test["deadline_ns"]
    assert np.mean(met == pred_met) > 0.9

    # prequential curve: later windows score better than the first
    lines = curve(curve_file)
    assert [c["samples_seen"] for c in lines[:3]] == [1024, 2048, 3072]
    assert sum(c["n"] for c in lines) == 24000
    first, last = lines[0], lines[-2]  # the last line is the partial window
    assert last["accuracy"] > first["accuracy"] + 0.05
    assert last["accuracy"] > 0.9 and last["balanced_accuracy"] > 0.9
    assert last["mae_us"] < first["mae_us"] / 2
    assert set(first) == {"samples_seen", "samples_consumed", "accuracy",
                          "balanced_accuracy", "mae_us", "n",
                          "decision_permille"}  # fmt: skip


def test_train_warm_start_is_good_from_the_first_window(kmlctl: Path, tmp_path: Path) -> None:
    first, second = make_ring(tmp_path / "ring1"), make_ring(tmp_path / "ring2")
    cold, warm, warm_curve = tmp_path / "cold.kml", tmp_path / "warm.kml", tmp_path / "c.jsonl"
    first.push(simulate(16000, seed=5))
    run(kmlctl, "train", "--ring-file", first.path, "--max-samples", "16000", "--save", cold)
    second.push(simulate(2048, seed=6))
    run(kmlctl, "train", "--ring-file", second.path, "--max-samples", "2048",
        "--warm", cold, "--save", warm, "--curve", warm_curve)  # fmt: skip
    lines = curve(warm_curve)
    assert lines[0]["accuracy"] > 0.9  # scored before training on them
    assert warm.read_bytes() != cold.read_bytes()  # and then fine-tuned
    # a model of the wrong shape is refused
    Model.linear(8).save(tmp_path / "small.kml")
    proc = run(kmlctl, "train", "--ring-file", second.path, "--warm", tmp_path / "small.kml",
               "--max-samples", "1", check=False)  # fmt: skip
    assert proc.returncode == 1 and "EPROTO" in proc.stderr


def test_train_drop_mode_rate_cap_drops_and_counts(
    kmlctl: Path, ring_file: RingFile, tmp_path: Path
) -> None:
    n = 20000
    ring_file.push(simulate(n, seed=7))
    start = time.monotonic()
    proc = run(kmlctl, "train", "--ring-file", ring_file.path, "--mode", "drop",
               "--rate", "2000", "--max-samples", n)  # fmt: skip
    wall = time.monotonic() - start
    s = {k: int(v) for k, v in keyvals(proc.stdout).items() if v.isdigit()}
    assert s["consumed"] == n
    assert s["samples"] + s["dropped_by_trainer"] == n
    # a burst of 200 plus 2000/s while popping 20000 records
    assert 0 < s["samples"] <= 200 + 2000 * wall + 64, (s, wall)
    assert s["dropped_by_trainer"] > n / 2


def test_train_block_mode_rate_cap_paces(kmlctl: Path, ring_file: RingFile) -> None:
    ring_file.push(simulate(1200, seed=8))
    start = time.monotonic()
    proc = run(kmlctl, "train", "--ring-file", ring_file.path, "--rate", "1000",
               "--max-samples", "1200")  # fmt: skip
    wall = time.monotonic() - start
    s = keyvals(proc.stdout)
    assert s["samples"] == "1200" and s["dropped_by_trainer"] == "0"
    assert wall >= (1200 - 100) / 1000 * 0.9  # burst of 100, then 1000/s


def test_train_cpu_cap_holds(kmlctl: Path, tmp_path: Path) -> None:
    """About 50 ms of training work at most 10 % CPU: the run stretches to ~0.5 s."""
    ring = make_ring(tmp_path / "ring", 1 << 16)
    ring.push(simulate(60000, seed=11))
    proc = run(kmlctl, "train", "--ring-file", ring.path, "--cpu-pct", "10",
               "--max-samples", "60000")  # fmt: skip
    s = keyvals(proc.stdout)
    assert s["samples"] == "60000"
    assert float(s["cpu_pct"]) < 12, s
    assert float(s["cpu_cap_sleep_s"]) > 0
    cpu_s = float(s["cpu_pct"]) / 100 * float(s["seconds"])
    assert float(s["seconds"]) >= cpu_s / 0.12


def test_train_publishes_and_stops_on_sigterm(
    kmlctl: Path, ring_file: RingFile, tmp_path: Path
) -> None:
    published = tmp_path / "published.kml"
    proc = subprocess.Popen(
        [str(kmlctl), "train", "--ring-file", str(ring_file.path), "--publish-every", "1000",
         "--publish-file", str(published), "--cpu-pct", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ring_file.push(simulate(5000, seed=9))
    deadline = time.monotonic() + 30
    while ring_file.ring.counters["consumed"] < 5000 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    s = keyvals(stdout)
    assert s["samples"] == "5000" and s["published"] == "5" and s["refused"] == "0"
    assert "Terminated" in s["stopped_by"]
    assert float(s["cpu_pct"]) < 60
    assert Model.load(published).n_inputs == N_FEATURES


def test_train_publishes_q16_when_asked(kmlctl: Path, ring_file: RingFile, tmp_path: Path) -> None:
    """``--publish-dtype fixed`` (what a kernel without float models takes,
    CONFIG_KML_FLOAT=n, and what the trainer falls back to when the device
    refuses a float model): the trained float model, each weight and mean
    rounded to Q16.16 as ``to_q16`` rounds it, and predicting alike."""
    rec = simulate(4000, seed=12)
    ring_file.push(rec)
    published, saved = tmp_path / "q16.kml", tmp_path / "float.kml"
    proc = run(kmlctl, "train", "--ring-file", ring_file.path, "--max-samples", "4000",
               "--publish-every", "4000", "--publish-file", published,
               "--publish-dtype", "fixed", "--save", saved)  # fmt: skip
    s = keyvals(proc.stdout)
    assert s["published"] == "1" and s["publish_dtype"] == "fixed", s
    q16, f32 = Model.load(published), Model.load(saved)
    assert (q16.dtype, f32.dtype) == ("fixed", "float32")
    # 8 units wide, the widest mq-deadline compiles (KML_DD_FAST_HIDDEN)
    assert q16.sizes == f32.sizes == [N_FEATURES, 8, 1]
    np.testing.assert_array_equal(to_q16(q16.params), to_q16(f32.params))
    (mean_q, scale_q), (mean_f, scale_f) = q16.norm_params(), f32.norm_params()
    np.testing.assert_array_equal(to_q16(mean_q), to_q16(mean_f))
    np.testing.assert_allclose(scale_q, scale_f, rtol=1e-3, atol=1e-4)
    x = features(rec[:500])
    np.testing.assert_allclose(q16.predict(x), f32.predict(x), atol=0.02)


def test_published_q16_leaves_unscaled_what_the_float_model_does(
    kmlctl: Path, ring_file: RingFile, tmp_path: Path
) -> None:
    """kmlctl's own float-to-Q16.16 conversion against the normalisation
    floor (KML_NORM_VAR_FLOOR: half a Q16.16 unit of variance): a feature
    the float model leaves unscaled is left unscaled by its Q16.16
    publication, and one it scales is scaled, on both sides of the floor.
    Features alternate by +-D Q16.16 units about a mean, so their variance
    is D^2 / 65536 units: D 128 is a quarter unit (under the floor), 229
    0.8 (over it: rounds to 1 unit), 362 two units; one is constant."""
    rec = simulate(4000, seed=21)
    sign = np.where(np.arange(len(rec)) % 2 == 0, 1, -1)
    designed = {1: 0, 7: 128, 13: 229, 10: 362}  # feature: D
    for col, d in designed.items():
        rec["features"][:, col] = 32768 + sign * d
    ring_file.push(rec)
    published, saved = tmp_path / "q16.kml", tmp_path / "float.kml"
    run(kmlctl, "train", "--ring-file", ring_file.path, "--max-samples", "4000",
        "--publish-every", "4000", "--publish-file", published,
        "--publish-dtype", "fixed", "--save", saved)  # fmt: skip
    q16, f32 = Model.load(published), Model.load(saved)
    scale_q, scale_f = q16.norm_params()[1], f32.norm_params()[1]
    unscaled = [col for col, d in designed.items() if d * d / 65536 <= 0.5]
    assert unscaled == [1, 7]
    for col in designed:
        assert (scale_f[col] == 1.0) == (col in unscaled), (col, scale_f[col])
        assert (scale_q[col] == 1.0) == (col in unscaled), (col, scale_q[col])
    # every feature, designed or not, is scaled alike by the two
    np.testing.assert_array_equal(scale_q == 1.0, scale_f == 1.0)


def test_train_refuses_bad_options(kmlctl: Path, ring_file: RingFile, tmp_path: Path) -> None:
    ring_file.push(simulate(1, seed=10))
    published = tmp_path / "p.kml"
    for args, what in [
        (["--mode", "fast"], "bad value for --mode"),
        (["--publish-dtype", "half"], "bad value for --publish-dtype"),
        (["--cpu-pct", "150"], "bad value for --cpu-pct"),
        (["--threads", "4"], "one trainer thread"),
        (["--warm", published, "--arch", "linear"], "--warm takes the architecture"),
        (["--publish-file", published, "--publish-every", "1"], None),
    ]:
        proc = run(kmlctl, "train", "--ring-file", ring_file.path, "--max-samples", "1",
                   *args, check=False)  # fmt: skip
        if what is None:
            assert proc.returncode == 0, proc.stderr  # allowed with --ring-file
            assert keyvals(proc.stdout)["published"] == "1"
            assert Model.load(published).sizes == [N_FEATURES, 16, 1]
        else:
            assert proc.returncode != 0 and what in proc.stderr, proc.stderr


# ------------------------------------------------------------------ fault


def test_fault_models_are_refused_by_the_loader(kmlctl: Path, tmp_path: Path) -> None:
    """The file-writing half of the fault kinds: what the kernel will be sent."""
    expect = {"nan-model": errno.EDOM, "truncated": errno.EBADMSG}
    for kind, err in expect.items():
        out = tmp_path / f"{kind}.kml"
        run(kmlctl, "fault", kind, "--out", out)
        with pytest.raises(KmlError) as info:
            Model.load(out)
        assert info.value.errno == err, kind
    out = tmp_path / "wrong-shape.kml"
    run(kmlctl, "fault", "wrong-shape", "--out", out)
    assert Model.load(out).n_inputs != N_FEATURES  # valid, but not for us
    out = tmp_path / "half.kml"
    run(kmlctl, "fault", "die-mid-update", "--out", out)
    full = (tmp_path / "wrong-shape.kml").stat().st_size
    assert 0 < out.stat().st_size < full


def test_device_paths_against_a_character_device(kmlctl: Path, tmp_path: Path) -> None:
    """/dev/null stands in for /dev/kml: it takes write() and answers every
    ioctl with ENOTTY, so each command must report the refusal by name."""
    model = tmp_path / "m.kml"
    Model.mlp(N_FEATURES).save(model)
    proc = run(kmlctl, "--dev", "/dev/null", "load", model, check=False)
    assert proc.returncode == 1
    assert "refused the model (KML_IOC_COMMIT): ENOTTY" in proc.stderr
    for args in (["info"], ["unload"], ["trace", "-"], ["train"], ["fault", "big-write"]):
        proc = run(kmlctl, "--dev", "/dev/null", *args, check=False)
        assert proc.returncode == 1 and "ENOTTY" in proc.stderr, (args, proc.stderr)
    # a device that says ENOTTY where EFAULT is due: garbage-ioctl must fail
    proc = run(kmlctl, "--dev", "/dev/null", "fault", "garbage-ioctl", check=False)
    assert proc.returncode == 1
    assert "INFO to NULL" in proc.stdout and "expected EFAULT: FAIL" in proc.stdout
    assert "unknown nr" in proc.stdout and "got ENOTTY, expected ENOTTY: ok" in proc.stdout
    # nan-model: accepted by write(), the commit "refusal" has the wrong errno
    proc = run(kmlctl, "--dev", "/dev/null", "fault", "nan-model", check=False)
    assert proc.returncode == 1 and "expected EDOM: FAIL" in proc.stdout
    proc = run(kmlctl, "--dev", "/dev/null", "fault", "die-mid-update")
    assert "without KML_IOC_COMMIT" in proc.stdout


def test_fault_needs_the_device(kmlctl: Path, ring_file: RingFile) -> None:
    for kind in ("garbage-ioctl", "big-write", "nan-model"):
        proc = run(kmlctl, "--dev", ring_file.path, "fault", kind, check=False)
        assert proc.returncode == 1 and "ENOTTY" in proc.stderr
    proc = run(kmlctl, "fault", "no-such-kind", check=False)
    assert proc.returncode == 2


def test_train_calibrates_the_decision_threshold_for_balanced_accuracy(
    kmlctl: Path, tmp_path: Path
) -> None:
    """Noisy issue times and a rare "miss" class: the regression's own
    threshold (the deadline) favours the majority; the calibrated one, which
    kmlctl hands the kernel as decision_permille, scores a better balanced
    accuracy on the same prequential windows."""
    rec = simulate(16000, seed=11)
    rng = np.random.default_rng(12)
    noisy = rec["issue_ns"] * rng.lognormal(0, 0.8, len(rec))
    rec["issue_ns"] = np.round(noisy)
    # deadlines at the 85th percentile of issue times: ~15% misses
    rec["deadline_ns"] = int(np.percentile(noisy, 85))
    rec["met"] = rec["issue_ns"] <= rec["deadline_ns"]

    balanced = {}
    for name, extra in (("fixed", []), ("calibrated", ["--publish-every", "1024"])):
        ring = make_ring(tmp_path / f"{name}.ring")
        assert ring.push(rec) == len(rec)
        curve_file = tmp_path / f"{name}.jsonl"
        proc = run(
            kmlctl, "train", "--ring-file", ring.path, "--max-samples", len(rec),
            "--curve", curve_file, "--curve-every", "2000",
            "--publish-file", tmp_path / f"{name}.kml", *extra,
        )  # fmt: skip
        lines = curve(curve_file)
        balanced[name] = np.mean([c["balanced_accuracy"] for c in lines[-4:-1]])
        permille = float(keyvals(proc.stdout)["decision_permille"])
        if name == "fixed":
            assert permille == 1000
        else:
            assert permille < 1000, permille  # says "miss" earlier than the deadline
    assert balanced["calibrated"] > balanced["fixed"] + 0.05, balanced


# --- kmlctl fuzz: the sequence is the seed's alone -----------------------------


def fuzz_list(kmlctl: Path, seed: int, ops: int) -> list[str]:
    lines = run(kmlctl, "fuzz", "--seed", str(seed), "--ops", str(ops), "--list").stdout
    header, *listed = lines.splitlines()
    assert header.startswith(f"fuzz: seed {seed}, {ops} ops"), header
    return listed


def test_fuzz_list_is_reproducible_and_a_prefix(kmlctl: Path) -> None:
    """Same seed, same operations; a shorter run is a prefix of a longer one
    (what lets a crash at op K be replayed with the listing up to K)."""
    a = fuzz_list(kmlctl, 20261202, 500)
    assert a == fuzz_list(kmlctl, 20261202, 500)
    assert fuzz_list(kmlctl, 20261202, 120) == a[:120]
    assert a != fuzz_list(kmlctl, 20261203, 500)
    assert [line.split(":")[0] for line in a] == [f"op {k}" for k in range(500)]


def test_fuzz_draws_every_kind_by_its_weight(kmlctl: Path) -> None:
    """Every kind of operation is drawn, in about its share (fuzz.c's weights)."""
    weights = {
        "ioctl": 20,
        "write": 10,
        "model": 15,
        "mmap": 10,
        "scribble": 10,
        "sysfs": 25,
        "reopen": 5,
        "sched": 5,
    }
    ops = 20000
    kinds = [line.split(": ", 1)[1].split()[0] for line in fuzz_list(kmlctl, 7, ops)]
    for kind, weight in weights.items():
        share = kinds.count(kind) / ops
        assert abs(share - weight / 100) < 0.015, (kind, share)
    assert set(kinds) == set(weights)
    # the ioctls reach the real commands and random ones with KML's magic
    ioctls = [line for line in fuzz_list(kmlctl, 7, 2000) if ": ioctl " in line]
    cmds = {line.split("cmd=")[1].split()[0] for line in ioctls}
    info = (2 << 30) | (72 << 16) | (0xB7 << 8)  # _IOR(0xb7, 0, struct kml_dev_info)
    assert {hex(info), "0xb701", "0xb702", "0xb703"} <= cmds, sorted(cmds)[:20]
    assert len(cmds) > 100  # and many more


def test_fuzz_bad_command_lines(kmlctl: Path, tmp_path: Path) -> None:
    bad = run(kmlctl, "fuzz", "--ops", "x", check=False)
    assert bad.returncode == 2 and "bad value for --ops" in bad.stderr
    ring = run(kmlctl, "--ring-file", tmp_path / "r", "fuzz", check=False)
    assert ring.returncode == 2 and "not --ring-file" in ring.stderr
    extra = run(kmlctl, "fuzz", "a", "b", check=False)
    assert extra.returncode == 2 and "wrong number of arguments" in extra.stderr
    nodev = run(kmlctl, "--dev", tmp_path / "none", "fuzz", "--ops", "3", check=False)
    assert nodev.returncode == 1 and "ENOENT" in nodev.stderr
