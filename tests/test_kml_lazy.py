"""Active mode predicting lazily (``model.lazy``, issue 11), in a real guest.

With the kernel's ``lazy`` parameter, active mode copies what a request's
features are computed from at insert and makes its features and prediction
only when a dispatch decision first reads them (``__kml_dd_predict_lazy``); a FIFO head
that mq-deadline would dispatch next anyway is never predicted. On the
fast device of ``tests/test_kml_cost.py`` the queue is that short, and
lazy mode predicts nothing there (its cost is bounded in that test).

Here the queue is deep (the end-to-end fixture's device: a 500 us null_blk
with one slot, 32 requests in flight, 8 ms read deadlines), so decisions
do turn on predictions. One ``kmlbench run`` on the virtual clock, the
14-4-1 Q16 model active, predicting every request and lazily, then
``kmlbench trace`` of the lazy cell. Checked:

* predicting every request, every tracked request has a prediction;
  lazily, a share of them only, but enough to steer (urgent dispatches);
* each lazy prediction is the model's on the features of the request's
  insert: the trace's features (made at the prediction or, for a request
  never predicted, at its completion, from the values taken at insert)
  put through the model file in user space give the kernel's prediction.
About three minutes of guests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kmlbench.data.trace import FEATURE_NAMES, NR_FEATURES, read_trace
from kmlbench.kml import train
from kmlbench.kml.deadline import dd_meets_q16
from kmlbench.kml.model import Model
from kmlbench.kml.trace_import import replay
from kmlbench.paths import WORKLOADS_DIR
from test_insn_profile_guest import run_matrix

pytestmark = pytest.mark.kernel

MODEL = WORKLOADS_DIR / "models" / "deadline-small-q16.kmlm"
CAPACITY = 256 * 2048  # the device: size_mib 256, in 512-byte sectors
WARM_UP = 256
MATRIX = """\
name: kml-lazy
seed: 12
guest: {{memory_mib: 512, clock: virtual, icount_shift: 0, cpus: 1,
        boot_timeout_s: 300, command_timeout_s: 120}}
axes:
  device:
    - {{type: null_blk, irqmode: timer, completion_nsec: 500000, hw_queue_depth: 1,
       submit_queues: 1, size_mib: 256}}
  scheduler:
    - {{name: mq-deadline, read_expire: 8, write_expire: 20, fifo_batch: 8,
       writes_starved: 2, nr_requests: 128}}
  workload:
    - {{template: randrw, bs: 4k, iodepth: 32, rwmix_read: 70, runtime_s: 3, ramp_s: 0,
       size_mib: 128}}
  model:
    - {{mode: active, model_file: {model}, decision_permille: {permille}, lazy: [false, true]}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[bool, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("kml-lazy")
    report = json.loads(MODEL.with_name(MODEL.name + ".train.json").read_text())
    text = MATRIX.format(model=MODEL, permille=report["decision_permille"])
    run_dir = run_matrix(tmp, "kml-lazy", text, timeout=20 * 60)
    cells = json.loads((run_dir / "summary.json").read_text())["cells"]
    by_lazy = {bool(c["params"]["model"].get("lazy", False)): c for c in cells}
    assert sorted(by_lazy) == [False, True], [c["params"]["model"] for c in cells]
    for cell in cells:
        assert cell["status"] == "ok", cell
    return tmp, tmp / "kml-lazy.yaml", by_lazy


def _counters(cell: dict[str, Any]) -> dict[str, int]:
    return cell["kml_stats"]["counters"]


def test_every_request_is_predicted_unless_lazy(run: Any) -> None:
    _, _, cells = run
    eager, lazy = _counters(cells[False]), _counters(cells[True])
    assert eager["lazy"] == 0 and lazy["lazy"] == 1, (eager, lazy)
    assert eager["samples"] > 1000 and lazy["samples"] > 1000, (eager, lazy)
    # predicting at insert: every tracked request that completed
    assert eager["predictions"] >= 0.99 * eager["samples"], eager
    # lazily: those a decision read, a share of them, and enough to steer
    assert 100 < lazy["predictions"] < 0.9 * lazy["samples"], lazy
    assert lazy["urgent_dispatches"] > 0, lazy


def test_a_lazy_prediction_is_the_models_on_the_inserts_features(run: Any, tmp_path: Path) -> None:
    tmp, matrix, cells = run
    out = tmp_path / "lazy.kmltrc"
    env = dict(os.environ, KMLBENCH_RESULTS=str(tmp / "results"))
    done = subprocess.run(
        [sys.executable, "-m", "kmlbench.cli", "trace", str(matrix),
         "--cell", cells[True]["id"], "-o", str(out)],
        env=env, capture_output=True, text=True, timeout=10 * 60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_trace(out)
    predicted = rows[rows["pred_valid"] == 1]
    assert 100 < len(predicted) < 0.9 * len(rows), (len(predicted), len(rows))
    # The features are the insert's: every request's, made at its
    # prediction or (never predicted) at its completion from the values
    # taken at insert, equal those a replay of the trace's requests through
    # kml_dd_feat.c computes at each insert (as tests/test_trace_import.py
    # does for a trace of features computed at insert). The running
    # averages start where the kernel's were before the first traced
    # request, so the first WARM_UP requests are left out; one request may
    # count as in flight an event early or late.
    ordered = rows[np.lexsort((rows["sector"], rows["insert_ns"]))]
    replayed = replay(ordered, CAPACITY)[WARM_UP:].astype(np.int64)
    kernel = ordered["features"][WARM_UP:, :NR_FEATURES].astype(np.int64)
    for j, name in enumerate(FEATURE_NAMES):
        differ = replayed[:, j] != kernel[:, j]
        if name == "lg_inflight":
            assert differ.mean() <= 0.01 and np.abs(replayed[:, j] - kernel[:, j]).max() <= 65536
        else:
            assert not differ.any(), (name, np.flatnonzero(differ)[:5])
    y = Model.load(MODEL).predict(train.inputs(predicted, NR_FEATURES))
    # the kernel's integer conversion to ns and call (kml_dd_decide_q16) on
    # the library's output; the kernel folds the normalisation into the
    # weights, a fraction of a Q16 unit away (measured: at most 0.0003 of
    # an lg unit, every call the same).
    permille = cells[True]["params"]["model"]["decision_permille"]
    yq = np.round(y * 65536).astype(np.int32)
    issue_ns, met = dd_meets_q16(yq, predicted["deadline_ns"], permille)
    # recorded at most 8 deadlines (at least 1 ms) in (KML_DD_PRED_MAX_FACTOR)
    cap = 8 * np.maximum(predicted["deadline_ns"].astype(np.int64), 1_000_000)
    ours = np.log2(1 + np.minimum(issue_ns, cap) / 1000)
    kernel = np.log2(1 + predicted["pred_issue_ns"].astype(np.float64) / 1000)
    gap = np.abs(ours - kernel)
    assert gap.max() < 0.005, np.percentile(gap, [50, 99, 100])
    assert np.mean(met == (predicted["pred_met"] == 1)) > 0.999
