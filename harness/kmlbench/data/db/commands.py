"""``kmlbench import``: ingest run folders into the results database, or export it.

Command line::

    kmlbench import RUN_DIR|RUN_ID ... [--db FILE]   re-ingest these runs
    kmlbench import --all [--db FILE]                every run under results/
    kmlbench import --export csv|parquet DIR         write the tables out
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from kmlbench import paths
from kmlbench.data.db.exports import export
from kmlbench.data.db.ingest import ingest_run, resolve_run_dir, run_id_of
from kmlbench.data.db.schema import default_db_path


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
        try:
            written = export(db_path, Path(args.export[1]), args.export[0])
        except OSError as e:  # DIR is a file, not writable, ...
            print(f"kmlbench import: --export {args.export[1]}: {e.strerror or e}", file=sys.stderr)
            return 2
        for path in written:
            print(f"kmlbench import: wrote {path}")
    return 0
