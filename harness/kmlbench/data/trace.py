"""KML sample traces: the file format, read, written and exported (``kmlbench trace csv/info``).

Recording one from a real guest is :mod:`kmlbench.run.trace`'s job.

A trace is what ``kmlctl trace`` writes in the guest (``docs/trace.md``): a
64-byte header (magic ``KMLTRC01``, ``abi_version`` at 8, ``record_size``
at 12, ``n_features`` at 16, all little-endian u32) followed by raw
128-byte ``struct kml_dd_sample`` records (``kernel/kml/kml_iosched_uapi.h``).
:func:`read_trace` maps it onto a NumPy structured array with the same
layout, so offline training (``kmlbench train``) sees exactly the samples the
kernel's ring carried, field for field.

``kmlbench trace MATRIX --cell ID_OR_INDEX -o FILE`` boots the guest for one
cell of a matrix (its device, scheduler and workload; its model entry if it
has one, else ``mode: observe`` with no model and no trainer), records
the ring while fio runs and copies the trace back, next to the cell's
ordinary results folder (``--results``).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from kmlbench import paths

MAGIC = b"KMLTRC01"
HEADER_SIZE = 64
RECORD_SIZE = 128  # struct kml_dd_sample; a newer kernel may append fields
MAX_FEATURES = 16
UAPI_HEADER = paths.KML_SRC_DIR / "kml_iosched_uapi.h"


def _uapi() -> tuple[int, tuple[str, ...]]:
    """KML_DD_ABI_VERSION and the feature names, read from the uapi header.

    The header is the contract (docs/kml-iosched.md); reading it here keeps
    the harness in step with the kernel instead of with a copy of it.
    """
    try:
        text = UAPI_HEADER.read_text()
    except OSError as exc:
        raise RuntimeError(f"cannot read {UAPI_HEADER}: {exc.strerror or exc}") from exc
    abi = re.search(r"^#define\s+KML_DD_ABI_VERSION\s+(\d+)", text, re.M)
    enum = re.search(r"enum kml_dd_feature \{(.*?)\};", text, re.S)
    if not abi or not enum:
        raise RuntimeError(f"{UAPI_HEADER}: no KML_DD_ABI_VERSION or enum kml_dd_feature")
    body = re.sub(r"/\*.*?\*/", "", enum.group(1), flags=re.S)
    entries = {int(v): n for n, v in re.findall(r"KML_DD_F_(\w+)\s*=\s*(\d+)", body)}
    count = re.search(r"KML_DD_NR_FEATURES\s*=\s*(\d+)", body)
    if not count or sorted(entries) != list(range(int(count.group(1)))):
        raise RuntimeError(f"{UAPI_HEADER}: enum kml_dd_feature is not 0..NR_FEATURES-1")
    return int(abi.group(1)), tuple(entries[i].lower() for i in range(len(entries)))


ABI_VERSION, FEATURE_NAMES = _uapi()
NR_FEATURES = len(FEATURE_NAMES)  # KML_DD_NR_FEATURES: a kernel model's inputs
Q16 = 65536.0

HEADER_DTYPE = np.dtype(
    [
        ("magic", "S8"),
        ("abi_version", "<u4"),
        ("record_size", "<u4"),
        ("n_features", "<u4"),
        ("reserved", "V44"),
    ]
)
# struct kml_dd_sample, offsets as in the header file.
SAMPLE_DTYPE = np.dtype(
    {
        "names": [
            "insert_ns",
            "sector",
            "issue_ns",
            "deadline_ns",
            "completion_ns",
            "pred_issue_ns",
            "bytes",
            "op",
            "met",
            "pred_valid",
            "pred_met",
            "flags",
            "dev",
            "features",
        ],
        "formats": [
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<u8",
            "<u4",
            "u1",
            "u1",
            "u1",
            "u1",
            "<u4",
            "<u4",
            ("<i4", (MAX_FEATURES,)),
        ],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 52, 53, 54, 55, 56, 60, 64],
        "itemsize": RECORD_SIZE,
    }
)
assert HEADER_DTYPE.itemsize == HEADER_SIZE and SAMPLE_DTYPE.itemsize == RECORD_SIZE
SCALAR_FIELDS = tuple(n for n in SAMPLE_DTYPE.names or () if n != "features")


class TraceError(ValueError):
    """A file that is not a trace this harness can read; the message names it."""


@dataclass(frozen=True)
class TraceHeader:
    abi_version: int
    record_size: int
    n_features: int
    partial_bytes: int = 0  # a cut last row, dropped (docs/trace.md)


def _header(path: Path, data: bytes) -> TraceHeader:
    if len(data) < HEADER_SIZE:
        raise TraceError(f"{path}: {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    h = np.frombuffer(data, HEADER_DTYPE, count=1)[0]
    if bytes(h["magic"]) != MAGIC:
        raise TraceError(f"{path}: not a KML trace (magic {bytes(data[:8])!r}, expected {MAGIC!r})")
    abi, size, n_features = int(h["abi_version"]), int(h["record_size"]), int(h["n_features"])
    if not 1 <= abi <= ABI_VERSION:
        raise TraceError(
            f"{path}: trace ABI version {abi}, this harness reads 1..{ABI_VERSION} "
            f"({UAPI_HEADER.name})"
        )
    if size < RECORD_SIZE:
        raise TraceError(
            f"{path}: record size {size}, smaller than struct kml_dd_sample ({RECORD_SIZE})"
        )
    if not 1 <= n_features <= MAX_FEATURES:
        raise TraceError(f"{path}: n_features {n_features} not in 1..{MAX_FEATURES}")
    return TraceHeader(abi, size, n_features, (len(data) - HEADER_SIZE) % size)


def load_trace(path: Path | str) -> tuple[TraceHeader, np.ndarray]:
    """The header and the records (a structured array of ``SAMPLE_DTYPE``).

    Rows are ``record_size`` bytes as the header says (a newer kernel's
    extra fields are skipped); a cut last row, which a guest killed while
    writing leaves, is dropped and counted in ``partial_bytes``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    header = _header(path, data)
    n = (len(data) - HEADER_SIZE) // header.record_size
    raw = np.frombuffer(data, np.uint8, count=n * header.record_size, offset=HEADER_SIZE)
    rows = raw.reshape(n, header.record_size)[:, :RECORD_SIZE].copy().view(SAMPLE_DTYPE)
    return header, rows.reshape(n)


