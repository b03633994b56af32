"""``kmlbench trace``: run one cell of a matrix with KML's sample ring recorded, copy the trace out.

The cell runs as in ``kmlbench run`` (:func:`kmlbench.run.runner.execute`,
its own run folder named ``<matrix>-trace``, the usual record) with
``kmlctl trace`` recording the ring during fio (``trace`` in
:mod:`kmlbench.cell.model`). The trace format and the ``csv``/``info``
subcommands are :mod:`kmlbench.data.trace`'s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kmlbench import paths
from kmlbench.cell.model import running_model
from kmlbench.data.trace import TraceError, load_trace, write_csv
from kmlbench.plan import kernel as plan_kernel
from kmlbench.plan.cells import Cell
from kmlbench.plan.matrix import Matrix, load_matrix
from kmlbench.plan.schema import MODEL_SCHEDULER
from kmlbench.plan.source import MatrixError
from kmlbench.run.results import RunDir
from kmlbench.run.runner import execute, kvm_refused


def pick_cell(matrix: Matrix, spec: str) -> Cell:
    """The cell ``spec`` names: an id, a 1-based number as ``run --dry-run``
    lists them, or a prefix of exactly one id. ValueError says what matched."""
    by_id = {c.id: c for c in matrix.cells}
    if spec in by_id:
        return by_id[spec]
    if spec.isdigit():
        n = int(spec)
        if 1 <= n <= len(matrix.cells):
            return matrix.cells[n - 1]
        raise ValueError(f"cell number {n} is not in 1..{len(matrix.cells)}")
    hits = [c for c in matrix.cells if c.id.startswith(spec)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise ValueError(f"no cell id starts with {spec!r} (kmlbench run --dry-run lists them)")
    raise ValueError(f"{spec!r} matches {len(hits)} cells: {', '.join(c.id for c in hits[:5])}")


def untraceable(matrix: Matrix, cell: Cell) -> str | None:
    """Why ``cell`` cannot be traced, before any guest boots, or None.

    The samples come from KML in mq-deadline: a cell of another scheduler,
    or of a kernel variant whose fragments leave KML out of mq-deadline, has
    nothing to record. (A trainer is not run in a trace: the tracer takes
    the ring.)
    """
    scheduler = cell.params["scheduler"]["name"]
    if scheduler != MODEL_SCHEDULER:
        return f"cell {cell.id} runs {scheduler}; KML samples come from {MODEL_SCHEDULER}"
    model = {**(running_model(cell.params, trace=True) or {}), "trainer": "none"}
    left_out = plan_kernel.options_left_out(matrix.kernel_variants[cell.kernel_variant])
    for option in plan_kernel.kml_needs(model, set()):
        if option in left_out:
            return (
                f"cell {cell.id}: kernel variant {cell.kernel_variant!r} leaves out {option} "
                f"({left_out[option]}), which a trace needs; pick a cell of another variant"
            )
    return None


def main_trace(
    *,
    matrix_path: Path,
    cell: str,
    output: Path,
    csv_path: Path | None,
    accel: str,
    results_root: Path | None,
) -> int:
    """``kmlbench trace``: run one cell with the sample ring recorded, copy the trace out.

    The cell runs as in ``kmlbench run`` (its own run folder, named
    ``<matrix>-trace``, with the usual record), plus ``kmlctl trace`` during
    fio; a cell without a model entry runs with ``kml_mode=observe``, no
    model, no trainer and a blocking ring, so that no sample is lost.
    """
    try:
        matrix = load_matrix(matrix_path)
        chosen = pick_cell(matrix, cell)
    except MatrixError as exc:
        print(f"kmlbench: {exc}")
        return 2
    except ValueError as exc:
        print(f"kmlbench trace: {exc}")
        return 2
    refusal = untraceable(matrix, chosen)
    if refusal is not None:
        print(f"kmlbench trace: {refusal}")
        return 2
    if kvm_refused(matrix, accel):
        return 2
    root = results_root or paths.results_dir()
    run = RunDir.create(root, name=f"{matrix.name}-trace")
    run.copy_matrix(matrix.path)
    status = execute(matrix, run, accel, only=[chosen], trace=True)
    produced = run.path / "cells" / chosen.id / "trace.kmltrc"
    if not produced.is_file():
        print(f"kmlbench trace: cell {chosen.id} produced no trace; see {produced.parent}")
        return 1
    try:
        header, rows = load_trace(produced)
    except TraceError as exc:
        print(f"kmlbench trace: {exc}")
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(produced, output)
    if csv_path is not None:
        with open(csv_path, "w", newline="") as handle:
            write_csv(rows, header.n_features, handle)
    print(f"kmlbench trace: {output}: {len(rows)} samples from cell {chosen.id}")
    return status
