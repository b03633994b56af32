"""results.py: the run folder survives being killed, and summary.json follows it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kmlbench import paths
from kmlbench.plan.cells import Cell
from kmlbench.plan.matrix import load_matrix
from kmlbench.run.results import RUN_ID_RE, RunDir, make_run_id
from kmlbench.status import STATUSES

SMOKE = paths.WORKLOADS_DIR / "smoke.yaml"


@pytest.fixture
def cells() -> list[Cell]:
    return load_matrix(SMOKE).cells


def metrics(i: int) -> dict[str, float]:
    return {"iops": 1000.0 + i, "bw_kib_s": 4000.0 + i, "clat_p99_us": 90.5}


def summary(run: RunDir) -> dict:
    return json.loads(run.summary_path.read_text())


def test_run_ids_sort_by_time_and_never_collide(tmp_path: Path) -> None:
    assert make_run_id("smoke", now=0) == "19700101-000000-smoke"
    assert make_run_id("smoke", now=86400 + 3661) == "19700102-010101-smoke"
    a = RunDir.create(tmp_path, name="smoke")
    b = RunDir.create(tmp_path, run_id=a.run_id + "-x")
    c = RunDir.create(tmp_path, name="smoke")  # same second as a, most likely
    assert RUN_ID_RE.match(a.run_id)
    assert len({a.run_id, b.run_id, c.run_id}) == 3
    assert (a.path / "cells").is_dir()
    with pytest.raises(FileExistsError):
        RunDir.create(tmp_path, run_id=a.run_id)
    with pytest.raises(ValueError):
        make_run_id("../evil")


def test_record_cells_and_summary_in_matrix_order(tmp_path: Path, cells: list[Cell]) -> None:
    run = RunDir.create(tmp_path, name="smoke")
    run.write_manifest({"accel": "tcg", "emulated": True, "matrix": {"name": "smoke"}})
    run.copy_matrix(SMOKE)
    run.write_plan(cells)
    assert (run.path / "matrix.yaml").read_bytes() == SMOKE.read_bytes()
    assert summary(run)["cells"] == []

    # Record out of order, as a resumed run would.
    for i in (2, 0, 3, 1):
        run.write_cell_file(cells[i].id, "fio.json", "{}")
        run.record_cell(cells[i], "ok" if i != 3 else "timeout", metrics(i), {"seconds": 1.5})

    s = summary(run)
    assert s["schema_version"] == 1
    assert s["run_id"] == run.run_id
    assert (s["accel"], s["emulated"], s["matrix"]) == ("tcg", True, "smoke")
    assert [c["id"] for c in s["cells"]] == [c.id for c in cells]
    assert s["counts"]["ok"] == 3 and s["counts"]["timeout"] == 1
    assert (s["planned"], s["finished"]) == (4, 4)
    first = s["cells"][0]
    assert first["params"] == cells[0].params
    assert first["metrics"] == metrics(0)
    assert first["status"] == "ok" and first["seconds"] == 1.5
    record = json.loads((run.cell_dir(cells[3].id) / "cell.json").read_text())
    assert record["status"] == "timeout" and record["repeat"] == cells[3].repeat
    assert run.finished_cell_ids() == {c.id for c in cells}
    assert run.finished_cell_ids(retry_statuses=["timeout"]) == {c.id for c in cells[:3]}


def test_summary_is_rebuilt_from_cell_records(tmp_path: Path, cells: list[Cell]) -> None:
    run = RunDir.create(tmp_path, name="smoke")
    for cell in cells[:2]:
        run.record_cell(cell, "ok", metrics(0), {})
    # Without a plan the order is recording order; without a manifest accel is unknown.
    s = summary(run)
    assert [c["id"] for c in s["cells"]] == [c.id for c in cells[:2]]
    assert s["accel"] is None and s["planned"] is None
    (run.cell_dir(cells[0].id) / "cell.json").unlink()
    run.write_summary()
    assert [c["id"] for c in summary(run)["cells"]] == [cells[1].id]


def test_bad_records_are_refused(tmp_path: Path, cells: list[Cell]) -> None:
    run = RunDir.create(tmp_path, name="smoke")
    with pytest.raises(ValueError, match="status"):
        run.record_cell(cells[0], "exploded", {}, {})
    with pytest.raises(ValueError, match="extra may not set status"):
        run.record_cell(cells[0], "ok", {}, {"status": "failed"})
    with pytest.raises(ValueError):
        run.cell_dir("../../etc")
    assert run.finished_cell_ids() == set()
    # A metric fio could not produce is recorded as null, keeping the JSON valid.
    run.record_cell(cells[0], "failed", {"iops": float("nan")}, {"error": "fio died"})
    assert summary(run)["cells"][0]["metrics"] == {"iops": None}
    assert set(STATUSES) == {"ok", "failed", "timeout", "panic", "boot-failure", "infra-error"}


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from kmlbench.plan.matrix import load_matrix
    from kmlbench.run.results import RunDir

    cells = load_matrix(Path(sys.argv[2])).cells
    run = RunDir.open(Path(sys.argv[1]), sys.argv[3])
    for cell in cells[:2]:
        run.record_cell(cell, "ok", {"iops": 1.0}, {})

    # Third cell: die in the middle of writing its cell.json, after the data
    # reached the temporary file but before it was renamed into place.
    real_replace = os.replace
    def die(src, dst):
        if str(dst).endswith("cell.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)
    os.replace = die
    run.write_cell_file(cells[2].id, "console.log", "Linux version 6.1 ...")
    run.record_cell(cells[2], "ok", {"iops": 1.0}, {})
    """
)


