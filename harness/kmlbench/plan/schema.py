"""The matrix vocabulary, named once: every field's type, default and check.

What a matrix file may say (devices, schedulers and their tunables,
workloads, the KML model entry, the guest and its clock, adaptive repeats)
as :class:`Field` specifications, plus the choices other packages set up in
the guest (``kmlbench.cell``) or translate for the KML library
(``kmlbench.kml``). Only data and small checks live here: reading a file
against these specifications is :mod:`kmlbench.plan.matrix`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kmlbench.clock import CLOCKS, ICOUNT_SHIFT_MAX

AXES = ("kernel", "device", "scheduler", "workload", "model")
DEFAULT_VARIANT = "default"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TEMPLATE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# --------------------------------------------------------------------------
# Field specifications. Each field has a type, a default (or REQUIRED) and an
# optional check returning an error message. ``expand`` says whether a list
# given for this field in an axis entry means "one entry per element".

REQUIRED = object()
# No default: the kernel's own value applies and the field is left out of
# params, so that adding such a field re-keys no existing cell.
UNSET = object()
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Field:
    """One key of a matrix section: its kind, default and check."""

    kind: str  # "int", "number", "str", "bool", "bs", "strlist"
    default: Any = REQUIRED
    check: Check | None = None
    expand: bool = True


def _at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def _between(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"must be in {low}..{high}, got {v}"


def _in(*choices: int) -> Check:
    return lambda v: (
        None if v in choices else f"must be one of {', '.join(map(str, choices))}, got {v}"
    )


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _check_name(v: str) -> str | None:
    if NAME_RE.match(v):
        return None
    return f"{v!r} must be 1-64 of A-Z a-z 0-9 _ . - (used in file names)"


GUEST_FIELDS: dict[str, Field] = {
    "memory_mib": Field("int", 1024, _at_least(128)),
    # default: 1 under the virtual clock, 2 under realtime (see load_matrix)
    "cpus": Field("int", UNSET, _at_least(1)),
    "clock": Field("str", "virtual", _one_of(*CLOCKS)),
    "icount_shift": Field("int", 0, _between(0, ICOUNT_SHIFT_MAX)),
    "boot_timeout_s": Field("number", 120, _at_least(1)),
    "command_timeout_s": Field("number", 600, _at_least(1)),
    "silence_timeout_s": Field("number", 120, _at_least(1)),
    # Cells that differ only in their model entry (and repeat) run one after
    # another in one guest boot: between-boot noise then drops out of their
    # comparison (docs/matrix.md, "Shared boots").
    "share_boot": Field("bool", False),
    # Count the guest's instructions per kernel symbol with a QEMU plugin,
    # between a `sync` before and after fio (insn-profile.json per cell;
    # docs/matrix.md, "Instruction profiles"). Virtual clock, one vCPU.
    "insn_profile": Field("bool", False),
}

# Choices that kmlbench.cell sets up in the guest, named once; the checks of
# DEVICE_TYPES and MODEL_FIELDS below use them.
NULL_BLK_IRQMODES = ("none", "softirq", "timer")  # null_blk's irqmode 0, 1, 2
NULL_BLK_BLOCKSIZES = (512, 1024, 2048, 4096)
VIRTIO_CACHE_MODES = ("none", "directsync", "writethrough", "writeback", "unsafe")
# The kernel's ring_mode parameter (kml_dd_core.c); a mode's index is its
# enum kml_ring_mode value (kml.h: KML_RING_BLOCK = 0, KML_RING_DROP = 1).
RING_MODES = ("block", "drop")
RING_MODE_CODES = {mode: code for code, mode in enumerate(RING_MODES)}
# The same modes as the Python binding's Ring API names them (kmlbench.kml.lib).
RING_MODE_API_NAMES = {"block": "blocking", "drop": "dropping"}
SAMPLE_FILTERS = ("all", "uncertain")
# The kernel's policy parameter (kml_iosched.h, enum kml_dd_policy): what active
# mode does with the predictions; a policy's index is its enum value.
POLICIES = ("expire", "cost")
POLICY_DEFAULT = POLICIES[0]
# The kernel's bound on observe_every (kml_dd.h, KML_DD_OBSERVE_MAX_EVERY).
OBSERVE_MAX_EVERY = 1024
TRAINERS = ("none", "user", "kernel")
# A model's dtype as kmlbench and kmlctl name it (kml.h, enum kml_dtype:
# KML_F32, KML_Q16): what `kmlbench train --dtype` makes and what a trainer
# publishes (`model.publish_dtype`).
MODEL_DTYPES = ("float32", "fixed")
MODEL_DTYPE_DEFAULT = MODEL_DTYPES[0]

# null_blk's service-time models (kernel/patches/0003): the configfs values
# of each, from published measurements (docs/matrix.md, "Service-time
# models"). Times in ns, positions in 512-byte sectors.
NULL_BLK_SERVICE_MODELS: dict[str, dict[str, int]] = {
    # HP 97560 as modelled by Ruemmler and Wilkes, "An introduction to disk
    # drive modeling", IEEE Computer 27(3), 1994: 4002 rpm, 72 sectors per
    # track, 19 tracks per cylinder; seeks of d cylinders take
    # 3.24 + 0.400 sqrt(d) ms below 383 cylinders, 8.00 + 0.008 d ms above.
    "rotational": {
        "svc_model": 1,
        "svc_rev_ns": 14_992_504,  # 60 s / 4002
        "svc_track_sectors": 72,
        "svc_cyl_sectors": 72 * 19,
        "svc_seek_boundary": 383,
        "svc_seek_a_ns": 3_240_000,
        "svc_seek_b_ns": 400_000,
        "svc_seek_c_ns": 8_000_000,
        "svc_seek_e_ns": 8_000,
    },
    # The flash of Agrawal et al., "Design Tradeoffs for SSD Performance",
    # USENIX ATC 2008, Table 2: page read 25 us, page program 200 us, 4 KiB
    # page over the serial bus 100 us (25 us per KiB); 8 channels striped
    # by 4 KiB page.
    "flash": {
        "svc_model": 2,
        "svc_channels": 8,
        "svc_stripe_sectors": 8,
        "svc_read_ns": 25_000,
        "svc_write_ns": 200_000,
        "svc_xfer_ns_kib": 25_000,
    },
}
NULL_BLK_SERVICES = ("fixed", *NULL_BLK_SERVICE_MODELS)
# Policy cost's view of a device (model.geometry; kml_dd_core.c's
# parameters): per service model that has one, each KML parameter and the
# model's value it is told. A disk's geometry, or a flash device's channels.
GEOMETRY_PARAMS: dict[str, dict[str, str]] = {
    "rotational": {
        "cost_rev_ns": "svc_rev_ns",
        "cost_track_sectors": "svc_track_sectors",
        "cost_cyl_sectors": "svc_cyl_sectors",
    },
    "flash": {"cost_channels": "svc_channels", "cost_stripe_sectors": "svc_stripe_sectors"},
}
GEOMETRY_SERVICES = tuple(GEOMETRY_PARAMS)
# A disk's seek curve (model.seek_curve, beside model.geometry): each KML
# parameter and the rotational model's value it is told. Untold (all 0),
# policy cost learns a seek's time per length.
SEEK_CURVE_SERVICE = "rotational"
SEEK_CURVE_PARAMS = {
    f"cost_seek_{k}": f"svc_seek_{k}" for k in ("a_ns", "b_ns", "boundary", "c_ns", "e_ns")
}
ALL_GEOMETRY_PARAMS = (*(p for ps in GEOMETRY_PARAMS.values() for p in ps), *SEEK_CURVE_PARAMS)


def device_geometry(
    device: Mapping[str, Any] | None, *, seek_curve: bool = False
) -> dict[str, int]:
    """KML's geometry parameters for ``device``: its service model's (with
    ``seek_curve``, a disk's seek curve too), the others 0 (unknown)."""
    out = dict.fromkeys(ALL_GEOMETRY_PARAMS, 0)
    service = None if device is None else device.get("service")
    if service in GEOMETRY_PARAMS:
        svc = NULL_BLK_SERVICE_MODELS[service]
        out.update({param: svc[attr] for param, attr in GEOMETRY_PARAMS[service].items()})
        if seek_curve and service == SEEK_CURVE_SERVICE:
            out.update({param: svc[attr] for param, attr in SEEK_CURVE_PARAMS.items()})
    return out


# QEMU's block throttling of a virtio disk (``-drive throttling.<name>=N``):
# requests or bytes per second, in total or per direction, and the size one
# request counts as (iops-size). Its timers run on the host's clock, not the
# guest's, so a throttled disk is for realtime cells only (plan.matrix).
VIRTIO_THROTTLE_KEYS: dict[str, str] = {
    f"throttle_{name.replace('-', '_')}": f"throttling.{name}"
    for name in (
        "iops-total", "iops-read", "iops-write", "bps-total", "bps-read", "bps-write",
        "iops-size",
    )
}  # fmt: skip

# QEMU refuses a throttling limit above this (THROTTLE_VALUE_MAX).
THROTTLE_MAX = 10**15

# Per device type, the fields besides ``type``. Defaults for null_blk are
# the module's own except irqmode: "timer" is what makes completion_nsec a
# real completion latency. ``service``, ``mbps`` and ``memory_backed`` are
# recorded only when given (absent: the module's fixed completion time, no
# bandwidth cap, no backing memory), so older cells keep their ids.
DEVICE_TYPES: dict[str, dict[str, Field]] = {
    "null_blk": {
        "completion_nsec": Field("int", 10000, _at_least(0)),
        "hw_queue_depth": Field("int", 64, _between(1, 4096)),
        "submit_queues": Field("int", 1, _at_least(1)),
        "size_mib": Field("int", 1024, _at_least(1)),
        "irqmode": Field("str", "timer", _one_of(*NULL_BLK_IRQMODES)),
        "blocksize": Field("int", 4096, _in(*NULL_BLK_BLOCKSIZES)),
        # how long a request takes: completion_nsec, or a device model
        "service": Field("str", UNSET, _one_of(*NULL_BLK_SERVICES)),
        # null_blk's own bandwidth cap, MiB/s (it caps at 40960)
        "mbps": Field("int", UNSET, _between(0, 40960)),
        "memory_backed": Field("bool", UNSET),
    },
    "virtio": {
        "size_mib": Field("int", 1024, _at_least(1)),
        "cache": Field("str", "none", _one_of(*VIRTIO_CACHE_MODES)),
        "num_queues": Field("int", 1, _at_least(1)),
        # QEMU's block throttling (VIRTIO_THROTTLE_KEYS); realtime clock only
        **{key: Field("int", UNSET, _between(1, THROTTLE_MAX)) for key in VIRTIO_THROTTLE_KEYS},
    },
}
DEVICE_SLUGS = {"null_blk": "nullb", "virtio": "virtio"}

# Per scheduler, its sysfs tunables (queue/iosched/<name>) and the kernel's
# defaults, so that a cell records the values it really ran with.
SCHEDULERS: dict[str, dict[str, Field]] = {
    "mq-deadline": {
        "read_expire": Field("int", 500, _at_least(0)),
        "write_expire": Field("int", 5000, _at_least(0)),
        "fifo_batch": Field("int", 16, _at_least(1)),
        "writes_starved": Field("int", 2, _at_least(0)),
        "front_merges": Field("int", 1, _between(0, 1)),
    },
    "none": {},
    "kyber": {},
    "bfq": {},
}
# Queue settings every scheduler takes (/sys/block/<dev>/queue/<name>),
# written after the scheduler (switching scheduler resets them). Recorded
# only when given: absent means the kernel's default.
QUEUE_FIELDS: dict[str, Field] = {
    # requests the scheduler may hold; the kernel's default is twice the
    # hardware queue depth (at most 128), too few to queue past a deadline
    # on a slow device with a shallow hardware queue; at most the kernel's
    # MAX_SCHED_RQ (16 x 128), which refuses more under any scheduler
    "nr_requests": Field("int", UNSET, _between(4, 2048)),
}
for _fields in SCHEDULERS.values():
    _fields.update(QUEUE_FIELDS)
SCHEDULER_SLUGS = {"mq-deadline": "mqdl", "none": "none", "kyber": "kyber", "bfq": "bfq"}

# The directions a latency target can be set for (``workload.<d>_target_ms``).
LATE_DIRECTIONS = ("read", "write")
WORKLOAD_FIELDS: dict[str, Field] = {
    "template": Field("str", REQUIRED, lambda v: None if TEMPLATE_RE.match(v) else "bad name"),
    "bs": Field("bs", "4k"),
    "iodepth": Field("int", 16, _between(1, 4096)),
    "numjobs": Field("int", 1, _between(1, 256)),
    "rwmix_read": Field("int", 70, _between(0, 100)),
    "runtime_s": Field("int", 10, _at_least(1)),
    "ramp_s": Field("int", 1, _at_least(0)),
    "size_mib": Field("int", 256, _at_least(1)),
    "thinktime_us": Field("int", 0, _at_least(0)),
    "thinktime_blocks": Field("int", 1, _at_least(1)),
    # A latency every scheduler's cell is held to (data/fio.py, late_metrics):
    # the share of requests over it is ``late_frac``. Unset, nothing is counted
    # and nothing recorded, so cells without it keep their ids.
    **{f"{d}_target_ms": Field("int", UNSET, _between(1, 3_600_000)) for d in LATE_DIRECTIONS},
}
# A template whose point is a field gets a default that makes it so.
TEMPLATE_DEFAULTS: dict[str, dict[str, Any]] = {
    "bursty": {"thinktime_us": 20000, "thinktime_blocks": 64},
}

# ``axes.model``: KML inside mq-deadline (docs/kml-iosched.md). The kernel's
# module parameters are global, so every cell sets all of them explicitly:
# the defaults below are what a cell records and what it really ran with.
MODEL_MODES = ("off", "observe", "active")
MODEL_FIELDS: dict[str, Field] = {
    "mode": Field("str", REQUIRED, _one_of(*MODEL_MODES)),
    "trainer": Field("str", "none", _one_of(*TRAINERS)),
    # drop, not block: without a consumer a blocking ring makes every insert spin
    "ring_mode": Field("str", "drop", _one_of(*RING_MODES)),
    "sample_filter": Field("str", "all", _one_of(*SAMPLE_FILTERS)),
    # miss when predicted issue > deadline * N / 1000 (kmlbench train prints N)
    "decision_permille": Field("int", 1000, _between(1, 64000)),
    # active mode: expire (a FIFO head predicted to miss is expired) or cost
    # (least predicted service time less (age + lateness) >> cost_age_shift)
    "policy": Field("str", POLICY_DEFAULT, _one_of(*POLICIES)),
    "cost_age_shift": Field("int", 6, _between(0, 40)),
    # policy cost: tell it the device's geometry from its service model: a
    # disk's revolution, track and cylinder sizes (it prices the platter's
    # turn as well as the seek), or a flash device's channels and stripe (it
    # prices the wait for a request's channel)
    "geometry": Field("bool", False),
    # ... and, with a rotational device, its seek curve (SEEK_CURVE_PARAMS),
    # which it otherwise learns per seek length
    "seek_curve": Field("bool", False),
    # policy cost with a disk's geometry: a request's credit at its deadline,
    # in thousandths of a revolution (kml_dd.h, KML_DD_COST_CREDIT_PERMILLE)
    "cost_credit_permille": Field("int", 1000, _between(0, 8000)),
    # ... and past its deadline, how fast the credit grows on, in thousandths
    # of its rate before (0: slow ageing; kml_dd.h, KML_DD_COST_LATE_PERMILLE);
    # with a flash device's channels, the same from the plain age credit
    "cost_late_permille": Field("int", 0, _between(0, 8000)),
    # ... as if it were due within this many ms, where that is sooner than its
    # deadline (0: its deadline; kml_dd.h, KML_DD_COST_MAX_HORIZON_MS)
    "cost_horizon_ms": Field("int", 0, _between(0, 60000)),
    # ... with a flash device's channels, how much of a request's own time on
    # its channel counts in its cost, in thousandths (1000: all, reads first;
    # 0: the wait for the channel alone; kml_dd.h, KML_DD_COST_SVC_PERMILLE)
    "cost_svc_permille": Field("int", 1000, _between(0, 1000)),
    # ... all three only while under this many in 1000 requests are dispatched
    # late (0: always; kml_dd.h, KML_DD_COST_MISSED_SHIFT)
    "cost_miss_budget_permille": Field("int", 0, _between(0, 1000)),
    # ... the candidates: each direction's oldest requests, this many
    # thousandths as many as the queue has in flight, rounded up (0: the
    # default set, those near the head on a disk, the 16 oldest on flash;
    # kml_dd.h, KML_DD_COST_MAX_WINDOW_PERMILLE)
    "cost_window_permille": Field("int", 0, _between(0, 1000)),
    # ... a request that has waited more than this many thousandths of its
    # queue's mean wait goes first, the oldest first (0: no cap; kml_dd.h,
    # KML_DD_COST_MAX_WAIT_CAP_PERMILLE)
    "cost_wait_cap_permille": Field("int", 0, _between(0, 100000)),
    # ... or, past the cap, this many thousandths of a ns of credit for each
    # ns past it, instead of going first (0: the hard cap; kml_dd.h,
    # KML_DD_COST_MAX_WAIT_RAMP_PERMILLE)
    "cost_wait_ramp_permille": Field("int", 0, _between(0, 8000)),
    # ... and past this many thousandths of the mean wait, first whatever
    # the ramp's credit (0: no bound; kml_dd.h,
    # KML_DD_COST_MAX_WAIT_BOUND_PERMILLE)
    "cost_wait_bound_permille": Field("int", 0, _between(0, 100000)),
    # observe mode: watch one window of 1024 requests in this many (1: all;
    # the others go untracked; kml_dd.h, KML_DD_OBSERVE_WINDOW)
    "observe_every": Field("int", 1, _between(1, OBSERVE_MAX_EVERY)),
    # active mode: predict a request when a dispatch decision first reads
    # the prediction, from its features at insert, not every one at insert
    # (kml_iosched.c, __kml_dd_predict_lazy)
    "lazy": Field("bool", False),
    # observe and active: make samples while no consumer (a trainer, a
    # tracer) holds the ring; false makes none then, so that a cell nobody
    # trains from pays nothing for the ring (kml_dd_core.c,
    # sample_unclaimed)
    "sample_unclaimed": Field("bool", True),
    # active mode: the balanced accuracy (permille) a skill window must beat
    # for the model's predicted misses to steer (the step-aside rule,
    # kml_dd_core.c); 500 is the baseline's, and no window beats 1000: the
    # model never steers (a shadow, its predictions made and judged only)
    "skill_min_permille": Field("int", 500, _between(0, 1000)),
    # observe and active with a model_file and no trainer: first observe the
    # cell's own load for this many seconds, then set the model's threshold
    # from its predictions there (kmlctl calibrate on the kernel's score
    # histograms, docs/kml-iosched.md; 0: the threshold of decision_permille)
    "calibrate_s": Field("int", 0, _between(0, 3600)),
    "model_file": Field("str", None),
    "rate": Field("int", 0, _at_least(0)),
    "cpu_pct": Field("int", 100, _between(1, 100)),
    "publish_every": Field("int", 512, _at_least(1)),
    # the dtype a trainer publishes: fixed sends a Q16.16 copy of the float
    # model it trains (kmlctl --publish-dtype, the kernel's
    # ktrainer_publish_q16, whose fresh model is then 8 units wide, so that
    # mq-deadline compiles it; kml_ktrain.c)
    "publish_dtype": Field("str", MODEL_DTYPE_DEFAULT, _one_of(*MODEL_DTYPES)),
    "warm_start": Field("str", None),
}
# Only meaningful with a trainer: not recorded for ``trainer: none``.
TRAINER_FIELDS = ("rate", "cpu_pct", "publish_every", "publish_dtype", "warm_start")
# Only meaningful in active mode (what the predictions steer), and only
# under policy cost (the one non-default policy; the shift is its knob):
# not recorded otherwise.
ACTIVE_FIELDS = (
    "policy",
    "cost_age_shift",
    "geometry",
    "seek_curve",
    "cost_credit_permille",
    "cost_late_permille",
    "cost_horizon_ms",
    "cost_svc_permille",
    "cost_miss_budget_permille",
    "cost_window_permille",
    "cost_wait_cap_permille",
    "cost_wait_ramp_permille",
    "cost_wait_bound_permille",
)
# Policy cost's numeric parameters a matrix sets (kml.cost_*), which the
# set-up writes in every cell, as they are global; the device's geometry
# (ALL_GEOMETRY_PARAMS) is told apart.
COST_PARAMS = tuple(name for name in ACTIVE_FIELDS if name.startswith("cost_"))
# Only meaningful with a geometry: not recorded without one.
GEOMETRY_FIELDS = (
    "geometry",
    "seek_curve",
    "cost_credit_permille",
    "cost_late_permille",
    "cost_horizon_ms",
    "cost_svc_permille",
    "cost_miss_budget_permille",
    "cost_window_permille",
)
# Recorded only when not their default (added after cells were recorded
# without them: old ids stay).
SPARSE_FIELDS = (
    "seek_curve",
    "cost_late_permille",
    "cost_horizon_ms",
    "cost_svc_permille",
    "cost_miss_budget_permille",
    "cost_window_permille",
    "cost_wait_cap_permille",
    "cost_wait_ramp_permille",
    "cost_wait_bound_permille",
)
# Only meaningful in observe mode, and recorded only when not every request
# is watched.
OBSERVE_FIELDS = ("observe_every",)
# Only meaningful in active mode, and recorded only when set.
LAZY_FIELDS = ("lazy",)
# Only meaningful in active mode (observe steers nothing), and recorded only
# when not their default.
STEER_FIELDS = ("skill_min_permille",)
# Only meaningful with KML on (observe or active), and recorded only when
# not their default.
KML_ON_FIELDS = ("sample_unclaimed", "publish_dtype", "calibrate_s")
# The model keys recorded only when not their default, and the modes whose
# cells record them (kmlbench.plan.matrix): a cell of such a mode without
# the key has its default.
SPARSE_MODEL_MODES: dict[str, tuple[str, ...]] = {
    **{
        name: ("active",)
        for name in (
            *ACTIVE_FIELDS,
            *GEOMETRY_FIELDS,
            *SPARSE_FIELDS,
            *LAZY_FIELDS,
            *STEER_FIELDS,
        )
    },
    **{name: ("observe",) for name in OBSERVE_FIELDS},
    **{name: ("observe", "active") for name in KML_ON_FIELDS},
}
MODEL_FILE_FIELDS = ("model_file", "warm_start")
MODEL_SLUGS = {"off": "kmloff", "observe": "kmlobs", "active": "kmlact"}
# The scheduler KML lives in; other schedulers' cells run with the model off.
MODEL_SCHEDULER = "mq-deadline"
MODEL_OFF: dict[str, Any] = {"mode": "off"}

KERNEL_VARIANT_FIELDS: dict[str, Field] = {
    "name": Field("str", REQUIRED, _check_name, expand=False),
    "fragments": Field("strlist", [], expand=False),
}

# The top level's own scalars.
HEAD_FIELDS: dict[str, Field] = {
    "name": Field("str", REQUIRED, _check_name),
    "description": Field("str", ""),
    "seed": Field("int", 0),
    "repeat": Field("int", 1, _at_least(1)),
}
TOP_KEYS = (
    "name",
    "description",
    "seed",
    "repeat",
    "adaptive_repeat",
    "kernel",
    "guest",
    "axes",
    "exclude",
)

# ``adaptive_repeat``: after the planned repeats, keep adding repeats of a
# configuration until the 95% interval of ``metric``'s mean is within
# ``rel_halfwidth`` of it, or ``max_repeat`` cells of it have run.
ADAPTIVE_METRIC_RE = re.compile(r"^(read_|write_)?(iops|bw_kib_s|c?lat_(mean|p50|p99|p999)_us)$")
ADAPTIVE_FIELDS: dict[str, Field] = {
    "metric": Field(
        "str",
        "clat_p99_us",
        lambda v: (
            None
            if ADAPTIVE_METRIC_RE.match(v)
            else f"{v!r} is not a cell metric (e.g. clat_p99_us, iops, read_clat_mean_us)"
        ),
    ),
    "rel_halfwidth": Field(
        "number",
        0.05,
        lambda v: None if 0 < v < 1 else f"must be between 0 and 1 (0.05 is ±5%), got {v}",
    ),
    "max_repeat": Field("int", 10, _at_least(1)),
}
