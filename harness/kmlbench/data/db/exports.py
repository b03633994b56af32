"""Exporting the database as files: every table as CSV or Parquet
(``kmlbench import --export``); ``cells`` wide, one row per cell."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kmlbench.data.db.queries import load_cells
from kmlbench.data.db.schema import connect


def export_tables(conn: sqlite3.Connection) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The tables that :func:`export` writes, as (columns, rows).

    ``cells`` is wide (one row per cell: its parameters and metrics as
    columns, ready for a data frame); the others are long.
    """
    cells = load_cells(conn, status=None, with_histograms=False)
    param_keys = sorted({k for c in cells for k in c.flat_params})
    metric_keys = sorted({k for c in cells for k in c.metrics})
    wide_cols = ["run_id", "cell_id", "status", "repeat", "kernel_variant", "config_hash"]
    wide_cols += param_keys + metric_keys + ["kml_stats"]
    wide_rows = [
        [c.run_id, c.cell_id, c.status, c.repeat, c.kernel_variant, c.config_hash]
        + [c.flat_params.get(k) for k in param_keys]
        + [c.metrics.get(k) for k in metric_keys]
        + [json.dumps(c.kml_stats, sort_keys=True) if c.kml_stats is not None else None]
        for c in cells
    ]
    out: dict[str, tuple[list[str], list[list[Any]]]] = {"cells": (wide_cols, wide_rows)}
    out["runs"] = (
        ["run_id", "accel", "emulated", "matrix", "harness_git", "manifest"],
        [
            list(r)
            for r in conn.execute(
                "SELECT run_id, accel, emulated, matrix, harness_git, manifest FROM runs"
                " ORDER BY run_id"
            )
        ],
    )
    for table, cols in (
        ("params", ["run_id", "cell_id", "key", "value"]),
        ("metrics", ["run_id", "cell_id", "name", "value"]),
    ):
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY 1, 2, 3").fetchall()
        out[table] = (cols, [list(r) for r in rows])
    hist_rows = []
    for rid, cid, direction, bins in conn.execute(
        "SELECT run_id, cell_id, direction, bins FROM histograms ORDER BY 1, 2, 3"
    ):
        hist_rows += [[rid, cid, direction, v, n] for v, n in json.loads(bins)]
    out["histograms"] = (["run_id", "cell_id", "direction", "bucket_ns", "count"], hist_rows)
    return out


def export(db_path: Path, out_dir: Path, fmt: str) -> list[Path]:
    """Write the tables of :func:`export_tables` as ``<table>.csv`` or ``.parquet``."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"export format must be csv or parquet, not {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(db_path)
    try:
        tables = export_tables(conn)
    finally:
        conn.close()
    written = []
    for name, (cols, rows) in tables.items():
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(cols)
                writer.writerows(rows)
        else:
            table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})
            pq.write_table(table, path)
        written.append(path)
    return written
