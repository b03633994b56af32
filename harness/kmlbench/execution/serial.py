"""The default executor: one cell (or shared boot) after another, in this process.

This is what ``kmlbench run`` always did: the guests boot from the
client's own kernel and image, with SSH keys made fresh for the run and
kept outside the results folder, and each cell writes straight into its
folder. An interrupt propagates out of the running cell after its QEMU has
been ended (:mod:`kmlbench.cell.lifecycle`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator, Sequence
from contextlib import closing
from pathlib import Path
from types import TracebackType

from kmlbench.build import image
from kmlbench.cell.context import StartGuest
from kmlbench.cell.lifecycle import run_cell, run_shared_boot
from kmlbench.execution.jobs import IN_PROCESS, CellFolder, CellResult, Job, OnStart, RunSpec
from kmlbench.guest.qemu import Guest
from kmlbench.guest.ssh import SSHKeys


class SerialExecutor:
    """Runs every job in order, in the calling thread (``kmlbench run`` without ``--jobs``)."""

    def __init__(self, start_guest: StartGuest | None = None) -> None:
        self._start_guest = start_guest
        self._tmp: Path | None = None
        self._keys: SSHKeys | None = None
        self._initrds: dict[str, Path] = {}

    @property
    def slots(self) -> int:
        return 1

    @property
    def dashboard(self) -> str | None:
        return None

    def __enter__(self) -> SerialExecutor:
        # Results get copied and uploaded; private keys must not travel with them.
        self._tmp = Path(tempfile.mkdtemp(prefix="kmlbench-keys-"))
        self._keys = SSHKeys.generate(self._tmp)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp, self._keys, self._initrds = None, None, {}

    def _initrd(self, spec: RunSpec) -> Path:
        """The run's initramfs: the base image with this run's keys laid over it."""
        assert self._keys is not None, "use SerialExecutor as a context manager"
        if spec.image.sha256 not in self._initrds:
            keys = self._keys
            self._initrds[spec.image.sha256] = image.make_guest_initrd(
                spec.image.path, keys.directory, keys.authorized_key, keys.host_key
            )
        return self._initrds[spec.image.sha256]

    def run(
        self, spec: RunSpec, jobs: Sequence[Job], folder: CellFolder, on_start: OnStart
    ) -> Generator[CellResult, None, None]:
        initrd = self._initrd(spec)
        assert self._keys is not None
        start_guest = spec.start_guest or self._start_guest or Guest
        for job in jobs:
            kernel = spec.kernels[job.cells[0].kernel_variant].path
            profile = spec.profiles.get(job.cells[0].kernel_variant)
            if not job.shared:
                (cell,) = job.cells
                on_start(cell, IN_PROCESS)
                outcome = run_cell(
                    cell,
                    cell_dir=folder(cell.id),
                    kernel=kernel,
                    initrd=initrd,
                    keys=self._keys,
                    matrix=spec.matrix,
                    accel=spec.accel,
                    trace=spec.trace,
                    start_guest=start_guest,
                    profile=profile,
                )
                yield CellResult(cell, outcome)
                continue
            outcomes = run_shared_boot(
                list(job.cells),
                cell_dir=folder,
                kernel=kernel,
                initrd=initrd,
                keys=self._keys,
                matrix=spec.matrix,
                accel=spec.accel,
                before_cell=lambda c: on_start(c, IN_PROCESS),
                start_guest=start_guest,
                profile=profile,
            )
            with closing(outcomes):  # an interrupt while a cell is recorded ends QEMU too
                for cell, outcome in outcomes:
                    yield CellResult(cell, outcome)
