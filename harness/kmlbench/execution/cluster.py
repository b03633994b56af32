"""Cells as Dask tasks: a local pool (``--jobs N``) or an existing cluster (``--scheduler``).

Each :class:`~kmlbench.execution.jobs.Job` is one task (:func:`kmlbench.execution.task.run_job`),
submitted in plan order (earlier jobs have higher priority). The client
waits for tasks as they complete, writes each cell's files into its folder
and yields its result, so the runner records it at once, as the serial
executor's. Dask does the scheduling and the fault handling:

* a worker that dies mid-cell: the scheduler runs the task again on
  another worker, up to ``distributed.scheduler.allowed-failures`` times;
  then the cells of that task are ``infra-error`` (``KilledWorker``);
* a cell that panics its guest is an ordinary outcome: never retried;
* a worker whose QEMU is not the run's refuses the task
  (:class:`~kmlbench.execution.task.WorkerRefused`): the message is printed
  once, and the task goes to the workers that have not refused;
* leaving the executor early (Ctrl-C): every task is cancelled and every
  worker kills its guests of this session (:func:`~kmlbench.execution.task.stop_session`);
  a local pool is then shut down as well.

The kernel and image are offered to workers as Dask datasets named by
hash; a worker fetches one only if its own cache lacks it. Everything the
local pool opens (scheduler, workers, dashboard) listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import queue
import time
import uuid
from collections.abc import Generator, Sequence
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any

import dask
from distributed import Client, Future, LocalCluster, as_completed
from distributed.scheduler import KilledWorker

from kmlbench.cell.context import StartGuest
from kmlbench.cell.lifecycle import CellOutcome
from kmlbench.execution import artifacts
from kmlbench.execution.jobs import (
    CellFolder,
    CellResult,
    Job,
    OnStart,
    RunSpec,
    infra_outcome,
)
from kmlbench.execution.task import WireResult, WorkerRefused, run_job, stop_session, topic
from kmlbench.files import atomic_write

# How long the client waits for a scheduler, and for workers to stop their guests.
CONNECT_TIMEOUT_S = 30
STOP_TIMEOUT_S = 60
_POLL_S = 0.05


def _dashboard_wanted() -> bool:
    """Dask's dashboard needs bokeh; without it there is simply no dashboard."""
    return importlib.util.find_spec("bokeh") is not None


