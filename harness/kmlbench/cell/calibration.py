"""A model cell's calibration phase (``model.calibrate_s``): its job, its script, its outcome.

A model no trainer calibrates keeps the threshold it was shipped with,
chosen on other configurations. With ``calibrate_s`` the set-up first runs
the cell's own fio job for that many seconds with the model observing,
then ``kmlctl calibrate`` sets ``decision_permille`` from those
predictions, read from the kernel's score histograms
(``docs/kml-iosched.md``). :func:`upload_job` puts that job in the guest,
:func:`script_lines` is the set-up's fragment
(``scripts/kml-calibrate.sh``), and :func:`outcome` reads what kmlctl did
from the set-up's output: the threshold it set, or why it refused (the
matrix's threshold then stays; not fatal).
"""

from __future__ import annotations

from typing import Any

from kmlbench.cell import render
from kmlbench.cell.context import CellContext
from kmlbench.cell.guest_paths import GUEST_CALIBRATE_JOB
from kmlbench.plan import fio_job


def upload_job(ctx: CellContext, seconds: int) -> None:
    """The cell's job for ``seconds`` and no ramp: ``calibrate.fio`` in the cell and the guest."""
    workload = {**ctx.params["workload"], "runtime_s": seconds, "ramp_s": 0}
    job = fio_job.render_job(workload, ctx.require_device().dev)
    ctx.log("calibrate.fio", job)
    ctx.guest.put(GUEST_CALIBRATE_JOB, job.encode())


def script_lines() -> list[str]:
    """The set-up's calibration phase (``scripts/kml-calibrate.sh``)."""
    return render.lines(
        "kml-calibrate.sh", {"CALIBRATE_FIO": fio_job.fio_shell_command(GUEST_CALIBRATE_JOB)}
    )


_MARK = "kmlbench-calibrate: "
# kmlctl calibrate's lines (guest-image/kmlctl/calib.c) and their types
_FIELDS: dict[str, type] = {
    "predictions": int,
    "met": int,
    "calibrated": int,
    "status": str,
    "decision_permille": int,
    "balanced_accuracy": float,
    "auc": float,
}


def outcome(setup_output: str, seconds: int) -> dict[str, Any]:
    """What the calibration phase did, from the set-up's output: ``seconds``
    and kmlctl calibrate's figures (``calibrated`` a bool, ``status`` ``ok``
    or why it refused, the ``decision_permille`` the cell runs at, the split's
    ``balanced_accuracy``, the ``auc``, how many ``predictions`` and of them
    ``met``). ValueError unless every one is there once."""
    out: dict[str, Any] = {"seconds": seconds}
    for line in setup_output.splitlines():
        if not line.startswith(_MARK):
            continue
        key, _, value = line.removeprefix(_MARK).partition(" ")
        if key not in _FIELDS or key in out:
            raise ValueError(f"calibration: unexpected line {line!r}")
        out[key] = _FIELDS[key](value.strip())
    missing = sorted(set(_FIELDS) - set(out))
    if missing:
        raise ValueError(f"calibration: kmlctl calibrate did not say {', '.join(missing)}")
    out["calibrated"] = bool(out["calibrated"])
    return out
