"""End to end: KML inside mq-deadline in real guests.

One tiny deadline-stressing matrix (the fixture's device: a 500 us
null_blk with one hardware slot, 8 ms read deadlines, 32 requests in
flight, 128 of them in mq-deadline) with the model observing
and steering, from a model trained offline on the recorded trace fixture
(``kmlbench train``, so the chain trace -> train -> kernel load is real),
plus one cell per trainer (kmlctl in user space, the kernel thread). Then
``kmlbench trace`` on one cell. Checked: every cell ok, the kernel's
statistics consistent and turned into metrics, the offline model better
than always guessing the majority class, the trainers' outputs fetched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kmlbench import db, kml, kmlstats
from kmlbench.kernel import KernelBuild
from kmlbench.trace import NR_FEATURES, read_trace

pytestmark = pytest.mark.kernel

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "deadline.kmltrc"

MATRIX = """\
name: e2e-model
seed: 5
repeat: 1
kernel: {{source: debian}}
guest: {{memory_mib: 512, cpus: 2, boot_timeout_s: 300, command_timeout_s: 120,
         silence_timeout_s: 240}}
axes:
  device:
    - {{type: null_blk, irqmode: timer, completion_nsec: 500000, hw_queue_depth: 1,
       submit_queues: 1, size_mib: 128}}
  scheduler:
    - {{name: mq-deadline, read_expire: 8, write_expire: 20, fifo_batch: 8, writes_starved: 2,
       nr_requests: 128}}
  workload:
    - {{template: randrw, bs: 4k, iodepth: 32, rwmix_read: 70, runtime_s: 5, ramp_s: 0,
       size_mib: 64}}
  model:
    # observe at the deadline itself (the regression's own call); active at
    # the threshold kmlbench train calibrated for balanced accuracy
    - {{mode: observe, model_file: {model}}}
    - {{mode: active, model_file: {model}, decision_permille: {permille}}}
    - {{mode: active, trainer: user, ring_mode: drop, publish_every: 256}}
    - {{mode: observe, trainer: kernel, ring_mode: drop, publish_every: 256, cpu_pct: 50}}
