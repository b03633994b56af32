"""A cell's life in one list of steps, run alike on a boot of its own or a shared one.

Every cell goes through :data:`STEPS`, each a small function of its
:class:`~kmlbench.cell.context.CellContext`, run when its condition holds:

========  ==============================================================
boot      the guest: booted for a boot's first cell (its disks and kernel
          command line from the cell's device), the same one after that
reset     a later cell of a shared boot: KML back to its booted state
          (instead of ``device``; :func:`kmlbench.cell.kml_reset.reset`)
device    the block device and its scheduler (:mod:`~kmlbench.cell.device`);
          in a shared boot, KML's booted state saved for the resets
job       the fio job for that device, uploaded
model     KML set up as the cell's model asks (:mod:`~kmlbench.cell.model`)
workload  fio, its metrics and the guest CPU it cost
          (:mod:`~kmlbench.cell.workload`)
collect   KML's trainer stopped and its statistics read
========  ==============================================================

and then, however those ended, unless the reset failed, the guest's dmesg.

:func:`run_cell` gives a cell a guest of its own. :func:`run_shared_boot`
runs the cells of a boot group (``guest: {share_boot: true}``: cells that
differ only in their model) one after another in one guest, so that what
varies from boot to boot under emulation (timer phase, the host's load)
no longer separates ``off`` from ``active``.

What ends what:

* a step that raises :class:`~kmlbench.cell.context.StepFailed` (a device
  or KML set-up the guest refused, a model file changed) ends the cell
  ``failed``; its dmesg is still collected, and a shared boot goes on;
* a failed reset means the guest is dirty: the cell is not recorded there,
  and it and the rest of the group get a fresh boot;
* a :class:`~kmlbench.guest.qemu.GuestError` (boot failure, command
  timeout, lost SSH, panic or oops) gives the cell its status and ends the
  boot; the console's fatal events do the same to a cell that looked fine;
* a harness fault (any other exception) is the cell's ``infra-error``,
  with its traceback, and ends a shared boot too.

Only KeyboardInterrupt propagates, after QEMU has been ended.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmlbench.cell import device, kml_reset, model, workload
from kmlbench.cell.context import (
    Boot,
    BootSpec,
    CellContext,
    ProfileSpec,
    ResetFailed,
    StartGuest,
    StepFailed,
)
from kmlbench.data.insn_profile import SNAPSHOTS_FILE
from kmlbench.guest.command import GuestConfig, QemuPlugin
from kmlbench.guest.console import ConsoleEvent, status_for
from kmlbench.guest.qemu import Guest, GuestError
from kmlbench.guest.ssh import SSHKeys
from kmlbench.plan.cells import Cell
from kmlbench.plan.matrix import Matrix
from kmlbench.status import FAILED, INFRA_ERROR, OK


@dataclass
class CellOutcome:
    """What running one cell produced, before it is recorded."""

    status: str
    metrics: dict[str, Any]
    extra: dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One step of a cell's life: ``run`` when ``when`` says so."""

    name: str
    run: Callable[[CellContext], None]
    when: Callable[[CellContext], bool] = lambda ctx: True


def guest_config(spec: BootSpec, device_params: dict[str, Any], folder: Path) -> GuestConfig:
    """The QEMU guest for ``device_params``: console log and disk images in ``folder``."""
    guest = spec.matrix.guest
    return GuestConfig(
        kernel=spec.kernel,
        initrd=spec.initrd,
        console_log=folder / "console.log",
        memory_mib=int(guest["memory_mib"]),
        cpus=int(guest["cpus"]),
        accel=spec.accel,
        extra_args=device.qemu_disk_args(device_params, folder),
        append=device.kernel_cmdline(device_params),
        boot_timeout_s=float(guest["boot_timeout_s"]),
        silence_timeout_s=float(guest["silence_timeout_s"]),
        clock=guest["clock"],
        icount_shift=int(guest["icount_shift"]),
        plugins=[profile_plugin(spec.profile, folder)] if spec.profile else [],
    )


def profile_plugin(profile: ProfileSpec, folder: Path) -> QemuPlugin:
    """The instruction counter, its snapshots in the boot's ``folder``."""
    args = (
        ("symbols", str(profile.symbols)),
        ("out", str(folder / SNAPSHOTS_FILE)),
        ("mark", profile.mark),
    )
    return QemuPlugin(profile.plugin, args)


# --- the steps ------------------------------------------------------------------------


