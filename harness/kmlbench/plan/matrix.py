"""Load, validate and expand a matrix file into an ordered list of cells.

A matrix file (see ``docs/matrix.md``) names the axes of an experiment:
kernel variants, block devices, I/O schedulers, fio workloads and KML
models. This module reads each section against the vocabulary of
:mod:`kmlbench.plan.schema` (through :mod:`kmlbench.plan.source`, which
locates every error as ``FILE:LINE: KEY: message``), expands list-valued
fields into one entry per value, applies ``exclude`` and hands the
configurations to :mod:`kmlbench.plan.cells` for ids and the run order.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmlbench import paths
from kmlbench.clock import VIRTUAL_CPUS_REASON
from kmlbench.plan import fio_job
from kmlbench.plan import kernel as plan_kernel
from kmlbench.plan.cells import Cell, canonical_json, ordered_cells
from kmlbench.plan.exclude import excluded, exclusions
from kmlbench.plan.kernel import fragments, kernel_axis, kernel_source, portable
from kmlbench.plan.model_axis import model_axis
from kmlbench.plan.schema import (
    ADAPTIVE_FIELDS,
    AXES,
    DEVICE_TYPES,
    GEOMETRY_SERVICES,
    GUEST_FIELDS,
    HEAD_FIELDS,
    MODEL_OFF,
    MODEL_SCHEDULER,
    SCHEDULERS,
    SEEK_CURVE_SERVICE,
    TEMPLATE_DEFAULTS,
    TOP_KEYS,
    VIRTIO_THROTTLE_KEYS,
    WORKLOAD_FIELDS,
    Field,
    device_geometry,
)
from kmlbench.plan.source import (
    Source,
    expand,
    load_yaml,
    mapping,
    reject_unknown,
    resolve_fields,
    typed,
)


@dataclass(frozen=True)
class Matrix:
    """A validated matrix file and its cells in run order."""

    path: Path
    name: str
    seed: int
    repeat: int
    kernel_source: str | dict[str, Any]
    kernel_variants: dict[str, list[Path]]
    guest: dict[str, Any]
    raw: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    adaptive: dict[str, Any] | None = None  # resolved ADAPTIVE_FIELDS, or None when off


# --------------------------------------------------------------------------
# Sections.


def _typed_entries(
    src: Source,
    entries: list[Any],
    key: str,
    selector: str,
    schemas: dict[str, dict[str, Field]],
    noun: str,
    unknown: Callable[[str], str],
    foreign: Callable[[str, str], str],
) -> list[tuple[dict[str, Any], str]]:
    """Entries of an axis whose ``selector`` (device ``type``, scheduler
    ``name``) picks the schema of the entry's other fields.

    ``unknown(value)`` words the error for a selector value with no schema,
    ``foreign(field, value)`` the one for a field that schema lacks.
    """
    all_fields = {selector} | {f for fields in schemas.values() for f in fields}
    out = []
    for i, raw in enumerate(entries):
        ekey = f"{key}[{i}]"
        entry = mapping(src, ekey, raw)
        reject_unknown(src, ekey, entry, all_fields, noun)
        if selector not in entry:
            raise src.error(ekey, f"missing required key '{selector}' ({', '.join(schemas)})")
        for values, keypaths in expand(src, ekey, entry, set()):
            chosen = typed(src, keypaths[selector], values[selector], Field("str"))
            if chosen not in schemas:
                raise src.error(
                    keypaths[selector], f"{unknown(chosen)} (known: {', '.join(schemas)})"
                )
            schema = schemas[chosen]
            for name in values:
                if name != selector and name not in schema:
                    raise src.error(keypaths[name], foreign(name, chosen))
            out.append(
                (
                    {selector: chosen, **resolve_fields(src, ekey, values, keypaths, schema)},
                    ekey,
                )
            )
    return out


def _device_entries(src: Source, entries: list[Any], key: str) -> list[tuple[dict[str, Any], str]]:
    out = _typed_entries(
        src,
        entries,
        key,
        "type",
        DEVICE_TYPES,
        "a device",
        lambda dtype: f"unknown device type {dtype!r}",
        lambda name, dtype: f"{name!r} does not apply to device type {dtype!r}",
    )
    for device, ekey in out:
        # a service-time model sets the completion timer: only timer mode has one
        if device.get("service", "fixed") != "fixed" and device.get("irqmode") != "timer":
            raise src.error(
                f"{ekey}.service",
                f"service {device['service']!r} needs irqmode: timer, not {device['irqmode']!r}",
            )
        # QEMU refuses a total limit beside a per-direction one of its kind
        for kind in ("iops", "bps"):
            both = [
                f"throttle_{kind}_{d}"
                for d in ("read", "write")
                if f"throttle_{kind}_{d}" in device
            ]
            if both and f"throttle_{kind}_total" in device:
                raise src.error(
                    f"{ekey}.throttle_{kind}_total",
                    f"cannot be given with {' or '.join(both)} (QEMU: a total or per direction)",
                )
        if "throttle_iops_size" in device and not any(
            f"throttle_iops_{d}" in device for d in ("total", "read", "write")
        ):
            raise src.error(f"{ekey}.throttle_iops_size", "needs an iops limit to apply to")
    return out


def _scheduler_entries(
    src: Source, entries: list[Any], key: str
) -> list[tuple[dict[str, Any], str]]:
    return _typed_entries(
        src,
        entries,
        key,
        "name",
        SCHEDULERS,
        "a scheduler",
        lambda name: f"unknown scheduler {name!r}",
        lambda tunable, name: f"scheduler {name!r} has no tunable {tunable!r}",
    )


def _workload_entries(
    src: Source, entries: list[Any], key: str, templates_dir: Path
) -> list[tuple[dict[str, Any], str, dict[str, str]]]:
    out = []
    for i, raw in enumerate(entries):
        ekey = f"{key}[{i}]"
        entry = mapping(src, ekey, raw)
        reject_unknown(src, ekey, entry, WORKLOAD_FIELDS, "a workload")
        for values, keypaths in expand(src, ekey, entry, set()):
            template = values.get("template")
            defaults = TEMPLATE_DEFAULTS.get(template, {}) if isinstance(template, str) else {}
            workload = resolve_fields(src, ekey, values, keypaths, WORKLOAD_FIELDS, defaults)
            tkey = keypaths.get("template", ekey)
            tpath = templates_dir / f"{workload['template']}.fio"
            if not tpath.is_file():
                known = sorted(p.stem for p in templates_dir.glob("*.fio"))
                raise src.error(
                    tkey,
                    f"unknown template {workload['template']!r}: no {tpath} "
                    f"(known: {', '.join(known)})",
                )
            try:
                fio_job.render_job(workload, "/dev/null", templates_dir=templates_dir)
            except fio_job.FioError as e:
                raise src.error(tkey, str(e)) from e
            out.append((workload, ekey, keypaths))
    return out


# --------------------------------------------------------------------------


def load_matrix(
    path: Path | str, *, base_dir: Path | None = None, templates_dir: Path | None = None
) -> Matrix:
    """Load, validate and expand a matrix file.

    ``base_dir`` is where relative fragment and source paths are looked up
    first (default: the matrix file's folder); a resumed run passes the
    original folder when it loads the copy kept in the run folder.
    ``templates_dir`` defaults to ``workloads/templates``.
    """
    path = Path(path)
    base_dir = Path(base_dir) if base_dir else path.resolve().parent
    templates_dir = Path(templates_dir) if templates_dir else paths.TEMPLATES_DIR
    data, src = load_yaml(path)
    top = mapping(src, "", data)
    reject_unknown(src, "", top, TOP_KEYS, "the matrix")

    head = resolve_fields(
        src,
        "",
        {k: top[k] for k in ("name", "seed", "repeat", "description") if k in top},
        {},
        HEAD_FIELDS,
    )

    kernel = mapping(src, "kernel", top.get("kernel") or {})
    reject_unknown(src, "kernel", kernel, ("source", "fragments"), "kernel")
    source, source_for_params = kernel_source(
        src, "kernel.source", kernel.get("source", "debian"), base_dir
    )
    common = fragments(src, "kernel.fragments", kernel.get("fragments", []), base_dir)

    adaptive = None
    if "adaptive_repeat" in top:
        adaptive_raw = mapping(src, "adaptive_repeat", top["adaptive_repeat"] or {})
        reject_unknown(src, "adaptive_repeat", adaptive_raw, ADAPTIVE_FIELDS, "adaptive_repeat")
        adaptive = resolve_fields(src, "adaptive_repeat", adaptive_raw, {}, ADAPTIVE_FIELDS)
        if adaptive["max_repeat"] < head["repeat"]:
            raise src.error(
                "adaptive_repeat.max_repeat",
                f"must be >= repeat ({head['repeat']}), got {adaptive['max_repeat']}",
            )

    guest_raw = mapping(src, "guest", top.get("guest") or {})
    reject_unknown(src, "guest", guest_raw, GUEST_FIELDS, "guest")
    guest = resolve_fields(src, "guest", guest_raw, {}, GUEST_FIELDS)
    virtual = guest["clock"] == "virtual"
    if "cpus" not in guest:
        guest["cpus"] = 1 if virtual else 2
    elif virtual and guest["cpus"] > 1:
        raise src.error("guest.cpus", VIRTUAL_CPUS_REASON)
    if "icount_shift" in guest_raw and not virtual:
        raise src.error("guest.icount_shift", "only means something with guest.clock: virtual")
    if guest["insn_profile"] and not virtual:
        raise src.error(
            "guest.insn_profile",
            f"needs guest.clock: virtual (counts under -icount), not {guest['clock']!r}",
        )
    if guest["insn_profile"] and guest["cpus"] > 1:
        raise src.error(
            "guest.insn_profile", f"counts one vCPU: needs guest.cpus: 1, not {guest['cpus']}"
        )

    if "axes" not in top:
        raise src.error("", "missing required key 'axes'")
    axes = mapping(src, "axes", top["axes"])
    reject_unknown(src, "axes", axes, AXES, "axes")
    for axis in ("device", "scheduler", "workload"):
        if axis in axes and (not isinstance(axes[axis], list) or not axes[axis]):
            raise src.error(f"axes.{axis}", "must be a non-empty list of mappings")
    if "workload" not in axes:
        raise src.error("axes", "missing required key 'workload'")

    variants = kernel_axis(src, axes.get("kernel"), base_dir, common)
    devices = _device_entries(src, axes.get("device") or [{"type": "null_blk"}], "axes.device")
    schedulers = _scheduler_entries(
        src, axes.get("scheduler") or [{"name": "mq-deadline"}], "axes.scheduler"
    )
    workloads = _workload_entries(src, axes["workload"], "axes.workload", templates_dir)
    float_models: set[str] = set()
    models = model_axis(src, axes.get("model"), "axes.model", base_dir, float_models)
    rules = exclusions(src, top.get("exclude"))

    # Every workload must fit its device and its time budget.
    for workload, wkey, keypaths in workloads:
        budget = workload["runtime_s"] + workload["ramp_s"]
        if budget >= guest["command_timeout_s"]:
            raise src.error(
                keypaths.get("runtime_s", wkey),
                f"runtime_s + ramp_s = {budget}s does not fit guest.command_timeout_s "
                f"{guest['command_timeout_s']}s",
            )
        for device, dkey in devices:
            if workload["size_mib"] > device["size_mib"]:
                raise src.error(
                    keypaths.get("size_mib", wkey),
                    f"size_mib {workload['size_mib']} exceeds the {device['size_mib']} MiB "
                    f"of device {dkey}",
                )

    # QEMU throttles a disk on the host's clock: under the virtual one the
    # guest would see a limit that depends on how fast the host emulates it
    for device, dkey in devices:
        throttled = [k for k in VIRTIO_THROTTLE_KEYS if k in device]
        if throttled and virtual:
            raise src.error(
                f"{dkey}.{throttled[0]}",
                "QEMU's throttling runs on the host's clock: needs guest.clock: realtime",
            )

    used_rules: set[str] = set()
    by_variant: dict[str, list[dict[str, Any]]] = {}
    seen: dict[str, str] = {}
    for vname, frags in variants.items():
        left_out = plan_kernel.options_left_out(frags)
        kparams = {
            "name": vname,
            "source": copy.deepcopy(source_for_params),
            "fragments": [portable(f) for f in frags],
        }
        configs: list[dict[str, Any]] = []
        collapsed: set[str] = set()
        model_entries: list[tuple[dict[str, Any] | None, str]] = [(None, "")]
        if models:
            model_entries = list(models)
        for (device, dkey), (sched, skey), (workload, wkey, _), (model, mkey) in itertools.product(
            devices, schedulers, workloads, model_entries
        ):
            params = copy.deepcopy(
                {"kernel": kparams, "device": device, "scheduler": sched, "workload": workload}
            )
            if model is not None:
                # KML lives in mq-deadline: other schedulers run every model
                # entry as one cell with the model off.
                params["model"] = (
                    copy.deepcopy(model) if sched["name"] == MODEL_SCHEDULER else dict(MODEL_OFF)
                )
            hit = [rkey for rkey, rule in rules if excluded(params, rule)]
            if hit:
                used_rules.update(hit)
                continue
            if params.get("model", {}).get("geometry") and not any(
                device_geometry(device).values()
            ):
                raise src.error(
                    f"{mkey}.geometry",
                    f"needs a device with service: {' or '.join(GEOMETRY_SERVICES)} (the "
                    f"geometry it is told), not {dkey}: exclude that device for this entry",
                )
            if params.get("model", {}).get("seek_curve") and (
                device.get("service") != SEEK_CURVE_SERVICE
            ):
                raise src.error(
                    f"{mkey}.seek_curve",
                    f"needs a device with service: {SEEK_CURVE_SERVICE} (the seek curve "
                    f"it is told), not {dkey}: exclude that device for this entry",
                )
            plan_kernel.check_kml_parts(src, mkey, vname, left_out, params, float_models)
            h = canonical_json(params)
            if h in collapsed:
                continue
            if model is not None and sched["name"] != MODEL_SCHEDULER:
                collapsed.add(h)
            if h in seen:
                raise src.error(
                    wkey,
                    f"configuration repeats one from {seen[h]} (same params after defaults); "
                    "remove one",
                )
            seen[h] = " x ".join(k for k in (dkey, skey, wkey, mkey) if k)
            configs.append(params)
        by_variant[vname] = configs

    for rkey, _ in rules:
        if rkey not in used_rules:
            raise src.error(rkey, "excludes no cell: check the values (or remove the entry)")

    cells = ordered_cells(by_variant, head["repeat"], head["seed"])
    ids: set[str] = set()
    for cell in cells:
        if cell.id in ids:  # two configs sharing 8 hex digits: vanishingly rare, never silent
            raise src.error("axes", f"two configurations share the cell id {cell.id}")
        ids.add(cell.id)
    if not cells:
        raise src.error("exclude", "every cell is excluded")

    return Matrix(
        path=path.resolve(),
        name=head["name"],
        seed=head["seed"],
        repeat=head["repeat"],
        kernel_source=source,
        kernel_variants=variants,
        guest=guest,
        raw=data,
        cells=cells,
        adaptive=adaptive,
    )
