"""KML back to its booted state between the cells of a shared boot.

A shared boot (``guest: {share_boot: true}``) runs the cells of a boot
group one after another in one guest. :func:`snapshot` saves KML's
parameters as booted, in the group's first cell after its device set-up
(``scripts/kml-snapshot.sh``); :func:`reset` puts them back before each
later cell (``scripts/kml-reset.sh``): the queue off, no trainer, no model,
an empty ring, zeroed statistics, no files of the last cell. A reset that
cannot undo what the last cell left is :class:`ResetFailed`: the guest is
not used any more.
"""

from __future__ import annotations

from kmlbench.cell import render
from kmlbench.cell.context import CellContext, ResetFailed, StepFailed
from kmlbench.cell.guest_paths import BlockDevice


def kml_snapshot_script() -> str:
    """Shell for a shared guest after its device is up (``scripts/kml-snapshot.sh``).

    Saves KML's parameters as booted, for :func:`kml_reset_script`.
    """
    return render.script("kml-snapshot.sh")


def kml_reset_script(device: BlockDevice) -> str:
    """Shell for a shared guest between two cells (``scripts/kml-reset.sh``): KML as booted.

    ``device``'s queue back to ``off``, the kernel trainer stopped, no
    model, an empty ring, every parameter as saved by
    :func:`kml_snapshot_script`, zeroed statistics, no files of the last
    cell; exits non-zero, naming what it could not undo, when that is not so.
    """
    return render.script("kml-reset.sh", {"IOSCHED": device.iosched})


def snapshot(ctx: CellContext) -> None:
    """Save KML's booted state, in a shared boot's first cell (after its device set-up)."""
    snap = ctx.guest.run(kml_snapshot_script(), ctx.timeout)
    if snap.exit_status != 0:
        raise StepFailed(f"saving KML's booted state failed: {snap.stderr.strip()}")


def reset(ctx: CellContext, device: BlockDevice) -> None:
    """Put KML back to its booted state before a later cell of a shared boot (``setup.log``).

    :class:`ResetFailed` when it cannot: what the last cell left behind
    would leak into this one, so the guest is not used any more.
    """
    result = ctx.guest.run(kml_reset_script(device), ctx.timeout)
    ctx.log(
        "setup.log",
        f"shared boot: {device.dev} and its scheduler were set up by cell {ctx.boot.device_cell}\n"
        f"KML reset to its booted state (exit {result.exit_status})\n"
        + result.stdout
        + result.stderr,
    )
    if result.exit_status != 0:
        raise ResetFailed("KML reset between shared-boot cells failed; see setup.log")
