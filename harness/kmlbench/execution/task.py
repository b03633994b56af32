"""What a Dask worker runs for a job: its cells in a scratch folder, their files sent back.

:func:`run_job` is the task. It refuses to run on a worker whose QEMU is
not the run's (:class:`WorkerRefused`: the client tries another worker),
finds or fetches the kernel and image by hash (:mod:`~kmlbench.execution.artifacts`),
makes its own SSH keys and initramfs (private keys never travel), runs the
job's cells exactly as the serial executor does, and returns each cell's
outcome with every file of its folder: workers share no file system with
the client. Each cell's start is announced on the run's Dask event topic
(:func:`topic`), which the client's progress follows.

:func:`stop_session` is what the client runs on every worker when it stops
(Ctrl-C): the session's guests are killed at once, and none starts after.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from distributed import get_client, get_worker

from kmlbench.build import image
from kmlbench.cell.context import CellGuest, StartGuest
from kmlbench.cell.lifecycle import CellOutcome, run_cell, run_shared_boot
from kmlbench.execution import artifacts
from kmlbench.execution.jobs import Artifact, Job, RunSpec
from kmlbench.guest.command import GuestConfig, qemu_version
from kmlbench.guest.qemu import Guest
from kmlbench.guest.ssh import SSHKeys

# Disk images are scratch space (the lifecycle removes them too); never sent back.
_NOT_SENT = (".img",)


class WorkerRefused(Exception):
    """This worker cannot run the run's cells as the manifest says (another QEMU)."""

    def __init__(self, worker: str, message: str) -> None:
        super().__init__(message)
        self.worker = worker

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerRefused, (self.worker, str(self)))


class SessionStopped(Exception):
    """The client stopped this session: no guest boots for it any more."""


@dataclass
class WireResult:
    """One cell's outcome as it travels back to the client, with its folder's files."""

    cell_id: str
    status: str
    metrics: dict[str, Any]
    extra: dict[str, Any]
    files: dict[str, bytes]
    worker: str


def topic(run_id: str) -> str:
    """The Dask event topic on which a run's cells announce their start."""
    return f"kmlbench-{run_id}"


# --- guests of a session, so that the client can stop them ---------------------------

_LOCK = threading.Lock()
_STOPPED: set[str] = set()
_GUESTS: dict[str, dict[int, AbstractContextManager[CellGuest]]] = {}  # by id()


class _Tracked:
    """A guest registered under its session while it lives (so it can be killed)."""

    def __init__(self, session: str, inner: AbstractContextManager[CellGuest]) -> None:
        self.session = session
        self.inner = inner

    def __enter__(self) -> CellGuest:
        with _LOCK:
            if self.session in _STOPPED:
                raise SessionStopped(f"session {self.session} was stopped by the client")
            _GUESTS.setdefault(self.session, {})[id(self.inner)] = self.inner
        try:
            guest = self.inner.__enter__()
        except BaseException:
            self._forget()
            raise
        # A stop that came while QEMU was starting found no process to kill
        # (Guest.kill() before the spawn does nothing): stop it here.
        with _LOCK:
            stopped = self.session in _STOPPED
        if stopped:
            self.__exit__(None, None, None)
            raise SessionStopped(f"session {self.session} was stopped by the client")
        return guest

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.inner.__exit__(exc_type, exc, tb)
        finally:
            self._forget()

    def _forget(self) -> None:
        with _LOCK:
            _GUESTS.get(self.session, {}).pop(id(self.inner), None)


def _tracked(session: str, start: StartGuest) -> StartGuest:
    def start_tracked(cfg: GuestConfig, keys: SSHKeys) -> AbstractContextManager[CellGuest]:
        return _Tracked(session, start(cfg, keys))

    return start_tracked


