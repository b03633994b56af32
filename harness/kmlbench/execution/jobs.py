"""The units of work an executor runs, and what it needs to run them.

A :class:`Job` is one task: a cell with a boot of its own, or the cells of
one shared boot (``guest: {share_boot: true}``), which must stay together.
A :class:`RunSpec` is everything a job needs besides its cells, small and
picklable so that it travels to another machine: the matrix, the
accelerator, and the kernel and guest image as :class:`Artifact` s, named
by content hash (the bytes travel separately, only to a worker that lacks
them: :mod:`kmlbench.execution.artifacts`). A :class:`CellResult` is one cell's
outcome as it arrives, with the worker that ran it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

from kmlbench.cell.context import ProfileSpec, StartGuest
from kmlbench.cell.lifecycle import CellOutcome
from kmlbench.hashing import sha256_file
from kmlbench.plan.cells import Cell
from kmlbench.plan.matrix import Matrix
from kmlbench.status import INFRA_ERROR

# Where a cell ran when it ran in the client's own process.
IN_PROCESS = "local"


@dataclass(frozen=True)
class Artifact:
    """A file a guest boots from (bzImage, base initramfs), named by its SHA-256."""

    name: str
    path: Path  # on the machine that runs ``kmlbench run``
    sha256: str
    size: int


_HASHED: dict[tuple[str, int, int], str] = {}


def file_artifact(name: str, path: Path) -> Artifact:
    """``path`` as an :class:`Artifact`; its hash is remembered while the file is unchanged."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHED:
        _HASHED[memo] = sha256_file(path)
    return Artifact(name, path, _HASHED[memo], st.st_size)


@dataclass(frozen=True)
class RunSpec:
    """What every job of a run needs besides its cells (pickled to workers).

    ``start_guest`` is None for real QEMU guests; tests put a fake here.
    ``profiles`` (by kernel variant) count instructions per kernel symbol
    (``guest.insn_profile``; the serial executor only).
    """

    run_id: str
    matrix: Matrix
    accel: str
    trace: bool
    kernels: dict[str, Artifact]  # by kernel variant
    image: Artifact
    qemu_version: str
    start_guest: StartGuest | None = None
    profiles: dict[str, ProfileSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """One task: ``cells`` in one boot each, or (``shared``) all in one boot."""

    cells: tuple[Cell, ...]
    shared: bool

    @property
    def key(self) -> str:
        """Stable and unique within a run: the (first) cell's id."""
        return ("boot-" if self.shared else "cell-") + self.cells[0].id


@dataclass
class CellResult:
    """One cell's outcome and where it ran; its files are already in its folder."""

    cell: Cell
    outcome: CellOutcome
    worker: str = IN_PROCESS


# Called as a cell starts, with the worker it runs on; may raise KeyboardInterrupt.
OnStart = Callable[[Cell, str], None]
# The client's folder of a cell (``RunDir.cell_dir``).
CellFolder = Callable[[str], Path]


class Executor(Protocol):
    """Runs jobs and yields each cell's result as it arrives.

    Leaving the context (normally, or on an interrupt) stops every cell
    still running and leaves no guest behind, on any machine.
    """

    def __enter__(self) -> Executor: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def slots(self) -> int:
        """How many cells run at once."""
        ...

    @property
    def dashboard(self) -> str | None:
        """A link to watch the run live, if there is one."""
        ...

    def run(
        self, spec: RunSpec, jobs: Sequence[Job], folder: CellFolder, on_start: OnStart
    ) -> Generator[CellResult, None, None]:
        """Run ``jobs``; each cell's files land in ``folder(cell.id)`` before it is yielded."""
        ...


def boot_group_key(cell: Cell) -> str:
    """Cells with equal keys may share a boot: all their params but the model agree."""
    rest = {k: v for k, v in cell.params.items() if k != "model"}
    return json.dumps([cell.kernel_variant, rest], sort_keys=True)


def shared_boot_groups(cells: list[Cell]) -> list[list[Cell]]:
    """``cells`` grouped by :func:`boot_group_key`; groups and cells keep plan order.

    The plan's seeded interleaving is what orders ``off``, ``observe`` and
    ``active`` inside a boot, so no mode always runs first on a cold guest.
    """
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(boot_group_key(cell), []).append(cell)
    return list(groups.values())


def plan_jobs(cells: list[Cell], share_boot: bool) -> list[Job]:
    """The jobs for ``cells`` in plan order: one per cell, or one per boot group."""
    if share_boot:
        return [Job(tuple(group), shared=True) for group in shared_boot_groups(cells)]
    return [Job((cell,), shared=False) for cell in cells]


def infra_outcome(error: str, **extra: object) -> CellOutcome:
    """The outcome of a cell the harness could not run at all (``infra-error``)."""
    return CellOutcome(
        INFRA_ERROR,
        {},
        {"timings": {"total_s": 0.0}, "error": error, "console_events": [], **extra},
    )
