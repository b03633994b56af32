"""Training samples from traces: loaded, checked, split into training and holdout.

Every command that trains a deadline model offline (``kmlbench train``,
``kmlbench train ablate``) reads its traces here, so a trace is refused, or
warned about, for the same reasons everywhere, and the holdout is always the
**last** fraction of each trace in insert order, not a random sample:
neighbouring requests share queue state, so a random split would leak the
answer into training and flatter the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmlbench.data.trace import NR_FEATURES, TraceError, load_trace
from kmlbench.kml.deadline import DD_CAL_MIN_CLASS

# Fewer samples than this cannot even hold the calibration's minimum of each
# class; a model and figures from them would mean nothing.
MIN_SAMPLES = 2 * DD_CAL_MIN_CLASS
# An issue time or deadline beyond a day is not one a queue produced (a u64
# max, a clock read gone wrong): the trace is refused, not trained on.
MAX_TIME_NS = 86_400 * 10**9


def check_rows(path: Path, rows: np.ndarray) -> list[str]:
    """Refuse rows no queue produces (TraceError naming the file and row); warnings.

    The warning is for ``met`` labels that contradict issue time and deadline:
    training and calibration go by ``issue_ns <= deadline_ns`` (KML's label),
    the holdout's accuracy by ``met`` as recorded.
    """
    for field in ("deadline_ns", "issue_ns"):
        values = rows[field].astype(np.uint64)
        bad = np.flatnonzero((values == 0) if field == "deadline_ns" else (values > MAX_TIME_NS))
        if len(bad):
            what = "is 0" if field == "deadline_ns" else "is more than a day"
            raise TraceError(
                f"{path}: row {int(bad[0])}: {field} {int(values[bad[0]])} {what} "
                f"({len(bad)} such rows): not a trace of a real queue"
            )
    label = rows["issue_ns"].astype(np.uint64) <= rows["deadline_ns"].astype(np.uint64)
    wrong = np.flatnonzero(label != rows["met"].astype(bool))
    if len(wrong):
        return [
            f"{path}: {len(wrong)} rows have a met label that contradicts issue and deadline "
            f"(first: row {int(wrong[0])}); training goes by issue <= deadline"
        ]
    return []


def load_checked(path: Path, warnings: list[str]) -> np.ndarray:
    """A trace's rows for training or scoring: TraceError on a trace the kernel's
    models cannot take or rows no queue produces; its warnings appended."""
    header, rows = load_trace(path)
    if header.n_features != NR_FEATURES:
        # the kernel refuses a model whose inputs are not KML_DD_NR_FEATURES
        raise TraceError(
            f"{path}: {header.n_features} features (ABI {header.abi_version}), but the "
            f"kernel's models take {NR_FEATURES} (KML_DD_NR_FEATURES): record a new trace"
        )
    if header.partial_bytes:
        warnings.append(f"{path}: a cut last row ({header.partial_bytes} bytes) was dropped")
    warnings += check_rows(path, rows)
    return rows


def split(rows: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout): the holdout is the last ``holdout`` fraction in insert order."""
    order = np.argsort(rows["insert_ns"], kind="stable")
    rows = rows[order]
    n_hold = round(len(rows) * holdout)
    return rows[: len(rows) - n_hold], rows[len(rows) - n_hold :]


@dataclass
class DataSet:
    """Training rows, the holdout (the last fraction of each trace), the
    ``--test`` traces' rows (None without), and what loading them warned."""

    train: np.ndarray
    holdout: np.ndarray
    test: np.ndarray | None
    warnings: list[str]


def load_data(traces: list[Path], holdout: float, test: list[Path] | None = None) -> DataSet:
    """Load and split ``traces``, load ``test``; TraceError/ValueError when the
    traces cannot hold a model's training."""
    warnings: list[str] = []
    train_parts, hold_parts = [], []
    for path in traces:
        tr, ho = split(load_checked(path, warnings), holdout)
        train_parts.append(tr)
        hold_parts.append(ho)
    test_rows = [load_checked(path, warnings) for path in test or ()]
    train_rows = np.concatenate(train_parts) if train_parts else np.array([])
    hold_rows = np.concatenate(hold_parts)
    if len(train_rows) + len(hold_rows) < MIN_SAMPLES:
        raise ValueError(
            f"{len(train_rows) + len(hold_rows)} samples in the traces; training needs at "
            f"least {MIN_SAMPLES} (twice the calibration's minimum of each class)"
        )
    if len(train_rows) == 0:
        raise ValueError("no samples to train on (empty traces?)")
    return DataSet(
        train_rows, hold_rows, np.concatenate(test_rows) if test_rows else None, warnings
    )
