"""The run folder: manifest, one record per cell, ``summary.json``, ``latest``.

Layout (``docs/results.md`` has the schema)::

    results/<run-id>/manifest.json
    results/<run-id>/matrix.yaml          exact copy of the matrix file
    results/<run-id>/plan.json            cell ids in matrix order
    results/<run-id>/cells/<cell-id>/cell.json   (+ fio.json, console.log, ...)
    results/<run-id>/summary.json
    results/latest -> <run-id>

A run can be killed at any moment (Ctrl-C, OOM, power), so every file is
written to a temporary name and renamed into place: a reader sees the old
file or the new one, never half of one. ``cell.json`` is the source of
truth and is written last for a cell; ``summary.json`` is only ever rebuilt
from the ``cell.json`` files, so it cannot disagree with them, and
``--resume`` trusts exactly the cells that have a ``cell.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kmlbench.files import atomic_write, sync_folder
from kmlbench.plan.cells import Cell
from kmlbench.status import STATUSES

SCHEMA_VERSION = 1

RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Keys of cell.json that record_cell owns; ``extra`` may not override them.
RESERVED_CELL_KEYS = (
    "schema_version",
    "id",
    "repeat",
    "kernel_variant",
    "params",
    "status",
    "metrics",
    "recorded_at",
)


def _now_iso() -> str:
    """UTC with microseconds: also the order of records when there is no plan."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def make_run_id(name: str, now: float | None = None) -> str:
    """``YYYYmmdd-HHMMSS-<name>`` in UTC: sorts by start time on any host."""
    if not _SAFE_NAME_RE.match(name):
        raise ValueError(f"run name {name!r} must be A-Z a-z 0-9 _ . - only")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{name}"


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity; a metric that is not a number becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class RunDir:
    """One run's folder under the results root."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.path = self.root / run_id

    # -- creation ----------------------------------------------------------

    @classmethod
    def create(cls, root: Path, run_id: str | None = None, *, name: str = "run") -> RunDir:
        """A new, empty run folder; ``run_id`` defaults to :func:`make_run_id`.

        If that id is taken (two runs in one second) ``-2``, ``-3``... is
        appended; ids stay sortable by start time.
        """
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        base = run_id or make_run_id(name)
        if not _SAFE_NAME_RE.match(base):
            raise ValueError(f"bad run id {base!r}")
        candidate, n = base, 1
        while True:
            try:
                (root / candidate).mkdir()
                break
            except FileExistsError:
                if run_id is not None:
                    raise
                n += 1
                candidate = f"{base}-{n}"
        run = cls(root, candidate)
        run.cells_path.mkdir()
        return run

    @classmethod
    def open(cls, root: Path, run_id: str) -> RunDir:
        """An existing run folder (``--resume``); ``latest`` is accepted."""
        root = Path(root)
        if run_id == "latest":
            target = root / "latest"
            if not target.is_symlink():
                raise FileNotFoundError(f"{target} does not exist")
            run_id = os.readlink(target).rstrip("/").split("/")[-1]
        elif "/" in run_id:
            # the run's folder, as report and compare take it (from here, or
            # within root: ID/, latest/): it must be in root
            inside = [
                f.resolve()
                for f in (Path(run_id), root / run_id)
                if f.resolve().parent == root.resolve()
            ]
            if not inside:
                raise FileNotFoundError(
                    f"{run_id} is not a run folder in {root}: --resume takes a run id there"
                )
            run_id = inside[0].name
        if not _SAFE_NAME_RE.match(run_id):
            raise ValueError(f"bad run id {run_id!r}")
        run = cls(root, run_id)
        if not run.path.is_dir():
            raise FileNotFoundError(f"no run folder {run.path}")
        run.cells_path.mkdir(exist_ok=True)
        return run

    # -- paths ---------------------------------------------------------------

    @property
    def cells_path(self) -> Path:
        return self.path / "cells"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def plan_path(self) -> Path:
        return self.path / "plan.json"

    def cell_dir(self, cell_id: str) -> Path:
        """``cells/<cell-id>/``, created on first use."""
        if not _SAFE_NAME_RE.match(cell_id) or ".." in cell_id:
            raise ValueError(f"bad cell id {cell_id!r}")
        d = self.cells_path / cell_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- run-level files -----------------------------------------------------

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``manifest.json``; ``summary.json`` takes accel/emulated from it."""
        atomic_write_json(self.manifest_path, manifest)
        self.write_summary()

    def read_manifest(self) -> dict[str, Any]:
        data = _read_json(self.manifest_path)
        return data if isinstance(data, dict) else {}

    def copy_matrix(self, matrix_path: Path) -> Path:
        """Keep the exact matrix file (byte for byte: error lines stay valid)."""
        dest = self.path / "matrix.yaml"
        atomic_write(dest, Path(matrix_path).read_bytes())
        return dest

    def write_plan(self, cells: Sequence[Cell]) -> None:
        """Record the matrix order, which ``summary.json`` follows."""
        atomic_write_json(self.plan_path, {"cell_ids": [c.id for c in cells]})
        self.write_summary()

    def planned_cell_ids(self) -> list[str]:
        data = _read_json(self.plan_path)
        if isinstance(data, dict) and isinstance(data.get("cell_ids"), list):
            return [str(x) for x in data["cell_ids"]]
        return []

    # -- cells ---------------------------------------------------------------

    def write_cell_file(self, cell_id: str, name: str, data: str | bytes) -> Path:
        """An artefact of a cell (``fio.json``, ``console.log``, ...), atomically."""
        if not _SAFE_NAME_RE.match(name):
            raise ValueError(f"bad file name {name!r}")
        path = self.cell_dir(cell_id) / name
        atomic_write(path, data)
        return path

    def record_cell(
        self, cell: Cell, status: str, metrics: dict[str, Any], extra: dict[str, Any]
    ) -> None:
        """Write ``cells/<id>/cell.json`` atomically, then rebuild ``summary.json``.

        Call it last for a cell, after its artefacts: a cell with a
        ``cell.json`` counts as finished for ``--resume``.
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        clash = sorted(set(extra) & set(RESERVED_CELL_KEYS))
        if clash:
            raise ValueError(f"extra may not set {', '.join(clash)}")
        record = {
            "schema_version": SCHEMA_VERSION,
            "id": cell.id,
            "repeat": cell.repeat,
            "kernel_variant": cell.kernel_variant,
            "params": cell.params,
            "status": status,
            "metrics": dict(metrics),
            "recorded_at": _now_iso(),
            **extra,
        }
        # the artefacts first: a record beside an empty fio.json after a
        # crash would count as finished and lose the cell's histograms
        sync_folder(self.cell_dir(cell.id))
        atomic_write_json(self.cell_dir(cell.id) / "cell.json", record)
        self.write_summary()

    def read_cells(self) -> dict[str, dict[str, Any]]:
        """Every readable ``cell.json`` by cell id (temporary files are ignored)."""
        out: dict[str, dict[str, Any]] = {}
        if not self.cells_path.is_dir():
            return out
        for d in sorted(self.cells_path.iterdir()):
            record = _read_json(d / "cell.json")
            if (
                isinstance(record, dict)
                and record.get("id") == d.name
                and record.get("status") in STATUSES
            ):
                out[d.name] = record
        return out

    def finished_cell_ids(self, *, retry_statuses: Iterable[str] = ()) -> set[str]:
        """Cells that have a record; ``--resume`` skips them.

        ``retry_statuses`` (e.g. ``("infra-error",)``) makes cells with those
        statuses count as unfinished so they run again.
        """
        retry = set(retry_statuses)
        return {cid for cid, rec in self.read_cells().items() if rec["status"] not in retry}

    def discard_unfinished(self, cell_id: str) -> None:
        """Empty the folder of a cell that was interrupted (no ``cell.json``)."""
        d = self.cells_path / cell_id
        if d.is_dir() and not (d / "cell.json").exists():
            shutil.rmtree(d)

    # -- summary and latest ----------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """``summary.json`` as a dict, built from the manifest and cell records."""
        manifest = self.read_manifest()
        records = self.read_cells()
        plan = self.planned_cell_ids()
        ordered = [records[cid] for cid in plan if cid in records]
        rest = sorted(
            (r for cid, r in records.items() if cid not in set(plan)),
            key=lambda r: (str(r.get("recorded_at", "")), r["id"]),
        )
        accel = manifest.get("accel")
        emulated = manifest.get("emulated")
        if emulated is None and accel is not None:
            emulated = accel != "kvm"
        counts = {s: 0 for s in STATUSES}
        for r in records.values():
            counts[r["status"]] += 1
        matrix = manifest.get("matrix")
        return {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "matrix": matrix.get("name") if isinstance(matrix, dict) else None,
            "accel": accel,
            "emulated": emulated,
            # None for runs from before guest.clock existed (they were realtime)
            "clock": manifest.get("clock"),
            "icount_shift": manifest.get("icount_shift"),
            "updated_at": _now_iso(),
            "planned": len(plan) if plan else None,
            "finished": len(records),
            "counts": counts,
            "cells": [
                {k: v for k, v in r.items() if k != "schema_version"} for r in ordered + rest
            ],
        }

    def write_summary(self) -> None:
        atomic_write_json(self.summary_path, self.summary())

    def update_latest(self) -> None:
        """Point ``<root>/latest`` (relative link) at the newest run id.

        Newest by id, not by who called last: resuming an old run must not
        hide a newer one. A run with a hand-picked id (not ``RUN_ID_RE``)
        simply becomes ``latest``.
        """
        target = self.run_id
        if RUN_ID_RE.match(self.run_id):
            target = max(
                p.name for p in self.root.iterdir() if p.is_dir() and RUN_ID_RE.match(p.name)
            )
        link = self.root / "latest"
        if link.exists() and not link.is_symlink():
            raise FileExistsError(f"{link} exists and is not a symlink; not replacing it")
        tmp = self.root / f".latest.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)


def prepare_cell_dir(cell_dir: Path) -> None:
    """Make a cell's folder ready for a fresh attempt, losing nothing finished.

    A finished attempt that ``--retry`` runs again (it has a ``cell.json``)
    moves into ``attempt-N/``: its record and logs explain why it is retried.
    Partial files of an interrupted attempt (no ``cell.json``) are removed.
    Earlier ``attempt-N/`` folders are always kept.
    """
    if not cell_dir.is_dir():
        return
    current = [item for item in cell_dir.iterdir() if not item.name.startswith("attempt-")]
    if (cell_dir / "cell.json").exists():
        n = 1
        while (cell_dir / f"attempt-{n}").exists():
            n += 1
        dest = cell_dir / f"attempt-{n}"
        dest.mkdir()
        for item in current:
            item.rename(dest / item.name)
        return
    for item in current:
        if item.is_dir():
            shutil.rmtree(item)
        else:
            item.unlink()
