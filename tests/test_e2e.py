"""End to end: ``kmlbench run workloads/smoke.yaml`` for real.

Builds (or finds cached) the patched kernel, boots QEMU guests, runs fio
over SSH, and checks what lands on disk. The run is interrupted with
SIGINT after its first finished cell and then resumed, which exercises in
one pass: the interrupt path (finished cells kept, no QEMU left behind),
``--resume`` (only missing cells run), and the build cache (the resumed
session compiles nothing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmlbench import paths
from kmlbench.data.histogram import FIO_PLAT_BITS
from kmlbench.plan.matrix import load_matrix
from kmlbench.status import STATUSES

pytestmark = pytest.mark.kernel

SMOKE = paths.WORKLOADS_DIR / "smoke.yaml"
REQUIRED_METRICS = (
    "iops",
    "bw_kib_s",
    "clat_mean_us",
    "clat_p50_us",
    "clat_p99_us",
    "clat_p999_us",
)


def _kmlbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "kmlbench.cli", *args]


def _qemu_pids_with(marker: str) -> list[int]:
    """QEMU processes whose command line mentions ``marker`` (our results dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "qemu-system" in cmdline and marker in cmdline:
            found.append(int(proc.name))
    return found


def _wait_for_first_cell(results: Path, proc: subprocess.Popen, deadline_s: float) -> Path:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "kmlbench ended before finishing a cell"
        runs = [p for p in results.iterdir() if p.is_dir() and not p.is_symlink()]
        for run in runs:  # not through the "latest" link: the run's own folder
            if any(run.glob("cells/*/cell.json")):
                return run
        time.sleep(1)
    raise AssertionError("no cell finished in time")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the smoke matrix: interrupt after one cell, then resume to the end."""
    results = tmp_path_factory.mktemp("results")
    env = dict(os.environ, KMLBENCH_RESULTS=str(results))
    first = subprocess.Popen(
        _kmlbench("run", str(SMOKE)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run_dir = _wait_for_first_cell(results, first, deadline_s=40 * 60)
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, out
    assert not _qemu_pids_with(str(results)), "QEMU survived the interrupt"
    kept = {p.parent.name for p in run_dir.glob("cells/*/cell.json")}
    assert kept, "the interrupted run kept no finished cell"
    (run_dir / "interrupted-cells.json").write_text(json.dumps(sorted(kept)))

    resumed = subprocess.run(
        _kmlbench("run", "--resume", run_dir.name),
        env=env,
        capture_output=True,
        text=True,
        timeout=40 * 60,
    )
    (run_dir / "resume-output.txt").write_text(resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not _qemu_pids_with(str(results)), "QEMU survived the run"
    return run_dir


def test_summary_has_every_cell_ok_with_metrics(smoke_run: Path) -> None:
    summary = json.loads((smoke_run / "summary.json").read_text())
    matrix = load_matrix(SMOKE)
    assert summary["run_id"] == smoke_run.name
    assert summary["accel"] in ("kvm", "tcg")
    assert [c["id"] for c in summary["cells"]] == [c.id for c in matrix.cells]
    schedulers = {c["params"]["scheduler"]["name"] for c in summary["cells"]}
    workloads = {c["params"]["workload"]["template"] for c in summary["cells"]}
    assert len(schedulers) >= 2 and len(workloads) >= 2
    for cell in summary["cells"]:
        assert cell["status"] in STATUSES
        assert cell["status"] == "ok", cell
        for key in REQUIRED_METRICS:
            assert cell["metrics"][key] > 0, (cell["id"], key)
        assert cell["metrics"]["clat_p50_us"] <= cell["metrics"]["clat_p99_us"]
        assert cell["metrics"]["clat_p99_us"] <= cell["metrics"]["clat_p999_us"]


def test_mixed_workload_reports_each_direction(smoke_run: Path) -> None:
    summary = json.loads((smoke_run / "summary.json").read_text())
    mixed = [c for c in summary["cells"] if c["params"]["workload"]["template"] == "randrw"]
    assert mixed
    for cell in mixed:
        for direction in ("read", "write"):
            assert cell["metrics"][f"{direction}_iops"] > 0
            assert cell["metrics"][f"{direction}_clat_p99_us"] > 0


def test_each_cell_folder_holds_its_raw_outputs(smoke_run: Path) -> None:
    for cell_dir in (smoke_run / "cells").iterdir():
        fio_json = json.loads((cell_dir / "fio.json").read_text())
        assert fio_json["jobs"], cell_dir
        # json+ keeps the full completion-latency histogram.
        assert any(
            "bins" in job["read"]["clat_ns"] or "bins" in job["write"]["clat_ns"]
            for job in fio_json["jobs"]
        )
        console = (cell_dir / "console.log").read_text()
        assert "Linux version 6.1" in console
        assert "Linux version 6.1" in (cell_dir / "dmesg.txt").read_text()
        record = json.loads((cell_dir / "cell.json").read_text())
        # The scheduler the cell asked for is the one fio ran under.
        wanted = record["params"]["scheduler"]["name"]
        assert f"[{wanted}]" in (cell_dir / "setup.log").read_text()
        # The record says which fio bucket width its percentiles come from.
        assert record["fio_bucket_bits"] == FIO_PLAT_BITS


def test_manifest_describes_the_run(smoke_run: Path) -> None:
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["accel"] in ("kvm", "tcg")
    assert manifest["emulated"] == (manifest["accel"] == "tcg")
    assert manifest["harness"]["git"]
    assert manifest["qemu"]["version"]
    assert "qemu-system-x86_64" in manifest["qemu"]["command_line"][0]
    assert "hostfwd=tcp:127.0.0.1:" in " ".join(manifest["qemu"]["command_line"])
    assert manifest["matrix"]["seed"] == load_matrix(SMOKE).seed
    kernel = next(iter(manifest["kernels"].values()))
    for key in ("source_id", "patch_series_hash", "config_hash", "compiler"):
        assert kernel[key]
    assert len(manifest["sessions"]) == 2  # the interrupted session and the resume


def test_resume_ran_only_missing_cells_and_compiled_nothing(smoke_run: Path) -> None:
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    kept = json.loads((smoke_run / "interrupted-cells.json").read_text())
    total = len(load_matrix(SMOKE).cells)
    assert manifest["sessions"][1]["cells_to_run"] == total - len(kept)
    # The second session found the kernel in the cache.
    assert all(not k["compiled"] for k in manifest["kernels"].values())


def test_latest_points_at_the_run(smoke_run: Path) -> None:
    latest = smoke_run.parent / "latest"
    assert latest.is_symlink()
    assert latest.resolve() == smoke_run.resolve()


def test_harness_timings_are_recorded(smoke_run: Path) -> None:
    from kmlbench.bench.harness import cell_timings

    rows = cell_timings(smoke_run)
    assert len(rows) == len(load_matrix(SMOKE).cells)
    for row in rows:
        # Boot is part of the time outside fio, and fio ran for its runtime.
        assert 0 < row["boot_s"] <= row["outside_s"]
        assert row["fio_s"] >= 3


def test_report_from_the_real_smoke_run(smoke_run: Path, tmp_path: Path) -> None:
    from kmlbench.report import report
    from test_report import _check_png, _pdf_pages

    index = report.build_report(smoke_run, db_path=tmp_path / "k.db", out_dir=tmp_path / "rep")
    page = index.read_text()
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    if manifest["emulated"]:
        assert "emulated" in page.lower()
    assert manifest["kernels"]["default"]["config_hash"][:12] in page
    pngs = sorted((tmp_path / "rep").rglob("*.png"))
    pdfs = sorted((tmp_path / "rep").rglob("*.pdf"))
    assert pngs and pdfs
    for png in pngs:
        _check_png(png)
    for pdf in pdfs:
        assert _pdf_pages(pdf) >= 1
    for cell in json.loads((smoke_run / "summary.json").read_text())["cells"]:
        assert cell["id"] in page
    # Series are named by what differs between them (the scheduler), not by
    # every tunable mq-deadline has and none lacks.
    from kmlbench.report import figures

    data = figures.load_run_data(tmp_path / "k.db", smoke_run.name)
    labels = {s.label for panel in data.panels for s in panel.series.values()}
    assert labels == {"mq-deadline", "none"}


ADAPTIVE = """\
name: adaptive
seed: 5
repeat: 1
adaptive_repeat: {metric: iops, rel_halfwidth: 0.5, max_repeat: 4}
guest: {memory_mib: 512, boot_timeout_s: 300, command_timeout_s: 120}
axes:
  device:
    - {type: null_blk, completion_nsec: 50000, irqmode: timer, size_mib: 128}
  scheduler:
    - {name: mq-deadline}
  workload:
    - {template: randread, iodepth: 4, runtime_s: 2, ramp_s: 0, size_mib: 32}
"""


def test_adaptive_repeats_run_until_the_interval_is_narrow(tmp_path: Path) -> None:
    from kmlbench.data.stats import needs_more_repeats

    matrix = tmp_path / "adaptive.yaml"
    matrix.write_text(ADAPTIVE)
    results = tmp_path / "results"
    env = dict(os.environ, KMLBENCH_RESULTS=str(results))
    done = subprocess.run(
        _kmlbench("run", str(matrix)), env=env, capture_output=True, text=True, timeout=20 * 60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((results / "latest" / "summary.json").read_text())
    cells = summary["cells"]
    # One planned repeat, then extra ones: at least 3 (the fewest an interval
    # is computed from), at most the cap of 4.
    assert 3 <= len(cells) <= 4
    assert sorted(c["repeat"] for c in cells) == list(range(len(cells)))
    samples = [c["metrics"]["iops"] for c in cells]
    # It stopped exactly when the statistics said the interval was narrow.
    assert needs_more_repeats(samples[:3], 0.5, 4) == (len(cells) == 4)
    plan = json.loads((results / "latest" / "plan.json").read_text())
    assert plan["cell_ids"] == [c["id"] for c in cells]


ONE_CELL = """\
name: one
guest: {memory_mib: 512, boot_timeout_s: 300, command_timeout_s: 120}
axes:
  device:
    - {type: null_blk, completion_nsec: 20000, irqmode: timer, size_mib: 64}
  workload:
    - {template: randread, iodepth: 2, runtime_s: 1, ramp_s: 0, size_mib: 16}
"""


def test_retry_reruns_a_failed_cell_and_keeps_the_old_attempt(tmp_path: Path) -> None:
    import sqlite3

    matrix = tmp_path / "one.yaml"
    matrix.write_text(ONE_CELL)
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in ("KMLBENCH_RESULTS", "KMLBENCH_DB")}
    first = subprocess.run(
        _kmlbench("run", str(matrix), "--results", str(results)),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = next(p for p in results.iterdir() if p.is_dir() and not p.is_symlink())
    # The database follows --results instead of landing in the checkout.
    db = results / "kmlbench.db"
    assert sqlite3.connect(db).execute("select count(*) from cells").fetchone()[0] == 1

    # Pretend the cell had failed for the harness's sake, then retry it.
    (cell_dir,) = (run_dir / "cells").iterdir()
    record = json.loads((cell_dir / "cell.json").read_text())
    record["status"] = "infra-error"
    (cell_dir / "cell.json").write_text(json.dumps(record))
    plain = subprocess.run(
        _kmlbench("run", "--resume", run_dir.name, "--results", str(results)),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert "0 of 1 cells to run" in plain.stdout  # without --retry a record is final
    retried = subprocess.run(
        _kmlbench("run", "--resume", run_dir.name, "--results", str(results),
                  "--retry", "infra-error"),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert json.loads((cell_dir / "cell.json").read_text())["status"] == "ok"
    old = json.loads((cell_dir / "attempt-1" / "cell.json").read_text())
    assert old["status"] == "infra-error"
    assert (cell_dir / "attempt-1" / "fio.json").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["ok"]
