"""Runner decisions that need no guest: adaptive repeats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kmlbench.plan.matrix import load_matrix
from kmlbench.plan.source import MatrixError
from kmlbench.run.runner import adaptive_round

MATRIX = """\
name: adaptive
seed: 3
repeat: 3
adaptive_repeat: {{metric: clat_p99_us, rel_halfwidth: 0.05, max_repeat: {cap}}}
axes:
  scheduler:
    - {{name: mq-deadline}}
    - {{name: none}}
  workload:
    - {{template: randread, runtime_s: 2}}
"""


def _matrix(tmp_path: Path, cap: int = 6):
    path = tmp_path / "adaptive.yaml"
    path.write_text(MATRIX.format(cap=cap))
    return load_matrix(path)


def _records(matrix, p99_by_scheduler: dict[str, list[float]], status: str = "ok") -> dict:
    records = {}
    for cell in matrix.cells:
        values = p99_by_scheduler[cell.params["scheduler"]["name"]]
        if cell.repeat >= len(values):
            continue
        records[cell.id] = {
            "id": cell.id,
            "repeat": cell.repeat,
            "params": cell.params,
            "status": status,
            "metrics": {"clat_p99_us": values[cell.repeat]} if status == "ok" else {},
        }
    return records


def test_only_the_noisy_configuration_gets_another_repeat(tmp_path: Path) -> None:
    matrix = _matrix(tmp_path)
    records = _records(matrix, {"mq-deadline": [100, 101, 100], "none": [50, 200, 120]})
    new = adaptive_round(matrix, records, 1)
    assert [c.params["scheduler"]["name"] for c in new] == ["none"]
    assert new[0].repeat == 3
    assert new[0].id.endswith("-r3")
    # The new cell is the same configuration: same hash part of the id.
    planned = next(c for c in matrix.cells if c.params["scheduler"]["name"] == "none")
    assert new[0].config_hash == planned.config_hash


def test_cap_stops_repeats(tmp_path: Path) -> None:
    matrix = _matrix(tmp_path, cap=3)
    records = _records(matrix, {"mq-deadline": [10, 300, 90], "none": [50, 200, 120]})
    assert adaptive_round(matrix, records, 1) == []


def test_failed_configurations_are_not_retried(tmp_path: Path) -> None:
    matrix = _matrix(tmp_path)
    records = _records(matrix, {"mq-deadline": [0, 0, 0], "none": [0, 0, 0]}, status="failed")
    assert adaptive_round(matrix, records, 1) == []


def test_bad_adaptive_settings_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MATRIX.format(cap=6).replace("rel_halfwidth: 0.05", "rel_halfwidth: 5"))
    with pytest.raises(MatrixError) as exc:
        load_matrix(path)
    assert str(exc.value).startswith(f"{path}:4: adaptive_repeat.rel_halfwidth:")


def test_prepare_cell_dir_keeps_attempts_and_clears_partial_files(tmp_path: Path) -> None:
    from kmlbench.run.results import prepare_cell_dir as _prepare_cell_dir

    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "cell.json").write_text('{"status": "infra-error"}')
    (cell / "console.log").write_text("first attempt")
    _prepare_cell_dir(cell)  # a retried, finished attempt is set aside
    assert sorted(p.name for p in cell.iterdir()) == ["attempt-1"]
    assert (cell / "attempt-1" / "console.log").read_text() == "first attempt"

    (cell / "console.log").write_text("interrupted second attempt")
    _prepare_cell_dir(cell)  # an interrupted attempt's partial files go
    assert sorted(p.name for p in cell.iterdir()) == ["attempt-1"]

    (cell / "cell.json").write_text('{"status": "timeout"}')
    _prepare_cell_dir(cell)
    assert sorted(p.name for p in cell.iterdir()) == ["attempt-1", "attempt-2"]


def test_a_swallowed_ctrl_c_is_still_remembered() -> None:
    import os
    import signal
    import time

    from kmlbench.run.runner import _interrupt_guard

    previous = signal.getsignal(signal.SIGINT)
    with _interrupt_guard() as interrupted:
        # Python drops exceptions raised in at-fork callbacks; catching the
        # KeyboardInterrupt here stands in for that.
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        assert interrupted.is_set()
    assert signal.getsignal(signal.SIGINT) is previous


def test_resume_refuses_a_run_made_on_another_clock(tmp_path: Path, capsys) -> None:
    """A run recorded before guest.clock existed ran on the realtime clock; the same
    matrix file now means the virtual clock, so finishing it would mix clocks."""
    from kmlbench.run import runner
    from kmlbench.run.results import RunDir

    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: m\naxes: {workload: [{template: randread, runtime_s: 1}]}\n")
    run = RunDir.create(tmp_path / "results", name="m")
    run.copy_matrix(matrix)
    legacy = {"accel": "tcg", "emulated": True, "matrix": {"path": str(matrix), "name": "m"}}
    run.write_manifest(legacy)
    with pytest.raises(SystemExit, match="ran on the realtime clock, but its matrix now means"):
        runner.main_run(
            matrix_path=None, resume=run.run_id, dry_run=True, accel="auto",
            results_root=tmp_path / "results",
        )  # fmt: skip
    run.write_manifest({**legacy, "clock": "virtual", "icount_shift": 0})
    assert runner.main_run(
        matrix_path=None, resume=run.run_id, dry_run=True, accel="auto",
        results_root=tmp_path / "results",
    ) == 0  # fmt: skip


def test_kvm_with_the_virtual_clock_is_refused_before_any_build(tmp_path: Path, capsys) -> None:
    from kmlbench.run import runner

    matrix = tmp_path / "m.yaml"
    matrix.write_text("name: m\naxes: {workload: [{template: randread, runtime_s: 1}]}\n")
    assert runner.main_run(
        matrix_path=matrix, resume=None, dry_run=False, accel="kvm",
        results_root=tmp_path / "results",
    ) == 2  # fmt: skip
    assert "--accel kvm cannot run guest.clock virtual" in capsys.readouterr().out
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_host_timeout_scales_only_the_busy_part() -> None:
    from kmlbench.clock import VIRTUAL_WALL_FACTOR, host_timeout

    assert host_timeout(180, "realtime", busy_guest_s=8) == 180
    assert host_timeout(180, "virtual") == 180  # a short command: caught as fast
    assert host_timeout(180, "virtual", busy_guest_s=8) == 180 + 8 * (VIRTUAL_WALL_FACTOR - 1)


def _one_cell_run(tmp_path: Path, guest: str = ""):  # type: ignore[no-untyped-def]
    """A matrix of one cell and an empty run of it, under ``tmp_path``."""
    from kmlbench.run.results import RunDir

    matrix_path = tmp_path / "m.yaml"
    matrix_path.write_text(
        f"name: m\n{guest}axes: {{workload: [{{template: randread, runtime_s: 1}}]}}\n"
    )
    matrix = load_matrix(matrix_path)
    run = RunDir.create(tmp_path / "results", name="m")
    run.copy_matrix(matrix_path)
    (cell,) = matrix.cells
    return matrix, run, cell


def test_a_retry_whose_kernel_fails_to_build_keeps_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """``--retry`` sets a retried cell's record aside only as the cell runs
    again: a kernel that fails to build (or an interrupt during the build)
    used to leave those cells with no record at all, dropped from the
    summary, the database and the report."""
    from kmlbench.build import image, kernel
    from kmlbench.run import runner

    matrix, run, cell = _one_cell_run(tmp_path)
    run.record_cell(cell, "infra-error", {}, {"error": "the first attempt"})
    (run.cell_dir(cell.id) / "console.log").write_text("the first attempt's console")
    fake_image = tmp_path / "image.cpio"
    fake_image.write_bytes(b"an image")
    monkeypatch.setattr(image, "build_base_image", lambda cache: fake_image)

    def no_kernel(*args: object, **kwargs: object) -> None:
        raise kernel.KernelBuildError("the compiler stopped")

    monkeypatch.setattr(kernel, "build_kernel", no_kernel)
    assert runner.execute(matrix, run, "tcg", retry=("infra-error",)) == 1
    assert "the compiler stopped" in capsys.readouterr().out
    folder = run.cell_dir(cell.id)
    assert sorted(p.name for p in folder.iterdir()) == ["cell.json", "console.log"]
    assert run.read_cells()[cell.id]["status"] == "infra-error"


def test_a_resume_under_another_accelerator_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A run that began under KVM is not finished under TCG (or the other
    way round): its manifest has one accelerator for every cell, and
    report and compare read it."""
    from types import SimpleNamespace

    from kmlbench.build import image, kernel
    from kmlbench.run import runner
    from kmlbench.run.results import RunDir

    matrix_path = tmp_path / "m.yaml"
    matrix_path.write_text(
        "name: m\nguest: {clock: realtime}\n"
        "axes: {workload: [{template: randread, runtime_s: 1}]}\n"
    )
    matrix = load_matrix(matrix_path)
    run = RunDir.create(tmp_path / "results", name="m")
    run.copy_matrix(matrix_path)
    run.write_manifest({"accel": "kvm", "clock": "realtime"})
    fake = tmp_path / "image.cpio"
    fake.write_bytes(b"an image")
    monkeypatch.setattr(image, "build_base_image", lambda cache: fake)
    monkeypatch.setattr(kernel, "build_kernel", lambda *a, **k: SimpleNamespace(bzimage=fake))
    monkeypatch.setattr(runner, "_kernel_record", lambda build: {})
    monkeypatch.setattr(runner, "ensure_profiles", lambda *a, **k: None)
    began = json.loads((run.path / "manifest.json").read_text())
    # asked for by name: refused before any build
    assert runner.execute(matrix, run, "tcg") == 2
    out = capsys.readouterr().out
    assert "ran its cells under kvm, this session would run under tcg (requested)" in out
    # found by auto after the build (KVM no longer usable): refused, and the
    # manifest is put back as it was, not left describing this session
    monkeypatch.setattr(runner, "choose_accel", lambda *a: ("tcg", "KVM not usable"))
    assert runner.execute(matrix, run, "auto") == 2
    assert "this session would run under tcg (KVM not usable)" in capsys.readouterr().out
    assert json.loads((run.path / "manifest.json").read_text()) == began
    assert not list(run.cells_path.iterdir())


