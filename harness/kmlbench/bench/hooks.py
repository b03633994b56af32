"""``kmlbench bench hooks``: where KML's kernel instructions go, per I/O.

Runs a profiled matrix (``guest: {insn_profile: true}``; by default
``workloads/hooks.yaml``: mq-deadline with the model off, observing and
active) through the normal run machinery, or reads an existing run
(``--run``), and prints per mode the kernel and user instructions per I/O
between the two marks of each cell (``insn-profile.json``), then the
difference against ``off`` by part (:data:`kmlbench.data.insn_profile.PARTS`)
and the symbols that moved most, and KML's cost per I/O (its parts,
:data:`~kmlbench.data.insn_profile.KML_PARTS`) against ``off`` and, when the
run has a cell of ``off`` on the kernel without KML's hooks (the kernel
variant ``nokml``), against that stock path: a mode's cost against ``off``
plus what ``off`` itself costs over stock. ``--json`` prints the same as one
object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kmlbench import paths
from kmlbench.data import insn_profile as prof
from kmlbench.plan.cells import config_hash
from kmlbench.plan.matrix import load_matrix
from kmlbench.plan.schema import (
    ACTIVE_FIELDS,
    KML_ON_FIELDS,
    LAZY_FIELDS,
    OBSERVE_FIELDS,
    STEER_FIELDS,
)
from kmlbench.plan.source import MatrixError
from kmlbench.run import runner
from kmlbench.run.results import make_run_id
from kmlbench.status import OK

MATRIX = paths.WORKLOADS_DIR / "hooks.yaml"
BASELINE = "off"
# The kernel variant built without KML's hooks (workloads/hooks.yaml,
# kernel/configs/no-kml-iosched.config): its off cell is the stock path.
STOCK_VARIANT = "nokml"
STOCK = f"{BASELINE} [{STOCK_VARIANT}]"
TOP = 15


class HooksError(Exception):
    """A run that cannot be summarised (no such run, no profiled cell)."""


def mode_label(params: dict[str, Any], variant: str = "default") -> str:
    """A cell's model in a few words: ``off``, ``observe deadline-linear-q16``,
    ``active trainer=user``, ``off [nokml]`` (a kernel variant other than the default)."""
    model = params.get("model") or {"mode": BASELINE}
    words = [str(model["mode"])]
    if model.get("model_file"):
        words.append(Path(str(model["model_file"])).stem)
    if model.get("trainer", "none") != "none":
        words.append(f"trainer={model['trainer']}")
    # recorded only when not the default
    for key in (*OBSERVE_FIELDS, *LAZY_FIELDS, *KML_ON_FIELDS, *ACTIVE_FIELDS, *STEER_FIELDS):
        if key in model:
            words.append(f"{key}={model[key]}")
    if variant != "default":
        words.append(f"[{variant}]")
    return " ".join(words)


def profiles_by_mode(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The profiles of a run's ok cells, grouped by :func:`mode_label` (labels made unique)."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise HooksError(f"{run_dir} is not a run folder (no summary.json)")
    cells = json.loads(summary_path.read_text()).get("cells", [])
    configs: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for cell in cells:
        path = run_dir / "cells" / cell["id"] / prof.PROFILE_FILE
        if cell.get("status") != OK or not path.is_file():
            continue
        params = cell.get("params", {})
        key = config_hash(params)[:8]
        label = mode_label(params, str(cell.get("kernel_variant", "default")))
        configs.setdefault(key, (label, []))[1].append(prof.load_profile(path))
    if not configs:
        raise HooksError(
            f"no ok cell of {run_dir.name} has {prof.PROFILE_FILE} "
            "(run a matrix with guest: {insn_profile: true})"
        )
    out: dict[str, list[dict[str, Any]]] = {}
    labels = [label for label, _ in configs.values()]
    for key, (label, items) in configs.items():
        if labels.count(label) > 1:
            label = f"{label} [{key}]"
        out[label] = items
    return out


def breakdown(run_dir: Path, top: int = TOP) -> dict[str, Any]:
    """Per mode: instructions per I/O, absolute parts, and the difference
    against ``off`` with KML's share of it (``kml_per_io``); given the
    stock cell (:data:`STOCK`), ``stock`` (what ``off`` costs over it) and
    each mode's ``vs_stock_kml_per_io``."""
    modes = {label: prof.mean_profile(items) for label, items in profiles_by_mode(run_dir).items()}
    base = modes.get(BASELINE)
    result: dict[str, Any] = {"run_id": run_dir.name, "baseline": BASELINE, "modes": {}}
    for label, mean in modes.items():
        entry: dict[str, Any] = {
            "cells": mean["repeats"],
            "ios": mean["ios"],
            "kernel_per_io": mean["per_io"]["kernel"],
            "user_per_io": mean["per_io"]["user"],
            "parts_per_io": mean["parts_per_io"],
        }
        if base is not None and label != BASELINE:
            entry["vs_baseline"] = prof.compare(base, mean, top)
            entry["vs_baseline"]["kml_per_io"] = prof.kml_per_io(
                entry["vs_baseline"]["parts_per_io"]
            )
        result["modes"][label] = entry
    stock = result["modes"].get(STOCK)
    if stock is not None and "vs_baseline" in stock:
        # what off costs over the stock path: the stock cell's difference, negated
        off_cost = -stock["vs_baseline"]["kml_per_io"]
        result["stock"] = {"label": STOCK, "off_kml_per_io": off_cost}
        for label, entry in result["modes"].items():
            if label == STOCK:
                continue
            entry["vs_stock_kml_per_io"] = _kml_vs_off(entry) + off_cost
    return result