"""


def _kmlbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "kmlbench.cli", *args]


@pytest.fixture(scope="module")
def model_run(
    kernel_build: KernelBuild, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, float]:
    """(run folder, matrix file, seconds the run took)."""
    assert FIXTURE.is_file(), f"{FIXTURE} missing"
    work = tmp_path_factory.mktemp("e2e-model")
    model = work / "deadline.kmlm"
    train = subprocess.run(
        _kmlbench("train", "--trace", str(FIXTURE), "-o", str(model), "--epochs", "30"),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert train.returncode == 0, train.stdout + train.stderr
    permille = json.loads(model.with_name(model.name + ".train.json").read_text())
    matrix = work / "m.yaml"
    matrix.write_text(MATRIX.format(model=model, permille=permille["decision_permille"]))
    env = dict(os.environ, KMLBENCH_RESULTS=str(work / "results"))
    started = time.monotonic()
    proc = subprocess.run(
        _kmlbench("run", str(matrix)), env=env, capture_output=True, text=True,
        timeout=20 * 60, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    run_dir = (work / "results" / "latest").resolve()
    (work / "run-output.txt").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir, matrix, took


def _cells(run_dir: Path) -> dict[str, dict]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {c["id"]: c for c in summary["cells"]}


def _by_kind(cells: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for c in cells.values():
        m = c["params"]["model"]
        kind = m["mode"] + ("-file" if m.get("model_file") else f"-{m['trainer']}")
        out[kind] = c
    return out


def test_every_model_cell_is_ok_with_consistent_statistics(model_run) -> None:
    run_dir, _, took = model_run
    cells = _cells(run_dir)
    assert len(cells) == 4
    for cid, c in cells.items():
        assert c["status"] == "ok", (cid, c.get("error"))
        folder = run_dir / "cells" / cid
        stats = kmlstats.parse_stats((folder / "kml_stats.txt").read_text())
        assert kmlstats.check_invariants(stats) == []
        assert stats.counters["samples"] > 100, cid  # the ring saw the workload
        assert stats.settings["ring_mode"] == c["params"]["model"]["ring_mode"]
        ks = c["kml_stats"]
        assert ks["mode"] == c["params"]["model"]["mode"]
        for key in kmlstats.METRIC_NAMES:
            assert key in c["metrics"], (cid, key)
        assert c["metrics"]["predictions"] == stats.counters["predictions"]
        log = (folder / "kml_setup.log").read_text()
        mode_line = next(line for line in log.splitlines() if "kml_mode=" in line)
        assert f"[{c['params']['model']['mode']}]" in mode_line, log
    print(f"model run: {len(cells)} cells in {took:.0f} s")


def test_offline_model_beats_the_majority_baseline(model_run) -> None:
    run_dir, _, _ = model_run
    kinds = _by_kind(_cells(run_dir))
    for kind in ("observe-file", "active-file"):
        m = kinds[kind]["metrics"]
        assert m["predictions"] > 100, kind
        assert m["inference_ns_p50"] is not None and m["inference_ns_p50"] > 0
        assert m["inference_ns_p50"] <= m["inference_ns_p99"]
        assert m["issue_time_mae_us"] is not None
    observe = kinds["observe-file"]["metrics"]
    assert observe["accuracy"] > observe["baseline_accuracy"], observe
    assert observe["balanced_accuracy"] > 0.5, observe
    active = kinds["active-file"]
    assert (
        active["kml_stats"]["counters"]["decision_permille"]
        == (active["params"]["model"]["decision_permille"])
    )
    # active mode acted on the predicted misses
    counters = kinds["active-file"]["kml_stats"]["counters"]
    assert counters["urgent_dispatches"] > 0, counters


def test_trainers_train_and_hand_back_their_outputs(model_run) -> None:
    run_dir, _, _ = model_run
    kinds = _by_kind(_cells(run_dir))
    user = kinds["active-user"]
    folder = run_dir / "cells" / user["id"]
    summary = kmlstats.parse_summary((folder / "trainer.txt").read_text())
    assert summary["samples"] > 0, summary
    curve = user["kml_stats"]["learning_curve"]
    assert len(curve["step"]) >= 1 and "accuracy" in curve
    trained = kml.Model.load(folder / "trained.kmlm")
    assert (trained.n_inputs, trained.n_outputs) == (NR_FEATURES, 1)
    kernel = kinds["observe-kernel"]["kml_stats"]["counters"]
    assert kernel["ktrainer_samples"] > 0, kernel
    assert kernel["updates_applied"] >= 1, kernel


def test_model_metrics_reach_the_database(model_run) -> None:
    run_dir, _, _ = model_run
    conn = db.connect(run_dir.parent / "kmlbench.db")
    try:
        cells = db.load_cells(conn, run_dir.name)
    finally:
        conn.close()
    assert len(cells) == 4
    assert all((c.kml_stats and "accuracy" in c.metrics) or c.metrics.get("predictions") == 0
               for c in cells)  # fmt: skip


def test_kmlbench_trace_records_a_real_trace(model_run, tmp_path: Path) -> None:
    run_dir, matrix, _ = model_run
    out = tmp_path / "cell.kmltrc"
    env = dict(os.environ, KMLBENCH_RESULTS=str(tmp_path / "results"))
    observe = next(c for c in _by_kind(_cells(run_dir)).values() if "kmlobs" in c["id"])
    proc = subprocess.run(
        _kmlbench("trace", str(matrix), "--cell", observe["id"], "-o", str(out),
                  "--csv", str(tmp_path / "cell.csv")),
        env=env, capture_output=True, text=True, timeout=10 * 60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_trace(out)
    assert len(rows) > 100
    # the kernel's labels agree with the times it recorded
    assert np.array_equal(rows["met"].astype(bool), rows["issue_ns"] <= rows["deadline_ns"])
    assert set(np.unique(rows["op"])) <= {0, 1}
    assert (rows["features"][:, NR_FEATURES:] == 0).all()  # unused slots are zero
    assert rows["pred_valid"].any()  # the cell loads its model: predictions recorded
    assert len((tmp_path / "cell.csv").read_text().splitlines()) == len(rows) + 1
