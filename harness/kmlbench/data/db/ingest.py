"""Ingesting run folders: each finished cell's rows replaced in one transaction.

Writes are per cell: :func:`ingest_cell` replaces one cell's rows in one
transaction (WAL journal), so the runner can call it after every cell and a
crash at any moment loses nothing that had finished, and ingesting the same
cell twice leaves the same contents. Also the run folder's side of it: its
run id, its cells' fio histograms, and finding a run folder by id.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmlbench import paths
from kmlbench.data.db.schema import TOTAL_PREFIX, connect, flatten_params, transaction
from kmlbench.data.fio import parse_fio_output
from kmlbench.data.histogram import Histogram, merge_histograms
from kmlbench.plan.cells import config_hash
from kmlbench.plan.fio_job import FioError

DIRECTIONS = ("read", "write", "trim")


# Reading a run folder.


def _read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def run_id_of(run_dir: Path) -> str:
    """The run id: the manifest's ``run_id``, else the folder name.

    A run folder downloaded into another name (CI artifacts) keeps its id.
    """
    manifest = _manifest(run_dir)
    rid = manifest.get("run_id")
    return str(rid) if rid else Path(run_dir).resolve().name


def _manifest(run_dir: Path) -> dict[str, Any]:
    try:
        data = _read_json(Path(run_dir) / "manifest.json")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def fio_histograms(
    fio_data: Mapping[str, Any], kind: str = "clat"
) -> dict[str, tuple[int, float | None, list[Any]]]:
    """Per direction: (samples, pooled mean ns, [[bucket_ns, count], ...]) of
    ``kind`` latency: ``clat`` (completion) or ``lat`` (total; only jobs run
    with ``lat_percentiles`` have its bins).

    Bins of every job are added up with :func:`kmlbench.data.stats.merge_histograms`
    (fio's buckets are the same for every job, so addition is exact).
    """
    out: dict[str, tuple[int, float | None, list[Any]]] = {}
    for direction in DIRECTIONS:
        parts = []
        for job in fio_data.get("jobs", []):
            part = job.get(direction)
            if not isinstance(part, Mapping):
                continue
            lat = part.get(f"{kind}_ns") or {}
            bins = lat.get("bins")
            if not bins or int(lat.get("N", 0) or 0) <= 0:
                continue
            parts.append(Histogram.from_bins(bins, mean_ns=float(lat.get("mean", 0.0))))
        merged = merge_histograms(parts)
        if merged.total:
            pairs = zip(merged.values.tolist(), merged.counts.tolist(), strict=True)
            out[direction] = (merged.total, merged.mean_ns, [[v, n] for v, n in pairs])
    return out


def _histogram_rows(cell_dir: Path) -> list[tuple[str, int, float | None, str]]:
    """The histograms table's rows of a cell's ``fio.json``, completion and
    total latency (direction, samples, mean, bins); none without a report,
    and none, said on stderr, for one of the wrong shape."""
    path = cell_dir / "fio.json"
    if not path.exists():
        return []
    try:
        data = parse_fio_output(path.read_text(errors="replace"))
        return [
            (prefix + d, n, mean, json.dumps(bins, separators=(",", ":")))
            for kind, prefix in (("clat", ""), ("lat", TOTAL_PREFIX))
            for d, (n, mean, bins) in fio_histograms(data, kind).items()
        ]
    except FioError:
        return []
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        print(f"kmlbench: {path}: not a fio report's shape ({e}): no histograms", file=sys.stderr)
        return []


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


def _insert_cell(
    conn: sqlite3.Connection, run_id: str, cell_dir: Path, record: dict[str, Any]
) -> None:
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
    conn.executemany(
        "INSERT INTO histograms (run_id, cell_id, direction, samples, mean_ns, bins)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(run_id, cell_id, *row) for row in _histogram_rows(cell_dir)],
    )
    stats = record.get("kml_stats")
    if stats is not None:
        conn.execute(
            "INSERT INTO kml_stats (run_id, cell_id, stats) VALUES (?, ?, ?)",
            (run_id, cell_id, json.dumps(stats, sort_keys=True)),
        )


def _malformed(record: Any) -> str | None:
    """Why a parsed cell.json cannot be a cell's record, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key in ("params", "metrics", "kml_stats"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            return f"{key} is a {type(record[key]).__name__}, not an object"
    repeat = record.get("repeat")
    if repeat is not None and (not isinstance(repeat, int) or isinstance(repeat, bool)):
        return f"repeat {repeat!r} is not a whole number"
    return None


def _ingest_cell(conn: sqlite3.Connection, run_dir: Path, run_id: str, cell_id: str) -> bool:
    cell_dir = Path(run_dir) / "cells" / cell_id
    path = cell_dir / "cell.json"
    if not path.exists():
        return False  # not finished (or not a cell): nothing to ingest
    try:
        record = _read_json(path)
    except (OSError, ValueError) as e:
        why: str | None = f"unreadable ({e})"
    else:
        why = _malformed(record)
    if why is not None:
        # not a finished cell: left out of the database, and said so
        print(f"kmlbench: {path}: {why}: left out", file=sys.stderr)
        return False
    with transaction(conn):
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
        with transaction(conn):
            _upsert_run(conn, run_id, run_dir)
        done = [cid for cid in cell_ids if _ingest_cell(conn, run_dir, run_id, cid)]
        if replace:
            known = {
                r[0] for r in conn.execute("SELECT cell_id FROM cells WHERE run_id=?", (run_id,))
            }
            with transaction(conn):
                for stale in sorted(known - set(done)):
                    _delete_cell(conn, run_id, stale)
        return len(done)
    finally:
        conn.close()


def delete_run(db_path: Path, run_id: str) -> None:
    conn = connect(db_path)
    try:
        with transaction(conn):
            for (cell_id,) in conn.execute(
                "SELECT cell_id FROM cells WHERE run_id = ?", (run_id,)
            ).fetchall():
                _delete_cell(conn, run_id, cell_id)
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
    finally:
        conn.close()


def resolve_run_dir(arg: str | Path) -> Path:
    """A run folder given as a path, or a run id (or ``latest``) under results/."""
    path = Path(arg)
    if not path.is_dir():
        path = paths.results_dir() / str(arg)
        if not path.is_dir():
            raise FileNotFoundError(
                f"no run folder {arg} (neither a path nor a run id in results/)"
            )
        path = path.resolve()
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no manifest.json)")
    return path
