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

from collections.abc import Mapping
from typing import Any

from kmlbench.cell import render
from kmlbench.cell.context import CellContext
from kmlbench.cell.guest_paths import GUEST_CALIBRATE_JOB
from kmlbench.plan import fio_job

# fio repeats its random offsets and mix from fixed seeds (randrepeat), and
# under the virtual clock the guest repeats the rest: the calibration's job
# gets a seed of its own, so that it sees the cell's load, not the very
# requests the cell's run is then judged on. randrepeat=0 as well: with
# randrepeat fio keeps its fixed seed for the offsets whatever randseed says
# (fio 3.33); with randseed set the sequence still repeats from run to run.
CALIBRATION_SEED = 0x6B6D6C63
SEED_PREAMBLE = (
    "; kmlbench: the calibration's own random sequence\n"
    f"[global]\nrandseed={CALIBRATION_SEED}\nrandrepeat=0\n\n"
)


def job(workload: Mapping[str, Any], filename: str, seconds: int) -> str:
    """The fio job of a cell's ``workload`` on ``filename`` for ``seconds``, no
    ramp and a random sequence of its own (:data:`CALIBRATION_SEED`)."""
    return SEED_PREAMBLE + fio_job.render_job(
        {**workload, "runtime_s": seconds, "ramp_s": 0}, filename
    )


def upload_job(ctx: CellContext, seconds: int) -> None:
    """:func:`job` for the cell's device: ``calibrate.fio`` in the cell and the guest."""
    text = job(ctx.params["workload"], ctx.require_device().dev, seconds)
    ctx.log("calibrate.fio", text)
    ctx.guest.put(GUEST_CALIBRATE_JOB, text.encode())


def script_lines(sample_unclaimed: int) -> list[str]:
    """The set-up's calibration phase (``scripts/kml-calibrate.sh``), which makes
    no sample while it runs and then puts ``sample_unclaimed`` back."""
    return render.lines(
        "kml-calibrate.sh",
        {
            "CALIBRATE_FIO": fio_job.fio_shell_command(GUEST_CALIBRATE_JOB),
            "SAMPLE_UNCLAIMED": str(sample_unclaimed),
        },
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