def read_trace(path: Path | str) -> np.ndarray:
    """The records of a trace file; :class:`TraceError` names a bad file."""
    return load_trace(path)[1]


def write_trace(path: Path | str, rows: np.ndarray, n_features: int = NR_FEATURES) -> None:
    """Write ``rows`` (``SAMPLE_DTYPE``) as a trace file, as ``kmlctl trace`` does."""
    header = np.zeros(1, HEADER_DTYPE)
    header["magic"] = MAGIC
    header["abi_version"] = ABI_VERSION
    header["record_size"] = RECORD_SIZE
    header["n_features"] = n_features
    Path(path).write_bytes(header.tobytes() + np.asarray(rows, SAMPLE_DTYPE).tobytes())


def feature_names(n_features: int) -> list[str]:
    """Names of the first ``n_features`` features (``f<i>`` beyond the known ones)."""
    return [FEATURE_NAMES[i] if i < len(FEATURE_NAMES) else f"f{i}" for i in range(n_features)]


def write_csv(rows: np.ndarray, n_features: int, out: IO[str]) -> None:
    """One line per sample: the scalar fields, then the features as real numbers.

    Features are converted from Q16.16 (``/ 65536``) and named
    ``feature_<name>`` after ``enum kml_dd_feature``, so the CSV reads without
    the header file and no column name repeats (``op`` and ``sector`` are
    both a scalar field and a feature).
    """
    names = [f"feature_{name}" for name in feature_names(n_features)]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*SCALAR_FIELDS, *names])
    feats = rows["features"][:, :n_features].astype(np.float64) / Q16
    for row, f in zip(rows, feats, strict=True):
        writer.writerow([int(row[k]) for k in SCALAR_FIELDS] + [f"{x:.6g}" for x in f])


# --------------------------------------------------------------------------
# Command line.


def command_csv(args: argparse.Namespace) -> int:
    """``kmlbench trace csv``: a trace's samples as CSV (stdout or --output)."""
    try:
        header, rows = load_trace(args.trace)
    except TraceError as exc:
        print(f"kmlbench trace: {exc}", file=sys.stderr)
        return 1
    if args.output is None or str(args.output) == "-":
        write_csv(rows, header.n_features, sys.stdout)
    else:
        with open(args.output, "w", newline="") as handle:
            write_csv(rows, header.n_features, handle)
        print(f"{args.output}: {len(rows)} samples")
    return 0


def command_info(args: argparse.Namespace) -> int:
    """``kmlbench trace info``: how many samples, met/missed, reads/writes."""
    try:
        header, rows = load_trace(args.trace)
    except TraceError as exc:
        print(f"kmlbench trace: {exc}", file=sys.stderr)
        return 1
    met = int(rows["met"].sum()) if len(rows) else 0
    print(f"{args.trace}: {len(rows)} samples, abi {header.abi_version}, "
          f"{header.n_features} features")  # fmt: skip
    if header.partial_bytes:
        print(f"  a cut last row ({header.partial_bytes} bytes) was dropped")
    if len(rows):
        span = (int(rows["insert_ns"].max()) - int(rows["insert_ns"].min())) / 1e9
        print(f"  met {met} ({met / len(rows):.1%}), missed {len(rows) - met}, over {span:.1f} s")
        print(f"  reads {int((rows['op'] == 0).sum())}, writes {int((rows['op'] == 1).sum())}")
        print(f"  with a prediction {int(rows['pred_valid'].sum())}")
    return 0
