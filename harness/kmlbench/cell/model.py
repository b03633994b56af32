"""KML inside mq-deadline for one cell: its model, set-up, stop and statistics.

A cell's ``model`` entry (``docs/matrix.md``) says what KML does while fio
runs: ``off`` (stock mq-deadline: nothing to do here), ``observe`` or
``active``, with an optional model file, trainer (kmlctl in user space, or
the kernel thread), ring mode and sample filter. :func:`set_up` uploads
the model files (checked against the hashes the matrix recorded) and runs
``scripts/kml-setup.sh`` (with a calibration phase first where the cell
asks for one: :mod:`kmlbench.cell.calibration`); :func:`collect` stops
the trainer (``kml-stop.sh``), fetches its files and reads KML's
statistics into the cell's metrics and ``kml_stats`` record. A shared
boot's reset between cells is :mod:`kmlbench.cell.kml_reset`'s.
``kmlbench trace`` records the sample
ring with ``kmlctl trace`` instead of a trainer (:data:`TRACE_MODEL` in a
cell without a model).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmlbench import paths
from kmlbench.cell import calibration, render
from kmlbench.cell.context import CellContext, CellGuest, StepFailed
from kmlbench.cell.guest_paths import (
    GUEST_CURVE,
    GUEST_MODEL,
    GUEST_TRACE,
    GUEST_TRACER_LOG,
    GUEST_TRACER_PID,
    GUEST_TRAINED,
    GUEST_TRAINER_LOG,
    GUEST_TRAINER_PID,
    GUEST_WARM,
    KML_STATS,
    KMLCTL,
    BlockDevice,
    DeviceError,
)
from kmlbench.cell.workload import insn_per_us
from kmlbench.clock import host_timeout
from kmlbench.data import kmlstats
from kmlbench.plan.schema import (
    ALL_GEOMETRY_PARAMS,
    COST_PARAMS,
    MODEL_DTYPE_DEFAULT,
    MODEL_DTYPES,
    MODEL_FIELDS,
    MODEL_MODES,
    MODEL_SCHEDULER,
    POLICIES,
    RING_MODES,
    SAMPLE_FILTERS,
    TRAINERS,
    device_geometry,
)
from kmlbench.status import FAILED, OK

# The user trainer and the tracer get fio's time plus this; the harness stops
# them itself after fio, so this is only a backstop.
KML_MARGIN_S = 30
# What a trace cell without a model runs: observe, no model, no trainer, and
# a blocking ring, so that no sample is lost.
TRACE_MODEL: dict[str, Any] = {
    "mode": "observe",
    "trainer": "none",
    "ring_mode": "block",
    "sample_filter": "all",
}
KML_MODES = tuple(mode for mode in MODEL_MODES if mode != "off")
_KML_CHOICES = {
    "ring_mode": RING_MODES,
    "sample_filter": SAMPLE_FILTERS,
    "trainer": TRAINERS,
    "policy": POLICIES,
    "publish_dtype": MODEL_DTYPES,
}


class KmlCellError(StepFailed):
    """A model cell that cannot run as its params say (file missing, no KML)."""


def _default(key: str) -> Any:
    """The matrix's default of a model field (what a cell records it ran with)."""
    return MODEL_FIELDS[key].default


