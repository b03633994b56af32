"""Where everything a cell uses lives inside the guest, named once.

The files a cell uploads and the ones its KML tools write for the harness
to fetch, KML's sysfs and debugfs entries, and the block device under test.
A block device is a :class:`BlockDevice`, made by :func:`block_device`
from what the device set-up printed (``/dev/nullb0``) or a bare name
(``nullb0``); its ``/dev`` and sysfs paths are derived from the name in
this one place, so no step builds a sysfs path from a device string of
its own (the bug that once ran the hooks in ``off`` cells).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# fio's job file.
GUEST_JOB = "/tmp/job.fio"
# the calibration phase's job (model.calibrate_s): the cell's, for that long
GUEST_CALIBRATE_JOB = "/tmp/calibrate.fio"
# /proc/stat's cpu line before (.0) and after (.1) fio.
CPU_SNAPSHOT = "/tmp/kmlbench-cpu"

# KML (docs/kml-iosched.md): module parameters, statistics, control tool.
KML_PARAMS = "/sys/module/kml/parameters"
KML_STATS = "/sys/kernel/debug/kml/iosched"
KMLCTL = "/usr/bin/kmlctl"
# Files a model cell uploads, and the ones its trainer and tracer write.
GUEST_MODEL = "/tmp/model.kmlm"
GUEST_WARM = "/tmp/warm.kmlm"
GUEST_TRAINED = "/tmp/trained.kmlm"
GUEST_CURVE = "/tmp/curve.jsonl"
GUEST_TRAINER_LOG = "/tmp/trainer.txt"
GUEST_TRAINER_PID = "/tmp/trainer.pid"
GUEST_TRACE = "/tmp/trace.kmltrc"
GUEST_TRACER_LOG = "/tmp/tracer.txt"
GUEST_TRACER_PID = "/tmp/tracer.pid"
# Everything of a model cell's that a shared boot removes before the next cell.
CELL_FILES = (
    GUEST_MODEL,
    GUEST_WARM,
    GUEST_TRAINED,
    GUEST_CURVE,
    GUEST_TRAINER_LOG,
    GUEST_TRAINER_PID,
    GUEST_TRACE,
    GUEST_TRACER_LOG,
    GUEST_TRACER_PID,
)
# A shared boot's KML parameters as booted, and the log of draining the ring.
GUEST_KML_DEFAULTS = "/tmp/kmlbench-kml-defaults"
KML_DRAIN_LOG = "/tmp/kmlbench-drain.log"

# Every path above by the name the guest scripts use for it (``@KML_PARAMS@``).
SCRIPT_PATHS: dict[str, str] = {
    "GUEST_JOB": GUEST_JOB,
    "GUEST_CALIBRATE_JOB": GUEST_CALIBRATE_JOB,
    "CPU_SNAPSHOT": CPU_SNAPSHOT,
    "KML_PARAMS": KML_PARAMS,
    "KML_STATS": KML_STATS,
    "KMLCTL": KMLCTL,
    "GUEST_MODEL": GUEST_MODEL,
    "GUEST_WARM": GUEST_WARM,
    "GUEST_TRAINED": GUEST_TRAINED,
    "GUEST_CURVE": GUEST_CURVE,
    "GUEST_TRAINER_LOG": GUEST_TRAINER_LOG,
    "GUEST_TRAINER_PID": GUEST_TRAINER_PID,
    "GUEST_TRACE": GUEST_TRACE,
    "GUEST_TRACER_LOG": GUEST_TRACER_LOG,
    "GUEST_TRACER_PID": GUEST_TRACER_PID,
    "CELL_FILES": " ".join(CELL_FILES),
    "GUEST_KML_DEFAULTS": GUEST_KML_DEFAULTS,
    "KML_DRAIN_LOG": KML_DRAIN_LOG,
}

# A kernel block device name: no slash, no dot first (not "." or "..").
_DEVICE_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class DeviceError(ValueError):
    """A device, scheduler or model the harness cannot set up (bad value or name)."""


@dataclass(frozen=True)
class BlockDevice:
    """A block device of the guest, by its kernel name (``nullb0``, ``vda``)."""

    name: str

    def __post_init__(self) -> None:
        if not _DEVICE_NAME_RE.fullmatch(self.name):
            raise DeviceError(f"bad block device name {self.name!r}")

    @property
    def dev(self) -> str:
        """Its device node, what fio opens: ``/dev/nullb0``."""
        return f"/dev/{self.name}"

    @property
    def sysfs(self) -> str:
        """Its sysfs folder: ``/sys/block/nullb0``."""
        return f"/sys/block/{self.name}"

    @property
    def stat(self) -> str:
        """The block layer's counters of its requests (:mod:`kmlbench.data.block_stat`)."""
        return f"{self.sysfs}/stat"

    @property
    def iosched(self) -> str:
        """Its I/O scheduler's tunables (and KML's ``kml_mode``): ``.../queue/iosched``."""
        return f"{self.sysfs}/queue/iosched"

    @property
    def deadline_misses(self) -> str:
        """mq-deadline's count of missed deadlines (:mod:`kmlbench.data.deadline_misses`)."""
        return f"/sys/kernel/debug/block/{self.name}/sched/missed"

    @property
    def kml_svc(self) -> str:
        """Policy cost's learned service time per seek length (kmlstats.parse_svc)."""
        return f"/sys/kernel/debug/block/{self.name}/sched/kml_svc"


def block_device(text: str) -> BlockDevice:
    """The block device ``text`` names: ``/dev/NAME`` or ``NAME``, nothing else.

    What the device set-up prints on its last line is the first form; a
    bare name is the second. Anything else (another folder, a sysfs path,
    spaces, an empty line) is a :class:`DeviceError`.
    """
    name = text[len("/dev/") :] if text.startswith("/dev/") else text
    if "/" in name or not _DEVICE_NAME_RE.fullmatch(name):
        raise DeviceError(f"bad block device {text!r} (/dev/NAME or NAME)")
    return BlockDevice(name)
