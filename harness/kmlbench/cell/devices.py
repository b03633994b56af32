"""The block device under test and its I/O scheduler, as QEMU args + guest shell.

Two device types, as written in a matrix:

* ``{type: virtio, size_mib[, cache, num_queues]}`` -- a sparse raw image
  in the cell folder, attached as virtio-blk (``/dev/vda``) with the
  matrix's ``-drive cache=`` mode (default ``none``: O_DIRECT on the host,
  which keeps the host page cache out of the measurement) and
  ``num-queues=num_queues`` (default 1). If the mode needs O_DIRECT
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
  model needs to see.

The scheduler dict is ``{name: mq-deadline|none|kyber|bfq, <tunable>: value}``;
every tunable is written under ``queue/iosched/`` and read back, and the
script fails if the kernel did not keep the value.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
from pathlib import Path

IRQ_MODES = {"none": 0, "softirq": 1, "timer": 2}
NULL_BLK_DEFAULTS: dict[str, int | str] = {
    "completion_nsec": 10_000,
    "hw_queue_depth": 64,
    "submit_queues": 1,
    "size_mib": 1024,
    "irqmode": "timer",
    "blocksize": 4096,
}
NULL_BLK_BLOCKSIZES = (512, 1024, 2048, 4096)
VIRTIO_CACHE_MODES = ("none", "directsync", "writethrough", "writeback", "unsafe")
# Host cache modes that open the image with O_DIRECT, and what keeps their
# guest-visible semantics (write cache off for directsync) without it.
_DIRECT_FALLBACK = {"none": "writeback", "directsync": "writethrough"}
SCHEDULERS = ("mq-deadline", "none", "kyber", "bfq")
# Millisecond tunables the kernel stores in jiffies (rounded on read-back).
JIFFY_TUNABLES = frozenset({"read_expire", "write_expire", "prio_aging_expire", "timeout_sync"})
# Scheduler-dict keys that are queue attributes (queue/<key>), not tunables.
QUEUE_ATTRS = frozenset({"nr_requests"})
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class DeviceError(ValueError):
    """A device or scheduler dict the harness cannot set up."""


def _device_type(device: dict) -> str:
    dtype = device.get("type")
    if dtype not in ("virtio", "null_blk"):
        raise DeviceError(f"unknown device type {dtype!r} (virtio or null_blk)")
    return str(dtype)


def _int(device: dict, key: str, default: int | str | None = None) -> int:
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


def qemu_disk_args(device: dict, cell_dir: Path) -> list[str]:
    """QEMU arguments for the device; for virtio, creates the sparse raw image.

    The chosen host cache mode (and the reason for a fallback) goes to
    ``cell_dir/disk.json`` (see :func:`disk_info`).
    """
    if _device_type(device) != "virtio":
        return []
    size_mib = _int(device, "size_mib", 1024)
    if size_mib == 0:
        raise DeviceError("virtio size_mib must be > 0")
    cell_dir.mkdir(parents=True, exist_ok=True)
    image = cell_dir / "disk.img"
    with image.open("wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)  # sparse: costs no space until written
    requested = device.get("cache", "none")
    if requested not in VIRTIO_CACHE_MODES:
        raise DeviceError(f"virtio cache {requested!r}: one of {', '.join(VIRTIO_CACHE_MODES)}")
    num_queues = _int(device, "num_queues", 1)
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
    (cell_dir / "disk.json").write_text(json.dumps(info, indent=2) + "\n")
    drive = f"file={image},format=raw,if=none,id=d0,cache={cache},aio=threads"
    blk = f"virtio-blk-pci,drive=d0,serial=kmlbench,num-queues={num_queues}"
    return ["-drive", drive, "-device", blk]


def disk_info(cell_dir: Path) -> dict:
    """What :func:`qemu_disk_args` chose (cache mode, fallback note), or {}."""
    path = cell_dir / "disk.json"
    return json.loads(path.read_text()) if path.exists() else {}


def kernel_cmdline(device: dict) -> str:
    """Extra kernel command line: null_blk must not create its default nullb0."""
    return "null_blk.nr_devices=0" if _device_type(device) == "null_blk" else ""


def _null_blk_script(device: dict) -> list[str]:
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
    attrs = [
        # Order matters: size/blocksize/queues are fixed once power=1.
        ("irqmode", irqmode),
        ("completion_nsec", _int(params, "completion_nsec")),
        ("hw_queue_depth", _int(params, "hw_queue_depth")),
        ("submit_queues", _int(params, "submit_queues")),
        ("size", _int(params, "size_mib")),  # null_blk's configfs size is in MiB
        ("blocksize", blocksize),
    ]
    lines = [
        "cfg=/sys/kernel/config/nullb",
        '[ -d "$cfg" ] || die "no $cfg (configfs not mounted or null_blk missing)"',
        # Newer kernels name the disk after the configfs directory, older ones
        # nullb<index>: with nr_devices=0 both give nullb0.
        'nb="$cfg/nullb0"',
        'mkdir "$nb" || die "cannot create $nb"',
    ]
    for name, value in attrs:
        lines.append(f'setattr "$nb/{name}" {value}')
    lines += [
        'echo 1 > "$nb/power" || die "null_blk power on failed"',
        'dev=nullb0; [ -e /sys/block/$dev ] || dev="nullb$(cat "$nb/index")"',
    ]
    return lines


def setup_script(device: dict, scheduler: dict) -> str:
    """Shell for the guest: set up the device and scheduler, verify via sysfs.

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
    lines = [
        "set -u",
        'die() { echo "kmlbench-device: $*" >&2; exit 1; }',
        "setattr() {",
        '    echo "$2" > "$1" 2>/dev/null || die "cannot write $2 to $1"',
        '    got=$(cat "$1") || die "cannot read $1"',
        '    [ "$got" = "$2" ] || die "$1: wrote $2, reads back $got"',
        "}",
        # mq-deadline keeps *_expire in jiffies: 250 ms reads back as 252 at
        # HZ=250. Accept up to 10 ms (one jiffy at HZ>=100) and report the
        # effective value.
        "setattr_ms() {",
        '    echo "$2" > "$1" 2>/dev/null || die "cannot write $2 to $1"',
        '    got=$(cat "$1") || die "cannot read $1"',
        "    d=$((got - $2)); [ $d -lt 0 ] && d=$((-d))",
        '    [ $d -le 10 ] || die "$1: wrote $2, reads back $got"',
        "}",
    ]
    if dtype == "null_blk":
        lines += _null_blk_script(device)
    else:
        lines += [
            "i=0",
            "while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done",
            '[ -b /dev/vda ] || die "no /dev/vda (virtio-blk disk missing)"',
            "dev=vda",
        ]
    queue = '"/sys/block/$dev/queue'
    lines += [
        "i=0",
        'while [ ! -b "/dev/$dev" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done',
        '[ -b "/dev/$dev" ] || die "/dev/$dev is not a block device"',
        f'echo {shlex.quote(name)} > {queue}/scheduler" 2>/dev/null'
        f' || die "scheduler {name} not available: $(cat {queue}/scheduler")"',
        f"grep -q '\\[{name}\\]' {queue}/scheduler\""
        f' || die "scheduler is $(cat {queue}/scheduler") not {name}"',
    ]
    for key, value in tunables.items():
        if key in QUEUE_ATTRS:
            lines.append(f'setattr {queue}/{key}" {shlex.quote(str(value))}')
            continue
        setter = "setattr_ms" if key in JIFFY_TUNABLES and isinstance(value, int) else "setattr"
        lines.append(f'{setter} {queue}/iosched/{key}" {shlex.quote(str(value))}')
    lines += [
        f'echo "kmlbench-device: $dev scheduler=$(cat {queue}/scheduler")'
        f' size_bytes=$(($(cat /sys/block/$dev/size) * 512))"',
    ]
    for key in QUEUE_ATTRS & set(tunables):
        lines.append(f'echo "kmlbench-device: {key}=$(cat {queue}/{key}")"')
    tunables = {k: v for k, v in tunables.items() if k not in QUEUE_ATTRS}
    if tunables:
        keys = " ".join(tunables)
        lines += [
            f"for t in {keys}; do"
            f' echo "kmlbench-device: iosched/$t=$(cat {queue}/iosched/$t")"; done',
        ]
    lines.append('echo "/dev/$dev"')
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# KML inside mq-deadline (docs/kml-iosched.md): per-cell set-up and collection.

