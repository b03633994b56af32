"""The block layer's own count of a device's requests, turned into a cell's metrics.

``/sys/block/<dev>/stat`` (the kernel's Documentation/block/stat.rst) is one
line of counters from the disk's creation; the first eight are, per
direction, the requests completed, the I/Os merged into a request already
queued (``blk_account_io_merge_bio()``, and a queued request merged into
another, ``blk_account_io_merge_request()``), the sectors and the
milliseconds spent::

    1886 2 15088 30133 0 0 0 0 0 30161 30133 0 0 0 0 0 0

A cell reads the line before and after fio and keeps the difference
(:func:`stat_metrics`), over fio's whole run, ``ramp_s`` included:
``block_read_ios`` are the read requests the device completed, whatever
their scheduler (fio counts the I/Os it issued, of which a merged one
rides on another's request), and ``block_read_merges`` the reads that
did. With fio gone, every request it issued has completed, so the counts
are exact, where fio's own ``disk_util`` covers its run only to its last
250 ms tick.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["COUNTERS", "BlockStatError", "parse_stat", "stat_metrics"]

DIRECTIONS = ("read", "write")
# the first eight fields of the line, in order (stat.rst)
FIELDS = tuple(f"{d}_{c}" for d in DIRECTIONS for c in ("ios", "merges", "sectors", "ticks"))
# what a cell keeps
COUNTERS = tuple(f"{d}_{c}" for d in DIRECTIONS for c in ("ios", "merges"))


class BlockStatError(ValueError):
    """A device's ``stat`` file did not read as expected."""


def parse_stat(text: str) -> dict[str, int]:
    """The per-direction counters of a ``stat`` line (:data:`FIELDS`)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise BlockStatError(f"not one line: {text.strip()[:200]!r}")
    parts = lines[0].split()
    if len(parts) < len(FIELDS) or not all(p.isascii() and p.isdigit() for p in parts):
        raise BlockStatError(f"not at least {len(FIELDS)} unsigned counters: {lines[0][:200]!r}")
    return {name: int(value) for name, value in zip(FIELDS, parts[: len(FIELDS)], strict=True)}


def stat_metrics(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """What happened between two readings: ``block_read_ios``,
    ``block_read_merges``, ``block_write_ios`` and ``block_write_merges``.

    The counters are ``unsigned long`` in the kernel and do not wrap in a
    cell; a reading that went down (the device was made anew between the
    two) is refused rather than kept as a count.
    """
    out: dict[str, float] = {}
    for c in COUNTERS:
        if after[c] < before[c]:
            raise BlockStatError(f"{c} went down, {before[c]} to {after[c]}")
        out[f"block_{c}"] = float(after[c] - before[c])
    return out