def kml_model(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cell's model entry when KML has work to do in it, else None.

    Only mq-deadline cells whose model mode is not ``off`` touch KML; every
    other cell (no model axis, mode off, another scheduler) runs stock.
    """
    model: dict[str, Any] | None = params.get("model")
    if not model or model.get("mode", "off") == "off":
        return None
    if params["scheduler"]["name"] != MODEL_SCHEDULER:
        return None
    return model


def model_file(params_model: Mapping[str, Any], key: str) -> bytes:
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


def trainer_seconds(workload: Mapping[str, Any]) -> float:
    """How long the user trainer and the tracer run: fio's time and a margin."""
    return float(workload["runtime_s"] + workload["ramp_s"] + KML_MARGIN_S)


# --- guest scripts --------------------------------------------------------------------


def _kml_check(model: Mapping[str, Any]) -> tuple[str, str, str]:
    mode = model.get("mode")
    if mode not in KML_MODES:
        raise DeviceError(f"kml mode {mode!r}: one of {', '.join(KML_MODES)} (off needs no set-up)")
    for key, choices in _KML_CHOICES.items():
        value = model.get(key, _default(key) if key == "trainer" else None)
        if value is not None and value not in choices:
            raise DeviceError(f"kml {key} {value!r}: one of {', '.join(choices)}")
    return (
        str(mode),
        str(model.get("ring_mode", _default("ring_mode"))),
        str(model.get("trainer", _default("trainer"))),
    )


def _background(args: list[str], log: str, pidfile: str, what: str) -> list[str]:
    """Lines that start ``args`` detached (own session, output to ``log``) and check it lives."""
    values = {"COMMAND": shlex.join(args), "LOG": log, "PIDFILE": pidfile, "WHAT": what}
    return render.lines("kml-background.sh", values)


def told_geometry(params: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, int] | None:
    """What policy cost is told of a cell's device (``kml_setup_script``'s
    ``geometry``): its geometry, and a disk's seek curve with
    ``seek_curve``, when ``model`` asks; else None (every parameter 0)."""
    if not model.get("geometry"):
        return None
    return device_geometry(params["device"], seek_curve=bool(model.get("seek_curve")))


def kml_setup_script(
    model: Mapping[str, Any],
    device: BlockDevice,
    *,
    trainer_seconds: float,
    model_uploaded: bool = False,
    warm_uploaded: bool = False,
    trace_seconds: float | None = None,
    geometry: Mapping[str, int] | None = None,
    calibrate: bool = False,
) -> str:
    """Shell for the guest (``scripts/kml-setup.sh``): KML as ``model`` asks, before fio.

    In the order that leaves no sample behind: load the model (if one was
    uploaded to ``GUEST_MODEL``), set the global ring and filter
    parameters, start the trainer (user space in the background, or the
    kernel thread), zero the statistics, and last switch ``device``'s
    ``kml_mode`` on. With ``trace_seconds`` a ``kmlctl trace`` takes the
    ring instead of a trainer (one consumer at a time). Exits non-zero
    with a ``kmlbench-kml:`` message when the kernel lacks KML. ``geometry``
    is what policy cost is told of the device (:func:`device_geometry`); every
    cell writes it, 0 for unknown, as the parameters are global (a kernel
    without policy cost has none of them, and runs only policy expire). With
    ``calibrate`` the model first observes the job
    :func:`kmlbench.cell.calibration.upload_job` uploaded and is calibrated
    on it.
    """
    mode, ring_mode, trainer = _kml_check(model)
    told = dict(geometry or device_geometry(None))
    if trace_seconds is not None and trainer != "none":
        raise DeviceError("a trace takes the sample ring: no trainer at the same time")
    load: list[str] = []
    if model_uploaded:
        load = render.lines("kml-load.sh", {"MODEL_FILE": str(model.get("model_file"))})
    trainer_lines: list[str] = []
    # recorded only when not the default
    publish_dtype = str(model.get("publish_dtype", MODEL_DTYPE_DEFAULT))
    if trainer == "kernel":
        q16 = publish_dtype != MODEL_DTYPE_DEFAULT
        trainer_lines = render.lines(
            "kml-ktrainer.sh",
            {
                "RATE": str(int(model.get("rate", _default("rate")))),
                "CPU_PCT": str(int(model.get("cpu_pct", _default("cpu_pct")))),
                "PUBLISH_EVERY": str(int(model.get("publish_every", _default("publish_every")))),
                "PUBLISH_Q16": "1" if q16 else "0",
                "PUBLISH_Q16_YN": "Y" if q16 else "N",
            },
        )
    elif trainer == "user":
        args = [
            KMLCTL, "train", "--mode", ring_mode,
            "--rate", str(int(model.get("rate", _default("rate")))),
            "--cpu-pct", str(int(model.get("cpu_pct", _default("cpu_pct")))),
            "--publish-every", str(int(model.get("publish_every", _default("publish_every")))),
            "--seconds", f"{trainer_seconds:g}",
            "--save", GUEST_TRAINED, "--curve", GUEST_CURVE,
        ]  # fmt: skip
        if publish_dtype != MODEL_DTYPE_DEFAULT:  # kmlctl's default is the matrix's
            args += ["--publish-dtype", publish_dtype]
        if warm_uploaded:
            args += ["--warm", GUEST_WARM]
        trainer_lines = _background(args, GUEST_TRAINER_LOG, GUEST_TRAINER_PID, "kmlctl train")
    tracer: list[str] = []
    if trace_seconds is not None:
        args = [KMLCTL, "trace", GUEST_TRACE, "--seconds", f"{trace_seconds:g}"]
        tracer = _background(args, GUEST_TRACER_LOG, GUEST_TRACER_PID, "kmlctl trace")
    sample_filter = str(model.get("sample_filter", _default("sample_filter")))
    unclaimed = int(model.get("sample_unclaimed", _default("sample_unclaimed")))
    permille = int(model.get("decision_permille", _default("decision_permille")))
    return render.script(
        "kml-setup.sh",
        {
            "IOSCHED": device.iosched,
            "LOAD": load,
            "RING_MODE": shlex.quote(ring_mode),
            "SAMPLE_FILTER": shlex.quote(sample_filter),
            "DECISION_PERMILLE": str(permille),
            "POLICY": shlex.quote(str(model.get("policy", _default("policy")))),
            **{param.upper(): str(int(told[param])) for param in ALL_GEOMETRY_PARAMS},
            # every cell writes each one the kernel has: the parameters are global
            **{
                name.upper(): str(int(model.get(name, _default(name))))
                for name in (
                    *COST_PARAMS,
                    "observe_every",
                    "lazy",
                    "sample_unclaimed",
                    "skill_min_permille",
                )
            },
            "CALIBRATE": calibration.script_lines(unclaimed) if calibrate else [],
            "TRAINER": trainer_lines,
            "TRACER": tracer,
            "MODE": mode,
            "TRAINER_NAME": trainer,
        },
    )


def kml_stop_script(model: Mapping[str, Any], *, trace: bool = False) -> str:
    """Shell for the guest after fio (``scripts/kml-stop.sh``): stop the trainer and tracer.

    SIGTERM makes ``kmlctl`` flush its curve, model and trace and exit; the
    kernel trainer is switched off through its parameter. The statistics
    are read afterwards, separately, so that ``ring_consumed`` is final.
    """
    _mode, _ring, trainer = _kml_check(model)
    stop_trainer: list[str] = []
    if trainer == "user":
        stop = {"PIDFILE": GUEST_TRAINER_PID, "WHAT": "kmlctl train"}
        stop_trainer = render.lines("kml-stop-process.sh", stop)
    elif trainer == "kernel":
        stop_trainer = render.lines("kml-stop-ktrainer.sh")
    stop_tracer: list[str] = []
    if trace:
        stop = {"PIDFILE": GUEST_TRACER_PID, "WHAT": "kmlctl trace"}
        stop_tracer = render.lines("kml-stop-process.sh", stop)
    return render.script("kml-stop.sh", {"STOP_TRAINER": stop_trainer, "STOP_TRACER": stop_tracer})


# --- steps ----------------------------------------------------------------------------


def running_model(params: Mapping[str, Any], trace: bool) -> dict[str, Any] | None:
    """What KML runs in the cell: its model (:func:`kml_model`), or for a trace at least observe."""
    model = kml_model(params)
    if trace and model is None:
        model = dict(TRACE_MODEL)
    return model


def set_up(ctx: CellContext) -> None:
    """Upload the model files and run the KML set-up; KmlCellError on failure.

    A trace (``ctx.trace``) records what really ran where it differs from
    the cell's params, in the record's ``kml_trace``.
    """
    model = running_model(ctx.params, ctx.trace)
    if model is None:
        return
    if ctx.trace:
        ctx.extra["kml_trace"] = {
            "file": "trace.kmltrc",
            "mode": model["mode"],
            "ring_mode": model["ring_mode"],
            "trainer_skipped": model.get("trainer", "none") != "none",
        }
    seconds = trainer_seconds(ctx.params["workload"])
    uploaded = {}
    for key, guest_path in (("model_file", GUEST_MODEL), ("warm_start", GUEST_WARM)):
        if model.get(key):
            ctx.guest.put(guest_path, model_file(model, key))
            uploaded[key] = True
    if ctx.trace:  # the tracer takes the ring: no trainer in a trace cell
        model = {**model, "trainer": "none"}
    ctx.model = model
    calibrate_s = int(model.get("calibrate_s", 0))
    if calibrate_s:
        calibration.upload_job(ctx, calibrate_s)
    script = kml_setup_script(
        model,
        ctx.require_device(),
        trainer_seconds=seconds,
        model_uploaded=uploaded.get("model_file", False),
        warm_uploaded=uploaded.get("warm_start", False),
        trace_seconds=seconds if ctx.trace else None,
        geometry=told_geometry(ctx.params, model),
        calibrate=bool(calibrate_s),
    )
    # the calibration's fio keeps the guest busy as the cell's own does
    timeout = host_timeout(ctx.timeout + calibrate_s, ctx.guest.cfg.clock, calibrate_s)
    result = ctx.guest.run(script, timeout)
    ctx.log("kml_setup.log", result.stdout + result.stderr)
    if result.exit_status != 0:
        why = (result.stderr.strip().splitlines() or [f"exit {result.exit_status}"])[-1]
        raise KmlCellError(f"KML set-up failed: {why} (see kml_setup.log)")
    if calibrate_s:
        try:
            ctx.extra["calibration"] = calibration.outcome(result.stdout, calibrate_s)
        except ValueError as exc:
            raise KmlCellError(f"KML set-up: {exc} (see kml_setup.log)") from exc


def collect(ctx: CellContext) -> None:
    """After fio: stop the trainer, fetch its files, read KML's statistics into the cell.

    Problems (a trainer that died, no trace, inconsistent counters) fail a
    cell whose workload was ``ok``; a failed workload keeps them apart, as
    ``kml_problems``.
    """
    if ctx.model is None:
        return
    problems, kml_metrics, record = _collect(ctx, ctx.model)
    if record is not None:
        ctx.extra["kml_stats"] = record
    if ctx.status == OK:
        ctx.metrics.update(kml_metrics)
        per_us = insn_per_us(ctx.guest)
        if per_us is not None:
            # KML's inference histogram is in ns of guest time: instructions
            for pct in ("p50", "p99"):
                ns = kml_metrics.get(f"inference_ns_{pct}")
                if ns is not None:
                    ctx.metrics[f"inference_insn_{pct}"] = ns * per_us / 1000.0
        if problems:
            ctx.extra["error"] = "; ".join(problems)
            ctx.status = FAILED
    elif problems:
        ctx.extra["kml_problems"] = problems


def _collect(
    ctx: CellContext, model: Mapping[str, Any]
) -> tuple[list[str], dict[str, Any], dict[str, Any] | None]:
    """Stop the trainer, read the statistics; (problems, metrics, kml_stats record).

    Files land in the cell folder: ``kml_stats.txt``, ``trainer.txt``,
    ``curve.jsonl``, ``trained.kmlm`` (user trainer), ``trace.kmltrc``.
    """
    guest, cell_dir, timeout = ctx.guest, ctx.cell_dir, ctx.timeout
    problems: list[str] = []
    stop = guest.run(kml_stop_script(model, trace=ctx.trace), timeout)
    if stop.stdout or stop.stderr:
        with (cell_dir / "kml_setup.log").open("a") as log:
            log.write(stop.stdout + stop.stderr)
    if stop.exit_status != 0:
        problems.append(f"stopping the trainer failed (exit {stop.exit_status})")
    trainer = model.get("trainer", "none")
    summary = None
    if trainer != "none":
        text = fetch_text(guest, GUEST_TRAINER_LOG, timeout)
        if text is not None:
            (cell_dir / "trainer.txt").write_text(text)
            summary = kmlstats.parse_summary(text)
        if trainer == "user" and "samples" not in (summary or {}):
            # kmlctl train prints its summary when it ends normally (SIGTERM
            # included): without one it died, and the cell did not run as said
            problems.append("kmlctl train ended without its summary (see trainer.txt)")
    curve = None
    if trainer == "user":
        curve_text = fetch_text(guest, GUEST_CURVE, timeout)
        if curve_text:
            (cell_dir / "curve.jsonl").write_text(curve_text)
            curve = kmlstats.parse_curve(curve_text)
        trained = fetch_bytes(guest, GUEST_TRAINED, timeout)
        if trained:
            (cell_dir / "trained.kmlm").write_bytes(trained)
    if ctx.trace:
        data = fetch_bytes(guest, GUEST_TRACE, timeout)
        if data is None:
            problems.append("kmlctl trace wrote no trace")
        else:
            (cell_dir / "trace.kmltrc").write_bytes(data)
        log_text = fetch_text(guest, GUEST_TRACER_LOG, timeout)
        if log_text:
            (cell_dir / "tracer.txt").write_text(log_text)
    text = fetch_text(guest, KML_STATS, timeout)
    if text is None:
        problems.append(f"cannot read {KML_STATS}")
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
    if model["mode"] == "active" and model.get("policy") == "cost":
        svc = _learned_service_times(ctx)
        if isinstance(svc, str):
            problems.append(svc)
        else:
            record["svc_learned"] = svc
    return problems, kmlstats.metrics(parsed), record


def _learned_service_times(ctx: CellContext) -> list[dict[str, int]] | str:
    """Policy cost's learned service times (``kml_svc.txt``), or why they cannot be read."""
    path = ctx.require_device().kml_svc
    text = fetch_text(ctx.guest, path, ctx.timeout)
    if text is None:
        return f"cannot read {path} (a kernel without policy cost?)"
    (ctx.cell_dir / "kml_svc.txt").write_text(text)
    try:
        return kmlstats.parse_svc(text, source="kml_svc.txt")
    except kmlstats.KmlStatsError as exc:
        return str(exc)


def fetch_text(guest: CellGuest, path: str, timeout: float) -> str | None:
    """A text file from the guest, or None if it cannot be read."""
    result = guest.run(f"cat {path} 2>/dev/null", timeout=timeout)
    return result.stdout if result.exit_status == 0 else None


def fetch_bytes(guest: CellGuest, path: str, timeout: float) -> bytes | None:
    """A binary file from the guest (base64 over the text channel; no sftp there); None if empty."""
    result = guest.run(f"[ -s {path} ] && base64 {path}", timeout=timeout)
    if result.exit_status != 0:
        return None
    try:
        return base64.b64decode("".join(result.stdout.split()), validate=True)
    except binascii.Error:
        return None