KML_PARAMS = "/sys/module/kml/parameters"
KML_STATS = "/sys/kernel/debug/kml/iosched"
KMLCTL = "/usr/bin/kmlctl"
# Guest paths of the files a model cell uploads and fetches.
GUEST_MODEL = "/tmp/model.kmlm"
GUEST_WARM = "/tmp/warm.kmlm"
GUEST_TRAINED = "/tmp/trained.kmlm"
GUEST_CURVE = "/tmp/curve.jsonl"
GUEST_TRAINER_LOG = "/tmp/trainer.txt"
GUEST_TRAINER_PID = "/tmp/trainer.pid"
GUEST_TRACE = "/tmp/trace.kmltrc"
GUEST_TRACER_LOG = "/tmp/tracer.txt"
GUEST_TRACER_PID = "/tmp/tracer.pid"
KML_MODES = ("observe", "active")
_KML_CHOICES = {
    "ring_mode": ("block", "drop"),
    "sample_filter": ("all", "uncertain"),
    "trainer": ("none", "user", "kernel"),
}

_KML_PRELUDE = [
    "set -u",
    'die() { echo "kmlbench-kml: $*" >&2; exit 1; }',
    # A choice parameter may read back as the value or as a list with the
    # value in brackets (as queue/scheduler does): accept both.
    "setchoice() {",
    '    echo "$2" > "$1" 2>/dev/null || die "cannot write $2 to $1"',
    '    got=$(cat "$1") || die "cannot read $1"',
    '    case "$got" in "$2"|*"[$2]"*) ;; *) die "$1: wrote $2, reads back $got";; esac',
    "}",
    "setnum() {",
    '    echo "$2" > "$1" 2>/dev/null || die "cannot write $2 to $1"',
    '    got=$(cat "$1") || die "cannot read $1"',
    '    [ "$got" = "$2" ] || die "$1: wrote $2, reads back $got"',
    "}",
    # kill -0 succeeds on a zombie; a process that exited is one until PID 1
    # reaps it, so look at its state.
    "alive() {",
    '    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1',
    "    ! grep -q '^[0-9]* (.*) Z' \"/proc/$1/stat\" 2>/dev/null",
    "}",
    "stop() {",
    '    pid=$(cat "$1" 2>/dev/null) || return 0',
    '    alive "$pid" || return 0',
    '    kill -TERM "$pid" 2>/dev/null',
    "    i=0",
    '    while alive "$pid" && [ $i -lt 150 ]; do sleep 0.1; i=$((i + 1)); done',
    '    if alive "$pid"; then',
    '        kill -KILL "$pid" 2>/dev/null',
    '        echo "kmlbench-kml: $2 did not stop within 15 s of SIGTERM: killed" >&2',
    "    fi",
    "}",
]


