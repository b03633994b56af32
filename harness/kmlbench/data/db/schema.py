"""The database's schema and connection: file location, migrations, WAL connection,
transactions, and how a parameter is stored (``axis.key = value`` rows).

Each migration moves the schema from version i to i + 1 and runs in the same
transaction as the update of ``schema_version``; append new ones, never edit
a released one. ``docs/reporting.md`` describes the schema.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from kmlbench import paths
from kmlbench.errors import NotADatabase

DB_ENV = "KMLBENCH_DB"
# the histograms table's key for a direction's total-latency histogram
# (fio's ``lat_ns``); a bare direction is its completion latency's (``clat_ns``)
TOTAL_PREFIX = "lat:"
DB_NAME = "kmlbench.db"


def default_db_path() -> Path:
    """``$KMLBENCH_DB``, else ``kmlbench.db`` in the results folder."""
    env = os.environ.get(DB_ENV)
    return Path(env) if env else paths.results_dir() / DB_NAME


# --------------------------------------------------------------------------
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
            direction TEXT NOT NULL,             -- read | write | trim; lat:read ... total
            samples   INTEGER NOT NULL,
            mean_ns   REAL,                      -- exact mean (fio's clat_ns/lat_ns.mean, pooled)
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
    else:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _open_readonly(db_path) if readonly else _open_writable(db_path)
    except sqlite3.DatabaseError as e:  # not a database, a folder, no permission...
        raise NotADatabase(f"{db_path}: cannot open as a results database: {e}") from e


def _open_readonly(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # is it one?
    except BaseException:
        conn.close()
        raise
    return conn


def _open_writable(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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