def boot(ctx: CellContext) -> None:
    """The cell's guest: booted now for a boot's first cell, else the running one."""
    b = ctx.boot
    if b.guest is None:
        guest = b.start(guest_config(b.spec, ctx.params["device"], ctx.cell_dir))
        ctx.timings["boot_s"] = guest.boot_seconds
    ctx.extra["qemu_command_line"] = ctx.guest.command_line
    if b.shared:
        ctx.extra["shared_boot"] = {"boot_cell": b.first_cell, "position": b.position}


def reset(ctx: CellContext) -> None:
    """A later cell of a shared boot: the device as set up, KML as booted."""
    dev = ctx.boot.device
    assert dev is not None
    kml_reset.reset(ctx, dev)
    ctx.device = dev
    ctx.extra["block_device"] = dev.dev


def set_up_device(ctx: CellContext) -> None:
    """The block device and scheduler; a shared boot then saves KML's booted state."""
    dev = device.set_up(ctx)
    if ctx.boot.shared:
        kml_reset.snapshot(ctx)
    ctx.boot.device, ctx.boot.device_cell = dev, ctx.cell.id
    ctx.device = dev
    ctx.extra["block_device"] = dev.dev


def collect_dmesg(ctx: CellContext) -> None:
    """The kernel log (``dmesg.txt``); in a shared boot each cell takes its own part."""
    dmesg = ctx.guest.run("dmesg -c" if ctx.boot.shared else "dmesg", workload.SHORT_TIMEOUT_S)
    ctx.log("dmesg.txt", dmesg.stdout)


STEPS: tuple[Step, ...] = (
    Step("boot", boot),
    Step("reset", reset, when=lambda ctx: ctx.boot.device is not None),
    Step("device", set_up_device, when=lambda ctx: ctx.boot.device is None),
    Step("job", workload.upload_job),
    Step("model", model.set_up),
    Step("workload", workload.run),
    Step("collect", model.collect),
)
DMESG = Step("dmesg", collect_dmesg)


def run_steps(ctx: CellContext) -> bool:
    """Take ``ctx`` through :data:`STEPS` and :data:`DMESG`; False if the reset failed.

    Sets ``ctx.result``: the workload's status and metrics, or ``failed``
    and none when a step failed. GuestError and harness faults propagate,
    with ``ctx.step`` naming the step they came from.
    """
    for step in STEPS:
        if not step.when(ctx):
            continue
        ctx.step = step.name
        try:
            step.run(ctx)
        except ResetFailed:
            return False
        except StepFailed as exc:
            ctx.extra["error"] = str(exc)
            ctx.result = (FAILED, {})
            break
    else:
        ctx.result = (ctx.status, ctx.metrics)
    ctx.step = DMESG.name
    DMESG.run(ctx)
    return True


# --- a boot of its own ----------------------------------------------------------------


def run_cell(
    cell: Cell,
    *,
    cell_dir: Path,
    kernel: Path,
    initrd: Path,
    keys: SSHKeys,
    matrix: Matrix,
    accel: str,
    trace: bool = False,
    start_guest: StartGuest = Guest,
    profile: ProfileSpec | None = None,
) -> CellOutcome:
    """Boot a guest for ``cell``, take it through its steps, and collect everything.

    Never raises for a failure of the guest or the workload: those become
    the cell's status. ``trace`` records KML's sample ring during fio into
    ``<cell>/trace.kmltrc`` (``kmlbench trace``). ``profile`` counts the
    guest's instructions per kernel symbol (``insn-profile.json``).
    """
    spec = BootSpec(kernel, initrd, keys, matrix, accel, start_guest, profile)
    the_boot = Boot(spec, folder=cell_dir, first_cell=cell.id, shared=False)
    ctx = CellContext(cell, cell_dir, the_boot, trace=trace)
    started = time.monotonic()
    events: list[ConsoleEvent]
    status = INFRA_ERROR
    try:
        with the_boot:
            run_steps(ctx)
            events = the_boot.new_events()
        assert ctx.result is not None
        status = ctx.result[0]
    except GuestError as exc:
        status = exc.status
        ctx.extra["error"] = str(exc)
        events = the_boot.new_events(exc.events)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # any harness fault becomes the cell's infra-error
        ctx.extra["error"] = f"{type(exc).__name__}: {exc}"
        ctx.extra["traceback"] = traceback.format_exc()
        events = the_boot.new_events()
    finally:
        ctx.timings["total_s"] = time.monotonic() - started
        the_boot.remove_disks()
    metrics = ctx.result[1] if ctx.result is not None else {}
    ctx.extra["console_events"] = [e.to_dict() for e in events]
    crashed = status_for(events)
    if crashed and status in (OK, FAILED):
        status = crashed
    return CellOutcome(status, metrics, ctx.extra)


