"""Where cells run (issue 14), with fake guests: no kernel, no QEMU.

The runner is given a fake kernel build and guest image (files with some
bytes: the workers hash, fetch and lay keys over them like real ones), and
guests from :mod:`fake_guest`. The serial executor and a local Dask pool of
two worker processes then run the same matrix; the records must agree. The
Dask tests also cover what only a pool has: a worker whose QEMU is not the
run's is refused, a worker killed mid-cell has its cell run again
elsewhere, an interrupt stops every task and keeps the finished cells.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dask_procs
from fake_guest import Fail, FakeBoots
from kmlbench.build.kernel import KernelBuild
from kmlbench.execution import artifacts
from kmlbench.execution.cluster import DaskExecutor
from kmlbench.execution.jobs import RunSpec, file_artifact, plan_jobs
from kmlbench.execution.serial import SerialExecutor
from kmlbench.guest.command import qemu_version
from kmlbench.plan.cells import Cell
from kmlbench.plan.matrix import load_matrix
from kmlbench.run import runner
from kmlbench.run.results import RunDir

MATRIX = """\
name: exec
seed: 1
repeat: {repeat}
guest: {{clock: virtual, cpus: 1, share_boot: {share}}}
axes:
  device:
    - {{type: null_blk, completion_nsec: 50000, size_mib: 64}}
  scheduler:
    - {{name: mq-deadline}}
    - {{name: none}}
  workload:
    - {{template: randread, runtime_s: 1, ramp_s: 0, size_mib: 16}}
  model:
    - {{mode: off}}
    - {{mode: observe}}
"""

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def fake_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The runner's builds replaced by two small files; every cache under ``tmp_path``."""
    client_cache = tmp_path / "client-cache"
    monkeypatch.setenv("KMLBENCH_CACHE", str(client_cache))
    monkeypatch.setenv("KMLBENCH_DB", str(tmp_path / "kmlbench.db"))
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(os.urandom(200_000))
    base = tmp_path / "base.cpio"
    base.write_bytes(os.urandom(100_000))

    def build_kernel(req: object, cache: Path, log_dir: Path, **kw: object) -> KernelBuild:
        return KernelBuild(
            bzimage=bzimage, build_dir=tmp_path, config_path=tmp_path / "config",
            log_path=tmp_path / "log", build_key="fake-build", source_id="fake",
            patch_series_hash="p", config_hash="c", compiler="cc", compiled=False, modules={},
        )  # fmt: skip

    monkeypatch.setattr(runner.image, "build_base_image", lambda cache: base)
    monkeypatch.setattr(runner.kernel, "build_kernel", build_kernel)
    monkeypatch.setattr(runner, "choose_accel", lambda *a: ("tcg", "test"))
    return {"bzimage": bzimage, "base": base, "cache": client_cache}


def _matrix(tmp_path: Path, share: bool = False, repeat: int = 1) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX.format(share="true" if share else "false", repeat=repeat))
    return path


