"""What every step of a cell's life is given: the guest it talks to and the cell so far.

:class:`CellGuest` is all a step may ask of a guest (run a command, upload
a file, read the console's events, the clock it runs on); the real
:class:`kmlbench.guest.qemu.Guest` is one, and so is the tests' fake.
:class:`Boot` is one guest boot and what the cells on it share (the block
device, their position, the console events already given out);
:class:`CellContext` is one cell on a boot: its folder, the record it is
building, and what earlier steps found out. A step that cannot go on in a
way that is the cell's fault, not the guest's, raises :class:`StepFailed`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from kmlbench import status as status_names
from kmlbench.cell.guest_paths import BlockDevice
from kmlbench.guest.command import GuestConfig
from kmlbench.guest.console import ConsoleEvent
from kmlbench.guest.ssh import SSHKeys
from kmlbench.plan.cells import Cell
from kmlbench.plan.matrix import Matrix


class CommandOutput(Protocol):
    """What a guest command returned (``kmlbench.guest.ssh.CommandResult``)."""

    @property
    def exit_status(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


class GuestClock(Protocol):
    """The part of a guest's configuration steps read: which clock it runs on."""

    @property
    def clock(self) -> str: ...
    @property
    def icount_shift(self) -> int: ...


class CellGuest(Protocol):
    """What a step needs of a booted guest.

    ``run`` and ``put`` raise :class:`kmlbench.guest.qemu.GuestError` (with
    the cell's status: timeout, panic, infra-error) when the guest, not
    the command, failed.
    """

    @property
    def cfg(self) -> GuestClock: ...
    @property
    def boot_seconds(self) -> float: ...
    @property
    def command_line(self) -> list[str]: ...
    def run(self, cmd: str, timeout: float) -> CommandOutput: ...
    def put(self, remote_path: str, data: bytes, mode: int = 0o644) -> None: ...
    def events(self) -> list[ConsoleEvent]: ...


# Boots a guest: ``kmlbench.guest.qemu.Guest`` (a context manager that always ends QEMU).
StartGuest = Callable[[GuestConfig, SSHKeys], AbstractContextManager[CellGuest]]


class StepFailed(Exception):
    """The cell cannot go on as its params say; the guest is fine (status ``failed``)."""


class ResetFailed(StepFailed):
    """KML could not be put back between two cells of a shared boot: the guest is dirty."""


@dataclass(frozen=True)
class ProfileSpec:
    """The instruction profile of a cell (``guest: {insn_profile: true}``).

    QEMU loads ``plugin`` (``tools/qemu-plugin/symcount.c``) with the guest
    kernel's ``symbols``; it appends a snapshot of its per-symbol counts to
    the boot's ``insn-snapshots.jsonl`` each time the guest enters ``mark``.
    """

    plugin: Path
    symbols: Path
    mark: str


@dataclass(frozen=True)
class BootSpec:
    """How to boot a guest for a matrix's cells."""

    kernel: Path
    initrd: Path
    keys: SSHKeys
    matrix: Matrix
    accel: str
    start: StartGuest
    profile: ProfileSpec | None = None

    @property
    def command_timeout(self) -> float:
        """Host seconds a guest command may take (``guest.command_timeout_s``)."""
        return float(self.matrix.guest["command_timeout_s"])


@dataclass
class Boot:
    """One guest boot and what the cells on it share; a context manager that ends QEMU.

    ``shared`` boots run several cells (``guest.share_boot``). The guest
    starts in the first cell's ``boot`` step (:meth:`start`), with its
    console and disk images in ``folder`` (the first cell's).
    """

    spec: BootSpec
    folder: Path
    first_cell: str
    shared: bool
    guest: CellGuest | None = None
    device: BlockDevice | None = None  # once a cell has set it up
    device_cell: str = ""  # ... that cell
    position: int = 0  # cells finished on this boot
    events_seen: int = 0  # console events given to those cells
    _stack: ExitStack = field(default_factory=ExitStack)

    def __enter__(self) -> Boot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def start(self, cfg: GuestConfig) -> CellGuest:
        """Boot the guest (GuestError if it does not come up); it ends with this Boot."""
        self.guest = self._stack.enter_context(self.spec.start(cfg, self.spec.keys))
        return self.guest

    def new_events(self, events: list[ConsoleEvent] | None = None) -> list[ConsoleEvent]:
        """The console events no earlier cell of this boot was given (of ``events``, or all)."""
        if events is None:
            events = self.guest.events() if self.guest is not None else []
        new = events[self.events_seen :]
        self.events_seen += len(new)
        return new

    def remove_disks(self) -> None:
        """Disk images are scratch space: the cell's record is what is kept."""
        for disk in self.folder.glob("*.img"):
            disk.unlink(missing_ok=True)


@dataclass
class CellContext:
    """One cell on a boot: where its files go, its record so far, what the steps found.

    ``status`` and ``metrics`` are the workload's, as the steps revise them;
    ``result`` is set once the steps are over (or one failed), and is what
    a guest failure after that leaves standing.
    """

    cell: Cell
    cell_dir: Path
    boot: Boot
    trace: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    step: str = ""  # the step running, or the last one
    device: BlockDevice | None = None
    model: dict[str, Any] | None = None  # what KML runs in this cell (None: stock)
    status: str = status_names.OK
    metrics: dict[str, Any] = field(default_factory=dict)
    fio_report: dict[str, Any] = field(default_factory=dict)
    result: tuple[str, dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.extra["timings"] = self.timings

    @property
    def guest(self) -> CellGuest:
        """The booted guest (the ``boot`` step runs first)."""
        if self.boot.guest is None:
            raise RuntimeError(f"step {self.step!r} before the guest booted")
        return self.boot.guest

    @property
    def params(self) -> dict[str, Any]:
        return self.cell.params

    @property
    def timeout(self) -> float:
        """Host seconds a guest command may take."""
        return self.boot.spec.command_timeout

    def log(self, name: str, text: str) -> None:
        """Write ``text`` as ``name`` in the cell's folder."""
        (self.cell_dir / name).write_text(text)

    def require_device(self) -> BlockDevice:
        """The block device under test (the ``device`` or ``reset`` step found it)."""
        if self.device is None:
            raise RuntimeError(f"step {self.step!r} before the device was set up")
        return self.device
