"""Reading the database: runs and cells (with metrics, histograms and KML's
statistics) as reports and statistics see them, filters, and a full dump."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kmlbench.clock import clock_of
from kmlbench.data.db.schema import TOTAL_PREFIX, flatten_params
from kmlbench.data.histogram import Histogram

# Reading.


@dataclass
class CellRow:
    """One cell as reports and statistics see it."""

    run_id: str
    cell_id: str
    status: str
    repeat: int | None
    kernel_variant: str | None
    config_hash: str
    params: dict[str, Any]
    flat_params: dict[str, str]
    metrics: dict[str, float]
    histograms: dict[str, Any] = field(default_factory=dict)  # direction -> stats.Histogram
    # the same of the total latency (submission to completion), where fio kept it
    lat_histograms: dict[str, Any] = field(default_factory=dict)
    kml_stats: dict[str, Any] | None = None

    def param(self, key: str, default: str | None = None) -> str | None:
        return self.flat_params.get(key, default)


@dataclass
class RunRow:
    run_id: str
    accel: str | None
    emulated: bool | None
    matrix: str | None
    harness_git: str | None
    run_dir: str | None
    manifest: dict[str, Any]

    @property
    def clock(self) -> tuple[str, int | None]:
        """``(clock, icount_shift)`` the run's guests used (realtime for older runs)."""
        return clock_of(self.manifest)


def list_runs(conn: sqlite3.Connection) -> list[RunRow]:
    rows = conn.execute(
        "SELECT run_id, accel, emulated, matrix, harness_git, run_dir, manifest FROM runs"
        " ORDER BY run_id"
    ).fetchall()
    return [
        RunRow(r[0], r[1], None if r[2] is None else bool(r[2]), r[3], r[4], r[5], json.loads(r[6]))
        for r in rows
    ]


def get_run(conn: sqlite3.Connection, run_id: str) -> RunRow:
    for run in list_runs(conn):
        if run.run_id == run_id:
            return run
    raise KeyError(f"run {run_id!r} is not in the database")


def parse_filter(text: str) -> dict[str, str]:
    """``"scheduler.name=none,workload.template=randread"`` -> a dict.

    The key ``run`` (or ``run_id``) selects a run by id. An empty value
    (``model.geometry=``) selects the cells that do not record the key.
    """
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad filter {part!r}: expected KEY=VALUE")
        key = key.strip()
        out["run" if key == "run_id" else key] = value.strip()
    return out


def load_cells(
    conn: sqlite3.Connection,
    run_id: str | None = None,
    where: Mapping[str, str] | None = None,
    *,
    status: str | None = "ok",
    with_histograms: bool = True,
) -> list[CellRow]:
    """Cells matching a run id and ``key=value`` parameter filters.

    ``where`` may hold ``run`` too. Only cells with ``status`` (default
    ``ok``) unless ``status`` is None. Ordered by run, configuration, repeat.
    """
    where = dict(where or {})
    if "run" in where:
        rid = where.pop("run")
        if run_id is not None and rid != run_id:
            return []
        run_id = rid
    sql = "SELECT run_id, cell_id, status, repeat, kernel_variant, config_hash, params FROM cells"
    cond: list[str] = []
    args: list[Any] = []
    if run_id is not None:
        cond.append("run_id = ?")
        args.append(run_id)
    if status is not None:
        cond.append("status = ?")
        args.append(status)
    for key, value in where.items():
        exists = (
            "EXISTS (SELECT 1 FROM params p WHERE p.run_id = cells.run_id"
            " AND p.cell_id = cells.cell_id AND p.key = ?"
        )
        if value == "":  # the cells without the key
            cond.append(f"NOT {exists})")
            args.append(key)
        else:
            cond.append(f"{exists} AND p.value = ?)")
            args += [key, value]
    if cond:
        sql += " WHERE " + " AND ".join(cond)
    sql += " ORDER BY run_id, config_hash, repeat, cell_id"
    cells: dict[tuple[str, str], CellRow] = {}
    for rid, cid, st, rep, variant, chash, params_json in conn.execute(sql, args):
        params = json.loads(params_json)
        cells[(rid, cid)] = CellRow(
            rid, cid, st, rep, variant, chash, params, flatten_params(params), {}
        )
    if not cells:
        return []
    run_ids = sorted({k[0] for k in cells})
    marks = ",".join("?" * len(run_ids))
    for rid, cid, name, value in conn.execute(
        f"SELECT run_id, cell_id, name, value FROM metrics WHERE run_id IN ({marks})", run_ids
    ):
        if (rid, cid) in cells and value is not None:
            cells[(rid, cid)].metrics[name] = value
    for rid, cid, stats in conn.execute(
        f"SELECT run_id, cell_id, stats FROM kml_stats WHERE run_id IN ({marks})", run_ids
    ):
        if (rid, cid) in cells:
            cells[(rid, cid)].kml_stats = json.loads(stats)
    if with_histograms:
        for rid, cid, direction, _samples, mean_ns, bins in conn.execute(
            "SELECT run_id, cell_id, direction, samples, mean_ns, bins FROM histograms"
            f" WHERE run_id IN ({marks})",
            run_ids,
        ):
            if (rid, cid) in cells:
                hist = Histogram.from_pairs(json.loads(bins), mean_ns=mean_ns)
                if direction.startswith(TOTAL_PREFIX):
                    cells[(rid, cid)].lat_histograms[direction[len(TOTAL_PREFIX) :]] = hist
                else:
                    cells[(rid, cid)].histograms[direction] = hist
    return list(cells.values())


# --------------------------------------------------------------------------
# Dump and export.


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted: two databases with equal dumps hold the same data."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    out = {}
    for table in tables:
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()
        if table == "runs":  # where the folder was read from is not data
            cols = [d[1] for d in conn.execute("PRAGMA table_info(runs)")]
            i = cols.index("run_dir")
            rows = [r[:i] + r[i + 1 :] for r in rows]
        out[table] = sorted(rows, key=lambda r: tuple("" if v is None else str(v) for v in r))
    return out