class DaskExecutor:
    """Runs jobs as Dask tasks, on a :class:`LocalCluster` of ``jobs`` or at ``scheduler``."""

    def __init__(
        self,
        *,
        jobs: int = 0,
        scheduler: str | None = None,
        start_guest: StartGuest | None = None,
    ) -> None:
        if (jobs > 0) == (scheduler is not None):
            raise ValueError("give either jobs (a local pool) or a scheduler address")
        self.jobs = jobs
        self.scheduler = scheduler
        self.start_guest = start_guest
        self.client: Client | None = None
        self.cluster: LocalCluster | None = None
        self._session = ""
        self._live: list[Future[Any]] = []
        self._published: list[str] = []

    # -- set-up and tear-down ------------------------------------------------------------

    def __enter__(self) -> DaskExecutor:
        if self.scheduler is not None:
            self.client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
        else:
            # One cell per worker at a time, and no task waiting on a busy
            # worker while another is idle.
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
                self.cluster = LocalCluster(
                    n_workers=self.jobs,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",  # never the default :8787 (shared hosts)
                    memory_limit=0,
                )
            self.client = Client(self.cluster)
        self._session = uuid.uuid4().hex
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._live and self.client is not None:
                self._stop()
        finally:
            if self.client is not None:
                for name in self._published:
                    with contextlib.suppress(Exception):  # the scheduler may be gone
                        self.client.unpublish_dataset(name)
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
            self.client, self.cluster, self._live, self._published = None, None, [], []

    def _stop(self) -> None:
        """Cancel every task of this session and kill its guests on every worker."""
        assert self.client is not None
        live, self._live = self._live, []
        try:
            self.client.cancel(live, force=True)
            killed = self.client.run(stop_session, self._session, wait=True)
        except Exception as exc:  # a worker that cannot be reached is stopped by its death
            print(f"kmlbench: stopping the workers' guests: {type(exc).__name__}: {exc}")
            return
        n = sum(int(v) for v in killed.values())
        print(f"kmlbench: stopped {len(live)} task(s); {n} guest(s) killed on the workers")

    # -- what the runner asks --------------------------------------------------------------

    @property
    def _client(self) -> Client:
        if self.client is None:
            raise RuntimeError("use DaskExecutor as a context manager")
        return self.client

    @property
    def slots(self) -> int:
        if self.cluster is not None:
            return self.jobs
        workers = self._client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))

    @property
    def dashboard(self) -> str | None:
        if self.cluster is not None and not _dashboard_wanted():
            return None  # the HTTP server runs, but the dashboard's pages need bokeh
        if "dashboard" not in self._client.scheduler_info().get("services", {}):
            return None
        try:
            link = self._client.dashboard_link
        except Exception:  # no address to show
            return None
        return str(link) if link else None

    def _offer(self, spec: RunSpec, variants: set[str]) -> dict[str, str]:
        """Publish the kernels and image as datasets a worker can fetch: sha256 -> name."""
        client = self._client
        offered: dict[str, str] = {}
        wanted = [spec.image, *(spec.kernels[v] for v in sorted(variants))]
        for artifact in wanted:
            if self.cluster is not None:
                artifacts.seed(artifact)  # same machine: found in the cache by hash
            name = f"kmlbench-{self._session}-{artifact.sha256[:16]}"
            if name not in self._published:
                [future] = client.scatter([artifact.path.read_bytes()], hash=False)
                client.publish_dataset(future, name=name)
                self._published.append(name)
            offered[artifact.sha256] = name
        return offered

    def run(
        self, spec: RunSpec, jobs: Sequence[Job], folder: CellFolder, on_start: OnStart
    ) -> Generator[CellResult, None, None]:
        client = self._client
        if self.start_guest is not None and spec.start_guest is None:
            spec = dataclasses.replace(spec, start_guest=self.start_guest)
        datasets = self._offer(spec, {c.kernel_variant for j in jobs for c in j.cells})
        events: queue.Queue[dict[str, str]] = queue.Queue()
        client.subscribe_topic(topic(spec.run_id), lambda event: events.put(event[1]))
        started: set[str] = set()
        refused: set[str] = set()
        by_key: dict[str, Job] = {}

        def submit(job: Job, priority: int, workers: list[str] | None = None) -> Future[Any]:
            future: Future[Any] = client.submit(
                run_job,
                spec,
                job,
                self._session,
                datasets,
                key=f"kmlbench-{job.key}-{uuid.uuid4().hex[:8]}",
                priority=priority,
                pure=False,
                workers=workers,
                allow_other_workers=False,
            )
            by_key[str(future.key)] = job
            self._live.append(future)
            return future

        def announce() -> None:
            while True:
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    return
                cell = event.get("cell", "")
                if cell in cells and cell not in started:
                    started.add(cell)
                    on_start(cells[cell], event.get("worker", "?"))

        cells = {c.id: c for j in jobs for c in j.cells}
        pending = as_completed([submit(job, -n) for n, job in enumerate(jobs)])
        try:
            while not pending.is_empty():
                announce()
                if not pending.has_ready():
                    time.sleep(_POLL_S)
                    continue
                future = next(pending)
                job = by_key.pop(str(future.key))
                self._live.remove(future)
                retry = self._refusal(future, refused)
                if retry is not None:
                    pending.add(submit(job, 0, retry))
                    continue
                announce()
                for result in self._results(future, job, folder):
                    if result.cell.id not in started:
                        started.add(result.cell.id)
                        on_start(result.cell, result.worker)
                    yield result
        finally:
            client.unsubscribe_topic(topic(spec.run_id))

    # -- one finished task -----------------------------------------------------------------

    def _refusal(self, future: Future[Any], refused: set[str]) -> list[str] | None:
        """The workers to try next if ``future``'s worker refused the run, else None."""
        if future.status != "error":
            return None
        exc = future.exception()
        if not isinstance(exc, WorkerRefused):
            return None
        if exc.worker not in refused:
            refused.add(exc.worker)
            print(f"kmlbench: refused: {exc}")
        workers = sorted(set(self._client.scheduler_info().get("workers", {})) - refused)
        return workers or None

    def _results(
        self, future: Future[Any], job: Job, folder: CellFolder
    ) -> Generator[CellResult, None, None]:
        """The job's cells, their files written into their folders; infra-error if it failed."""
        by_id = {c.id: c for c in job.cells}
        if future.status == "finished":
            wire: list[WireResult] = future.result()
            for item in wire:
                cell = by_id[item.cell_id]
                _write_files(folder(cell.id), item.files)
                outcome = CellOutcome(item.status, item.metrics, item.extra)
                yield CellResult(cell, outcome, item.worker)
            return
        exc = future.exception() if future.status == "error" else None
        if isinstance(exc, KilledWorker):
            error = f"its worker died while running it, on every try ({exc})"
        elif exc is not None:
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = f"its task ended {future.status}"
        for cell in job.cells:
            yield CellResult(cell, infra_outcome(error), "?")


def _write_files(folder: Any, files: dict[str, bytes]) -> None:
    """A cell's files from its worker, under its folder only."""
    for rel, data in files.items():
        path = PurePosixPath(rel)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise ValueError(f"a worker sent a file outside its cell's folder: {rel!r}")
        atomic_write(folder.joinpath(*path.parts), data)
