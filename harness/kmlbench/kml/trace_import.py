"""``kmlbench trace import``: a CSV of requests from anywhere into a KML trace.

Each CSV row is one request (``docs/trace.md``, "Importing requests"): its
insert time, direction, start sector, size, issue time, deadline, met and
completion. The features are not read from the file but computed by
replaying the requests' events through KML's own feature code
(``kernel/kml/kml_dd_feat.c``, in ``libkml.so``), the code the kernel's
insert hook runs: each request is inserted at ``insert_ns``, dispatched at
``insert_ns + issue_ns`` and completed at ``insert_ns + completion_ns``, in
time order (ties: inserts, then dispatches, then completions). What the
kernel's hooks count themselves (requests queued and in flight, the oldest
queued request of a direction, mq-deadline's batch direction) is counted
here from the same events; where that cannot match the kernel (requests
that are not in the file, the disk's capacity), ``docs/trace.md`` says what
differs.

The column names are those of ``kmlbench trace csv``, so a recorded trace
exported as CSV imports back (other columns are ignored), which is how the
tests measure the replay against the kernel.
"""

from __future__ import annotations

import argparse
import csv
import ctypes as C
import sys
from collections import deque
from pathlib import Path

import numpy as np

from kmlbench.data.trace import NR_FEATURES, SAMPLE_DTYPE, TraceError, write_trace
from kmlbench.kml.ffi import FeatIn, FeatState, lib
from kmlbench.kml.samples import MAX_TIME_NS
from kmlbench.kml.train import check_output

__all__ = ["COLUMNS", "import_csv", "read_requests", "replay"]

# The documented columns, in the order docs/trace.md lists them.
COLUMNS = ("insert_ns", "op", "sector", "bytes", "issue_ns", "deadline_ns", "met", "completion_ns")
OPTIONAL = ("dev",)  # one queue per dev; all rows are one queue without it
_OPS = {"0": 0, "1": 1, "read": 0, "write": 1, "r": 0, "w": 1}
_LIMITS = {  # largest value of each column: its field's width, or a time no queue takes
    "insert_ns": 2**62,
    "sector": 2**63,
    "bytes": 2**32 - 1,
    "issue_ns": MAX_TIME_NS,
    "deadline_ns": MAX_TIME_NS,
    "completion_ns": MAX_TIME_NS,
    "dev": 2**32 - 1,
}
_SECTOR = 512
_INSERT, _DISPATCH, _COMPLETE = 0, 1, 2  # order of events at the same ns


def _number(path: Path, where: str, column: str, text: str) -> int:
    """A whole number within the column's limit, or TraceError naming file and row."""
    if column == "op":
        op = _OPS.get(text.strip().lower())
        if op is None:
            raise TraceError(f"{path}: {where}: op {text!r} is not 0, 1, read or write")
        return op
    try:
        value = int(text.strip())
    except ValueError:
        raise TraceError(f"{path}: {where}: {column} {text!r} is not a whole number") from None
    top = 1 if column == "met" else _LIMITS[column]
    if not 0 <= value <= top:
        raise TraceError(f"{path}: {where}: {column} {value} is not in 0..{top}")
    return value


