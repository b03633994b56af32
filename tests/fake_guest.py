"""A stand-in for :class:`kmlbench.guest.qemu.Guest` that needs no QEMU: fast cell-lifecycle tests.

:class:`FakeBoots` is what the lifecycle calls to boot (``start(cfg, keys)``);
each boot is a :class:`FakeGuest` that answers every command a cell sends
as a healthy guest with KML would, and records the commands and uploads,
named by :func:`kind_of` (``device``, ``kml_setup``, ``fio``, ``fetch
/tmp/trainer.txt``, ``put /tmp/job.fio``, ...). Told so, it fails any of
them the way the real guest does (:class:`Fail`): a non-zero exit, a
command timeout, a lost SSH connection, a kernel oops, a file that is
missing when fetched, a harness fault; or fails the boot itself.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from kmlbench.guest.command import GuestConfig
from kmlbench.guest.console import ConsoleEvent
from kmlbench.guest.qemu import GuestError
from kmlbench.guest.ssh import CommandResult

# A fio json+ report with one job that did 1000 reads in 1 s.
FIO_REPORT: dict[str, Any] = {
    "fio version": "fio-3.33",
    "jobs": [
        {
            "jobname": "randread",
            "error": 0,
            "job_runtime": 1000,
            "read": {
                "io_bytes": 4096000,
                "total_ios": 1000,
                "iops": 1000.0,
                "bw": 4000,
                "clat_ns": {"N": 1000, "mean": 50000.0, "bins": {"40000": 500, "60000": 500}},
            },
            "write": {"io_bytes": 0, "total_ios": 0, "iops": 0.0, "bw": 0},
        }
    ],
}
FIO_STDOUT = json.dumps(FIO_REPORT)
# mq-deadline's count of missed deadlines (kernel/patches/0002), read
# before and after fio: each reading 1000 reads (40 late) and 10 writes
# (none late) on, the writes' counter wrapping at 2^32 between the two.
MISSES = "read_dispatched {reads}\nread_missed {late}\nwrite_dispatched {writes}\nwrite_missed 7\n"
# /sys/block/<dev>/stat, read before and after fio: each reading 1000 read
# requests (3 reads merged into them) and 10 writes on.
BLOCK_STAT = "{reads} {merges} 8000 30 {writes} 0 80 5 0 35 35 0 0 0 0 0 0\n"
# /proc/stat's cpu line before and after fio: 100 ticks user, 120 kernel.
CPU_LINES = "cpu  100 0 50 1000 0 5 5 0 0 0\ncpu  200 0 150 1100 0 15 15 0 0 0\n"
# /sys/kernel/debug/kml/iosched after a consistent cell (docs/kml-iosched.md).
KML_STATS = """\
abi_version 1
model_loaded 1
model_generation 3
inferences 100
predictions 100
met_pred_met 50
met_pred_miss 10
miss_pred_met 5
miss_pred_miss 35
issue_abs_err_us_sum 12345
samples 130
samples_met 80
untracked 0
ring_produced 100
ring_dropped 20
ring_full_waits 0
ring_filtered 10
ring_consumed 90
updates_applied 3
ring_capacity 4096
ring_mode drop
sample_filter all
inference_ns_hist 100 200 10
inference_ns_hist 200 300 90
"""
TRAINER_SUMMARY = "samples 90\naccuracy 0.850000\nstopped_by signal\n"
CURVE = '{"samples_seen": 64, "accuracy": 0.8, "balanced_accuracy": 0.7, "mae_us": 10}\n'
TRAINED = b"KMLM trained weights"
TRACE = b"KMLT trace records"
DMESG = "[    1.000000] null_blk: module loaded\n"

FILES: dict[str, str | bytes] = {
    "/sys/kernel/debug/kml/iosched": KML_STATS,
    "/tmp/trainer.txt": TRAINER_SUMMARY,
    "/tmp/curve.jsonl": CURVE,
    "/tmp/trained.kmlm": TRAINED,
    "/tmp/trace.kmltrc": TRACE,
    "/tmp/tracer.txt": "records 42\n",
}


def kind_of(cmd: str) -> str:
    """What a command sent to the guest is, by what it says (not how it was built)."""
    if cmd.startswith("dmesg"):
        return "dmesg"
    if cmd == "fio --version":
        return "fio_version"
    if "fio --output-format=json+" in cmd:
        return "fio"
    if cmd.startswith("cat /tmp/kmlbench-cpu.0"):
        return "cpu"
    if cmd.startswith("cat /sys/kernel/debug/block/") and cmd.endswith("/sched/missed"):
        return "misses"
    if cmd.startswith("cat /sys/block/") and cmd.endswith("/stat"):
        return "blockstat"
    if cmd.startswith("cat ") and cmd.endswith(" 2>/dev/null") and "\n" not in cmd:
        return "fetch " + cmd.split()[1]
    if cmd.startswith("[ -s ") and "\n" not in cmd:
        return "fetch " + cmd.split()[2]
    if "kmlbench-device" in cmd:
        return "device"
    if "reset: kml_mode" in cmd:
        return "kml_reset"
    if "kmlbench-kml: kml_mode=" in cmd:
        return "kml_setup"
    if ": > /tmp/kmlbench-kml-defaults" in cmd:
        return "kml_snapshot"
    if "kmlbench-kml" in cmd:
        return "kml_stop"
    return "other"


@dataclass
class Fail:
    """How a command (or the boot) fails, which time first, and how many times.

    ``how``: ``exit`` (non-zero ``exit_status``, ``stderr``), ``missing``
    (a fetched file is not there: ``cat``/``base64`` exit 1, no output),
    ``timeout``, ``ssh`` (connection lost, guest alive: infra-error),
    ``oops`` (the kernel oopses during the command: panic), ``slow`` (it
    works, after ``seconds``), ``warn`` (a
    WARN on the console; the command succeeds), ``harness`` (a Python error
    in the harness, not the guest), ``answer`` (``exit_status``, ``stdout``
    and ``stderr`` as given); for the boot also ``boot-failure`` and
    ``panic``.
    """

    how: str
    exit_status: int = 1
    stderr: str = ""
    stdout: str = ""
    times: int = 1
    after: int = 0  # let this many matching commands work first
    seconds: float = 0.0  # ``slow``: the command takes this long, then works


@dataclass
class FakeGuest:
    """One boot: answers, records and fails commands (see the module docstring)."""

    cfg: GuestConfig
    plan: dict[str, Fail]
    command_line: list[str] = field(default_factory=lambda: ["qemu-system-x86_64", "-fake"])
    boot_seconds: float = 1.5
    log: list[str] = field(default_factory=list)  # kinds, in order
    commands: list[str] = field(default_factory=list)  # beside log (an upload: its kind)
    timeouts: dict[str, float] = field(default_factory=dict)  # the last, by kind
    uploads: dict[str, bytes] = field(default_factory=dict)
    closed: bool = False
    _events: list[ConsoleEvent] = field(default_factory=list)

    def __enter__(self) -> FakeGuest:
        failure = self._take("boot")
        if failure is not None:
            self.closed = True
            if failure.how == "harness":
                raise RuntimeError("harness fault while booting")
            if failure.how == "panic":
                self._event("panic", "Kernel panic - not syncing: VFS: Unable to mount root fs")
            raise GuestError(failure.how, "no SSH within 300 s", list(self._events))
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def events(self) -> list[ConsoleEvent]:
        return list(self._events)

    def run(self, cmd: str, timeout: float) -> CommandResult:
        assert not self.closed, "a command after QEMU was ended"
        kind = kind_of(cmd)
        self.log.append(kind)
        self.commands.append(cmd)
        self.timeouts[kind] = timeout
        failure = self._take(kind)
        if failure is not None:
            result = self._fail(failure, cmd, timeout)
            if result is not None:
                return result
        return CommandResult(0, self._stdout(kind, cmd), "")

    def put(self, remote_path: str, data: bytes, mode: int = 0o644) -> None:
        assert not self.closed, "an upload after QEMU was ended"
        kind = f"put {remote_path}"
        self.log.append(kind)
        self.commands.append(kind)
        failure = self._take(kind)
        if failure is not None:
            self._fail(failure, kind, 120)
        self.uploads[remote_path] = data

    # --- inside ------------------------------------------------------------------

    def _take(self, kind: str) -> Fail | None:
        failure = self.plan.get(kind)
        if failure is None or failure.times <= 0:
            return None
        if failure.after > 0:
            failure.after -= 1
            return None
        failure.times -= 1
        return failure

    def _event(self, kind: str, excerpt: str) -> ConsoleEvent:
        event = ConsoleEvent(kind, 100 + len(self._events), excerpt)
        self._events.append(event)
        return event

    def _fail(self, failure: Fail, cmd: str, timeout: float) -> CommandResult | None:
        how = failure.how
        if how in ("exit", "missing", "answer"):
            return CommandResult(failure.exit_status, failure.stdout, failure.stderr)
        if how == "slow":
            time.sleep(failure.seconds)
            return None
        if how == "warn":
            self._event("warn", "WARNING: CPU: 0 PID: 1 at block/mq-deadline.c:1 dd_insert")
            return None
        if how == "timeout":
            raise GuestError("timeout", f"command timed out after {timeout:g} s", self.events())
        if how == "ssh":
            raise GuestError("infra-error", "SSH channel closed", self.events())
        if how == "oops":
            event = self._event("oops", "Oops: 0000 [#1] PREEMPT SMP NOPTI")
            raise GuestError("panic", event.excerpt, self.events())
        if how == "harness":
            raise RuntimeError(f"harness fault during {kind_of(cmd)}")
        raise AssertionError(f"unknown failure {how!r}")

    def _stdout(self, kind: str, cmd: str) -> str:
        if kind == "device":
            dev = "vda" if "dev=vda" in cmd else "nullb0"
            return f"kmlbench-device: {dev} scheduler=[mq-deadline] size_bytes=1\n/dev/{dev}\n"
        if kind == "kml_setup":
            return "kmlbench-kml: kml_mode=[observe] trainer=none\n"
        if kind == "kml_reset":
            return "kmlbench-kml: reset: kml_mode [off] observe active\n"
        if kind == "fio_version":
            return "fio-3.33\n"
        if kind == "fio":
            return FIO_STDOUT
        if kind == "cpu":
            return CPU_LINES
        if kind == "misses":
            n = self.log.count("misses")
            return MISSES.format(reads=1000 * n, late=40 * n, writes=(2**32 - 5 + 10 * n) % 2**32)
        if kind == "blockstat":
            n = self.log.count("blockstat")
            return BLOCK_STAT.format(reads=1000 * n, merges=3 * n, writes=10 * n)
        if kind == "dmesg":
            return DMESG
        if kind.startswith("fetch "):
            data = FILES[kind.split(" ", 1)[1]]
            if cmd.startswith("[ -s "):
                raw = data if isinstance(data, bytes) else data.encode()
                return base64.encodebytes(raw).decode()
            return data if isinstance(data, str) else data.decode()
        return ""


class FakeBoots:
    """Boots :class:`FakeGuest` s (``start(cfg, keys)``); ``fail`` is shared by every boot.

    ``fail`` maps a command kind (or ``boot``) to how it fails; each
    :class:`Fail` fails that many of the matching commands, then they work.
    """

    def __init__(self, fail: dict[str, Fail] | None = None) -> None:
        self.fail = dict(fail or {})
        self.guests: list[FakeGuest] = []

    def __call__(self, cfg: GuestConfig, keys: object) -> FakeGuest:
        guest = FakeGuest(cfg, self.fail)
        self.guests.append(guest)
        return guest

    @property
    def logs(self) -> list[list[str]]:
        """The kinds of commands and uploads of each boot, in order."""
        return [g.log for g in self.guests]
