"""A model cell's calibration phase (``model.calibrate_s``): its job, its script, its outcome.

A model no trainer calibrates keeps the threshold it was shipped with,
chosen on other configurations. With ``calibrate_s`` the set-up first runs
the cell's own fio job for that many seconds with the model observing,
then writes ``calibrate`` to KML's statistics, and the kernel sets
``decision_permille`` from those predictions (``docs/kml-iosched.md``).
:func:`upload_job` puts that job in the guest, :func:`script_lines` is the
set-up's fragment (``scripts/kml-calibrate.sh``), and :func:`outcome`
reads what the kernel did from the set-up's output: the threshold it set,
or why it refused (the matrix's threshold then stays; not fatal).
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


_CALIBRATED = "kmlbench-kml: calibrated decision_permille="
_REFUSED = "kmlbench-kml: calibration refused: "


def outcome(setup_output: str, seconds: int) -> dict[str, Any]:
    """What the calibration phase did, from the set-up's output: ``seconds``,
    and the ``decision_permille`` it set or why the kernel ``refused``.
    ValueError unless the output says exactly one of them."""
    out: dict[str, Any] = {"seconds": seconds}
    for line in setup_output.splitlines():
        if line.startswith(_CALIBRATED):
            out["decision_permille"] = int(line.removeprefix(_CALIBRATED))
        elif line.startswith(_REFUSED):
            out["refused"] = line.removeprefix(_REFUSED).strip()
    if len(out) != 2:
        raise ValueError(f"no single calibration outcome in its output: {out}")
    return out
