"""The fio part of a cell: its job in the guest, the run, its metrics and the guest CPU it cost.

:func:`upload_job` renders the cell's fio job for its block device and
puts it in the guest; :func:`run` runs fio between two copies of
``/proc/stat``'s ``cpu`` line (``scripts/workload-fio.sh``), turns fio's
JSON into the cell's status and metrics (:func:`fio_outcome`), and adds
the guest CPU time of the run (:func:`cpu_metrics`), in instructions per
I/O under the virtual clock. A profiled cell (``guest.insn_profile``) runs
``sync`` just before and after, and its instruction profile between the
two (:func:`profile_metrics`) goes to ``insn-profile.json``. An mq-deadline
cell reads the scheduler's count of missed deadlines before and after
(:mod:`kmlbench.data.deadline_misses`), and every cell the block layer's
count of the device's requests and merges (:mod:`kmlbench.data.block_stat`);
a workload with latency targets gets the share of requests over them,
whatever its scheduler (:func:`kmlbench.data.fio.late_metrics`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kmlbench.cell import render
from kmlbench.cell.context import CellContext, CellGuest, CommandOutput
from kmlbench.cell.guest_paths import CPU_SNAPSHOT, GUEST_JOB
from kmlbench.clock import host_timeout, instructions_per_us
from kmlbench.data import block_stat as bs
from kmlbench.data import deadline_misses as dm
from kmlbench.data import fio
from kmlbench.data import insn_profile as prof
from kmlbench.plan import fio_job
from kmlbench.status import FAILED, OK

# Short guest commands are given this many host seconds.
SHORT_TIMEOUT_S = 30


def fio_command(profiled: bool = False) -> str:
    """The guest command that runs the cell's job, with the CPU snapshots around it.

    ``profiled``: with a ``sync`` just before and after, the instruction
    counter's marks.
    """
    return render.command(
        "workload-fio.sh",
        {"FIO": fio_job.fio_shell_command(GUEST_JOB), "SYNC": "sync; " if profiled else ""},
    )


def cpu_read_command() -> str:
    """The guest command that prints the two CPU snapshots of :func:`fio_command`."""
    return f"cat {CPU_SNAPSHOT}.0 {CPU_SNAPSHOT}.1"


def upload_job(ctx: CellContext) -> None:
    """The cell's fio job for its block device: ``job.fio`` in the cell, in the guest too.

    Records the guest's fio version beside it.
    """
    job = fio_job.render_job(ctx.params["workload"], ctx.require_device().dev)
    ctx.log("job.fio", job)
    ctx.guest.put(GUEST_JOB, job.encode())
    version = ctx.guest.run("fio --version", SHORT_TIMEOUT_S).stdout.strip()
    ctx.extra["guest_fio_version"] = version


def run(ctx: CellContext) -> None:
    """Run fio; the cell's status and metrics from its report, plus the CPU it cost.

    fio keeps a virtual-clock guest busy, which needs more host time than
    the command timeout (:func:`kmlbench.clock.host_timeout`).
    """
    workload = ctx.params["workload"]
    guest = ctx.guest
    started = time.monotonic()
    timeout = host_timeout(
        ctx.timeout, guest.cfg.clock, busy_guest_s=float(workload["runtime_s"] + workload["ramp_s"])
    )
    profile = ctx.boot.spec.profile
    snapshots = ctx.boot.folder / prof.SNAPSHOTS_FILE
    seen = len(prof.read_snapshots(snapshots)) if profile else 0
    misses = deadline_misses_file(ctx)
    misses_before = read_miss_counts(ctx, misses) if misses else None
    stat_before = read_block_stat(ctx)
    result = guest.run(fio_command(profiled=profile is not None), timeout)
    ctx.timings["fio_s"] = time.monotonic() - started
    if result.stderr:
        ctx.log("fio.stderr", result.stderr)
    ctx.status, ctx.metrics, ctx.fio_report = fio_outcome(result, ctx.cell_dir, ctx.extra)
    if ctx.status == OK:
        ios = ctx.metrics.get("iops", 0.0) * fio_runtime_s(ctx.fio_report)
        ctx.metrics.update(fio.late_metrics(ctx.fio_report, fio.late_targets(workload)))
        ctx.metrics.update(guest_cpu_metrics(guest, ctx.cell_dir, ios, ctx.timeout))
        if misses and misses_before is not None:
            misses_after = read_miss_counts(ctx, misses)
            if misses_after is not None:
                ctx.metrics.update(dm.miss_metrics(misses_before, misses_after))
        if stat_before is not None:
            stat_after = read_block_stat(ctx)
            if stat_after is not None:
                try:
                    ctx.metrics.update(bs.stat_metrics(stat_before, stat_after))
                except bs.BlockStatError as exc:
                    ctx.extra["block_stat_error"] = f"{ctx.require_device().stat}: {exc}"
        if profile is not None:
            ctx.metrics.update(profile_metrics(ctx, snapshots, seen, profile.mark))


def deadline_misses_file(ctx: CellContext) -> str | None:
    """The scheduler's count of missed deadlines, for an mq-deadline cell; else None."""
    if ctx.params["scheduler"].get("name", "mq-deadline") != "mq-deadline":
        return None
    return ctx.require_device().deadline_misses


def read_miss_counts(ctx: CellContext, path: str) -> dict[str, int] | None:
    """mq-deadline's counters now (:func:`read_counters`).

    A kernel without the counter (an older patch series) loses only the
    metric, not the cell.
    """
    return read_counters(ctx, path, dm.parse_counts, dm.MissCountError, "deadline_misses_error")