def stop_session(session: str) -> int:
    """Stop ``session`` on this worker: kill its guests now, boot none later; how many."""
    with _LOCK:
        _STOPPED.add(session)
        guests = list(_GUESTS.pop(session, {}).values())
    for guest in guests:
        kill = getattr(guest, "kill", None)
        if kill is not None:
            kill()  # QEMU ends; the cell's steps fail and its task returns
    return len(guests)


def live_guests(session: str) -> int:
    """Guests of ``session`` still registered on this worker (tests)."""
    with _LOCK:
        return len(_GUESTS.get(session, {}))


# --- the task ---------------------------------------------------------------------------

_QEMU: list[str] = []


def _qemu_here() -> str:
    if not _QEMU:
        _QEMU.append(qemu_version())
    return _QEMU[0]


def _fetcher(datasets: dict[str, str]) -> Any:
    def fetch(artifact: Artifact) -> bytes:
        name = datasets.get(artifact.sha256)
        if name is None:
            raise artifacts.ArtifactError(f"{artifact.name}: the client offers no copy")
        data = get_client().get_dataset(name).result()
        assert isinstance(data, bytes)
        return data

    return fetch


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, disk images left out."""
    out: dict[str, bytes] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(_NOT_SENT):
            out[path.relative_to(folder).as_posix()] = path.read_bytes()
    return out


def run_job(spec: RunSpec, job: Job, session: str, datasets: dict[str, str]) -> list[WireResult]:
    """Run ``job`` on this worker; every cell's outcome and files (the Dask task)."""
    worker = get_worker()
    where = str(worker.address)
    host = socket.gethostname()
    have = _qemu_here()
    if have != spec.qemu_version:
        raise WorkerRefused(
            where,
            f"worker {where} ({host}) has QEMU {have or '(none)'} but run {spec.run_id} "
            f"runs on QEMU {spec.qemu_version} (its manifest): install that version there, "
            "or run from a machine that has this one",
        )
    fetch = _fetcher(datasets)
    kernel_artifact = spec.kernels[job.cells[0].kernel_variant]
    kernel, kernel_from = artifacts.ensure(kernel_artifact, fetch)
    base, image_from = artifacts.ensure(spec.image, fetch)
    scratch = Path(tempfile.mkdtemp(prefix="kmlbench-job-"))
    try:
        keys = SSHKeys.generate(scratch / "keys")
        initrd = image.make_guest_initrd(base, keys.directory, keys.authorized_key, keys.host_key)
        start = _tracked(session, spec.start_guest or Guest)
        cells_dir = scratch / "cells"

        def folder(cell_id: str) -> Path:
            path = cells_dir / cell_id
            path.mkdir(parents=True, exist_ok=True)
            return path

        def announce(cell_id: str) -> None:
            worker.log_event(topic(spec.run_id), {"cell": cell_id, "worker": where})

        outcomes: list[tuple[str, CellOutcome]] = []
        if job.shared:
            boot = run_shared_boot(
                list(job.cells),
                cell_dir=folder,
                kernel=kernel,
                initrd=initrd,
                keys=keys,
                matrix=spec.matrix,
                accel=spec.accel,
                before_cell=lambda c: announce(c.id),
                start_guest=start,
            )
            outcomes = [(cell.id, outcome) for cell, outcome in boot]
        else:
            for cell in job.cells:
                announce(cell.id)
                outcome = run_cell(
                    cell,
                    cell_dir=folder(cell.id),
                    kernel=kernel,
                    initrd=initrd,
                    keys=keys,
                    matrix=spec.matrix,
                    accel=spec.accel,
                    trace=spec.trace,
                    start_guest=start,
                )
                outcomes.append((cell.id, outcome))
        sources = {"kernel": kernel_from, "image": image_from}
        results = []
        for cell_id, outcome in outcomes:
            outcome.extra["worker"] = {"address": where, "host": host, "artifacts": sources}
            results.append(
                WireResult(
                    cell_id,
                    outcome.status,
                    outcome.metrics,
                    outcome.extra,
                    _files(cells_dir / cell_id),
                    where,
                )
            )
        return results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