# --- a shared boot --------------------------------------------------------------------


def run_shared_boot(
    cells: list[Cell],
    *,
    cell_dir: Callable[[str], Path],
    kernel: Path,
    initrd: Path,
    keys: SSHKeys,
    matrix: Matrix,
    accel: str,
    before_cell: Callable[[Cell], None] = lambda cell: None,
    start_guest: StartGuest = Guest,
    profile: ProfileSpec | None = None,
) -> Generator[tuple[Cell, CellOutcome], None, None]:
    """Run one boot group's ``cells`` one after another in one guest; yield each outcome.

    The first cell of a boot sets up the device and saves KML's booted
    state; each later one resets KML to it and reuses the device. A cell's
    ``console.log`` holds its own console events; the boot's whole console
    is in the first cell's folder. A guest that crashes, hangs or cannot be
    reset ends its boot: the cell gets that status (or, after a failed
    reset, runs again) and the rest of the group boots afresh.
    ``before_cell`` is called once per cell, before its boot if it is the
    first: an interrupt is seen before a boot starts, not only after.
    With ``profile``, the boot's instruction snapshots are in the first
    cell's folder and each cell's profile in its own.
    """
    spec = BootSpec(kernel, initrd, keys, matrix, accel, start_guest, profile)
    pending = list(cells)
    announced: set[str] = set()

    def announce(cell: Cell) -> None:
        if cell.id not in announced:
            announced.add(cell.id)
            before_cell(cell)

    while pending:
        first = pending[0]
        announce(first)
        the_boot = Boot(spec, folder=cell_dir(first.id), first_cell=first.id, shared=True)
        started = time.monotonic()
        try:
            with the_boot:
                while pending:
                    cell = pending[0]
                    announce(cell)
                    ctx = CellContext(cell, cell_dir(cell.id), the_boot)
                    try:
                        if not run_steps(ctx):
                            # what the last cell left behind, not this cell's
                            # fault: run it again, first in a fresh boot
                            (ctx.cell_dir / "setup.log").rename(ctx.cell_dir / "reset-failed.log")
                            break
                    except GuestError:
                        raise
                    except Exception as exc:
                        if ctx.step == "boot":
                            raise  # no guest: the boot's outcome, below
                        ctx.extra["error"] = f"{type(exc).__name__}: {exc}"
                        ctx.extra["traceback"] = traceback.format_exc()
                    status, metrics = ctx.result or (INFRA_ERROR, {})
                    events = the_boot.new_events()
                    ctx.extra["console_events"] = [e.to_dict() for e in events]
                    if the_boot.position > 0:
                        ctx.log(
                            "console.log",
                            f"shared boot: the guest's console is in ../{first.id}/console.log\n"
                            + "".join(f"{e.to_dict()}\n" for e in events),
                        )
                    crashed = status_for(events)
                    if crashed and status in (OK, FAILED):
                        status = crashed
                    ctx.timings["total_s"] = time.monotonic() - started
                    pending.pop(0)
                    the_boot.position += 1
                    yield cell, CellOutcome(status, metrics, ctx.extra)
                    started = time.monotonic()
                    if crashed or status == INFRA_ERROR:
                        break  # no more cells on a guest in doubt
                    if the_boot.device is None:
                        break  # its device never came up: boot afresh
        except GuestError as exc:
            events = the_boot.new_events(exc.events)
            yield _boot_ended(pending.pop(0), exc.status, str(exc), events, started, the_boot)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # as run_cell: a harness fault is the cell's infra-error
            error = f"{type(exc).__name__}: {exc}"
            outcome = _boot_ended(pending.pop(0), INFRA_ERROR, error, [], started, the_boot)
            outcome[1].extra["traceback"] = traceback.format_exc()
            yield outcome
        finally:
            the_boot.remove_disks()


def _boot_ended(
    cell: Cell,
    status: str,
    error: str,
    events: list[ConsoleEvent],
    started: float,
    the_boot: Boot,
) -> tuple[Cell, CellOutcome]:
    """The outcome of the shared-boot cell that was running when its guest ended."""
    extra = {
        "timings": {"total_s": time.monotonic() - started},
        "error": error,
        "console_events": [e.to_dict() for e in events],
        "shared_boot": {"boot_cell": the_boot.first_cell, "position": the_boot.position},
    }
    return cell, CellOutcome(status, {}, extra)
