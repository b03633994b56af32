"""Run the cells of a matrix: plan, build, run every cell, record it as it finishes.

A cell is a self-contained unit of work: its ``params`` say everything that
is needed to run it, and everything it produces goes into its own folder.
What a cell does in its guest is :mod:`kmlbench.cell.lifecycle`'s; this
module decides which cells run, in which boots, and records them:

1. validate the matrix (nothing runs if it is wrong), or reload it to resume;
2. build the guest base image and, per kernel variant, the kernel;
3. pick the accelerator (KVM only if a probe boot shows it works);
4. run each cell (:func:`kmlbench.cell.lifecycle.run_cell`: a fresh guest
   per cell, so no state leaks from one cell into the next) and record it
   at once, in its folder and the results database, so an interrupted run
   keeps every finished cell;
5. with ``adaptive_repeat``, add repeats until the intervals are narrow enough;
6. print a table per configuration (:mod:`kmlbench.run.table`).

With ``guest: {share_boot: true}`` the cells that differ only in their
model entry and repeat run one after another in one boot instead
(:func:`kmlbench.execution.jobs.shared_boot_groups`,
:func:`kmlbench.cell.lifecycle.run_shared_boot`).

Where the cells run is an executor's (:mod:`kmlbench.execution`): in this process
one after another (the default), or as Dask tasks on a local pool
(``--jobs N``) or a cluster (``--scheduler``); each result is recorded as it
arrives, whichever ran it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from kmlbench import __version__, paths
from kmlbench.build import image, kernel
from kmlbench.build.kernel import KernelBuild, KernelRequest
from kmlbench.cell.lifecycle import CellOutcome
from kmlbench.clock import KVM_REFUSED, clock_label, clock_meaning, clock_of, clock_record
from kmlbench.data import db, fio
from kmlbench.data.stats import needs_more_repeats
from kmlbench.execution.jobs import (
    Artifact,
    Executor,
    RunSpec,
    boot_group_key,
    file_artifact,
    plan_jobs,
    shared_boot_groups,
)
from kmlbench.execution.serial import SerialExecutor
from kmlbench.guest.command import qemu_version
from kmlbench.hashing import sha256_file
from kmlbench.plan.cells import Cell, cell_id, config_hash
from kmlbench.plan.matrix import Matrix, load_matrix
from kmlbench.plan.source import MatrixError
from kmlbench.progress import Progress
from kmlbench.run.host import choose_accel, git_revision, host_description, other_accel
from kmlbench.run.insn_profile import PluginBuildError, ensure_profiles
from kmlbench.run.results import RunDir, prepare_cell_dir
from kmlbench.run.table import summary_table
from kmlbench.status import OK, STATUSES


def kernel_request(matrix: Matrix, variant: str) -> KernelRequest:
    return KernelRequest(matrix.kernel_source, tuple(matrix.kernel_variants[variant]))


__all__ = ["boot_group_key", "execute", "main_run", "shared_boot_groups"]


def kernel_artifact(variant: str, build: KernelBuild) -> Artifact:
    """A kernel build's bzImage, by content (hashed once per build)."""
    return file_artifact(f"kernel {variant}", build.bzimage)


def _kernel_record(build: KernelBuild) -> dict[str, Any]:
    return {
        "source_id": build.source_id,
        "patch_series_hash": build.patch_series_hash,
        "config_hash": build.config_hash,
        "build_key": build.build_key,
        "compiler": build.compiler,
        "compiled": build.compiled,
        "bzimage": str(build.bzimage),
    }


