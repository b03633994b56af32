"""The short table ``kmlbench run`` ends with: one row per configuration, then
the next commands to type.

A configuration is a cell without its repeat (the id minus ``-r<N>``, whose
hash covers every parameter but the repeat). Each row gives how many of its
cells were ok and, over those, the median IOPS, mean and p99 total latency
(from submission, io_submit's wait included: the one that compares
schedulers, docs/results.md "Which latency"), the share of requests
mq-deadline dispatched after their deadline (its own count, in every
``kml_mode``; ``-`` for other schedulers), and for model cells the kernel's
AUC of its predictions and the model's accuracy with its majority-class
baseline and balanced accuracy beside it (never accuracy alone). Plain
text, the same on a terminal and in a log.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping
from typing import Any

from kmlbench.status import OK

__all__ = ["configuration", "summary_table"]

_REPEAT = re.compile(r"-r\d+$")
_HEAD = (
    "configuration",
    "ok",
    "IOPS",
    "lat mean us",
    "lat p99 us",
    "missed",
    "late",
    "AUC",
    "accuracy (baseline, balanced)",
)


def configuration(cell_id: str) -> str:
    """The configuration a cell id repeats: the id without ``-r<N>``."""
    return _REPEAT.sub("", cell_id)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _values(records: list[Mapping[str, Any]], where: str, key: str) -> list[float]:
    out = []
    for record in records:
        value = (record.get(where) or {}).get(key)
        if isinstance(value, int | float) and value == value:
            out.append(float(value))
    return out


def _row(config: str, records: list[Mapping[str, Any]]) -> tuple[str, ...]:
    ok = [r for r in records if r.get("status") == OK]
    accuracy = "-"
    acc = _median(_values(ok, "kml_stats", "accuracy"))
    if acc is not None:
        base = _median(_values(ok, "kml_stats", "baseline_accuracy"))
        bal = _median(_values(ok, "kml_stats", "balanced_accuracy"))
        accuracy = f"{acc:.3f} ({_num(base, 3)}, {_num(bal, 3)})"
    return (
        config,
        f"{len(ok)}/{len(records)}",
        _num(_median(_values(ok, "metrics", "iops"))),
        _num(_median(_values(ok, "metrics", "lat_mean_us")), 1),
        _num(_median(_values(ok, "metrics", "lat_p99_us")), 1),
        _percent(_median(_values(ok, "metrics", "deadline_miss_frac"))),
        _percent(_median(_values(ok, "metrics", "late_frac"))),
        _num(_median(_values(ok, "kml_stats", "auc")), 3),
        accuracy,
    )


def summary_table(run_id: str, records: Mapping[str, Mapping[str, Any]]) -> str:
    """The table of a run's cell records (``RunDir.read_cells()``) and the next
    commands, as lines of text; medians over the ok repeats of each configuration."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for cell_id, record in records.items():
        groups.setdefault(configuration(cell_id), []).append(record)
    rows = [_HEAD, *(_row(config, groups[config]) for config in sorted(groups))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEAD))]
    lines = [f"results of {run_id} (medians over each configuration's ok repeats):"]
    for row in rows:
        cells = [
            text.ljust(width) if i in (0, len(row) - 1) else text.rjust(width)
            for i, (text, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    lines += [
        "next:",
        f"  kmlbench report {run_id}              # HTML report with figures",
        f"  kmlbench compare OTHER_RUN {run_id}   # statistics against another run",
    ]
    return "\n".join(lines)