def read_requests(path: Path) -> np.ndarray:
    """The CSV's requests as ``SAMPLE_DTYPE`` rows without features, in file order."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise TraceError(f"{path}: empty; expected a header line: {','.join(COLUMNS)}")
            names = [h.strip() for h in header]
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise TraceError(
                    f"{path}: line 1: no column {', '.join(missing)} "
                    f"(a request CSV has {','.join(COLUMNS)})"
                )
            wanted = [c for c in (*COLUMNS, *OPTIONAL) if c in names]
            index = {c: names.index(c) for c in wanted}
            values: list[list[int]] = []
            for line in reader:
                if not line:
                    continue
                where = f"row {len(values) + 1} (line {reader.line_num})"
                if len(line) != len(names):
                    raise TraceError(
                        f"{path}: {where}: {len(line)} fields, the header has {len(names)}"
                    )
                values.append([_number(path, where, c, line[index[c]]) for c in wanted])
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise TraceError(f"{path}: cannot read as a CSV: {why}") from None
    except csv.Error as exc:
        raise TraceError(f"{path}: not a CSV: {exc}") from None
    if not values:
        raise TraceError(f"{path}: a header and no requests")
    table = np.array(values, np.uint64).reshape(len(values), len(wanted))
    rows = np.zeros(len(values), SAMPLE_DTYPE)
    for k, column in enumerate(wanted):
        rows[column] = table[:, k]
    _check(path, rows)
    return rows


def _check(path: Path, rows: np.ndarray) -> None:
    """Requests no queue produces: TraceError naming the first such row."""
    checks = (
        (rows["deadline_ns"] == 0, "deadline_ns is 0 (the deadline is after the insert)"),
        (rows["completion_ns"] < rows["issue_ns"], "completion_ns is before issue_ns"),
    )
    for bad, what in checks:
        where = np.flatnonzero(bad)
        if len(where):
            raise TraceError(f"{path}: row {int(where[0]) + 1}: {what} ({len(where)} such rows)")


def replay(rows: np.ndarray, capacity: int | None = None) -> np.ndarray:
    """The features (``n x KML_DD_NR_FEATURES`` Q16.16) of one queue's requests.

    Events in time order through ``kml_dd_feat_insert`` and
    ``kml_dd_feat_dispatch``; ``capacity`` (sectors) defaults to the end of
    the furthest request.
    """
    n = len(rows)
    insert = rows["insert_ns"].astype(np.uint64)
    ops = rows["op"].astype(np.uint8)
    if capacity is None:
        ends = rows["sector"] + (rows["bytes"].astype(np.uint64) + _SECTOR - 1) // _SECTOR
        capacity = int(ends.max()) if n else 0
    times = np.concatenate([insert, insert + rows["issue_ns"], insert + rows["completion_ns"]])
    kinds = np.repeat(np.array([_INSERT, _DISPATCH, _COMPLETE], np.uint8), n)
    which = np.tile(np.arange(n), 3)
    order = np.lexsort((which, kinds, times))
    features = np.zeros((n, NR_FEATURES), np.int32)
    state, req, kml = FeatState(), FeatIn(), lib()
    req.capacity = capacity
    fifos: tuple[deque[int], deque[int]] = (deque(), deque())  # per direction, insert order
    queued = [0, 0]
    dispatched = np.zeros(n, bool)  # a FIFO drops its dispatched requests lazily
    last_op = 0  # mq-deadline's last_dir starts at READ
    inflight = 0
    base = features.ctypes.data
    stride = features.strides[0]
    for k in order.tolist():
        i = int(which[k])
        op = int(ops[i])
        kind = kinds[k]
        if kind == _INSERT:
            fifo = fifos[op]
            while fifo and dispatched[fifo[0]]:
                fifo.popleft()
            req.insert_ns = int(insert[i])
            req.sector = int(rows["sector"][i])
            req.deadline_ns = int(rows["deadline_ns"][i])
            req.bytes = int(rows["bytes"][i])
            req.queued[0], req.queued[1] = queued
            req.inflight = inflight
            req.op = op
            req.same_dir = last_op == op
            req.has_head = bool(fifo)
            req.head_insert_ns = int(insert[fifo[0]]) if fifo else 0
            kml.kml_dd_feat_insert(C.byref(state), C.byref(req), base + i * stride)
            fifo.append(i)
            queued[op] += 1
        elif kind == _DISPATCH:
            dispatched[i] = True
            queued[op] -= 1
            inflight += 1
            last_op = op
            kml.kml_dd_feat_dispatch(
                C.byref(state), op, int(rows["sector"][i]), int(rows["bytes"][i]),
                int(insert[i]), int(rows["deadline_ns"][i]), int(times[k]),
            )  # fmt: skip
        else:
            inflight -= 1
    return features


def import_csv(path: Path, capacity: int | None = None) -> np.ndarray:
    """The CSV's requests as trace rows with KML's features, in completion order
    (the ring's order); each ``dev`` is a queue of its own."""
    rows = read_requests(path)
    for dev in np.unique(rows["dev"]):
        mine = np.flatnonzero(rows["dev"] == dev)
        rows["features"][mine, :NR_FEATURES] = replay(rows[mine], capacity)
    done = rows["insert_ns"] + rows["completion_ns"]
    return rows[np.argsort(done, kind="stable")]


def command(args: argparse.Namespace) -> int:
    """``kmlbench trace import CSV -o TRACE [--capacity SECTORS]``."""
    try:
        if args.capacity is not None and args.capacity < 1:
            raise ValueError(f"--capacity {args.capacity}: a disk has at least one sector")
        check_output(args.output, "trace file")
        rows = import_csv(args.csv, args.capacity)
        write_trace(args.output, rows)
    except (TraceError, ValueError) as exc:
        print(f"kmlbench trace import: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # writing the trace
        print(f"kmlbench trace import: {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    met = int(rows["met"].sum())
    print(
        f"{args.output}: {len(rows)} requests ({met} met, {len(rows) - met} missed), "
        f"{NR_FEATURES} features computed by KML's kml_dd_feat"
    )
    return 0