@contextmanager
def _interrupt_guard() -> Iterator[threading.Event]:
    """SIGINT raises KeyboardInterrupt as usual, and is also remembered.

    Python drops exceptions raised inside at-fork callbacks, so a Ctrl-C that
    lands while a QEMU or make child is being forked can vanish; the event
    lets the runner stop before the next cell all the same.
    """
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_dry_run(matrix: Matrix) -> None:
    clock = clock_label(matrix.guest["clock"], matrix.guest["icount_shift"])
    print(f"{matrix.path}: {len(matrix.cells)} cells (seed {matrix.seed}, repeat {matrix.repeat}, "
          f"clock {clock}, {matrix.guest['cpus']} vCPU)")  # fmt: skip
    for n, cell in enumerate(matrix.cells, 1):
        print(f"{n:4d}  {cell.id}  [kernel: {cell.kernel_variant}]")


def kvm_refused(matrix: Matrix, accel: str) -> bool:
    """``--accel kvm`` on a virtual-clock matrix: say why, before anything is built."""
    if accel == "kvm" and matrix.guest["clock"] == "virtual":
        print(f"kmlbench: {KVM_REFUSED}")
        return True
    return False


def _load_for_resume(run_dir: Path) -> Matrix:
    """The matrix of an earlier run, refusing if the file changed since.

    Cell ids are hashes of their parameters, so a changed matrix would run
    cells the original run never had; that is a new run, not a resume.
    """
    manifest = json.loads((run_dir / "manifest.json").read_text())
    original = Path(manifest["matrix"]["path"])
    copy = run_dir / "matrix.yaml"
    if not original.is_file():
        raise SystemExit(f"kmlbench: cannot resume: the matrix file {original} is gone")
    if sha256_file(original) != sha256_file(copy):
        raise SystemExit(
            f"kmlbench: cannot resume: {original} changed since run {run_dir.name} started "
            f"(its copy is {copy}); start a new run instead"
        )
    matrix = load_matrix(original)
    if "accel" in manifest:  # cells may have run: the rest must run on the same clock
        was, now = clock_of(manifest), clock_of(matrix.guest)
        if was != now:
            raise SystemExit(
                f"kmlbench: cannot resume: run {run_dir.name} ran on the {clock_label(*was)} "
                f"clock, but its matrix now means the {clock_label(*now)} clock (guest.clock "
                "defaults to virtual since it was added); start a new run instead"
            )
    return matrix


def main_run(
    *,
    matrix_path: Path | None,
    resume: str | None,
    dry_run: bool,
    accel: str,
    results_root: Path | None,
    retry: tuple[str, ...] = (),
    run_id: str | None = None,
    jobs: int = 1,
    scheduler: str | None = None,
) -> int:
    """``kmlbench run``: returns 0 when every cell ended ``ok``.

    ``retry`` (with ``resume``) re-runs cells that ended with one of those
    statuses; ``run_id`` names a new run instead of the time-based id.
    ``jobs`` > 1 runs that many guests at once on a local Dask pool;
    ``scheduler`` (``tcp://HOST:PORT``) runs the cells on that Dask cluster.
    """
    if jobs < 1 or (jobs > 1 and scheduler):
        print("kmlbench: --jobs takes a number of guests >= 1, and not with --scheduler")
        return 2
    unknown = sorted(set(retry) - set(STATUSES))
    if unknown or OK in retry:
        print(f"kmlbench: --retry takes statuses other than ok, not {', '.join(unknown or ['ok'])}")
        return 2
    if retry and not resume:
        print("kmlbench: --retry goes with --resume RUN_ID")
        return 2
    root = results_root or paths.results_dir()
    try:
        if resume:
            run = RunDir.open(root, resume)
            matrix = _load_for_resume(run.path)
        else:
            if matrix_path is None:
                raise SystemExit("kmlbench run: give a matrix file (or --resume RUN_ID)")
            matrix = load_matrix(matrix_path)
    except MatrixError as exc:
        print(f"kmlbench: {exc}")
        return 2
    except (FileNotFoundError, ValueError) as exc:  # --resume of a run that is not there
        print(f"kmlbench: {exc}")
        return 2
    if dry_run:
        _write_dry_run(matrix)
        return 0
    if kvm_refused(matrix, accel):
        return 2
    if matrix.guest["insn_profile"] and (jobs > 1 or scheduler):
        print("kmlbench: guest.insn_profile runs serially: not with --jobs or --scheduler")
        return 2
    if not resume:
        run = RunDir.create(root, run_id=run_id, name=matrix.name)
        run.copy_matrix(matrix.path)
    return execute(matrix, run, accel, retry, executor=make_executor(jobs, scheduler))


