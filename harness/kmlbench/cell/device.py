"""The block device under test and its I/O scheduler: QEMU arguments, and the guest set-up.

Two device types, as written in a matrix:

* ``{type: virtio, size_mib[, cache, num_queues]}`` -- a sparse raw image
  in the cell folder, attached as virtio-blk (``/dev/vda``) with the
  matrix's ``-drive cache=`` mode (default ``none``: O_DIRECT on the host,
  which keeps the host page cache out of the measurement) and
  ``num-queues=num_queues`` (default 1); ``throttle_iops_total`` and its
  kin become QEMU's ``throttling.iops-total=`` (and kin) on the drive
  (``VIRTIO_THROTTLE_KEYS``; realtime cells only). If the mode needs O_DIRECT
  (``none``, ``directsync``) and the cell folder's filesystem refuses it
  (tmpfs, some overlays) we fall back to ``writeback`` resp.
  ``writethrough`` and record the requested mode, the used one and why in
  ``<cell>/disk.json``.
* ``{type: null_blk, completion_nsec, hw_queue_depth, submit_queues,
  size_mib, irqmode[, blocksize]}`` -- created inside the guest through
  configfs, so every parameter is explicit and per cell. The module's own
  default device is suppressed with ``null_blk.nr_devices=0``. With
  ``irqmode: timer`` each request completes after ``completion_nsec``: a
  device with a known, tunable latency, which is what a scheduler-tuning
  model needs to see. Optional: ``service: rotational|flash`` makes the
  completion time that of a modelled device, which depends on the order
  and size of requests (kernel/patches/0003, values from
  ``NULL_BLK_SERVICE_MODELS``); ``mbps`` and ``memory_backed`` are
  null_blk's own bandwidth cap and backing store.

The scheduler dict is ``{name: mq-deadline|none|kyber|bfq, <tunable>: value}``;
every tunable is written under ``queue/iosched/`` (``nr_requests`` under
``queue/``) and read back, and the guest script (``scripts/device-setup.sh``)
fails if the kernel did not keep the value. The vocabulary (types, defaults,
choices) is the matrix's (:mod:`kmlbench.plan.schema`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmlbench.cell import render
from kmlbench.cell.context import CellContext, StepFailed
from kmlbench.cell.guest_paths import BlockDevice, DeviceError, block_device
from kmlbench.files import SCRATCH_DISK
from kmlbench.plan.schema import (
    DEVICE_TYPES,
    NULL_BLK_BLOCKSIZES,
    NULL_BLK_IRQMODES,
    NULL_BLK_SERVICE_MODELS,
    NULL_BLK_SERVICES,
    QUEUE_FIELDS,
    UNSET,
    VIRTIO_CACHE_MODES,
    VIRTIO_THROTTLE_KEYS,
)

__all__ = [
    "DeviceError",
    "direct_io_supported",
    "disk_info",
    "kernel_cmdline",
    "qemu_disk_args",
    "set_up",
    "setup_script",
]

# null_blk's irqmode numbers: the matrix's names in the kernel's order.
IRQ_MODES = {name: number for number, name in enumerate(NULL_BLK_IRQMODES)}
NULL_BLK_DEFAULTS: dict[str, Any] = {
    k: f.default for k, f in DEVICE_TYPES["null_blk"].items() if f.default is not UNSET
}
VIRTIO_DEFAULTS: dict[str, Any] = {
    k: f.default for k, f in DEVICE_TYPES["virtio"].items() if f.default is not UNSET
}
# Host cache modes that open the image with O_DIRECT, and what keeps their
# guest-visible semantics (write cache off for directsync) without it.
_DIRECT_FALLBACK = {"none": "writeback", "directsync": "writethrough"}
# Millisecond tunables the kernel stores in jiffies (rounded on read-back).
JIFFY_TUNABLES = frozenset({"read_expire", "write_expire", "prio_aging_expire", "timeout_sync"})
# Scheduler-dict keys that are queue attributes (queue/<key>), not tunables.
QUEUE_ATTRS = frozenset(QUEUE_FIELDS)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def _device_type(device: Mapping[str, Any]) -> str:
    dtype = device.get("type")
    if dtype not in DEVICE_TYPES:
        raise DeviceError(f"unknown device type {dtype!r} (virtio or null_blk)")
    return str(dtype)


def _int(device: Mapping[str, Any], key: str, default: int | str | None = None) -> int:
    value = device.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DeviceError(f"device {key} must be a non-negative integer, not {value!r}")
    return value


def direct_io_supported(directory: Path) -> tuple[bool, str]:
    """Can files in ``directory`` be opened with O_DIRECT (needed for cache=none)?"""
    probe = directory / ".odirect-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False, f"{directory}: filesystem refuses O_DIRECT"
        return False, f"{directory}: O_DIRECT probe failed: {exc.strerror}"
    else:
        os.close(fd)
        return True, ""
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def qemu_disk_args(device: Mapping[str, Any], cell_dir: Path) -> list[str]:
    """QEMU arguments for the device; for virtio, creates the sparse raw image.

    The chosen host cache mode (and the reason for a fallback) goes to
    ``cell_dir/disk.json`` (see :func:`disk_info`).
    """
    if _device_type(device) != "virtio":
        return []
    size_mib = _int(device, "size_mib", VIRTIO_DEFAULTS["size_mib"])
    if size_mib == 0:
        raise DeviceError("virtio size_mib must be > 0")
    cell_dir.mkdir(parents=True, exist_ok=True)
    image = cell_dir / SCRATCH_DISK
    with image.open("wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)  # sparse: costs no space until written
    requested = device.get("cache", VIRTIO_DEFAULTS["cache"])
    if requested not in VIRTIO_CACHE_MODES:
        raise DeviceError(f"virtio cache {requested!r}: one of {', '.join(VIRTIO_CACHE_MODES)}")
    num_queues = _int(device, "num_queues", VIRTIO_DEFAULTS["num_queues"])
    if num_queues == 0:
        raise DeviceError("virtio num_queues must be > 0")
    cache = requested
    info: dict[str, object] = {"image": str(image), "size_mib": size_mib}
    if requested in _DIRECT_FALLBACK:
        ok, why = direct_io_supported(cell_dir)
        if not ok:
            cache = _DIRECT_FALLBACK[requested]
            info["note"] = f"cache={requested} unavailable ({why}); using cache={cache}"
    info.update(
        {"cache": cache, "requested_cache": requested, "num_queues": num_queues, "aio": "threads"}
    )
    throttling = {
        VIRTIO_THROTTLE_KEYS[k]: _int(device, k) for k in VIRTIO_THROTTLE_KEYS if k in device
    }
    if throttling:
        info["throttling"] = throttling
    (cell_dir / "disk.json").write_text(json.dumps(info, indent=2) + "\n")
    drive = f"file={image},format=raw,if=none,id=d0,cache={cache},aio=threads"
    drive += "".join(f",{name}={value}" for name, value in throttling.items())
    blk = f"virtio-blk-pci,drive=d0,serial=kmlbench,num-queues={num_queues}"
    return ["-drive", drive, "-device", blk]


def disk_info(cell_dir: Path) -> dict[str, Any]:
    """What :func:`qemu_disk_args` chose (cache mode, fallback note), or {}."""
    path = cell_dir / "disk.json"
    info: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return info


def kernel_cmdline(device: Mapping[str, Any]) -> str:
    """Extra kernel command line: null_blk must not create its default nullb0."""
    return "null_blk.nr_devices=0" if _device_type(device) == "null_blk" else ""


def _null_blk_values(device: Mapping[str, Any]) -> dict[str, render.Value]:
    params = {**NULL_BLK_DEFAULTS, **device}
    irqmode = params["irqmode"]
    if isinstance(irqmode, str):
        if irqmode not in IRQ_MODES:
            raise DeviceError(f"null_blk irqmode {irqmode!r}: one of {sorted(IRQ_MODES)}")
        irqmode = IRQ_MODES[irqmode]
    if irqmode not in IRQ_MODES.values():
        raise DeviceError(f"null_blk irqmode {irqmode!r}: 0, 1 or 2")
    blocksize = _int(params, "blocksize")
    if blocksize not in NULL_BLK_BLOCKSIZES:
        raise DeviceError(
            f"null_blk blocksize {blocksize}: one of {', '.join(map(str, NULL_BLK_BLOCKSIZES))}"
        )
    extra: dict[str, int] = {}
    if "mbps" in params:
        extra["mbps"] = _int(params, "mbps")
    if "memory_backed" in params:
        extra["memory_backed"] = int(bool(params["memory_backed"]))
    service = params.get("service", "fixed")
    if service != "fixed":
        if service not in NULL_BLK_SERVICE_MODELS:
            raise DeviceError(f"null_blk service {service!r}: one of {NULL_BLK_SERVICES}")
        if irqmode != IRQ_MODES["timer"]:
            raise DeviceError(f"null_blk service {service!r} needs irqmode timer")
        extra.update(NULL_BLK_SERVICE_MODELS[service])
    attrs = [
        line
        for attr, value in extra.items()
        for line in render.lines("device-null_blk-attr.sh", {"ATTR": attr, "VALUE": str(value)})
    ]
    return {
        "ATTRS": attrs,
        "IRQMODE": str(irqmode),
        "COMPLETION_NSEC": str(_int(params, "completion_nsec")),
        "HW_QUEUE_DEPTH": str(_int(params, "hw_queue_depth")),
        "SUBMIT_QUEUES": str(_int(params, "submit_queues")),
        "SIZE_MIB": str(_int(params, "size_mib")),
        "BLOCKSIZE": str(blocksize),
    }


def setup_script(device: Mapping[str, Any], scheduler: Mapping[str, Any]) -> str:
    """Shell for the guest (``scripts/device-setup.sh``): set up the device and scheduler.

    Informational ``kmlbench-device:`` lines come first; the last line is the
    block device path (e.g. ``/dev/nullb0``). Exits non-zero with a message
    on stderr if anything did not take effect.
    """
    dtype = _device_type(device)
    name = scheduler.get("name", "mq-deadline")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DeviceError(f"bad scheduler name {name!r}")
    tunables = {k: v for k, v in scheduler.items() if k != "name"}
    for key, value in tunables.items():
        if not _NAME_RE.match(str(key)) or isinstance(value, bool | dict | list):
            raise DeviceError(f"bad scheduler tunable {key!r}: {value!r}")
    if dtype == "null_blk":
        dev = render.lines("device-null_blk.sh", _null_blk_values(device))
    else:
        dev = render.lines("device-virtio.sh")
    set_lines: list[str] = []
    for key, value in tunables.items():
        if key in QUEUE_ATTRS:
            setter, attr = "setattr", key
        else:
            jiffies = key in JIFFY_TUNABLES and isinstance(value, int)
            setter, attr = ("setattr_ms" if jiffies else "setattr"), f"iosched/{key}"
        values = {"SETTER": setter, "ATTR": attr, "VALUE": shlex.quote(str(value))}
        set_lines += render.lines("device-set.sh", values)
    show_attrs: list[str] = []
    for key in (k for k in tunables if k in QUEUE_ATTRS):
        show_attrs += render.lines("device-show-attr.sh", {"ATTR": key})
    iosched = [k for k in tunables if k not in QUEUE_ATTRS]
    show_tunables: list[str] = []
    if iosched:
        show_tunables = render.lines("device-show-tunables.sh", {"TUNABLES": " ".join(iosched)})
    return render.script(
        "device-setup.sh",
        {
            "DEVICE": dev,
            "SCHEDULER": name,
            "SCHEDULER_ARG": shlex.quote(name),
            "SET": set_lines,
            "SHOW_QUEUE_ATTRS": show_attrs,
            "SHOW_TUNABLES": show_tunables,
        },
    )


def set_up(ctx: CellContext) -> BlockDevice:
    """Run the set-up in the cell's guest (``setup.log``); the block device it made.

    :class:`StepFailed` when the guest's script says it could not; the
    cell's dmesg and console then say why.
    """
    params = ctx.params
    result = ctx.guest.run(setup_script(params["device"], params["scheduler"]), ctx.timeout)
    ctx.log("setup.log", result.stdout + result.stderr)
    if result.exit_status != 0:
        raise StepFailed(f"device setup failed (exit {result.exit_status}); see setup.log")
    printed = result.stdout.strip().splitlines()
    if not printed:
        raise DeviceError("the device set-up printed no block device")
    return block_device(printed[-1])
