"""What KML costs per request, in instructions, in a real guest (issue 11).

One ``kmlbench run`` of a short ``workloads/hooks.yaml`` under the virtual
clock with the instruction counter (``guest.insn_profile``): the fast
null_blk cell (10 us, 32 slots, randread at iodepth 16, one second) with
mq-deadline's KML off, observing and active with the light model
(``models/deadline-linear-q16.kmlm``, compiled by the kernel into one dot
product). Under the virtual clock the counts are the same in every boot to
within a few instructions per request, so the bounds below are exact
bounds, not timing thresholds: a change that makes the hooks heavier
fails here, not in a benchmark nobody reruns.

KML's cost is the difference against ``off`` of the parts KML's code runs
in (hooks, features, clock, prediction, ring, statistics, mq-deadline;
``kmlbench.data.insn_profile.PARTS``), in instructions per request, shown
beside the stock path's kernel instructions per request. The rest of the
kernel (the allocator, the block layer) moves by a hundred or so per
request from boot to boot, both ways, so it is reported, not bounded. About two minutes of guests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kmlbench.bench import hooks
from kmlbench.data import insn_profile as prof
from kmlbench.paths import CONFIGS_DIR, WORKLOADS_DIR
from test_insn_profile_guest import run_matrix

pytestmark = pytest.mark.kernel

MATRIX = """\
name: kml-cost
seed: 11
guest: {{memory_mib: 512, clock: virtual, icount_shift: 0, cpus: 1, insn_profile: true,
        boot_timeout_s: 300, command_timeout_s: 120}}
axes:
  kernel:
    - {{name: default}}
    - {{name: nokml, fragments: [{nokml}]}}
  device:
    - {{type: null_blk, irqmode: timer, completion_nsec: 10000, hw_queue_depth: 32,
       submit_queues: 1, size_mib: 256}}
  scheduler:
    - {{name: mq-deadline}}
  workload:
    - {{template: randread, bs: 4k, iodepth: 16, runtime_s: 1, ramp_s: 0, size_mib: 128}}
  model:
    - {{mode: off}}
    - {{mode: [observe, active], model_file: {model}, decision_permille: {permille}}}
    - {{mode: observe, model_file: {model}, decision_permille: {permille}, observe_every: {every}}}
    - {{mode: active, model_file: {model}, decision_permille: {permille}, lazy: true,
       sample_unclaimed: [true, false]}}
exclude:
  - {{kernel.name: nokml, model.mode: [observe, active]}}
