"""``kmlbench bench harness``: where a cell's time goes.

Runs ``workloads/bench-harness.yaml`` (30 s cells) unless ``--run`` names an
existing run, then reports per cell: boot to SSH-ready, fio's wall time, and
the harness's time outside fio (boot, SSH, device setup, collection,
shutdown) as a share of the cell. The issue's goals: boot to SSH-ready
at most 3 s under TCG, time outside fio at most 10% of a 30 s cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import TypedDict

from kmlbench import paths
from kmlbench.run import runner
from kmlbench.run.results import make_run_id

MATRIX = paths.WORKLOADS_DIR / "bench-harness.yaml"


class CellTiming(TypedDict):
    """Where one ok cell's time went, in seconds (share: of the cell's total)."""

    id: str
    boot_s: float
    fio_s: float
    outside_s: float
    outside_share: float


def cell_timings(run_dir: Path) -> list[CellTiming]:
    """Boot, fio and outside-fio seconds of every ok cell of a run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows: list[CellTiming] = []
    for cell in summary["cells"]:
        t = cell.get("timings", {})
        if cell["status"] != "ok" or "fio_s" not in t:
            continue
        outside = t["total_s"] - t["fio_s"]
        rows.append(
            {
                "id": cell["id"],
                "boot_s": t["boot_s"],
                "fio_s": t["fio_s"],
                "outside_s": outside,
                "outside_share": outside / t["total_s"],
            }
        )
    return rows


def command(args: argparse.Namespace) -> int:
    """``kmlbench bench harness``: run (or read) the harness benchmark and summarise it."""
    root = paths.results_dir()
    if args.run is None:
        run_id = make_run_id("bench-harness")
        status = runner.main_run(
            matrix_path=MATRIX,
            resume=None,
            dry_run=False,
            accel="auto",
            results_root=root,
            run_id=run_id,
        )
        if status != 0:
            print("kmlbench: some cells were not ok; timings of the ok ones follow")
        run_dir = root / run_id
    else:
        run_dir = root / args.run
    if not (run_dir / "summary.json").is_file():
        print(f"kmlbench: {run_dir} is not a run folder (no summary.json)")
        return 2
    rows = cell_timings(run_dir)
    if not rows:
        print(f"kmlbench: no finished ok cells in {run_dir}")
        return 1
    accel = json.loads((run_dir / "summary.json").read_text()).get("accel")
    result = {
        "run_id": run_dir.name,
        "accel": accel,
        "cells": len(rows),
        "boot_s_median": statistics.median(r["boot_s"] for r in rows),
        "fio_s_median": statistics.median(r["fio_s"] for r in rows),
        "outside_fio_s_median": statistics.median(r["outside_s"] for r in rows),
        "outside_fio_share_median": statistics.median(r["outside_share"] for r in rows),
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"run {result['run_id']} ({accel}), {len(rows)} cells")
    print(f"{'cell':40s} {'boot s':>7s} {'fio s':>7s} {'outside s':>10s} {'share':>6s}")
    for r in rows:
        print(
            f"{r['id']:40s} {r['boot_s']:7.2f} {r['fio_s']:7.2f} "
            f"{r['outside_s']:10.2f} {r['outside_share']:6.1%}"
        )
    print(
        f"{'median':40s} {result['boot_s_median']:7.2f} {result['fio_s_median']:7.2f} "
        f"{result['outside_fio_s_median']:10.2f} {result['outside_fio_share_median']:6.1%}"
    )
    return 0
