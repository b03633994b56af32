"""mq-deadline's own count of missed deadlines, turned into a cell's metrics.

The patched mq-deadline (kernel/patches/0002) counts, whatever ``kml_mode``
says, the requests it dispatches from its sort and FIFO lists and those of
them dispatched at or after their deadline (``rq->fifo_time``, as its own
``deadline_check_fifo()`` sees it), per direction. It prints them in
debugfs, ``/sys/kernel/debug/block/<dev>/sched/missed``::

    read_dispatched 5123
    read_missed 17
    write_dispatched 2211
    write_missed 0

The counters run from the scheduler's start and wrap at 2^32, so a cell
reads them before and after fio and keeps the difference
(:func:`miss_metrics`). A deadline here is mq-deadline's, in jiffies
(``read_expire`` / ``write_expire``), the same rule in every mode, which is
what lets ``off`` and ``active`` be compared; a model's own *met* label is
the finer nanosecond one (docs/kml-iosched.md). Schedulers without
deadlines (none, kyber, bfq) have no such file and no such metric.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["COUNTERS", "MissCountError", "miss_metrics", "parse_counts"]

DIRECTIONS = ("read", "write")
COUNTERS = tuple(f"{d}_{c}" for d in DIRECTIONS for c in ("dispatched", "missed"))
_WRAP = 1 << 32


class MissCountError(ValueError):
    """The kernel's ``missed`` file did not read as expected."""


def parse_counts(text: str) -> dict[str, int]:
    """The four counters of a ``missed`` file; every one must be there, once."""
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if (
            len(parts) != 2
            or parts[0] not in COUNTERS
            or not parts[1].isascii()
            or not parts[1].isdigit()
        ):
            raise MissCountError(f"line {number}: not '<counter> <count>': {line!r}")
        if parts[0] in counts:
            raise MissCountError(f"line {number}: {parts[0]} twice")
        counts[parts[0]] = int(parts[1])
    missing = [c for c in COUNTERS if c not in counts]
    if missing:
        raise MissCountError(f"no {', '.join(missing)} in {text.strip()!r}")
    return counts


def miss_metrics(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """What happened between two readings: ``deadline_dispatched`` and
    ``deadline_missed`` (requests) and ``deadline_miss_frac`` over both
    directions, and ``read_``/``write_``
    fractions for each direction that dispatched anything.

    No fraction is made of nothing: with no request dispatched from the
    FIFOs (a cell whose I/O all bypassed them) only the count, 0, is kept.
    """
    delta = {c: (after[c] - before[c]) % _WRAP for c in COUNTERS}
    missed = sum(delta[f"{d}_missed"] for d in DIRECTIONS)
    dispatched = sum(delta[f"{d}_dispatched"] for d in DIRECTIONS)
    out: dict[str, float] = {
        "deadline_missed": float(missed),
        "deadline_dispatched": float(dispatched),
    }
    if dispatched:
        out["deadline_miss_frac"] = missed / dispatched
    for d in DIRECTIONS:
        if delta[f"{d}_dispatched"]:
            out[f"{d}_deadline_miss_frac"] = delta[f"{d}_missed"] / delta[f"{d}_dispatched"]
    return out