def make_executor(jobs: int, scheduler: str | None) -> Executor:
    """In this process (the default), a local Dask pool of ``jobs``, or a cluster."""
    if jobs <= 1 and not scheduler:
        return SerialExecutor()
    # late: distributed takes a second to import, and only --jobs and --scheduler use it
    from kmlbench.execution.cluster import DaskExecutor

    return DaskExecutor(jobs=0 if scheduler else jobs, scheduler=scheduler)


def execute(
    matrix: Matrix,
    run: RunDir,
    accel_request: str,
    retry: tuple[str, ...] = (),
    *,
    only: list[Cell] | None = None,
    trace: bool = False,
    executor: Executor | None = None,
) -> int:
    """Build, boot and record the cells of ``matrix`` (or just ``only``) into ``run``.

    ``trace`` records KML's sample ring in every cell (``kmlbench trace``).
    ``executor`` runs the cells (default: one after another, in this process).
    """
    planned_cells = list(matrix.cells if only is None else only)
    finished = run.finished_cell_ids(retry_statuses=retry)
    todo = [c for c in planned_cells if c.id not in finished]
    print(f"kmlbench: run {run.path.name}: {len(todo)} of {len(planned_cells)} cells to run")

    cache = paths.cache_dir()
    manifest_path = run.path / "manifest.json"
    manifest: dict[str, Any] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    )
    began = manifest.get("accel")
    if began and accel_request != "auto" and accel_request != began:
        return other_accel(run.path.name, began, accel_request, "requested")
    as_found = json.loads(json.dumps(manifest))  # put back if this session is refused
    manifest.update(
        {
            "harness": {"version": __version__, "git": git_revision()},
            "run_id": run.path.name,
            "matrix": {
                "path": str(Path(matrix.path).resolve()),
                "name": matrix.name,
                "seed": matrix.seed,
                "repeat": matrix.repeat,
                "guest": matrix.guest,
                "content": matrix.raw,
            },
            "host": host_description(),
            "qemu": {"version": qemu_version()},
            "host_fio_version": fio.fio_version(),
        }
    )
    manifest.setdefault("kernels", {})
    manifest.setdefault("sessions", []).append(
        {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cells_to_run": len(todo)}
    )
    run.write_manifest(manifest)
    run.write_plan(planned_cells)
    run.update_latest()

    # Build everything before the first cell: a kernel that does not build
    # or configure should fail the run now, not after hours of other cells.
    base_image = image.build_base_image(cache)
    guest_image = file_artifact("guest image", base_image)
    manifest["guest_image"] = {"path": str(base_image), "sha256": guest_image.sha256}
    builds = {}
    for variant in dict.fromkeys(c.kernel_variant for c in todo):
        try:
            builds[variant] = kernel.build_kernel(
                kernel_request(matrix, variant), cache, log_dir=run.path / "build"
            )
        except kernel.KernelBuildError as exc:
            print(f"kmlbench: kernel variant {variant!r}: {exc}")
            return 1
        manifest["kernels"][variant] = _kernel_record(builds[variant])
    run.write_manifest(manifest)
    if not builds:
        # Every planned cell is done; adaptive rounds (if any) may still be due.
        variant = planned_cells[0].kernel_variant
        builds[variant] = kernel.build_kernel(
            kernel_request(matrix, variant), cache, log_dir=run.path / "build"
        )
        manifest["kernels"][variant] = _kernel_record(builds[variant])
    profiles: dict[str, Any] = {}
    try:
        ensure_profiles(matrix, builds, profiles, manifest, cache)
    except PluginBuildError as exc:
        print(f"kmlbench: instruction profile: {exc}")
        return 1
    first_build = next(iter(builds.values()))
    clock, shift = matrix.guest["clock"], int(matrix.guest["icount_shift"])
    accel, accel_reason = choose_accel(accel_request, first_build.bzimage, base_image, clock)
    if began and began != accel:
        run.write_manifest(as_found)
        return other_accel(run.path.name, began, accel, accel_reason)
    manifest.update(
        {
            "accel": accel,
            "accel_reason": accel_reason,
            "emulated": accel == "tcg",
            **clock_record(clock, shift),
        }
    )
    run.write_manifest(manifest)
    if accel == "tcg":
        print(f"kmlbench: emulated (TCG), {clock_meaning(clock, shift)}")

    # The database lives with the results it indexes (--results moves both);
    # KMLBENCH_DB still wins, as everywhere else.
    db_path = Path(os.environ.get(db.DB_ENV) or run.root / db.DB_NAME)
    not_ok = 0
    ran = 0
    executor = executor or SerialExecutor()
    with (
        _interrupt_guard() as interrupted,
        executor,
        Progress(total=len(planned_cells), done=len(finished), slots=executor.slots) as progress,
    ):
        if executor.dashboard:
            progress.note(f"kmlbench: Dask dashboard: {executor.dashboard}")

        def build_for(variant: str) -> KernelBuild:
            build = builds.get(variant)
            if build is None:  # a resumed run whose planned cells were all done
                build = kernel.build_kernel(
                    kernel_request(matrix, variant), cache, run.path / "build"
                )
                builds[variant] = build
            return build

        prepared: set[str] = set()

        def cell_folder(cell_id: str) -> Path:
            """A cell's folder, made ready for this session's attempt
            (:func:`kmlbench.run.results.prepare_cell_dir`) the first time it is asked for: as
            the cell runs in this process, or as its files arrive from a
            worker. Not before: a build that fails or an interrupt before a
            cell runs leaves its record (one ``--retry`` would redo) where
            it was, and an adaptive repeat's leftovers are cleared too."""
            if cell_id not in prepared:
                prepared.add(cell_id)
                prepare_cell_dir(run.cell_dir(cell_id))
            return run.cell_dir(cell_id)

        def start(cell: Cell, worker: str) -> None:
            if interrupted.is_set():
                raise KeyboardInterrupt  # one that arrived where Python dropped it
            progress.start_cell(cell.id, _describe(cell), worker=worker)

        def run_and_record(cells: list[Cell], share_boot: bool) -> None:
            nonlocal not_ok, ran
            for variant in dict.fromkeys(c.kernel_variant for c in cells):
                build_for(variant)
            ensure_profiles(matrix, builds, profiles, manifest, cache)
            spec = RunSpec(
                run_id=run.path.name,
                matrix=matrix,
                accel=accel,
                trace=trace,
                kernels={v: kernel_artifact(v, b) for v, b in builds.items()},
                image=guest_image,
                qemu_version=str(manifest["qemu"]["version"]),
                profiles=profiles,
            )
            jobs = plan_jobs(cells, share_boot)
            with closing(executor.run(spec, jobs, cell_folder, start)) as results:
                for result in results:
                    cell, outcome = result.cell, result.outcome
                    record(cell, outcome, builds[cell.kernel_variant])
                    ran += 1
                    if outcome.status != OK:
                        not_ok += 1
                        error = outcome.extra.get("error", "")
                        print(f"kmlbench: cell {cell.id}: {outcome.status}: {error}")

        def record(cell: Cell, outcome: CellOutcome, build: KernelBuild) -> None:
            cell_folder(cell.id)  # a job that failed on its worker never asked for it
            outcome.extra["kernel_build_key"] = build.build_key
            outcome.extra["accel"] = accel
            outcome.extra.update(clock_record(clock, shift))
            run.record_cell(cell, outcome.status, outcome.metrics, outcome.extra)
            _ingest(db_path, run.path, cell.id)
            if "command_line" not in manifest["qemu"] and "qemu_command_line" in outcome.extra:
                manifest["qemu"]["command_line"] = outcome.extra["qemu_command_line"]
                run.write_manifest(manifest)
            total_s = outcome.extra.get("timings", {}).get("total_s", 0.0)
            progress.finish_cell(cell.id, outcome.status, total_s)

        run_and_record(todo, bool(matrix.guest.get("share_boot")) and not trace)

        if matrix.adaptive and only is None:
            planned = list(matrix.cells)
            for round_no in range(1, matrix.adaptive["max_repeat"] + 1):
                extra_cells = adaptive_round(matrix, run.read_cells(), round_no)
                if not extra_cells:
                    break
                planned += extra_cells
                run.write_plan(planned)
                progress.total += len(extra_cells)
                progress.note(
                    f"adaptive repeats, round {round_no}: {len(extra_cells)} configuration(s) "
                    f"not yet within ±{matrix.adaptive['rel_halfwidth']:.0%} "
                    f"on {matrix.adaptive['metric']}"
                )
                run_and_record(extra_cells, False)
        if interrupted.is_set():
            raise KeyboardInterrupt
    run.update_latest()
    print(f"kmlbench: results in {run.path} ({not_ok} of {ran} cells not ok)")
    print(summary_table(run.path.name, run.read_cells()))
    return 1 if not_ok else 0


def adaptive_round(matrix: Matrix, records: dict[str, dict[str, Any]], round_no: int) -> list[Cell]:
    """The next round of extra repeats under ``adaptive_repeat``.

    One new cell for each configuration whose ok cells do not yet pin the
    mean of the chosen metric to within ``rel_halfwidth`` (95% interval),
    until ``max_repeat`` cells of it have run. A configuration with no ok
    cell gets no more repeats: retrying a failure is not narrowing an
    interval. The round is shuffled, like the planned rounds.
    """
    assert matrix.adaptive is not None
    metric = matrix.adaptive["metric"]
    cap = matrix.adaptive["max_repeat"]
    by_config: dict[str, list[dict[str, Any]]] = {}
    for record in records.values():
        by_config.setdefault(config_hash(record["params"]), []).append(record)
    representatives = {c.config_hash: c for c in matrix.cells}
    new = []
    for key, cell in representatives.items():
        done = by_config.get(key, [])
        samples = [
            r["metrics"][metric] for r in done if r["status"] == OK and metric in r["metrics"]
        ]
        if not samples or len(done) >= cap:
            continue
        if not needs_more_repeats(samples, matrix.adaptive["rel_halfwidth"], cap):
            continue
        repeat = max(r["repeat"] for r in done) + 1
        new.append(
            Cell(
                id=cell_id(cell.params, repeat),
                repeat=repeat,
                params=cell.params,
                kernel_variant=cell.kernel_variant,
            )
        )
    random.Random(f"{matrix.seed}-adaptive-{round_no}").shuffle(new)
    return new


def _ingest(db_path: Path, run_path: Path, cell_id: str) -> None:
    """Add a finished cell to the results database.

    The cell's folder is the record of truth; a database problem is
    reported but never costs the run (``kmlbench import`` rebuilds it).
    """
    try:
        db.ingest_cell(db_path, run_path, cell_id)
    except Exception as exc:  # the folder already holds the result
        print(f"kmlbench: warning: results database {db_path}: {exc}")


def _describe(cell: Cell) -> str:
    p = cell.params
    return (
        f"{p['workload']['template']} on {p['device']['type']} "
        f"with {p['scheduler']['name']} (repeat {cell.repeat})"
    )