class _DiesOnItsWorker:
    """An executor whose every job fails on its worker, as a Dask job does
    when its worker dies: an infra-error for each cell, no folder asked for."""

    slots, dashboard = 1, None

    def __enter__(self) -> _DiesOnItsWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, spec, jobs, folder, on_start):  # type: ignore[no-untyped-def]
        from kmlbench.execution.jobs import CellResult, infra_outcome

        for job in jobs:
            for cell in job.cells:
                on_start(cell, "gone")
                yield CellResult(cell, infra_outcome("its worker died"), "gone")


def test_a_retried_cell_whose_worker_dies_keeps_its_old_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder of a cell whose job failed on its worker is prepared
    before its record, like any other: the old record and its fio.json go
    to attempt-1/, and no stale fio.json stands beside the new record."""
    from types import SimpleNamespace

    from kmlbench.build import image, kernel
    from kmlbench.run import runner

    matrix, run, cell = _one_cell_run(tmp_path)
    (run.cell_dir(cell.id) / "fio.json").write_text('{"jobs": []}')
    run.record_cell(cell, "failed", {}, {"error": "the first attempt"})
    fake = tmp_path / "image.cpio"
    fake.write_bytes(b"an image")
    build = SimpleNamespace(bzimage=fake, build_key="k")
    monkeypatch.setattr(image, "build_base_image", lambda cache: fake)
    monkeypatch.setattr(kernel, "build_kernel", lambda *a, **k: build)
    monkeypatch.setattr(runner, "_kernel_record", lambda build: {})
    monkeypatch.setattr(runner, "ensure_profiles", lambda *a, **k: None)
    monkeypatch.setattr(runner, "_ingest", lambda *a: None)
    status = runner.execute(matrix, run, "tcg", ("failed",), executor=_DiesOnItsWorker())
    assert status == 1
    folder = run.cell_dir(cell.id)
    assert sorted(p.name for p in folder.iterdir()) == ["attempt-1", "cell.json"]
    assert sorted(p.name for p in (folder / "attempt-1").iterdir()) == ["cell.json", "fio.json"]
    assert run.read_cells()[cell.id]["status"] == "infra-error"
