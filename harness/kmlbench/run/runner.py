"""Run the cells of a matrix: one fresh QEMU guest per cell.

A cell is a self-contained unit of work: its ``params`` say everything that
is needed to run it, and everything it produces goes into its own folder.
Every cell boots its own guest so that no state (page cache, scheduler
statistics, a model's weights) leaks from one cell into the next, which is
what makes repeats independent samples and lets cells later be spread over
many machines.

The order of work is:

1. validate the matrix (nothing runs if it is wrong);
2. pick the accelerator (KVM only if a probe boot shows it works);
3. build the guest base image and, per kernel variant, the kernel;
4. run each cell: boot, set up the device and scheduler, run fio, collect
   fio's JSON, dmesg and the console, and record the cell at once so an
   interrupted run keeps every finished cell.

With ``guest: {share_boot: true}`` the cells that differ only in their
model entry and repeat run one after another in one boot instead
(:func:`run_shared_boot`): KML is put back to its booted state between
them, and what varies from boot to boot under emulation (timer phase, the
host's load) no longer separates ``off`` from ``active``. A guest crash
ends the boot; the rest of its cells get a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmlbench import __version__, paths, procs
from kmlbench.clock import (
    KVM_REFUSED,
    clock_label,
    clock_meaning,
    clock_of,
    clock_record,
    host_timeout,
    instructions_per_us,
)
from kmlbench.hashing import sha256_file
from kmlbench.plan.matrix import Cell, Matrix, MatrixError, load_matrix

GUEST_JOB_PATH = "/tmp/job.fio"
# The user trainer and the tracer get fio's time plus this; the runner stops
# them itself after fio, so this is only a backstop.
KML_MARGIN_S = 30


@dataclass
class CellOutcome:
    """What running one cell produced, before it is recorded."""

    status: str
    metrics: dict[str, Any]
    extra: dict[str, Any]


def git_revision() -> str:
    """The harness's git sha, with ``-dirty`` when the tree has local changes."""
    try:
        sha = procs.run(
            ["git", "-C", str(paths.REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = procs.run(
            ["git", "-C", str(paths.REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def host_description() -> dict[str, Any]:
    """The host facts a reader needs to judge the figures: CPU, cores, kernel."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def choose_accel(
    requested: str, kernel: Path, initrd: Path, clock: str = "realtime"
) -> tuple[str, str]:
    """Resolve ``auto``/``kvm``/``tcg`` into the accelerator and the reason.

    ``/dev/kvm`` opening is not enough: on nested hosts a KVM guest can hang
    in the firmware or the kernel, so ``auto`` trusts only a probe that boots
    the very kernel and image the cells will use. The virtual clock counts
    instructions, which only TCG can do.
    """
    if clock == "virtual":
        if requested == "kvm":
            raise SystemExit(f"kmlbench: {KVM_REFUSED}")
        return "tcg", "guest.clock virtual (-icount needs TCG)"
    if requested == "tcg":
        return "tcg", "requested"
    from kmlbench.guest.qemu import probe_kvm

    probe = probe_kvm(kernel=kernel, initrd=initrd, cache=paths.cache_dir())
    if probe.usable:
        return "kvm", probe.reason
    if requested == "kvm":
        raise SystemExit(f"kmlbench: --accel kvm requested but KVM is not usable: {probe.reason}")
    return "tcg", f"KVM not usable ({probe.reason}); using TCG"


def _kernel_request(matrix: Matrix, variant: str):
    from kmlbench.build.kernel import KernelRequest

    return KernelRequest(
        source=matrix.kernel_source,
        fragments=tuple(matrix.kernel_variants[variant]),
    )


def _kernel_record(build) -> dict[str, Any]:
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


@contextmanager
def _run_keys() -> Iterator[Any]:
    """Fresh SSH keys for this run, kept outside the results folder.

    Results get copied and uploaded; private keys must not travel with them.
    """
    from kmlbench.guest.ssh import SSHKeys

    tmp = Path(tempfile.mkdtemp(prefix="kmlbench-keys-"))
    try:
        yield SSHKeys.generate(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _guest_config(
    matrix: Matrix, device: dict, folder: Path, kernel: Path, initrd: Path, accel: str
) -> Any:
    """The QEMU guest for ``device``: console log and disk images in ``folder``."""
    from kmlbench.cell import devices
    from kmlbench.guest.qemu import GuestConfig

    guest_cfg = matrix.guest
    return GuestConfig(
        kernel=kernel,
        initrd=initrd,
        console_log=folder / "console.log",
        memory_mib=int(guest_cfg["memory_mib"]),
        cpus=int(guest_cfg["cpus"]),
        accel=accel,
        extra_args=devices.qemu_disk_args(device, folder),
        append=devices.kernel_cmdline(device),
        boot_timeout_s=float(guest_cfg["boot_timeout_s"]),
        silence_timeout_s=float(guest_cfg["silence_timeout_s"]),
        clock=guest_cfg["clock"],
        icount_shift=int(guest_cfg["icount_shift"]),
    )


def run_cell(
    cell: Cell,
    *,
    cell_dir: Path,
    kernel: Path,
    initrd: Path,
    keys: Any,
    matrix: Matrix,
    accel: str,
    trace: bool = False,
) -> CellOutcome:
    """Boot a guest for ``cell``, run its workload, and collect everything.

    Never raises for a failure of the guest or the workload: those become
    the cell's status. Only KeyboardInterrupt propagates, after QEMU has
    been ended by the ``Guest`` context manager. ``trace`` records KML's
    sample ring during fio into ``<cell>/trace.kmltrc`` (``kmlbench trace``).
    """
    from kmlbench.guest.qemu import Guest, GuestError

    device = cell.params["device"]
    command_timeout = float(matrix.guest["command_timeout_s"])
    timings: dict[str, float] = {}
    extra: dict[str, Any] = {"timings": timings}
    metrics: dict[str, Any] = {}
    status = "infra-error"
    started = time.monotonic()
    guest = None
    try:
        cfg = _guest_config(matrix, device, cell_dir, kernel, initrd, accel)
        with Guest(cfg, keys) as guest:
            timings["boot_s"] = guest.boot_seconds
            extra["qemu_command_line"] = guest.command_line
            status, metrics = _run_workload(
                guest, cell, cell_dir, extra, command_timeout, trace=trace
            )
            dmesg = guest.run("dmesg", timeout=30)
            (cell_dir / "dmesg.txt").write_text(dmesg.stdout)
            events = guest.events()
    except GuestError as exc:
        status = exc.status
        extra["error"] = str(exc)
        events = exc.events
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # any harness fault becomes the cell's infra-error
        status = "infra-error"
        extra["error"] = f"{type(exc).__name__}: {exc}"
        extra["traceback"] = traceback.format_exc()
        events = guest.events() if guest is not None else []
    finally:
        timings["total_s"] = time.monotonic() - started
        for disk in cell_dir.glob("*.img"):
            # Disk images are scratch space; the cell's record is what is kept.
            disk.unlink(missing_ok=True)

    from kmlbench.guest.console import status_for

    extra["console_events"] = [e.to_dict() for e in events]
    crashed = status_for(events)
    if crashed and status in ("ok", "failed"):
        status = crashed
    return CellOutcome(status, metrics, extra)


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


def run_shared_boot(
    cells: list[Cell],
    *,
    cell_dir: Callable[[str], Path],
    kernel: Path,
    initrd: Path,
    keys: Any,
    matrix: Matrix,
    accel: str,
    before_cell: Callable[[Cell], None] = lambda cell: None,
) -> Iterator[tuple[Cell, CellOutcome]]:
    """Run one boot group's ``cells`` one after another in one guest; yield each outcome.

    The first cell of a boot sets up the device and saves KML's booted
    state; each later one resets KML to it (``devices.kml_reset_script``)
    and reuses the device. A cell's ``console.log`` holds its own console
    events; the boot's whole console is in the first cell's folder.
    A guest that crashes, hangs or cannot be reset ends its boot: the cell
    gets that status and the rest of the group boots afresh. As in
    :func:`run_cell`, only KeyboardInterrupt propagates (QEMU ended).
    """
    from kmlbench.guest.console import status_for
    from kmlbench.guest.qemu import Guest, GuestError

    command_timeout = float(matrix.guest["command_timeout_s"])
    pending = list(cells)
    announced: set[str] = set()

    def announce(cell: Cell) -> None:
        # once per cell, before its boot for the first: an interrupt is seen
        # before a boot starts, not only after it succeeded
        if cell.id not in announced:
            announced.add(cell.id)
            before_cell(cell)

    while pending:
        first = pending[0]
        announce(first)
        boot_dir = cell_dir(first.id)
        started = time.monotonic()
        seen = 0  # console events already given to a cell of this boot
        position = 0
        try:
            cfg = _guest_config(matrix, first.params["device"], boot_dir, kernel, initrd, accel)
            with Guest(cfg, keys) as guest:
                shared: tuple[str, str] | None = None
                while pending:
                    cell = pending[0]
                    announce(cell)
                    this_dir = cell_dir(cell.id)
                    timings: dict[str, float] = {}
                    if position == 0:
                        timings["boot_s"] = guest.boot_seconds
                    extra: dict[str, Any] = {
                        "timings": timings,
                        "qemu_command_line": guest.command_line,
                        "shared_boot": {"boot_cell": first.id, "position": position},
                    }
                    status, metrics = "infra-error", {}
                    try:
                        status, metrics = _run_workload(
                            guest, cell, this_dir, extra, command_timeout,
                            shared=shared, snapshot_kml=shared is None,
                        )  # fmt: skip
                        if extra.get("reset_failed"):
                            # what the last cell left behind, not this cell's
                            # fault: run it again, first in a fresh boot
                            log = this_dir / "setup.log"
                            log.rename(this_dir / "reset-failed.log")
                            break
                        dmesg = guest.run("dmesg -c", timeout=30)
                        (this_dir / "dmesg.txt").write_text(dmesg.stdout)
                    except GuestError:
                        raise
                    except Exception as exc:  # a harness fault: this cell's infra-error
                        extra["error"] = f"{type(exc).__name__}: {exc}"
                        extra["traceback"] = traceback.format_exc()
                    events = guest.events()[seen:]
                    seen += len(events)
                    extra["console_events"] = [e.to_dict() for e in events]
                    if position > 0:
                        (this_dir / "console.log").write_text(
                            f"shared boot: the guest's console is in ../{first.id}/console.log\n"
                            + "".join(f"{e.to_dict()}\n" for e in events)
                        )
                    crashed = status_for(events)
                    if crashed and status in ("ok", "failed"):
                        status = crashed
                    timings["total_s"] = time.monotonic() - started
                    pending.pop(0)
                    position += 1
                    yield cell, CellOutcome(status, metrics, extra)
                    started = time.monotonic()
                    if crashed or status == "infra-error":
                        break  # no more cells on a guest in doubt
                    if shared is None:
                        if "block_device" not in extra:
                            break  # its device never came up: boot afresh
                        shared = (extra["block_device"], cell.id)
        except GuestError as exc:
            yield _boot_ended(pending.pop(0), exc.status, str(exc), exc.events[seen:],
                              started, first.id, position)  # fmt: skip
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # as run_cell: a harness fault is the cell's infra-error
            outcome = _boot_ended(pending.pop(0), "infra-error", f"{type(exc).__name__}: {exc}",
                                  [], started, first.id, position)  # fmt: skip
            outcome[1].extra["traceback"] = traceback.format_exc()
            yield outcome
        finally:
            for disk in boot_dir.glob("*.img"):
                disk.unlink(missing_ok=True)


def _boot_ended(
    cell: Cell,
    status: str,
    error: str,
    events: list[Any],
    started: float,
    boot_cell: str,
    position: int,
) -> tuple[Cell, CellOutcome]:
    """The outcome of the shared-boot cell that was running when its guest ended."""
    extra = {
        "timings": {"total_s": time.monotonic() - started},
        "error": error,
        "console_events": [e.to_dict() for e in events],
        "shared_boot": {"boot_cell": boot_cell, "position": position},
    }
    return cell, CellOutcome(status, {}, extra)


class KmlCellError(Exception):
    """A model cell that cannot run as its params say (file missing, no KML)."""


def kml_model(params: dict) -> dict | None:
    """The cell's model entry when KML has work to do in it, else None.

    Only mq-deadline cells whose model mode is not ``off`` touch KML; every
    other cell (no model axis, mode off, another scheduler) runs stock.
    """
    model = params.get("model")
    if not model or model.get("mode", "off") == "off":
        return None
    if params["scheduler"]["name"] != "mq-deadline":
        return None
    return model


def _model_file(params_model: dict, key: str) -> bytes:
    """The bytes of the cell's ``model_file``/``warm_start``, checked against its sha256.

    The matrix recorded the hash when it was loaded: a file changed or gone
    since would run something the cell's record does not describe.
    """
    rel = params_model[key]
    path = Path(rel) if Path(rel).is_absolute() else paths.REPO_ROOT / rel
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KmlCellError(f"{key} {rel}: cannot read {path}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != params_model.get(f"{key}_sha256"):
        raise KmlCellError(
            f"{key} {rel} changed since the matrix was loaded (sha256 {digest[:12]}, "
            f"the cell expects {str(params_model.get(f'{key}_sha256'))[:12]})"
        )
    return data


def _kml_setup(
    guest: Any,
    model: dict,
    block_device: str,
    workload: dict,
    cell_dir: Path,
    timeout: float,
    trace: bool,
) -> None:
    """Upload the model files and run the KML set-up script; KmlCellError on failure."""
    from kmlbench.cell import devices

    seconds = workload["runtime_s"] + workload["ramp_s"] + KML_MARGIN_S
    uploaded = {}
    for key, guest_path in (
        ("model_file", devices.GUEST_MODEL),
        ("warm_start", devices.GUEST_WARM),
    ):
        if model.get(key):
            guest.put(guest_path, _model_file(model, key))
            uploaded[key] = True
    if trace:  # the tracer takes the ring: no trainer in a trace cell
        model = {**model, "trainer": "none"}
    script = devices.kml_setup_script(
        model,
        block_device,
        trainer_seconds=seconds,
        model_uploaded=uploaded.get("model_file", False),
        warm_uploaded=uploaded.get("warm_start", False),
        trace_seconds=seconds if trace else None,
    )
    result = guest.run(script, timeout=timeout)
    (cell_dir / "kml_setup.log").write_text(result.stdout + result.stderr)
    if result.exit_status != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.exit_status}"])[-1]
        raise KmlCellError(f"KML set-up failed: {why} (see kml_setup.log)")


def _fetch_text(guest: Any, path: str, timeout: float) -> str | None:
    result = guest.run(f"cat {path} 2>/dev/null", timeout=timeout)
    return result.stdout if result.exit_status == 0 else None


def _fetch_bytes(guest: Any, path: str, timeout: float) -> bytes | None:
    """A binary file from the guest (base64 over the text channel; no sftp there)."""
    import base64
    import binascii

    result = guest.run(f"[ -s {path} ] && base64 {path}", timeout=timeout)
    if result.exit_status != 0:
        return None
    try:
        return base64.b64decode("".join(result.stdout.split()), validate=True)
    except binascii.Error:
        return None


def _kml_collect(
    guest: Any, model: dict, cell_dir: Path, timeout: float, trace: bool
) -> tuple[list[str], dict[str, Any], dict[str, Any] | None]:
    """Stop the trainer, read the statistics; (problems, metrics, kml_stats record).

    Files land in the cell folder: ``kml_stats.txt``, ``trainer.txt``,
    ``curve.jsonl``, ``trained.kmlm`` (user trainer), ``trace.kmltrc``.
    """
    from kmlbench.cell import devices
    from kmlbench.data import kmlstats

    problems: list[str] = []
    if trace:  # the tracer took the ring: no trainer ran (see _kml_setup)
        model = {**model, "trainer": "none"}
    stop = guest.run(devices.kml_stop_script(model, trace=trace), timeout=timeout)
    if stop.stdout or stop.stderr:
        with (cell_dir / "kml_setup.log").open("a") as log:
            log.write(stop.stdout + stop.stderr)
    if stop.exit_status != 0:
        problems.append(f"stopping the trainer failed (exit {stop.exit_status})")
    trainer = model.get("trainer", "none")
    summary = None
    if trainer != "none":
        text = _fetch_text(guest, devices.GUEST_TRAINER_LOG, timeout)
        if text is not None:
            (cell_dir / "trainer.txt").write_text(text)
            summary = kmlstats.parse_summary(text)
        if trainer == "user" and "samples" not in (summary or {}):
            # kmlctl train prints its summary when it ends normally (SIGTERM
            # included): without one it died, and the cell did not run as said
            problems.append("kmlctl train ended without its summary (see trainer.txt)")
    curve = None
    if trainer == "user":
        curve_text = _fetch_text(guest, devices.GUEST_CURVE, timeout)
        if curve_text:
            (cell_dir / "curve.jsonl").write_text(curve_text)
            curve = kmlstats.parse_curve(curve_text)
        trained = _fetch_bytes(guest, devices.GUEST_TRAINED, timeout)
        if trained:
            (cell_dir / "trained.kmlm").write_bytes(trained)
    if trace:
        data = _fetch_bytes(guest, devices.GUEST_TRACE, timeout)
        if data is None:
            problems.append("kmlctl trace wrote no trace")
        else:
            (cell_dir / "trace.kmltrc").write_bytes(data)
        log = _fetch_text(guest, devices.GUEST_TRACER_LOG, timeout)
        if log:
            (cell_dir / "tracer.txt").write_text(log)
    text = _fetch_text(guest, devices.KML_STATS, timeout)
    if text is None:
        problems.append(f"cannot read {devices.KML_STATS}")
        return problems, {}, None
    (cell_dir / "kml_stats.txt").write_text(text)
    try:
        parsed = kmlstats.parse_stats(text, source="kml_stats.txt")
    except kmlstats.KmlStatsError as exc:
        problems.append(str(exc))
        return problems, {}, None
    problems += [f"KML statistics inconsistent: {p}" for p in kmlstats.check_invariants(parsed)]
    record = kmlstats.kml_stats_record(parsed, curve=curve, trainer=summary)
    record["mode"] = model["mode"]
    return problems, kmlstats.metrics(parsed), record


def _run_workload(
    guest: Any,
    cell: Cell,
    cell_dir: Path,
    extra: dict[str, Any],
    timeout: float,
    *,
    trace: bool = False,
    shared: tuple[str, str] | None = None,
    snapshot_kml: bool = False,
) -> tuple[str, dict]:
    """Set up the device and scheduler (and KML), run fio; the status and metrics.

    A failed setup ends the workload but not the cell: the caller still
    collects dmesg and the console, which are what explain the failure.
    A model cell whose KML part fails (no KML in the kernel, a missing
    model file, inconsistent statistics) is ``failed`` with the reason.
    ``shared`` is (block device, id of the cell that set it up) in a shared
    boot: the device and scheduler are already there, and KML is reset to
    its booted state instead; ``snapshot_kml`` (the first cell of a shared
    boot) saves that state after setting up the device.
    """
    from kmlbench.cell import devices
    from kmlbench.data import fio

    params = cell.params
    if shared is None:
        script = devices.setup_script(params["device"], params["scheduler"])
        setup = guest.run(script, timeout=timeout)
        (cell_dir / "setup.log").write_text(setup.stdout + setup.stderr)
        if setup.exit_status != 0:
            extra["error"] = f"device setup failed (exit {setup.exit_status}); see setup.log"
            return "failed", {}
        block_device = setup.stdout.strip().splitlines()[-1]
        if snapshot_kml:
            snap = guest.run(devices.kml_snapshot_script(), timeout=timeout)
            if snap.exit_status != 0:
                extra["error"] = f"saving KML's booted state failed: {snap.stderr.strip()}"
                return "failed", {}
    else:
        block_device, setup_cell = shared
        reset = guest.run(devices.kml_reset_script(block_device), timeout=timeout)
        (cell_dir / "setup.log").write_text(
            f"shared boot: {block_device} and its scheduler were set up by cell {setup_cell}\n"
            f"KML reset to its booted state (exit {reset.exit_status})\n"
            + reset.stdout
            + reset.stderr
        )
        if reset.exit_status != 0:
            extra["error"] = "KML reset between shared-boot cells failed; see setup.log"
            extra["reset_failed"] = True  # the runner reruns the cell in a fresh boot
            return "failed", {}
    extra["block_device"] = block_device

    job = fio.render_job(params["workload"], block_device)
    (cell_dir / "job.fio").write_text(job)
    guest.put(GUEST_JOB_PATH, job.encode())
    extra["guest_fio_version"] = guest.run("fio --version", timeout=30).stdout.strip()

    model = kml_model(params)
    if trace and model is None:
        # a trace needs samples: observe, no model, the ring complete (block)
        model = {"mode": "observe", "trainer": "none", "ring_mode": "block",
                 "sample_filter": "all"}  # fmt: skip
    if trace:
        # what really ran, where it differs from the cell's params
        extra["kml_trace"] = {
            "file": "trace.kmltrc",
            "mode": model["mode"],
            "ring_mode": model["ring_mode"],
            "trainer_skipped": model.get("trainer", "none") != "none",
        }
    if model is not None:
        try:
            _kml_setup(guest, model, block_device, params["workload"], cell_dir, timeout, trace)
        except KmlCellError as exc:
            extra["error"] = str(exc)
            return "failed", {}

    started = time.monotonic()
    workload = params["workload"]
    fio_timeout = host_timeout(  # fio keeps a virtual-clock guest busy: more host time
        timeout, guest.cfg.clock, busy_guest_s=float(workload["runtime_s"] + workload["ramp_s"])
    )
    result = guest.run(
        _with_cpu_snapshots(fio.fio_shell_command(GUEST_JOB_PATH)), timeout=fio_timeout
    )
    extra["timings"]["fio_s"] = time.monotonic() - started
    if result.stderr:
        (cell_dir / "fio.stderr").write_text(result.stderr)
    status, metrics, data = _fio_outcome(result, cell_dir, extra)
    if status == "ok":
        ios = metrics.get("iops", 0.0) * _fio_runtime_s(data)
        metrics.update(_guest_cpu_metrics(guest, cell_dir, ios, timeout))
    if model is None:
        return status, metrics
    problems, kml_metrics, record = _kml_collect(guest, model, cell_dir, timeout, trace)
    if record is not None:
        extra["kml_stats"] = record
    if status == "ok":
        metrics.update(kml_metrics)
        insn_per_us = _insn_per_us(guest)
        if insn_per_us is not None:
            # KML's inference histogram is in ns of guest time: instructions
            for pct in ("p50", "p99"):
                ns = kml_metrics.get(f"inference_ns_{pct}")
                if ns is not None:
                    metrics[f"inference_insn_{pct}"] = ns * insn_per_us / 1000.0
        if problems:
            extra["error"] = "; ".join(problems)
            return "failed", metrics
    elif problems:
        extra["kml_problems"] = problems
    return status, metrics


_CPU_SNAPSHOT = "/tmp/kmlbench-cpu"


def _with_cpu_snapshots(command: str) -> str:
    """``command`` between two copies of /proc/stat's ``cpu`` line, its exit status kept.

    Taken in the same shell as fio, so the window is fio's run and nothing
    of the harness's SSH traffic before or after it.
    """
    return (
        f"head -1 /proc/stat > {_CPU_SNAPSHOT}.0; {command}; rc=$?; "
        f"head -1 /proc/stat > {_CPU_SNAPSHOT}.1; exit $rc"
    )


def parse_cpu_line(line: str) -> dict[str, int]:
    """/proc/stat's ``cpu`` line: ticks (USER_HZ) per state, summed over CPUs."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    fields = line.split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"not a /proc/stat cpu line: {line!r}")
    return {name: int(v) for name, v in zip(names, fields[1:], strict=False)}


def cpu_metrics(
    before: dict[str, int], after: dict[str, int], ios: float, insn_per_us: float | None = None
) -> dict[str, float]:
    """Guest CPU time during fio: busy and kernel (system + irq + softirq) seconds,
    and kernel microseconds per I/O, the figure "observe costs <= 1%" is read from.

    Under the virtual clock (``insn_per_us``: guest instructions per virtual
    microsecond) CPU time is an instruction count: ``kernel_insn_per_io`` and
    ``user_insn_per_io`` say how many instructions each I/O cost. USER_HZ is
    100 on x86 Linux, so the resolution is 10 ms of CPU time (10 million
    instructions at shift 0; about 0.1% of a 10 s run).
    """
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    kernel = delta["system"] + delta.get("irq", 0) + delta.get("softirq", 0)
    user = delta["user"] + delta.get("nice", 0)
    busy = kernel + user
    out = {"guest_cpu_busy_s": busy / 100.0, "guest_kernel_cpu_s": kernel / 100.0}
    if ios > 0:
        out["kernel_cpu_us_per_io"] = kernel / 100.0 / ios * 1e6
        if insn_per_us is not None:
            out["kernel_insn_per_io"] = out["kernel_cpu_us_per_io"] * insn_per_us
            out["user_insn_per_io"] = user / 100.0 / ios * 1e6 * insn_per_us
    return out


def _guest_cpu_metrics(guest: Any, cell_dir: Path, ios: float, timeout: float) -> dict:
    """CPU metrics of the fio run; {} (and a note in cpu.txt) if unavailable.

    Instructions per I/O too when the guest runs on the virtual clock.
    """
    got = guest.run(f"cat {_CPU_SNAPSHOT}.0 {_CPU_SNAPSHOT}.1", timeout=timeout)
    (cell_dir / "cpu.txt").write_text(got.stdout + got.stderr)
    lines = got.stdout.strip().splitlines()
    if got.exit_status != 0 or len(lines) != 2:
        return {}
    try:
        before, after = parse_cpu_line(lines[0]), parse_cpu_line(lines[1])
    except ValueError:
        return {}
    return cpu_metrics(before, after, ios, _insn_per_us(guest))


def _insn_per_us(guest: Any) -> float | None:
    """Guest instructions per virtual µs, or None on the realtime clock."""
    cfg = guest.cfg
    return instructions_per_us(cfg.icount_shift) if cfg.clock == "virtual" else None


def _fio_runtime_s(data: dict) -> float:
    """The longest job runtime of a fio report (seconds), 0 if unknown."""
    try:
        return max(float(j.get("job_runtime", 0)) for j in data.get("jobs", [])) / 1000.0
    except (ValueError, TypeError):
        return 0.0


def _fio_outcome(result: Any, cell_dir: Path, extra: dict[str, Any]) -> tuple[str, dict, dict]:
    """Status, metrics and the parsed report from fio's exit status and output.

    ``fio.json`` always holds valid JSON (fio may print notes before it);
    the raw output is kept as ``fio.out`` whenever it is not pure JSON.
    A fio failure is the workload's fault (``failed``), not the harness's.
    """
    from kmlbench.data import fio

    try:
        data = fio.parse_fio_output(result.stdout)
    except fio.FioError as exc:
        (cell_dir / "fio.out").write_text(result.stdout)
        extra["error"] = f"fio exited {result.exit_status}, no JSON: {exc}"
        return "failed", {}, {}
    (cell_dir / "fio.json").write_text(json.dumps(data, indent=1))
    if not result.stdout.lstrip().startswith("{"):
        (cell_dir / "fio.out").write_text(result.stdout)
    if result.exit_status != 0:
        extra["error"] = f"fio exited {result.exit_status}: {result.stderr[-500:]}"
        return "failed", {}, data
    try:
        return "ok", fio.metrics_from_fio(data), data
    except fio.FioError as exc:
        extra["error"] = f"fio job error: {exc}"
        return "failed", {}, data


def _write_dry_run(matrix: Matrix) -> None:
    clock = clock_label(matrix.guest["clock"], matrix.guest["icount_shift"])
    print(
        f"{matrix.path}: {len(matrix.cells)} cells (seed {matrix.seed}, repeat {matrix.repeat}, "
        f"clock {clock}, {matrix.guest['cpus']} vCPU)"
    )
    for n, cell in enumerate(matrix.cells, 1):
        print(f"{n:4d}  {cell.id}  [kernel: {cell.kernel_variant}]")


def _kvm_refused(matrix: Matrix, accel: str) -> bool:
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
) -> int:
    """``kmlbench run``: returns 0 when every cell ended ``ok``.

    ``retry`` (with ``resume``) re-runs cells that ended with one of those
    statuses; ``run_id`` names a new run instead of the time-based id.
    """
    from kmlbench.run.results import STATUSES, RunDir

    unknown = sorted(set(retry) - set(STATUSES))
    if unknown or "ok" in retry:
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
    if dry_run:
        _write_dry_run(matrix)
        return 0
    if _kvm_refused(matrix, accel):
        return 2
    if not resume:
        run = RunDir.create(root, run_id=run_id, name=matrix.name)
        run.copy_matrix(matrix.path)
    return _execute(matrix, run, accel, retry)


def _prepare_cell_dir(cell_dir: Path) -> None:
    """Make a cell's folder ready for a fresh attempt, losing nothing finished.

    A finished attempt that ``--retry`` runs again (it has a ``cell.json``)
    moves into ``attempt-N/``: its record and logs explain why it is retried.
    Partial files of an interrupted attempt (no ``cell.json``) are removed.
    Earlier ``attempt-N/`` folders are always kept.
    """
    if not cell_dir.is_dir():
        return
    current = [item for item in cell_dir.iterdir() if not item.name.startswith("attempt-")]
    if (cell_dir / "cell.json").exists():
        n = 1
        while (cell_dir / f"attempt-{n}").exists():
            n += 1
        dest = cell_dir / f"attempt-{n}"
        dest.mkdir()
        for item in current:
            item.rename(dest / item.name)
        return
    for item in current:
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()


def _execute(
    matrix: Matrix,
    run: Any,
    accel_request: str,
    retry: tuple[str, ...] = (),
    *,
    only: list[Cell] | None = None,
    trace: bool = False,
) -> int:
    """Build, boot and record the cells of ``matrix`` (or just ``only``) into ``run``.

    ``trace`` records KML's sample ring in every cell (``kmlbench trace``).
    """
    from kmlbench.build import image, kernel
    from kmlbench.data import db, fio
    from kmlbench.guest import qemu
    from kmlbench.progress import Progress

    planned_cells = list(matrix.cells if only is None else only)
    finished = run.finished_cell_ids(retry_statuses=retry)
    todo = [c for c in planned_cells if c.id not in finished]
    for cell in todo:
        _prepare_cell_dir(run.cell_dir(cell.id))
    print(f"kmlbench: run {run.path.name}: {len(todo)} of {len(planned_cells)} cells to run")

    cache = paths.cache_dir()
    manifest_path = run.path / "manifest.json"
    manifest: dict[str, Any] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    )
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
            "qemu": {"version": qemu.qemu_version()},
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
    manifest["guest_image"] = {"path": str(base_image), "sha256": sha256_file(base_image)}
    builds = {}
    for variant in dict.fromkeys(c.kernel_variant for c in todo):
        try:
            builds[variant] = kernel.build_kernel(
                _kernel_request(matrix, variant), cache, log_dir=run.path / "build"
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
            _kernel_request(matrix, variant), cache, log_dir=run.path / "build"
        )
        manifest["kernels"][variant] = _kernel_record(builds[variant])
    first_build = next(iter(builds.values()))
    clock, shift = matrix.guest["clock"], int(matrix.guest["icount_shift"])
    accel, accel_reason = choose_accel(accel_request, first_build.bzimage, base_image, clock)
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
    with (
        _interrupt_guard() as interrupted,
        _run_keys() as keys,
        Progress(total=len(planned_cells), done=len(finished)) as progress,
    ):
        initrd = image.make_guest_initrd(
            base_image, keys.directory, keys.authorized_key, keys.host_key
        )

        def build_for(cell: Cell) -> Any:
            build = builds.get(cell.kernel_variant)
            if build is None:  # a resumed run whose planned cells were all done
                build = kernel.build_kernel(
                    _kernel_request(matrix, cell.kernel_variant), cache, run.path / "build"
                )
                builds[cell.kernel_variant] = build
            return build

        def start(cell: Cell) -> None:
            if interrupted.is_set():
                raise KeyboardInterrupt  # one that arrived where Python dropped it
            progress.start_cell(cell.id, _describe(cell))

        def run_and_record(cell: Cell) -> None:
            start(cell)
            build = build_for(cell)
            outcome = run_cell(
                cell,
                cell_dir=run.cell_dir(cell.id),
                kernel=build.bzimage,
                initrd=initrd,
                keys=keys,
                matrix=matrix,
                accel=accel,
                trace=trace,
            )
            record(cell, outcome, build)

        def run_group_and_record(group: list[Cell]) -> None:
            build = build_for(group[0])
            outcomes = run_shared_boot(
                group,
                cell_dir=run.cell_dir,
                kernel=build.bzimage,
                initrd=initrd,
                keys=keys,
                matrix=matrix,
                accel=accel,
                before_cell=start,
            )
            with closing(outcomes):  # an interrupt while a cell is recorded ends QEMU too
                for cell, outcome in outcomes:
                    record(cell, outcome, build)

        def record(cell: Cell, outcome: CellOutcome, build: Any) -> None:
            nonlocal not_ok, ran
            outcome.extra["kernel_build_key"] = build.build_key
            outcome.extra["accel"] = accel
            outcome.extra.update(clock_record(clock, shift))
            run.record_cell(cell, outcome.status, outcome.metrics, outcome.extra)
            _ingest(db_path, run.path, cell.id)
            if "command_line" not in manifest["qemu"] and "qemu_command_line" in outcome.extra:
                manifest["qemu"]["command_line"] = outcome.extra["qemu_command_line"]
                run.write_manifest(manifest)
            progress.finish_cell(cell.id, outcome.status, outcome.extra["timings"]["total_s"])
            ran += 1
            if outcome.status != "ok":
                not_ok += 1
                print(
                    f"kmlbench: cell {cell.id}: {outcome.status}: {outcome.extra.get('error', '')}"
                )

        if matrix.guest.get("share_boot") and not trace:
            for group in shared_boot_groups(todo):
                run_group_and_record(group)
        else:
            for cell in todo:
                run_and_record(cell)

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
                for cell in extra_cells:
                    run_and_record(cell)
        if interrupted.is_set():
            raise KeyboardInterrupt
    run.update_latest()
    print(f"kmlbench: results in {run.path} ({not_ok} of {ran} cells not ok)")
    return 1 if not_ok else 0


def adaptive_round(matrix: Matrix, records: dict[str, dict], round_no: int) -> list[Cell]:
    """The next round of extra repeats under ``adaptive_repeat``.

    One new cell for each configuration whose ok cells do not yet pin the
    mean of the chosen metric to within ``rel_halfwidth`` (95% interval),
    until ``max_repeat`` cells of it have run. A configuration with no ok
    cell gets no more repeats: retrying a failure is not narrowing an
    interval. The round is shuffled, like the planned rounds.
    """
    import random

    from kmlbench.data.stats import needs_more_repeats
    from kmlbench.plan.matrix import cell_id, config_hash

    assert matrix.adaptive is not None
    metric = matrix.adaptive["metric"]
    cap = matrix.adaptive["max_repeat"]
    by_config: dict[str, list[dict]] = {}
    for record in records.values():
        by_config.setdefault(config_hash(record["params"]), []).append(record)
    representatives = {c.config_hash: c for c in matrix.cells}
    new = []
    for key, cell in representatives.items():
        done = by_config.get(key, [])
        samples = [
            r["metrics"][metric] for r in done if r["status"] == "ok" and metric in r["metrics"]
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
    from kmlbench.data import db

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


def pick_cell(matrix: Matrix, spec: str) -> Cell:
    """The cell ``spec`` names: an id, a 1-based number as ``run --dry-run``
    lists them, or a prefix of exactly one id. ValueError says what matched."""
    by_id = {c.id: c for c in matrix.cells}
    if spec in by_id:
        return by_id[spec]
    if spec.isdigit():
        n = int(spec)
        if 1 <= n <= len(matrix.cells):
            return matrix.cells[n - 1]
        raise ValueError(f"cell number {n} is not in 1..{len(matrix.cells)}")
    hits = [c for c in matrix.cells if c.id.startswith(spec)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"no cell id starts with {spec!r} (kmlbench run --dry-run lists them)")
    raise ValueError(f"{spec!r} matches {len(hits)} cells: {', '.join(c.id for c in hits[:5])}")


def main_trace(
    *,
    matrix_path: Path,
    cell: str,
    output: Path,
    csv_path: Path | None,
    accel: str,
    results_root: Path | None,
) -> int:
    """``kmlbench trace``: run one cell with the sample ring recorded, copy the trace out.

    The cell runs as in ``kmlbench run`` (its own run folder, named
    ``<matrix>-trace``, with the usual record), plus ``kmlctl trace`` during
    fio; a cell without a model entry runs with ``kml_mode=observe``, no
    model, no trainer and a blocking ring, so that no sample is lost.
    """
    from kmlbench.data.trace import TraceError, load_trace, write_csv
    from kmlbench.run.results import RunDir

    try:
        matrix = load_matrix(matrix_path)
        chosen = pick_cell(matrix, cell)
    except MatrixError as exc:
        print(f"kmlbench: {exc}")
        return 2
    except ValueError as exc:
        print(f"kmlbench trace: {exc}")
        return 2
    if chosen.params["scheduler"]["name"] != "mq-deadline":
        print(f"kmlbench trace: cell {chosen.id} runs {chosen.params['scheduler']['name']}; "
              "KML samples come from mq-deadline")  # fmt: skip
        return 2
    if _kvm_refused(matrix, accel):
        return 2
    root = results_root or paths.results_dir()
    run = RunDir.create(root, name=f"{matrix.name}-trace")
    run.copy_matrix(matrix.path)
    status = _execute(matrix, run, accel, only=[chosen], trace=True)
    produced = run.path / "cells" / chosen.id / "trace.kmltrc"
    if not produced.is_file():
        print(f"kmlbench trace: cell {chosen.id} produced no trace; see {produced.parent}")
        return 1
    try:
        header, rows = load_trace(produced)
    except TraceError as exc:
        print(f"kmlbench trace: {exc}")
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(produced, output)
    if csv_path is not None:
        with open(csv_path, "w", newline="") as handle:
            write_csv(rows, header.n_features, handle)
    print(f"kmlbench trace: {output}: {len(rows)} samples from cell {chosen.id}")
    return status


def main_build(matrix_path: Path) -> int:
    """``kmlbench build``: build every kernel variant and the guest image."""
    from kmlbench.build import image, kernel

    try:
        matrix = load_matrix(matrix_path)
    except MatrixError as exc:
        print(f"kmlbench: {exc}")
        return 2
    cache = paths.cache_dir()
    print(f"guest image: {image.build_base_image(cache)}")
    log_dir = cache / "logs"
    for variant in matrix.kernel_variants:
        build = kernel.build_kernel(_kernel_request(matrix, variant), cache, log_dir=log_dir)
        state = "built" if build.compiled else "cached"
        print(f"kernel {variant}: {state} {build.bzimage} (config {build.config_hash[:12]})")
    return 0