def _iosched_dir(block_device: str) -> str:
    """The scheduler's sysfs folder of ``block_device`` (``/dev/nullb0`` or ``nullb0``)."""
    dev = Path(block_device).name
    if not _NAME_RE.match(dev):
        raise DeviceError(f"bad block device {block_device!r}")
    return f"/sys/block/{dev}/queue/iosched"


def _kml_check(model: dict) -> tuple[str, str, str]:
    mode = model.get("mode")
    if mode not in KML_MODES:
        raise DeviceError(f"kml mode {mode!r}: one of {', '.join(KML_MODES)} (off needs no set-up)")
    for key, choices in _KML_CHOICES.items():
        value = model.get(key, choices[0] if key == "trainer" else None)
        if value is not None and value not in choices:
            raise DeviceError(f"kml {key} {value!r}: one of {', '.join(choices)}")
    return mode, model.get("ring_mode", "drop"), model.get("trainer", "none")


def kml_setup_script(
    model: dict,
    block_device: str,
    *,
    trainer_seconds: float,
    model_uploaded: bool = False,
    warm_uploaded: bool = False,
    trace_seconds: float | None = None,
) -> str:
    """Shell for the guest: put KML in the state ``model`` asks for, before fio.

    In the order that leaves no sample behind: load the model (if one was
    uploaded to ``GUEST_MODEL``), set the global ring and filter
    parameters, start the trainer (user space in the background, or the
    kernel thread), zero the statistics, and last switch the queue's
    ``kml_mode`` on. With ``trace_seconds`` a ``kmlctl trace`` takes the
    ring instead of a trainer (one consumer at a time). Exits non-zero
    with a ``kmlbench-kml:`` message when the kernel lacks KML.
    """
    mode, ring_mode, trainer = _kml_check(model)
    iosched = _iosched_dir(block_device)
    if trace_seconds is not None and trainer != "none":
        raise DeviceError("a trace takes the sample ring: no trainer at the same time")
    p = KML_PARAMS
    lines = [
        *_KML_PRELUDE,
        f'[ -d {p} ] || die "no {p}: this kernel has no KML (CONFIG_KML)"',
        f'[ -r {KML_STATS} ] || die "no {KML_STATS}: this kernel has no KML in mq-deadline '
        '(CONFIG_KML_IOSCHED) or debugfs is not mounted"',
        f'q="{iosched}"',
        '[ -e "$q/kml_mode" ] || die "no $q/kml_mode: mq-deadline without the KML hooks '
        '(or not the scheduler)"',
        f'[ -x {KMLCTL} ] || die "no {KMLCTL} in the guest image"',
    ]
    if model_uploaded:
        lines.append(
            f'{KMLCTL} load {GUEST_MODEL} || die "kmlctl load {model.get("model_file")} failed"'
        )
    lines += [
        f"setchoice {p}/ring_mode {shlex.quote(ring_mode)}",
        f"setchoice {p}/sample_filter {shlex.quote(model.get('sample_filter', 'all'))}",
        f"setnum {p}/decision_permille {int(model.get('decision_permille', 1000))}",
    ]
    if trainer == "kernel":
        lines += [
            f"setnum {p}/ktrainer_rate {int(model.get('rate', 0))}",
            f"setnum {p}/ktrainer_cpu_pct {int(model.get('cpu_pct', 100))}",
            f"setnum {p}/ktrainer_publish {int(model.get('publish_every', 512))}",
            f'echo 1 > {p}/ktrainer 2>/dev/null || die "cannot start the kernel trainer"',
        ]
    elif trainer == "user":
        args = [
            KMLCTL, "train", "--mode", ring_mode,
            "--rate", str(int(model.get("rate", 0))),
            "--cpu-pct", str(int(model.get("cpu_pct", 100))),
            "--publish-every", str(int(model.get("publish_every", 512))),
            "--seconds", f"{trainer_seconds:g}",
            "--save", GUEST_TRAINED, "--curve", GUEST_CURVE,
        ]  # fmt: skip
        if warm_uploaded:
            args += ["--warm", GUEST_WARM]
        lines += _background(args, GUEST_TRAINER_LOG, GUEST_TRAINER_PID, "kmlctl train")
    if trace_seconds is not None:
        args = [KMLCTL, "trace", GUEST_TRACE, "--seconds", f"{trace_seconds:g}"]
        lines += _background(args, GUEST_TRACER_LOG, GUEST_TRACER_PID, "kmlctl trace")
    lines += [
        f'echo reset > {KML_STATS} 2>/dev/null || die "cannot reset {KML_STATS}"',
        f'setchoice "$q/kml_mode" {mode}',
        f'echo "kmlbench-kml: kml_mode=$(cat "$q/kml_mode") trainer={trainer}"',
        f'for f in {p}/*; do echo "kmlbench-kml: ${{f##*/}}=$(cat "$f" 2>/dev/null)"; done',
    ]
    return "\n".join(lines) + "\n"