"""
MODEL = WORKLOADS_DIR / "models" / "deadline-linear-q16.kmlm"

# KML's direct cost per request, in instructions: exact under the virtual
# clock, where the stock path's total is not (off reads 14,140 to 14,800
# from kernel to kernel as SLOB's free-list walks move), so the bound is on
# KML's instructions and the share is reported beside it. Measured against
# off: observe 890, active 890 (policy expire's test of the FIFO head),
# 6.2% of off; the bounds catch a regression of a few dozen. Issue 11's
# goal is 1% observing and 2% active (about 145 and 290): observing every
# request does not reach it, and this says so.
OBSERVE_MAX = 910
ACTIVE_MAX = 910
# Observing one window of 1,024 requests in 16 (model.observe_every): the
# other requests go untracked, in line in mq-deadline's insert (a
# countdown and a counter, no call: kml_dd_passing()). Issue 11's goal,
# 1% of the stock path's instructions per request, is the bound, against
# off and, with off's own cost, against the lowest stock total seen
# (STOCK_LOWEST, below). The hooks bench's 14-4-1 model: 134 against the
# kernel without the hooks (150 before the inline pass): at most a
# sixteenth of observe's cost, plus about 20 on each request that passes
# untracked.
EVERY = 16
DUTY_MAX_SHARE = 0.01
# Active predicting lazily (model.lazy): the features' inputs kept at insert,
# the prediction only when a decision reads it. On this short queue every
# FIFO head is the request mq-deadline dispatches next, so none is
# predicted. Measured 396 against off (2.8%; predicting every request 890).
LAZY_MAX = 415
# ... and with no sample made while no consumer holds the ring
# (model.sample_unclaimed: false; no trainer runs here): measured 266
# against off (LIGHT_MAX), 275 against the kernel without the hooks
# (1.92% of its 14,290 in this test's run; 324 before the hooks were
# reshaped: docs/benchmarks.md, "The lazy path without a call" and "Off
# is stock's own dispatch"), one clock read per request. Issue 11's goal
# is 2% of the stock path, whose total moves with SLOB's free-list walks
# from kernel to kernel (14,002 to 14,820 seen): the second bound is 2% of
# the lowest (STOCK_LOWEST), on KML's instructions against that path
# (exact), and the share is reported beside it.
LIGHT_MAX = 280
ACTIVE_MAX_SHARE = 0.02
STOCK_LOWEST = 14_002
# With kml_mode off, against the same kernel built without KML's hooks
# (``off [nokml]``, CONFIG_KML_IOSCHED=n): mq-deadline's own instructions
# per request. Measured 9 (0.06%; 21 before mq-deadline's dispatch was
# compiled twice, 35 before the hooks' tests became static keys): the nop
# of the key's test at the insert and at the dispatch (with the register
# moves GCC added around the choice of copy), and the request's context
# tested at its completion.
OFF_MAX = 12
NOKML_CONFIG = CONFIGS_DIR / "no-kml-iosched.config"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("kml-cost")
    # the threshold the model's training calibrated (kmlbench train writes it)
    report = json.loads(MODEL.with_name(MODEL.name + ".train.json").read_text())
    matrix = MATRIX.format(
        model=MODEL, every=EVERY, permille=report["decision_permille"], nokml=NOKML_CONFIG
    )
    return run_matrix(tmp, "kml-cost", matrix, timeout=20 * 60)


@pytest.fixture(scope="module")
def result(run_dir: Path) -> dict[str, Any]:
    return hooks.breakdown(run_dir)


def _cost(result: dict[str, Any], label: str) -> tuple[float, float, dict[str, float]]:
    """(KML's instructions per request, the stock path's, KML's by part) of a mode's label."""
    parts = result["modes"][label]["vs_baseline"]["parts_per_io"]
    kml = {name: parts[name] for name in prof.KML_PARTS}
    return sum(kml.values()), result["modes"]["off"]["kernel_per_io"], kml


def test_off_is_the_stock_path(result: dict[str, Any]) -> None:
    off = result["modes"]["off"]
    # thousands of kernel instructions per 4 KiB read, and no KML code ran
    assert 5_000 < off["kernel_per_io"] < 50_000, off
    for name in ("features", "prediction", "ring", "statistics"):
        assert off["parts_per_io"][name] < 1.0, (name, off["parts_per_io"])


def test_off_costs_mq_deadline_next_to_nothing(result: dict[str, Any]) -> None:
    """KML off against KML compiled out: mq-deadline's instructions per
    request differ by at most OFF_MAX, and no KML code runs in either."""
    nokml = result["modes"][hooks.STOCK]
    parts = nokml["vs_baseline"]["parts_per_io"]
    # nokml less off: what the hooks cost off, negated
    hooks_off = -parts["mq-deadline"]
    stock = nokml["kernel_per_io"]
    assert 0 <= hooks_off <= OFF_MAX, f"{hooks_off:.1f} of {stock:.0f} per I/O: {parts}"
    for name in ("hooks", "features", "prediction", "ring", "statistics"):
        assert abs(parts[name]) < 1.0, (name, parts)
    # the breakdown's cost against the stock path: off's own, KML's parts
    assert result["stock"]["off_kml_per_io"] == pytest.approx(-prof.kml_per_io(parts))
    lazy = result["modes"][f"active {MODEL.stem} lazy=True sample_unclaimed=False"]
    # issue 11: active, as deployed without a trainer, within 2% of the
    # stock path (KML's instructions and off's own, against the kernel
    # without the hooks)
    light = lazy["vs_stock_kml_per_io"]
    bound = ACTIVE_MAX_SHARE * STOCK_LOWEST
    assert light <= bound, f"{light:.0f} > {bound:.0f}; of this {stock:.0f}: {light / stock:.2%}"


@pytest.mark.parametrize("mode, bound", [("observe", OBSERVE_MAX), ("active", ACTIVE_MAX)])
def test_kml_costs_at_most_its_bound(result: dict[str, Any], mode: str, bound: int) -> None:
    kml, stock, parts = _cost(result, f"{mode} {MODEL.stem}")
    what = f"{kml:.0f} of {stock:.0f} instructions per I/O ({kml / stock:.2%})"
    assert kml <= bound, f"{mode}: {what}: {parts}"
    # the light model is a dot product in the insert hook: no library layer,
    # no FPU (138 instructions per request with the conversion to ns and
    # the one-in-64 timing; the library's 14-16-1 MLP takes 3,207)
    assert parts["prediction"] < 160, parts
    assert result["modes"][f"{mode} {MODEL.stem}"]["parts_per_io"]["prediction"] < 160


def test_observing_part_of_the_time_costs_at_most_1_percent(
    result: dict[str, Any], run_dir: Path
) -> None:
    label = f"observe {MODEL.stem} observe_every={EVERY}"
    kml, stock, parts = _cost(result, label)
    assert kml <= DUTY_MAX_SHARE * stock, f"{kml:.0f} of {stock:.0f} ({kml / stock:.2%}): {parts}"
    duty = result["modes"][label]["vs_stock_kml_per_io"]
    assert duty <= DUTY_MAX_SHARE * STOCK_LOWEST, f"{duty:.0f} against the kernel without the hooks"
    # and it observed: a window in 16, less its warm-up, was predicted and
    # counted; the rest went by untracked
    [cell] = [
        c
        for c in json.loads((run_dir / "summary.json").read_text())["cells"]
        if c["params"]["model"].get("observe_every") == EVERY
    ]
    counters = cell["kml_stats"]["counters"]
    assert counters["observe_every"] == EVERY
    inserts = counters["unobserved"] + counters["samples"]
    assert counters["unobserved"] > 0.8 * inserts, counters
    assert counters["predictions"] > 1000, counters


def test_active_predicting_lazily_costs_at_most_its_bound(
    result: dict[str, Any], run_dir: Path
) -> None:
    kml, stock, parts = _cost(result, f"active {MODEL.stem} lazy=True")
    eager, _, _ = _cost(result, f"active {MODEL.stem}")
    what = f"{kml:.0f} of {stock:.0f} instructions per I/O ({kml / stock:.2%})"
    assert kml <= LAZY_MAX, f"{what}: {parts}"
    assert kml < 0.6 * eager, (kml, eager)
    # no FIFO head here was other than the next request: nothing predicted,
    # yet every request was tracked (its feature inputs copied at insert)
    assert parts["prediction"] < 1.0, parts
    [cell] = [
        c
        for c in json.loads((run_dir / "summary.json").read_text())["cells"]
        if c["params"]["model"].get("lazy") and "sample_unclaimed" not in c["params"]["model"]
    ]
    counters = cell["kml_stats"]["counters"]
    assert counters["lazy"] == 1, counters
    assert counters["samples"] > 10_000 and counters["inferences"] == 0, counters


def test_no_ring_consumer_costs_nothing_for_the_ring(result: dict[str, Any], run_dir: Path) -> None:
    """Lazily, with ``sample_unclaimed`` 0 and no trainer: no sample is
    made, and the ring costs nothing."""
    kml, stock, parts = _cost(result, f"active {MODEL.stem} lazy=True sample_unclaimed=False")
    kept, _, _ = _cost(result, f"active {MODEL.stem} lazy=True")
    what = f"{kml:.0f} of {stock:.0f} instructions per I/O ({kml / stock:.2%})"
    assert kml <= LIGHT_MAX, f"{what}: {parts}"
    assert kml < kept - 30, (kml, kept)
    assert parts["ring"] < 1.0, parts
    [cell] = [
        c
        for c in json.loads((run_dir / "summary.json").read_text())["cells"]
        if c["params"]["model"].get("sample_unclaimed") is False
    ]
    counters = cell["kml_stats"]["counters"]
    assert counters["sample_unclaimed"] == 0, counters
    assert counters["samples"] > 10_000, counters
    assert counters["ring_unclaimed"] == counters["samples"], counters
    assert counters["ring_produced"] == 0 == counters["ring_dropped"], counters


def test_the_light_model_predicts_every_request(result: dict[str, Any]) -> None:
    # the cost is that of a model that runs: the hooks saw every I/O
    for mode in ("observe", "active"):
        kml, _, parts = _cost(result, f"{mode} {MODEL.stem}")
        assert parts["features"] > 20 and parts["hooks"] > 20, parts
        assert kml > 100, parts
