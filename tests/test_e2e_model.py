"""End to end: KML inside mq-deadline in real guests.

One tiny deadline-stressing matrix (the fixture's device: a 500 us
null_blk with one hardware slot, 8 ms read deadlines, 32 requests in
flight, 128 of them in mq-deadline), two repeats, on the virtual clock
(one vCPU: time is instructions, so the skill bounds below do not move
with the host's load; on the realtime clock the shipped model's balanced
accuracy fell from 0.62 to 0.546 on a loaded host; the trainers now share
the one vCPU with fio), with (figures measured on the realtime clock with
2 vCPUs unless said otherwise):

* the shipped model (``workloads/models/deadline.kmlm``, trained by
  ``kmlbench train`` on traces of this kind of load) observing at the
  deadline itself (``decision_permille`` 1000: the regression's own call):
  pooled over the repeats it must carry signal (balanced accuracy and MCC
  above chance; on the virtual clock balanced 0.611-0.619, MCC 0.22-0.24,
  accuracy 0.61 against a 0.54 baseline). Beating always answering "miss" in accuracy is no longer
  asked: its traces came from the kernel before ``kernel/patches/0004``,
  whose writes waited outside the scheduler and where fewer of this
  load's requests missed. With the fix about two thirds miss and its
  accuracy sits at the baseline: above it in one run, below in another
  (0.624 against 0.628, balanced 0.604, MCC 0.205); a model retrained on
  the fixed kernel's traces was below too (0.595 against 0.645, balanced
  0.618, MCC 0.226). The accuracy is printed beside its baseline; a model
  below the baseline is what the step-aside rule keeps from steering
  (``tests/test_kml_step_aside.py``);
* a model trained here from the recorded fixture (so the chain trace ->
  ``kmlbench train`` -> kernel load is real) steering dispatch (active);
* one cell per trainer (kmlctl in user space, the kernel thread, the
  latter publishing its float model and its compiled Q16.16 copy); the
  user trainer's model, steering dispatch, must have skill (balanced
  accuracy and MCC above chance: it learns this kernel's load as it runs,
  0.665-0.757 balanced and MCC 0.31-0.52 in three cells). Its threshold is
  calibrated for balanced accuracy, which costs plain accuracy where
  one outcome dominates: against the majority baseline it was 0.759 and
  0.808 against 0.726 and 0.711 in one run, 0.701 against 0.728 in
  another (74% missed).

Then ``kmlbench trace`` on one cell. Checked: every cell ok, the kernel's
statistics consistent and turned into metrics, the trainers' outputs
fetched, the metrics in the results database.
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

from kmlbench import paths
from kmlbench.build.kernel import KernelBuild
from kmlbench.data import db, kmlstats, skill
from kmlbench.data.trace import NR_FEATURES, read_trace
from kmlbench.kml import ffi
from kmlbench.kml.model import Model

pytestmark = pytest.mark.kernel

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "deadline.kmltrc"
SHIPPED = paths.WORKLOADS_DIR / "models" / "deadline.kmlm"

MATRIX = """\
name: e2e-model
seed: 5
repeat: 2
kernel: {{source: debian}}
guest: {{memory_mib: 512, clock: virtual, cpus: 1, boot_timeout_s: 300, command_timeout_s: 120,
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
    - {{mode: observe, model_file: {shipped}, decision_permille: 1000}}
    - {{mode: active, model_file: {model}, decision_permille: {permille}}}
    - {{mode: active, trainer: user, ring_mode: drop, publish_every: 256}}
    - {{mode: observe, trainer: kernel, ring_mode: drop, publish_every: 256, cpu_pct: 50,
       publish_dtype: [float32, fixed]}}
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
    trained = json.loads(model.with_name(model.name + ".train.json").read_text())
    matrix = work / "m.yaml"
    matrix.write_text(
        MATRIX.format(model=model, permille=trained["decision_permille"], shipped=SHIPPED)
    )
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


def _by_kind(cells: dict[str, dict]) -> dict[str, list[dict]]:
    """Cells by what they run: observe-shipped, active-trained, active-user, observe-kernel."""
    out: dict[str, list[dict]] = {}
    for c in cells.values():
        m = c["params"]["model"]
        if m.get("model_file"):
            kind = m["mode"] + ("-shipped" if m["model_file"].endswith("/deadline.kmlm")
                                and "workloads" in m["model_file"] else "-trained")  # fmt: skip
        else:
            kind = f"{m['mode']}-{m['trainer']}"
        out.setdefault(kind, []).append(c)
    return out


def test_every_model_cell_is_ok_with_consistent_statistics(model_run) -> None:
    run_dir, _, took = model_run
    cells = _cells(run_dir)
    assert len(cells) == 10
    assert sorted(_by_kind(cells)) == [
        "active-trained", "active-user", "observe-kernel", "observe-shipped"
    ]  # fmt: skip
    for cid, c in cells.items():
        assert c["status"] == "ok", (cid, c.get("error"))
        folder = run_dir / "cells" / cid
        stats = kmlstats.parse_stats((folder / "kml_stats.txt").read_text())
        assert kmlstats.check_invariants(stats) == []
        assert stats.counters["samples"] > 100, cid  # the ring saw the workload
        assert stats.settings["ring_mode"] == c["params"]["model"]["ring_mode"]
        ks = c["kml_stats"]
        assert ks["mode"] == c["params"]["model"]["mode"]
        assert ks["confusion_matrix"] == [
            [stats.counters["met_pred_met"], stats.counters["met_pred_miss"]],
            [stats.counters["miss_pred_met"], stats.counters["miss_pred_miss"]],
        ]
        for key in kmlstats.METRIC_NAMES:
            assert key in c["metrics"], (cid, key)
        assert c["metrics"]["predictions"] == stats.counters["predictions"]
        log = (folder / "kml_setup.log").read_text()
        mode_line = next(line for line in log.splitlines() if "kml_mode=" in line)
        assert f"[{c['params']['model']['mode']}]" in mode_line, log
    print(f"model run: {len(cells)} cells in {took:.0f} s")


def test_offline_model_carries_signal(model_run) -> None:
    run_dir, _, _ = model_run
    kinds = _by_kind(_cells(run_dir))
    for c in kinds["observe-shipped"] + kinds["active-trained"]:
        m = c["metrics"]
        assert m["predictions"] > 100, c["id"]
        assert m["inference_ns_p50"] is not None and m["inference_ns_p50"] > 0
        assert m["inference_ns_p50"] <= m["inference_ns_p99"]
        assert m["issue_time_mae_us"] is not None
        assert (
            c["kml_stats"]["counters"]["decision_permille"]
            == (c["params"]["model"]["decision_permille"])
        )
    # pooled over the repeats: the confusion matrices add up
    pooled = np.sum([c["kml_stats"]["confusion_matrix"] for c in kinds["observe-shipped"]], axis=0)
    m = skill.confusion_metrics(*(int(x) for x in pooled.ravel()))
    print(f"shipped model, observe: {m}")
    assert m["balanced_accuracy"] > 0.55, m
    assert m["mcc"] > 0.1, m
    # active mode acted on the predicted misses
    for c in kinds["active-trained"]:
        assert c["kml_stats"]["counters"]["urgent_dispatches"] > 0, c["kml_stats"]["counters"]


def test_trainers_train_and_hand_back_their_outputs(model_run) -> None:
    run_dir, _, _ = model_run
    kinds = _by_kind(_cells(run_dir))
    for user in kinds["active-user"]:
        m = user["metrics"]
        # online, calibrated (for balanced accuracy) as it goes
        assert m["balanced_accuracy"] > 0.55 and m["mcc"] > 0.1, m
        folder = run_dir / "cells" / user["id"]
        summary = kmlstats.parse_summary((folder / "trainer.txt").read_text())
        assert summary["samples"] > 0, summary
        assert summary["published"] >= 1, summary
        assert user["kml_stats"]["trainer"]["samples"] == summary["samples"]
        curve = user["kml_stats"]["learning_curve"]
        assert len(curve["step"]) >= 2 and "accuracy" in curve
        trained = Model.load(folder / "trained.kmlm")
        assert (trained.n_inputs, trained.n_outputs) == (NR_FEATURES, 1)
    dtypes = sorted(c["params"]["model"].get("publish_dtype", "float32")
                    for c in kinds["observe-kernel"])  # fmt: skip
    assert dtypes == ["fixed", "fixed", "float32", "float32"], dtypes
    for kernel in kinds["observe-kernel"]:
        counters = kernel["kml_stats"]["counters"]
        assert counters["ktrainer_samples"] > 0, counters
        assert counters["updates_applied"] >= 1, counters
        assert counters["predictions"] > 0, counters  # its published models predict
        # it recalibrated the meet/miss threshold
        assert counters["ktrainer_calibrations"] >= 1, counters
        dtype = kernel["params"]["model"].get("publish_dtype", "float32")
        assert kernel["kml_stats"]["settings"]["model_dtype"] == dtype, kernel["kml_stats"]
        if dtype == "fixed":
            # its Q16.16 copies, 14-8-1, run without the FPU, every one
            # compiled into integer dot products: on this device of one slot
            # the normalisation scales the in-flight count up, and its folded
            # weights take fewer fraction bits (docs/kml-iosched.md)
            assert counters["fpu_sections"] == 0, counters
            assert counters["updates_compiled"] == counters["updates_applied"], counters
            assert counters["model_compiled"] == 1, counters
        else:
            assert counters["model_compiled"] == counters["updates_compiled"] == 0, counters


def test_model_metrics_reach_the_database(model_run) -> None:
    run_dir, _, _ = model_run
    conn = db.connect(run_dir.parent / "kmlbench.db")
    try:
        cells = db.load_cells(conn, run_dir.name)
    finally:
        conn.close()
    assert len(cells) == 10
    for c in cells:
        assert c.kml_stats is not None
        assert c.metrics["predictions"] == c.kml_stats["n_predictions"]
        assert c.metrics["accuracy"] == pytest.approx(c.kml_stats["accuracy"])


def _trace_score_buckets(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The score lg(predicted us) - lg(deadline us) of each prediction, in the
    kernel's buckets (an eighth of a lg unit, 64 either side, the outer ones
    open), of the met and of the missed, counted here apart."""
    lg = ffi.lib().kml_dd_lg
    rows = rows[rows["pred_valid"] == 1]
    score = np.array(
        [
            lg(int(p) // 1000) - lg(int(d) // 1000)
            for p, d in zip(rows["pred_issue_ns"], rows["deadline_ns"], strict=True)
        ]
    )
    bucket = np.clip(64 + (score >> 13), 0, 127)
    return bucket[rows["met"] == 1], bucket[rows["met"] == 0]


def _trace_auc(met: np.ndarray, missed: np.ndarray) -> float:
    """AUC of the bucketed score for "missed", ties half: Mann-Whitney over
    every (met, missed) pair."""
    above = (missed[:, None] > met[None, :]).sum() + 0.5 * (missed[:, None] == met[None, :]).sum()
    return float(above / (len(met) * len(missed)))


def test_kmlbench_trace_records_a_real_trace(model_run, tmp_path: Path) -> None:
    run_dir, matrix, _ = model_run
    out = tmp_path / "cell.kmltrc"
    env = dict(os.environ, KMLBENCH_RESULTS=str(tmp_path / "results"))
    observe = _by_kind(_cells(run_dir))["observe-shipped"][0]
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
    # the kernel's AUC of its score histograms is the AUC of the trace's
    # predictions, bucketed as docs/kml-iosched.md says, counted here apart
    # (results/latest links to the run too)
    cells = {p.resolve() for p in (tmp_path / "results").glob("*/cells/*/cell.json")}
    [record] = [json.loads(p.read_text()) for p in cells]
    stats = record["kml_stats"]
    assert (
        stats["counters"]["ring_dropped"] == 0
        and stats["n_predictions"] == rows["pred_valid"].sum()
    )
    met, missed = _trace_score_buckets(rows)
    # the kernel truncates twice: to 2^-20, then to ppm
    assert stats["auc"] == pytest.approx(_trace_auc(met, missed), abs=2**-20 + 1e-6)
    # and it prints those histograms whole: every threshold's ROC point
    # (skill.best_thresholds) is read from them
    [text] = [
        p.read_text()
        for p in {p.resolve() for p in (tmp_path / "results").glob("*/cells/*/kml_stats.txt")}
    ]
    parsed = kmlstats.parse_stats(text)
    for key, buckets in zip(kmlstats.SCORE_HIST_KEYS, (met, missed), strict=True):
        want = dict(zip(*np.unique(buckets, return_counts=True), strict=True))
        got = {b.lo: b.count for b in parsed.histograms.get(key, [])}
        assert got == {int(b): int(n) for b, n in want.items()}, key
    assert stats["best_threshold_balanced"] >= stats["best_threshold_balanced_at_baseline"] >= 0.5