def _kml_vs_off(entry: dict[str, Any]) -> float:
    """A mode's KML instructions per I/O against off (off's own: 0)."""
    return float(entry["vs_baseline"]["kml_per_io"]) if "vs_baseline" in entry else 0.0


def _share(part: float, whole: float) -> str:
    shown = round(part)  # an int: never "-0"
    return f"{shown:,} ({part / whole:.2%})" if whole else f"{shown:,}"


def render_cost(result: dict[str, Any]) -> list[str]:
    """KML's instructions per I/O per mode, against off and against the stock path."""
    modes = result["modes"]
    stock = result.get("stock")
    off = modes.get(BASELINE)
    if off is None:
        return []
    width = max(len(label) for label in modes)
    lines = ["", "KML's instructions per I/O (its parts; share of the other cell's kernel total)"]
    head = f"  {'':{width}s} {'against ' + BASELINE:>18s}"
    if stock:
        head += f" {'against ' + stock['label']:>22s}"
    lines.append(head)
    for label, entry in modes.items():
        if label.startswith(STOCK):
            continue
        row = f"  {label:{width}s} {_share(_kml_vs_off(entry), off['kernel_per_io']):>18s}"
        if stock:
            row += f" {_share(entry['vs_stock_kml_per_io'], modes[STOCK]['kernel_per_io']):>22s}"
        lines.append(row)
    if not stock:
        lines.append(f"  (no '{STOCK}' cell: no cost against the stock path)")
    return lines


def _sign(x: float) -> str:
    return f"{x:+.1f}"


def render(result: dict[str, Any]) -> str:
    """The breakdown as plain text tables."""
    modes = result["modes"]
    labels = list(modes)
    width = max(12, *(len(label) for label in labels))
    lines = [f"run {result['run_id']}: guest instructions per I/O between the two marks", ""]
    head = f"{'':24s}" + "".join(f"{label:>{width}s}" for label in labels)
    lines.append(head)
    lines.append(f"{'cells':24s}" + "".join(f"{modes[m]['cells']:>{width}d}" for m in labels))
    lines.append(
        f"{'I/Os per cell':24s}" + "".join(f"{modes[m]['ios']:>{width}.0f}" for m in labels)
    )
    for key, name in (("kernel_per_io", "kernel"), ("user_per_io", "user")):
        lines.append(f"{name:24s}" + "".join(f"{modes[m][key]:>{width}.1f}" for m in labels))
    lines.append("")
    lines.append("by part (absolute)")
    for part in prof.PART_NAMES:
        lines.append(
            f"  {part:22s}"
            + "".join(f"{modes[m]['parts_per_io'][part]:>{width}.1f}" for m in labels)
        )
    compared = [m for m in labels if "vs_baseline" in modes[m]]
    if not compared:
        lines.append("")
        lines.append(f"(no '{result['baseline']}' cell: no difference to show)")
        return "\n".join(lines)
    lines.append("")
    lines.append(f"difference against {result['baseline']}")
    head = f"{'':24s}" + "".join(f"{m:>{width}s}" for m in compared)
    lines.append(head)
    lines.append(
        f"{'kernel':24s}"
        + "".join(f"{_sign(modes[m]['vs_baseline']['kernel_per_io']):>{width}s}" for m in compared)
    )
    for part in prof.PART_NAMES:
        lines.append(
            f"  {part:22s}"
            + "".join(
                f"{_sign(modes[m]['vs_baseline']['parts_per_io'][part]):>{width}s}"
                for m in compared
            )
        )
    lines.extend(render_cost(result))
    for m in compared:
        lines.append("")
        lines.append(f"top symbols, {m} - {result['baseline']} (instructions per I/O)")
        for row in modes[m]["vs_baseline"]["top_symbols"]:
            lines.append(f"  {_sign(row['per_io']):>10s}  {row['part']:12s} {row['symbol']}")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """``kmlbench bench hooks [MATRIX] [--run RUN_ID] [--json]``."""
    root = paths.results_dir()
    if args.run is not None:
        if args.matrix is not None:
            print("kmlbench: give a matrix or --run RUN_ID, not both")
            return 2
        run_dir = root / args.run
    else:
        matrix_path = args.matrix or MATRIX
        try:
            matrix = load_matrix(matrix_path)
        except MatrixError as exc:
            print(f"kmlbench: {exc}")
            return 2
        if not matrix.guest["insn_profile"]:
            print(f"kmlbench: {matrix_path}: guest.insn_profile is not true: nothing to break down")
            return 2
        run_id = make_run_id(matrix.name)
        status = runner.main_run(
            matrix_path=matrix_path,
            resume=None,
            dry_run=False,
            accel="tcg",
            results_root=root,
            run_id=run_id,
        )
        if status != 0:
            print("kmlbench: some cells were not ok; the profiles of the ok ones follow")
        run_dir = root / run_id
    try:
        result = breakdown(run_dir)
    except (HooksError, prof.ProfileError) as exc:
        print(f"kmlbench: {exc}")
        return 2 if args.run is not None else 1
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(render(result))
    return 0