def test_killed_run_keeps_finished_cells_and_resumes(tmp_path: Path, cells: list[Cell]) -> None:
    run = RunDir.create(tmp_path, name="smoke")
    run.write_manifest({"accel": "kvm"})
    run.write_plan(cells)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path), str(SMOKE), run.run_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr

    # A leftover from a different death: a truncated temporary summary.
    (run.path / ".summary.json.zzz.tmp").write_text('{"schema_version": 1, "cel')

    resumed = RunDir.open(tmp_path, run.run_id)
    third = resumed.cells_path / cells[2].id
    assert [p.name for p in third.iterdir() if re.match(r"\.cell\.json\..*\.tmp$", p.name)]
    assert resumed.finished_cell_ids() == {cells[0].id, cells[1].id}
    s = summary(resumed)  # the summary on disk is the one written after cell 2
    assert [c["id"] for c in s["cells"]] == [cells[0].id, cells[1].id]
    assert s["emulated"] is False

    todo = [c for c in cells if c.id not in resumed.finished_cell_ids()]
    assert [c.id for c in todo] == [c.id for c in cells[2:]]
    resumed.discard_unfinished(cells[2].id)
    assert not third.exists()
    for cell in todo:
        resumed.record_cell(cell, "ok", {"iops": 2.0}, {})
    assert [c["id"] for c in summary(resumed)["cells"]] == [c.id for c in cells]


def test_latest_is_a_relative_link_to_the_newest_run(tmp_path: Path) -> None:
    old = RunDir.create(tmp_path, run_id="20260101-000000-smoke")
    old.update_latest()
    link = tmp_path / "latest"
    assert link.is_symlink() and os.readlink(link) == old.run_id
    new = RunDir.create(tmp_path, run_id="20260102-000000-smoke")
    new.update_latest()
    assert os.readlink(link) == new.run_id
    # Resuming the old run leaves latest on the newer one.
    RunDir.open(tmp_path, old.run_id).update_latest()
    assert os.readlink(link) == new.run_id
    assert link.resolve() == new.path.resolve()
    assert RunDir.open(tmp_path, "latest").run_id == new.run_id
    with pytest.raises(FileNotFoundError):
        RunDir.open(tmp_path, "20250101-000000-none")


def test_resume_takes_the_run_s_folder_as_report_and_compare_do(tmp_path: Path) -> None:
    """``--resume results/ID`` (the folder, as report and compare take it)
    opens run ID; a folder outside the results root is refused, naming it."""
    root = tmp_path / "results"
    (root / "20261206-000000-x").mkdir(parents=True)
    for given in ("20261206-000000-x", str(root / "20261206-000000-x"),
                  str(root / "20261206-000000-x") + "/", "20261206-000000-x/"):  # fmt: skip
        assert RunDir.open(root, given).run_id == "20261206-000000-x"
    (tmp_path / "elsewhere" / "20261206-000000-x").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"elsewhere.*not a run folder in"):
        RunDir.open(root, str(tmp_path / "elsewhere" / "20261206-000000-x"))


def test_a_cell_s_artefacts_reach_the_disk_before_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record_cell() fsyncs what the cell wrote with plain writes (fio.json,
    logs, a subfolder) before cell.json says the cell finished; the virtio
    scratch disk is left alone (gigabytes, not a result)."""
    from kmlbench import files
    from kmlbench.plan.matrix import load_matrix
    from kmlbench.run.results import RunDir

    synced: list[str] = []
    real_fsync = files.os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    (cell,) = load_matrix(SMOKE).cells[:1]
    run = RunDir.create(tmp_path / "results", name="sync")
    folder = run.cell_dir(cell.id)
    (folder / "fio.json").write_text("{}")
    (folder / files.SCRATCH_DISK).write_bytes(b"\0" * 4096)
    (folder / "attempt-1").mkdir()
    (folder / "attempt-1" / "console.log").write_text("old")
    run.record_cell(cell, "ok", {}, {})
    first_record = next(i for i, p in enumerate(synced) if ".cell.json." in p)
    before = synced[:first_record]
    assert str(folder / "fio.json") in before
    assert str(folder / "attempt-1" / "console.log") in before
    assert str(folder) in before
    assert not [p for p in synced if p.endswith(files.SCRATCH_DISK)]