def _run(tmp_path: Path, name: str, executor: Any, share: bool = False) -> RunDir:
    matrix = load_matrix(_matrix(tmp_path, share))
    run = RunDir.create(tmp_path / "results", run_id=name)
    run.copy_matrix(matrix.path)
    assert runner.execute(matrix, run, "auto", executor=executor) == 0
    return run


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on where a cell ran."""
    return {k: record[k] for k in ("id", "status", "metrics", "params")}


@pytest.mark.parametrize("share", [False, True])
def test_a_local_pool_records_what_a_serial_run_records(
    tmp_path: Path, fake_builds: dict[str, Path], share: bool
) -> None:
    serial = _run(tmp_path, "serial", SerialExecutor(FakeBoots()), share)
    pool = _run(tmp_path, "pool", DaskExecutor(jobs=2, start_guest=FakeBoots()), share)
    a, b = serial.read_cells(), pool.read_cells()
    assert len(a) == 3 and sorted(a) == sorted(b)  # "none" has no KML: one cell
    for cid in a:
        assert _strip(a[cid]) == _strip(b[cid])
        assert b[cid]["worker"]["address"].startswith("tcp://127.0.0.1:")
        assert b[cid]["worker"]["artifacts"] == {"kernel": "cache", "image": "cache"}
        # the cell's files came back from the worker into its folder
        assert (pool.cell_dir(cid) / "fio.json").is_file()
        assert {p.name for p in serial.cell_dir(cid).iterdir()} <= {
            p.name for p in pool.cell_dir(cid).iterdir()
        }
    assert json.loads(pool.summary_path.read_text())["counts"]["ok"] == 3
    if share:  # still one boot per group: one worker ran both cells of a group
        groups: dict[str, set[str]] = {}
        for record in b.values():
            boot = record["shared_boot"]["boot_cell"]
            groups.setdefault(boot, set()).add(record["worker"]["address"])
        assert len(groups) == 2 and all(len(w) == 1 for w in groups.values())


def test_artifacts_are_stored_by_hash_and_checked(tmp_path: Path) -> None:
    src = tmp_path / "bzImage"
    src.write_bytes(b"kernel bytes")
    art = file_artifact("kernel", src)
    cache = tmp_path / "cache"
    calls: list[str] = []

    def fetch(a: Any) -> bytes:
        calls.append(a.sha256)
        return src.read_bytes()

    path, how = artifacts.ensure(art, fetch, cache)
    assert how == "client" and path.read_bytes() == b"kernel bytes"
    assert path.name == art.sha256
    assert artifacts.ensure(art, fetch, cache) == (path, "cache") and len(calls) == 1
    with pytest.raises(artifacts.ArtifactError, match="hash to"):
        artifacts.ensure(art, lambda a: b"tampered", tmp_path / "other-cache")


def _spec(tmp_path: Path, fake: dict[str, Path], cells: list[Cell], **kw: Any) -> RunSpec:
    matrix = load_matrix(_matrix(tmp_path))
    args: dict[str, Any] = {
        "run_id": "test-run",
        "matrix": matrix,
        "accel": "tcg",
        "trace": False,
        "kernels": {"default": file_artifact("kernel", fake["bzimage"])},
        "image": file_artifact("image", fake["base"]),
        "qemu_version": qemu_version(),
    }
    args.update(kw)
    return RunSpec(**args)


def test_a_worker_with_another_qemu_is_refused(
    tmp_path: Path, fake_builds: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    matrix = load_matrix(_matrix(tmp_path))
    spec = _spec(tmp_path, fake_builds, matrix.cells, qemu_version="0.0-not-here")
    folder = tmp_path / "cells"
    with DaskExecutor(jobs=2, start_guest=FakeBoots()) as ex:
        results = list(
            ex.run(spec, plan_jobs(matrix.cells, False), lambda c: folder / c, lambda c, w: None)
        )
    assert [r.outcome.status for r in results] == ["infra-error"] * 3
    assert "runs on QEMU 0.0-not-here" in results[0].outcome.extra["error"]
    assert capsys.readouterr().out.count("kmlbench: refused: worker tcp://127.0.0.1:") == 2


def test_a_worker_killed_mid_cell_has_its_cell_run_again(
    tmp_path: Path, fake_builds: dict[str, Path]
) -> None:
    matrix = load_matrix(_matrix(tmp_path))
    slow = FakeBoots({"fio": Fail("slow", seconds=2.0, times=100)})
    spec = _spec(tmp_path, fake_builds, matrix.cells)
    starts: list[tuple[str, str]] = []
    killed: list[str] = []
    with DaskExecutor(jobs=2, start_guest=slow) as ex:
        assert ex.client is not None
        pids = ex.client.run(os.getpid)

        def on_start(cell: Cell, worker: str) -> None:
            starts.append((cell.id, worker))
            if not killed:
                killed.append(cell.id)
                os.kill(pids[worker], signal.SIGKILL)

        results = list(
            ex.run(spec, plan_jobs(matrix.cells, False), lambda c: tmp_path / c, on_start)
        )
    assert sorted(r.cell.id for r in results) == sorted(c.id for c in matrix.cells)
    assert all(r.outcome.status == "ok" for r in results)
    # the killed cell started again (its second start is not announced twice)
    assert killed and sum(1 for cid, _ in starts if cid == killed[0]) == 1


def test_an_interrupt_keeps_finished_cells_and_resume_runs_the_rest(
    tmp_path: Path, fake_builds: dict[str, Path]
) -> None:
    path = _matrix(tmp_path, repeat=2)  # 6 cells of ~1 s on 2 workers
    matrix = load_matrix(path)
    run = RunDir.create(tmp_path / "results", run_id="interrupted")
    run.copy_matrix(path)
    slow = FakeBoots({"fio": Fail("slow", seconds=1.0, times=100)})
    stop = threading.Event()

    def interrupt_after_the_first_cell() -> None:
        # on progress, not on a clock: how long the pool takes to start
        # depends on the machine's load
        while not stop.wait(0.05):
            if run.finished_cell_ids():
                os.kill(os.getpid(), signal.SIGINT)
                return

    timer = threading.Thread(target=interrupt_after_the_first_cell, daemon=True)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.execute(matrix, run, "auto", executor=DaskExecutor(jobs=2, start_guest=slow))
    finally:
        stop.set()
    assert time.monotonic() - started < 60
    done = run.finished_cell_ids()
    assert 0 < len(done) < 6
    for cid in done:  # a kept cell is whole
        assert (run.cell_dir(cid) / "fio.json").is_file()
    fast = DaskExecutor(jobs=2, start_guest=FakeBoots())
    assert runner.execute(matrix, run, "auto", executor=fast) == 0
    assert len(run.finished_cell_ids()) == 6


def test_a_worker_with_an_empty_cache_fetches_kernel_and_image_by_hash(
    tmp_path: Path, fake_builds: dict[str, Path]
) -> None:
    """A worker process of its own, reached only through a scheduler on 127.0.0.1."""
    worker_cache = tmp_path / "worker-cache"
    env = {"KMLBENCH_CACHE": str(worker_cache)}
    with dask_procs.scheduler(tmp_path) as address, dask_procs.worker(address, tmp_path, env):
        dask_procs.wait_for_workers(address, 1)
        run = _run(tmp_path, "remote", DaskExecutor(scheduler=address, start_guest=FakeBoots()))
    records = sorted(run.read_cells().values(), key=lambda r: r["recorded_at"])
    assert [r["status"] for r in records] == ["ok"] * 3
    # the first cell fetched both from the client, the next found them in the cache
    assert records[0]["worker"]["artifacts"] == {"kernel": "client", "image": "client"}
    assert records[-1]["worker"]["artifacts"] == {"kernel": "cache", "image": "cache"}
    stored = {p.name for p in (worker_cache / "artifacts").iterdir() if not p.name.startswith(".")}
    assert stored == {
        file_artifact("k", fake_builds["bzimage"]).sha256,
        file_artifact("i", fake_builds["base"]).sha256,
    }
    assert not (fake_builds["cache"] / "artifacts").exists()  # nothing seeded for a cluster