def read_block_stat(ctx: CellContext) -> dict[str, int] | None:
    """The device's block-layer counters now (:func:`read_counters`)."""
    path = ctx.require_device().stat
    return read_counters(ctx, path, bs.parse_stat, bs.BlockStatError, "block_stat_error")


def read_counters(
    ctx: CellContext,
    path: str,
    parse: Callable[[str], dict[str, int]],
    error: type[ValueError],
    record: str,
) -> dict[str, int] | None:
    """A guest file of counters, parsed; None, and why in the record's
    ``record`` key, if it cannot be read or parsed (``error``): that loses
    only its metrics, not the cell."""
    got = ctx.guest.run(f"cat {path}", SHORT_TIMEOUT_S)
    try:
        if got.exit_status != 0:
            raise error(f"cat exited {got.exit_status}: {got.stderr.strip()[-200:]}")
        return parse(got.stdout)
    except error as exc:
        ctx.extra[record] = f"{path}: {exc}"
        return None


def profile_metrics(ctx: CellContext, snapshots: Path, seen: int, mark: str) -> dict[str, float]:
    """The instruction profile between the fio command's two marks, into ``insn-profile.json``.

    ``seen``: snapshots in the boot's file before the command (a shared
    boot's earlier cells wrote theirs). Returns the exact per-I/O totals;
    a profile that cannot be made is noted in the record, not fatal.
    """
    ios, source = prof.fio_ios(ctx.fio_report)
    if ctx.params["workload"]["ramp_s"]:
        source += f" (not the {ctx.params['workload']['ramp_s']} s ramp's: per I/O is high)"
    try:
        new = prof.read_snapshots(snapshots)[seen:]
        profile = prof.profile_from_snapshots(new, ios, mark=mark, ios_source=source)
    except prof.ProfileError as exc:
        ctx.extra["insn_profile_error"] = str(exc)
        return {}
    profile["snapshots"] = [int(s["snapshot"]) for s in new if s.get("reason") == "mark"]
    ctx.log(prof.PROFILE_FILE, json.dumps(profile, indent=1) + "\n")
    out: dict[str, float] = {}
    for key in ("kernel", "user"):
        if profile["per_io"][key] is not None:
            out[f"{key}_insn_per_io_exact"] = float(profile["per_io"][key])
    return out


def fio_outcome(
    result: CommandOutput, cell_dir: Path, extra: dict[str, Any]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Status, metrics and the parsed report from fio's exit status and output.

    ``fio.json`` always holds valid JSON (fio may print notes before it);
    the raw output is kept as ``fio.out`` whenever it is not pure JSON.
    A fio failure is the workload's fault (``failed``), not the harness's.
    ``extra["fio_bucket_bits"]``: the width of the buckets its percentiles
    come from, as the report's histograms show it (runs before the guest's
    finer fio have 6; :func:`kmlbench.data.fio.report_bucket_bits`).
    """
    try:
        data: dict[str, Any] = fio.parse_fio_output(result.stdout)
    except fio_job.FioError as exc:
        (cell_dir / "fio.out").write_text(result.stdout)
        extra["error"] = f"fio exited {result.exit_status}, no JSON: {exc}"
        return FAILED, {}, {}
    (cell_dir / "fio.json").write_text(json.dumps(data, indent=1))
    if not result.stdout.lstrip().startswith("{"):
        (cell_dir / "fio.out").write_text(result.stdout)
    if result.exit_status != 0:
        extra["error"] = f"fio exited {result.exit_status}: {result.stderr[-500:]}"
        return FAILED, {}, data
    try:
        metrics: dict[str, Any] = dict(fio.metrics_from_fio(data))
    except fio_job.FioError as exc:
        extra["error"] = f"fio job error: {exc}"
        return FAILED, {}, data
    if (bits := fio.report_bucket_bits(data)) is not None:
        extra["fio_bucket_bits"] = bits
    return OK, metrics, data


def fio_runtime_s(data: Mapping[str, Any]) -> float:
    """The longest job runtime of a fio report (seconds), 0 if unknown."""
    try:
        return max(float(j.get("job_runtime", 0)) for j in data.get("jobs", [])) / 1000.0
    except (ValueError, TypeError):
        return 0.0


def parse_cpu_line(line: str) -> dict[str, int]:
    """/proc/stat's ``cpu`` line: ticks (USER_HZ) per state, summed over CPUs."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    fields = line.split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"not a /proc/stat cpu line: {line!r}")
    return {name: int(v) for name, v in zip(names, fields[1:], strict=False)}


def cpu_metrics(
    before: Mapping[str, int],
    after: Mapping[str, int],
    ios: float,
    insn_per_us: float | None = None,
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


def guest_cpu_metrics(
    guest: CellGuest, cell_dir: Path, ios: float, timeout: float
) -> dict[str, float]:
    """CPU metrics of the fio run; {} (and a note in cpu.txt) if unavailable.

    Instructions per I/O too when the guest runs on the virtual clock.
    """
    got = guest.run(cpu_read_command(), timeout)
    (cell_dir / "cpu.txt").write_text(got.stdout + got.stderr)
    lines = got.stdout.strip().splitlines()
    if got.exit_status != 0 or len(lines) != 2:
        return {}
    try:
        before, after = parse_cpu_line(lines[0]), parse_cpu_line(lines[1])
    except ValueError:
        return {}
    return cpu_metrics(before, after, ios, insn_per_us(guest))


def insn_per_us(guest: CellGuest) -> float | None:
    """Guest instructions per virtual µs, or None on the realtime clock."""
    cfg = guest.cfg
    return instructions_per_us(cfg.icount_shift) if cfg.clock == "virtual" else None