def _background(args: list[str], log: str, pidfile: str, what: str) -> list[str]:
    """Start ``args`` detached (own session, output to ``log``) and check it lives."""
    cmd = " ".join(shlex.quote(a) for a in args)
    return [
        f"setsid {cmd} </dev/null >{log} 2>&1 &",
        f"echo $! > {pidfile}",
        "sleep 0.3",
        f'alive "$(cat {pidfile})" || {{ cat {log} >&2; die "{what} exited at once"; }}',
    ]


# What the KML parameters were at boot, for guests that several cells share.
GUEST_KML_DEFAULTS = "/tmp/kmlbench-kml-defaults"


def kml_snapshot_script() -> str:
    """Shell for a shared guest right after boot: save KML's parameters as booted.

    ``kml_reset_script`` restores them between cells. A choice parameter
    that reads back as a list (``[block] drop``) is saved as its choice.
    Nothing to do on a kernel without KML.
    """
    lines = [
        *_KML_PRELUDE,
        f"[ -d {KML_PARAMS} ] || exit 0",
        f": > {GUEST_KML_DEFAULTS} || die 'cannot write {GUEST_KML_DEFAULTS}'",
        f"for f in {KML_PARAMS}/*; do",
        '    v=$(cat "$f") || die "cannot read $f"',
        '    case "$v" in *"["*) v=${v#*[}; v=${v%%]*};; esac',
        f'    echo "${{f##*/}}=$v" >> {GUEST_KML_DEFAULTS}',
        "done",
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def kml_reset_script(block_device: str) -> str:
    """Shell for a shared guest between two cells: KML back to how it booted.

    The previous cell's ``kml_stop_script`` has already stopped its trainer
    and tracer; this switches the queue to ``off``, stops the kernel
    trainer, unloads any model, drains the samples no one consumed from the
    ring, restores every parameter saved by
    ``kml_snapshot_script`` (read-only ones must still read the same),
    zeroes the statistics and removes the previous cell's files, so that a
    cell sees what a fresh boot would show it. Exits non-zero, naming what
    it could not undo, when that is not so.
    """
    q = _iosched_dir(block_device)
    files = (GUEST_MODEL, GUEST_WARM, GUEST_TRAINED, GUEST_CURVE, GUEST_TRAINER_LOG,
             GUEST_TRAINER_PID, GUEST_TRACE, GUEST_TRACER_LOG, GUEST_TRACER_PID)  # fmt: skip
    lines = [
        *_KML_PRELUDE,
        # no kml_mode is fine only on a kernel without KML in mq-deadline
        f"if [ -e {q}/kml_mode ]; then setchoice {q}/kml_mode off;",
        f'elif [ -e {KML_STATS} ]; then die "no {q}/kml_mode"; fi',
        f"for p in {GUEST_TRAINER_PID} {GUEST_TRACER_PID}; do",
        '    pid=$(cat "$p" 2>/dev/null) || continue',
        '    if alive "$pid"; then die "a kmlctl from the previous cell still runs (pid $pid)"; fi',
        "done",
        f"rm -f {' '.join(files)}",
        f"[ -d {KML_PARAMS} ] || exit 0",
        f'[ -r {GUEST_KML_DEFAULTS} ] || die "no {GUEST_KML_DEFAULTS}: not snapshotted"',
        f'echo 0 > {KML_PARAMS}/ktrainer 2>/dev/null || die "cannot stop ktrainer"',
        f"{KMLCTL} unload > /dev/null 2>&1 || true  # no model loaded is fine",
        # samples nobody consumed stay in the ring; a fresh boot's is empty.
        # A trace stops at its deadline even with records left: drain until
        # one pops nothing (the queue is off, nothing new arrives).
        "i=0",
        "while :; do",
        f"    {KMLCTL} trace - --seconds 0.2 > /dev/null 2>/tmp/kmlbench-drain.log"
        ' || die "cannot drain the sample ring: $(cat /tmp/kmlbench-drain.log)"',
        "    grep -q '^records 0$' /tmp/kmlbench-drain.log && break",
        "    i=$((i + 1))",
        '    [ $i -lt 20 ] || die "the sample ring does not drain"',
        "done",
        "while IFS='=' read -r name v; do",
        f"    f={KML_PARAMS}/$name",
        '    echo "$v" > "$f" 2>/dev/null && continue',
        '    got=$(cat "$f" 2>/dev/null)',
        '    case "$got" in "$v"|*"[$v]"*) ;; *) die "cannot restore $name=$v (reads $got)";; esac',
        f"done < {GUEST_KML_DEFAULTS}",
        f'echo reset > {KML_STATS} 2>/dev/null || die "cannot reset {KML_STATS}"',
        f'grep -q "^model_loaded 0$" {KML_STATS} || die "a model is still loaded"',
        f'echo "kmlbench-kml: reset: kml_mode $(cat {q}/kml_mode)"',
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def kml_stop_script(model: dict, *, trace: bool = False) -> str:
    """Shell for the guest after fio: stop the trainer (and tracer) so counters are final.

    SIGTERM makes ``kmlctl`` flush its curve, model and trace and exit; the
    kernel trainer is switched off through its parameter. The statistics
    are read afterwards, separately, so that ``ring_consumed`` is final.
    """
    _mode, _ring, trainer = _kml_check(model)
    lines = list(_KML_PRELUDE)
    if trainer == "user":
        lines.append(f'stop {GUEST_TRAINER_PID} "kmlctl train"')
    elif trainer == "kernel":
        lines.append(f'echo 0 > {KML_PARAMS}/ktrainer 2>/dev/null || die "cannot stop ktrainer"')
        lines.append(
            f'for f in {KML_PARAMS}/ktrainer*; do echo "${{f##*/}} $(cat "$f")"; done '
            f"> {GUEST_TRAINER_LOG}"
        )
    if trace:
        lines.append(f'stop {GUEST_TRACER_PID} "kmlctl trace"')
    lines.append("exit 0")
    return "\n".join(lines) + "\n"
