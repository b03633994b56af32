"""The results database: every run folder in one embedded SQLite file.

Run folders (``docs/results.md``) stay the source of truth; the database is
an index over them, so it can always be rebuilt with ``kmlbench import``.
It holds what reports, figures and comparisons need without re-reading
thousands of JSON files: runs (with their manifest), cells, their
parameters flattened to ``axis.key = value`` rows (so cells can be
filtered in SQL), their metrics, fio's completion-latency histograms per
cell and direction (so percentiles of merged repeats are recomputed
exactly instead of averaged) and KML's statistics (``kml_stats``).

Writes are per cell: :func:`ingest_cell` replaces one cell's rows in one
transaction (WAL journal), so the runner can call it after every cell and
a crash at any moment loses nothing that had finished, and ingesting the
same cell twice leaves the same contents. ``docs/reporting.md`` describes
the schema.

Command line (``kmlbench import``)::

    kmlbench import RUN_DIR|RUN_ID ... [--db FILE]   re-ingest these runs
    kmlbench import --all [--db FILE]                every run under results/
    kmlbench import --export csv|parquet DIR         write the tables out
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmlbench import paths
from kmlbench.clock import clock_of
from kmlbench.plan.cells import config_hash  # the hash cell ids carry; re-exported

DB_ENV = "KMLBENCH_DB"
DB_NAME = "kmlbench.db"
DIRECTIONS = ("read", "write", "trim")


def default_db_path() -> Path:
    """``$KMLBENCH_DB``, else ``kmlbench.db`` in the results folder."""
    env = os.environ.get(DB_ENV)
    return Path(env) if env else paths.results_dir() / DB_NAME


# --------------------------------------------------------------------------
# Schema and migrations.
#
# Each migration moves the schema from version i to i + 1 and runs in the
# same transaction as the update of ``schema_version``; append new ones,
# never edit a released one.


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run statements one by one: ``executescript`` would commit the migration's
    transaction half-way."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement!r}")


def _migrate_1(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE runs (
            run_id      TEXT PRIMARY KEY,
            accel       TEXT,
            emulated    INTEGER,
            matrix      TEXT,
            harness_git TEXT,
            run_dir     TEXT,
            manifest    TEXT NOT NULL            -- manifest.json, verbatim JSON
        );
        CREATE TABLE cells (
            run_id         TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            cell_id        TEXT NOT NULL,
            status         TEXT NOT NULL,
            repeat         INTEGER,
            kernel_variant TEXT,
            config_hash    TEXT NOT NULL,        -- shared by the repeats of one configuration
            params         TEXT NOT NULL,        -- JSON
            record         TEXT NOT NULL,        -- cell.json, verbatim JSON
            PRIMARY KEY (run_id, cell_id)
        );
        CREATE TABLE params (
            run_id  TEXT NOT NULL,
            cell_id TEXT NOT NULL,
            key     TEXT NOT NULL,               -- "scheduler.name"
            value   TEXT,                        -- strings as is, others as JSON
            PRIMARY KEY (run_id, cell_id, key),
            FOREIGN KEY (run_id, cell_id) REFERENCES cells(run_id, cell_id) ON DELETE CASCADE
        );
        CREATE INDEX params_by_value ON params(key, value);
        CREATE TABLE metrics (
            run_id  TEXT NOT NULL,
            cell_id TEXT NOT NULL,
            name    TEXT NOT NULL,
            value   REAL,
            PRIMARY KEY (run_id, cell_id, name),
            FOREIGN KEY (run_id, cell_id) REFERENCES cells(run_id, cell_id) ON DELETE CASCADE
        );
        CREATE TABLE histograms (
            run_id    TEXT NOT NULL,
            cell_id   TEXT NOT NULL,
            direction TEXT NOT NULL,             -- read | write | trim
            samples   INTEGER NOT NULL,
            mean_ns   REAL,                      -- exact mean (fio's clat_ns.mean, pooled)
            bins      TEXT NOT NULL,             -- JSON [[bucket_ns, count], ...] ascending
            PRIMARY KEY (run_id, cell_id, direction),
            FOREIGN KEY (run_id, cell_id) REFERENCES cells(run_id, cell_id) ON DELETE CASCADE
        );
        CREATE TABLE kml_stats (
            run_id  TEXT NOT NULL,
            cell_id TEXT NOT NULL,
            stats   TEXT NOT NULL,               -- cell.json's "kml_stats", JSON
            PRIMARY KEY (run_id, cell_id),
            FOREIGN KEY (run_id, cell_id) REFERENCES cells(run_id, cell_id) ON DELETE CASCADE
        );
        """,
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_1]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='schema_version'"
    ).fetchone()
    if row is None:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; returns the old version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = schema_version(conn)
        if old > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {old} is newer than this kmlbench ({SCHEMA_VERSION})"
            )
        if old == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (0)")
        for version in range(old, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
            conn.execute("UPDATE schema_version SET version = ?", (version + 1,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old


def connect(db_path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the database in WAL mode.

    The connection is in autocommit mode: writers open their own
    transactions (``BEGIN IMMEDIATE``) so that a cell is all or nothing.
    """
    db_path = Path(db_path)
    if readonly:
        if not db_path.exists():
            raise FileNotFoundError(f"no results database at {db_path}")
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --------------------------------------------------------------------------
# Reading a run folder.


def _read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def param_value(value: Any) -> str:
    """How a parameter is stored and matched: strings as is, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"scheduler": {"name": "none"}}`` -> ``{"scheduler.name": "none"}``."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = param_value(value)
    return out


def run_id_of(run_dir: Path) -> str:
    """The run id: the manifest's ``run_id``, else the folder name.

    A run folder downloaded into another name (CI artifacts) keeps its id.
    """
    manifest = _manifest(run_dir)
    rid = manifest.get("run_id")
    return str(rid) if rid else Path(run_dir).resolve().name


def _manifest(run_dir: Path) -> dict:
    try:
        data = _read_json(Path(run_dir) / "manifest.json")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def fio_histograms(fio_data: Mapping[str, Any]) -> dict[str, tuple[int, float | None, list]]:
    """Per direction: (samples, pooled mean ns, [[bucket_ns, count], ...]).

    Bins of every job are added up with :func:`kmlbench.data.stats.merge_histograms`
    (fio's buckets are the same for every job, so addition is exact).
    """
    from kmlbench.data.stats import Histogram, merge_histograms

    out: dict[str, tuple[int, float | None, list]] = {}
    for direction in DIRECTIONS:
        parts = []
        for job in fio_data.get("jobs", []):
            part = job.get(direction)
            if not isinstance(part, Mapping):
                continue
            clat = part.get("clat_ns") or {}
            bins = clat.get("bins")
            if not bins or int(clat.get("N", 0) or 0) <= 0:
                continue
            parts.append(Histogram.from_bins(bins, mean_ns=float(clat.get("mean", 0.0))))
        merged = merge_histograms(parts)
        if merged.total:
            pairs = zip(merged.values.tolist(), merged.counts.tolist(), strict=True)
            out[direction] = (merged.total, merged.mean_ns, [[v, n] for v, n in pairs])
    return out


def _load_fio(cell_dir: Path) -> dict | None:
    path = cell_dir / "fio.json"
    if not path.exists():
        return None
    from kmlbench.data.fio import FioError, parse_fio_output

    try:
        return parse_fio_output(path.read_text(errors="replace"))
    except FioError:
        return None


# --------------------------------------------------------------------------
# Writing.


def _upsert_run(conn: sqlite3.Connection, run_id: str, run_dir: Path) -> None:
    manifest = _manifest(run_dir)
    accel = manifest.get("accel")
    emulated = manifest.get("emulated")
    if emulated is None and accel is not None:
        emulated = accel != "kvm"
    matrix = manifest.get("matrix")
    harness = manifest.get("harness")
    conn.execute(
        "INSERT INTO runs (run_id, accel, emulated, matrix, harness_git, run_dir, manifest)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(run_id) DO UPDATE SET accel=excluded.accel, emulated=excluded.emulated,"
        " matrix=excluded.matrix, harness_git=excluded.harness_git, run_dir=excluded.run_dir,"
        " manifest=excluded.manifest",
        (
            run_id,
            accel,
            None if emulated is None else int(bool(emulated)),
            matrix.get("name") if isinstance(matrix, dict) else None,
            harness.get("git") if isinstance(harness, dict) else None,
            str(Path(run_dir).resolve()),
            json.dumps(manifest, sort_keys=True),
        ),
    )


def _delete_cell(conn: sqlite3.Connection, run_id: str, cell_id: str) -> None:
    for table in ("kml_stats", "histograms", "metrics", "params", "cells"):
        conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND cell_id = ?", (run_id, cell_id))


def _insert_cell(conn: sqlite3.Connection, run_id: str, cell_dir: Path, record: dict) -> None:
    cell_id = cell_dir.name
    params = record.get("params") or {}
    conn.execute(
        "INSERT INTO cells (run_id, cell_id, status, repeat, kernel_variant, config_hash,"
        " params, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            cell_id,
            str(record.get("status", "unknown")),
            record.get("repeat"),
            record.get("kernel_variant"),
            config_hash(params),
            json.dumps(params, sort_keys=True),
            json.dumps(record, sort_keys=True),
        ),
    )
    conn.executemany(
        "INSERT INTO params (run_id, cell_id, key, value) VALUES (?, ?, ?, ?)",
        [(run_id, cell_id, k, v) for k, v in sorted(flatten_params(params).items())],
    )
    metrics = record.get("metrics") or {}
    conn.executemany(
        "INSERT INTO metrics (run_id, cell_id, name, value) VALUES (?, ?, ?, ?)",
        [
            (run_id, cell_id, k, float(v))
            for k, v in sorted(metrics.items())
            if isinstance(v, int | float) and not isinstance(v, bool)
        ],
    )
    fio_data = _load_fio(cell_dir)
    if fio_data is not None:
        conn.executemany(
            "INSERT INTO histograms (run_id, cell_id, direction, samples, mean_ns, bins)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (run_id, cell_id, d, n, mean, json.dumps(bins, separators=(",", ":")))
                for d, (n, mean, bins) in fio_histograms(fio_data).items()
            ],
        )
    stats = record.get("kml_stats")
    if stats is not None:
        conn.execute(
            "INSERT INTO kml_stats (run_id, cell_id, stats) VALUES (?, ?, ?)",
            (run_id, cell_id, json.dumps(stats, sort_keys=True)),
        )


def _ingest_cell(conn: sqlite3.Connection, run_dir: Path, run_id: str, cell_id: str) -> bool:
    cell_dir = Path(run_dir) / "cells" / cell_id
    try:
        record = _read_json(cell_dir / "cell.json")
    except (OSError, ValueError):
        return False  # not finished (or not a cell): nothing to ingest
    if not isinstance(record, dict):
        return False
    with _transaction(conn):
        _upsert_run(conn, run_id, run_dir)
        _delete_cell(conn, run_id, cell_id)
        _insert_cell(conn, run_id, cell_dir, record)
    return True


def ingest_cell(db_path: Path, run_dir: Path, cell_id: str) -> None:
    """Add (or replace) one finished cell of ``run_dir`` in the database.

    Idempotent and atomic: one transaction per call. A cell without a
    readable ``cell.json`` (not finished) is ignored.
    """
    conn = connect(db_path)
    try:
        _ingest_cell(conn, Path(run_dir), run_id_of(Path(run_dir)), cell_id)
    finally:
        conn.close()


def ingest_run(db_path: Path, run_dir: Path, *, replace: bool = True) -> int:
    """Ingest every finished cell of ``run_dir``; returns how many.

    With ``replace`` (the default) cells of this run that are in the
    database but no longer in the folder are dropped, so the run's rows
    mirror the folder exactly. Each cell is still its own transaction.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder {run_dir}")
    run_id = run_id_of(run_dir)
    cells_path = run_dir / "cells"
    cell_ids = (
        sorted(p.name for p in cells_path.iterdir() if p.is_dir()) if cells_path.is_dir() else []
    )
    conn = connect(db_path)
    try:
        with _transaction(conn):
            _upsert_run(conn, run_id, run_dir)
        done = [cid for cid in cell_ids if _ingest_cell(conn, run_dir, run_id, cid)]
        if replace:
            known = {
                r[0] for r in conn.execute("SELECT cell_id FROM cells WHERE run_id=?", (run_id,))
            }
            with _transaction(conn):
                for stale in sorted(known - set(done)):
                    _delete_cell(conn, run_id, stale)
        return len(done)
    finally:
        conn.close()


def delete_run(db_path: Path, run_id: str) -> None:
    conn = connect(db_path)
    try:
        with _transaction(conn):
            for (cell_id,) in conn.execute(
                "SELECT cell_id FROM cells WHERE run_id = ?", (run_id,)
            ).fetchall():
                _delete_cell(conn, run_id, cell_id)
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
    finally:
        conn.close()


# --------------------------------------------------------------------------
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
    params: dict
    flat_params: dict[str, str]
    metrics: dict[str, float]
    histograms: dict[str, Any] = field(default_factory=dict)  # direction -> stats.Histogram
    kml_stats: dict | None = None

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
    manifest: dict

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

    The key ``run`` (or ``run_id``) selects a run by id.
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
    from kmlbench.data.stats import Histogram

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
        cond.append(
            "EXISTS (SELECT 1 FROM params p WHERE p.run_id = cells.run_id"
            " AND p.cell_id = cells.cell_id AND p.key = ? AND p.value = ?)"
        )
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
                cells[(rid, cid)].histograms[direction] = Histogram.from_pairs(
                    json.loads(bins), mean_ns=mean_ns
                )
    return list(cells.values())


# --------------------------------------------------------------------------
# Dump and export.


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
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
            import csv

            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(cols)
                writer.writerows(rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})
            pq.write_table(table, path)
        written.append(path)
    return written


# --------------------------------------------------------------------------
# Command line.


def resolve_run_dir(arg: str | Path) -> Path:
    """A run folder given as a path, or a run id (or ``latest``) under results/."""
    path = Path(arg)
    if path.is_dir():
        return path
    candidate = paths.results_dir() / str(arg)
    if candidate.is_dir():
        return candidate.resolve()
    raise FileNotFoundError(f"no run folder {arg} (neither a path nor a run id in results/)")


def _all_run_dirs() -> list[Path]:
    root = paths.results_dir()
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / "cells").is_dir()
    )


def command(args: argparse.Namespace) -> int:
    """``kmlbench import``: ingest run folders into the database, or export it."""
    db_path = args.db or default_db_path()
    if args.export and args.export[0] not in ("csv", "parquet"):
        print("kmlbench import: --export FORMAT must be csv or parquet", file=sys.stderr)
        return 2
    try:
        run_dirs = [resolve_run_dir(r) for r in args.runs]
    except FileNotFoundError as e:
        print(f"kmlbench import: {e}", file=sys.stderr)
        return 2
    if args.all:
        run_dirs += _all_run_dirs()
    if not run_dirs and not args.export:
        print("kmlbench import: give run folders, --all, or --export", file=sys.stderr)
        return 2
    if args.fresh:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(db_path) + suffix).unlink()
    for run_dir in run_dirs:
        n = ingest_run(db_path, run_dir)
        print(f"kmlbench import: {run_id_of(run_dir)}: {n} cells -> {db_path}")
    if args.export:
        for path in export(db_path, Path(args.export[1]), args.export[0]):
            print(f"kmlbench import: wrote {path}")
    return 0
