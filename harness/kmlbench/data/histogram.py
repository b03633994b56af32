"""fio's latency histograms: bucket values and counts, merged exactly and
read with fio's own percentile rule.

fio keeps every latency in a log-linear bucket, the same buckets in every
job, so the histograms of several jobs, directions or repeats add up
exactly and a percentile of the sum is the percentile of the pooled
samples, up to a bucket's width. The guest's fio has 256 buckets per
power of two (:data:`FIO_PLAT_BITS`, set by
``guest-image/fio-patches/0002-stat-four-times-finer-latency-buckets.patch``;
a percentile within 0.2% of the sample's); runs made before it had
Debian's 64 (1.6% wide). A histogram's bucket values say which it was.
:mod:`kmlbench.data.stats` computes its latency estimates from these; the
results database stores them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

# fio's FIO_IO_U_PLAT_BITS in the guest's fio (build/fio_build.py, with the
# patch that sets it): 2^8 latency buckets per power of two
FIO_PLAT_BITS = 8


@dataclass(frozen=True)
class Histogram:
    """A fio latency histogram (completion or total): bucket values (ns) and counts."""

    values: np.ndarray
    counts: np.ndarray
    mean_ns: float | None = None  # exact mean of the samples, when known

    @classmethod
    def from_bins(cls, bins: Mapping[Any, int], mean_ns: float | None = None) -> Histogram:
        """From fio's ``clat_ns.bins`` (keys are bucket values as strings)."""
        return cls.from_pairs(((int(k), int(v)) for k, v in bins.items()), mean_ns=mean_ns)

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[int]], mean_ns: float | None = None) -> Histogram:
        merged: dict[int, int] = {}
        for v, n in pairs:
            merged[int(v)] = merged.get(int(v), 0) + int(n)
        keys = sorted(k for k, n in merged.items() if n > 0)
        return cls(
            np.array(keys, dtype=np.int64),
            np.array([merged[k] for k in keys], dtype=np.int64),
            mean_ns,
        )

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def percentile(self, pct: float) -> float:
        """fio's rule (``calc_clat_percentiles``): the first bucket whose
        running count reaches ``pct/100 * samples``."""
        total = self.total
        if total == 0:
            return math.nan
        threshold = Fraction(pct) / 100 * total  # exact, like kmlbench.data.fio
        running = 0
        for value, count in zip(self.values.tolist(), self.counts.tolist(), strict=True):
            running += count
            if running >= threshold:
                return float(value)
        return float(self.values[-1])

    def mean(self) -> float:
        """The exact mean if known, else the histogram's (bucket-rounded) mean."""
        if self.mean_ns is not None:
            return float(self.mean_ns)
        total = self.total
        return float((self.values * self.counts).sum() / total) if total else math.nan

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(bucket values, cumulative fraction) for plotting."""
        total = self.total
        return self.values, np.cumsum(self.counts) / max(total, 1)


def merge_histograms(hists: Iterable[Histogram]) -> Histogram:
    """Add histograms; the mean stays exact when every part's is known."""
    hists = [h for h in hists if h.total > 0]
    if not hists:
        return Histogram(np.array([], dtype=np.int64), np.array([], dtype=np.int64), None)
    pairs = [(int(v), int(n)) for h in hists for v, n in zip(h.values, h.counts, strict=True)]
    known = [(h.mean_ns, h.total) for h in hists if h.mean_ns is not None]
    mean = None
    if len(known) == len(hists):
        mean = sum(m * n for m, n in known) / sum(n for _, n in known)
    return Histogram.from_pairs(pairs, mean_ns=mean)


def fio_bucket_value(ns: int, bits: int = FIO_PLAT_BITS) -> int:
    """The bucket value fio reports for a latency of ``ns`` nanoseconds.

    Mirrors ``plat_val_to_idx`` / ``plat_idx_to_val`` of fio's stat.c with
    ``FIO_IO_U_PLAT_BITS`` = ``bits`` (2^bits buckets per power of two), so
    synthetic histograms look exactly like the guest's fio's.
    """
    val = 1 << bits
    ns = int(ns)
    if ns < 2 * val:
        return ns
    msb = ns.bit_length() - 1
    error_bits = msb - bits
    base = (error_bits + 1) << bits
    offset = (val - 1) & (ns >> error_bits)
    idx = base + offset
    # plat_idx_to_val: the middle of the bucket
    error_bits = (idx >> bits) - 1
    base = 1 << (error_bits + bits)
    k = idx % val
    return int(base + (k + 0.5) * (1 << error_bits))


# fio's bucket widths a histogram can come from: the guest's fio's, then
# Debian's (runs made before the finer buckets)
KNOWN_PLAT_BITS = (FIO_PLAT_BITS, 6)


def bucket_bits(hist: Histogram) -> int | None:
    """Which fio bucket width ``hist`` was counted in (``FIO_IO_U_PLAT_BITS``),
    or None when its values do not say (none past the exact range, or a
    merge of both). From 2 us up a bucket middle of one width is never one
    of the other."""
    coarse = [v for v in hist.values.tolist() if v >= 2048]
    if not coarse:
        return None
    for bits in KNOWN_PLAT_BITS:
        if all(fio_bucket_value(v, bits) == v for v in coarse):
            return bits
    return None


def histogram_from_samples(samples_ns: Iterable[float]) -> Histogram:
    """A fio-shaped histogram of raw latencies (ns), for synthetic data and tests."""
    arr = np.asarray(list(samples_ns), dtype=np.float64)
    values = [fio_bucket_value(int(x)) for x in arr]
    uniq, counts = np.unique(np.array(values, dtype=np.int64), return_counts=True)
    return Histogram(uniq, counts.astype(np.int64), float(arr.mean()) if len(arr) else None)
