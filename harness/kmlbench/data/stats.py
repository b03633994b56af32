"""Statistics for comparing two groups of cells.

A *group* is the set of repeats of one configuration (or several matched
configurations) on one side of a comparison: model on vs off, scheduler A
vs B, run X vs run Y. The unit of replication is the repeat (one cell, one
fresh guest): I/Os inside one guest are not independent samples, so every
interval and test here resamples or ranks whole repeats.

For each metric the group's estimate is computed the way it is defined:

* latency percentiles (p50, p99, p99.9) from the *merged* fio histogram of all
  repeats, with fio's own rule, never by averaging the repeats' percentiles:
  completion latency's (``clat``) for ``p50`` ..., total latency's (``lat``,
  from submission) for ``lat_p50`` ...; a run whose cells have no
  total-latency histogram (fio run without ``lat_percentiles``) falls back
  to the per-repeat values it recorded, and to nothing where it has none;
* mean latency as the sample-weighted mean of the repeats' exact means;
* IOPS, bandwidth and accuracy-type metrics as the mean over repeats.

The relative change ``B / A - 1`` gets a percentile-bootstrap 95% interval (repeats
resampled with replacement, percentiles recomputed from the resampled merged
histograms); the per-repeat values get a two-sided Mann-Whitney U test. A
difference is significant only when both agree: the interval excludes 0 *and*
p < alpha. With few repeats the U test cannot reach alpha (3 vs 3: smallest
p = 0.1: ``underpowered``); four repeats per side are the minimum for 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kmlbench.data.histogram import Histogram, bucket_bits, merge_histograms
from kmlbench.data.ranktest import mann_whitney, min_attainable_p

BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no significant difference"


# --------------------------------------------------------------------------
# Metrics.


@dataclass(frozen=True)
class MetricDef:
    name: str  # short name used on the command line: p99
    label: str  # for tables and figures
    unit: str
    higher_is_better: bool
    percentile: float | None = None  # from merged histograms
    latency_mean: bool = False  # sample-weighted mean of repeats' exact means
    scalar: str | None = None  # a per-cell value: a metrics key or "kml.<key>"
    total: bool = False  # from the total-latency histograms (lat), not clat's


METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in (
        MetricDef("mean", "mean latency", "µs", False, latency_mean=True, scalar="clat_mean_us"),
        MetricDef("p50", "p50 latency", "µs", False, percentile=50.0, scalar="clat_p50_us"),
        MetricDef("p99", "p99 latency", "µs", False, percentile=99.0, scalar="clat_p99_us"),
        MetricDef("p999", "p99.9 latency", "µs", False, percentile=99.9, scalar="clat_p999_us"),
        # total latency (submission to completion, io_submit's wait for a tag
        # included: data/fio.py), per repeat: the one to compare schedulers by
        MetricDef(
            "lat_mean",
            "total mean latency",
            "µs",
            False,
            latency_mean=True,
            scalar="lat_mean_us",
            total=True,
        ),
        MetricDef(
            "lat_p50",
            "total p50 latency",
            "µs",
            False,
            percentile=50.0,
            scalar="lat_p50_us",
            total=True,
        ),
        MetricDef(
            "lat_p99",
            "total p99 latency",
            "µs",
            False,
            percentile=99.0,
            scalar="lat_p99_us",
            total=True,
        ),
        MetricDef(
            "lat_p999",
            "total p99.9 latency",
            "µs",
            False,
            percentile=99.9,
            scalar="lat_p999_us",
            total=True,
        ),
        MetricDef("iops", "IOPS", "IO/s", True, scalar="iops"),
        MetricDef("bw", "bandwidth", "KiB/s", True, scalar="bw_kib_s"),
        # guest CPU during fio (runner.cpu_metrics): the cost of KML's hooks
        MetricDef("kcpu", "kernel CPU per I/O", "µs", False, scalar="kernel_cpu_us_per_io"),
        MetricDef("cpu", "guest CPU busy", "s", False, scalar="guest_cpu_busy_s"),
        # the same counted in instructions, under the virtual clock only
        MetricDef(
            "kinsn", "kernel instructions per I/O", "insn", False, scalar="kernel_insn_per_io"
        ),
        MetricDef("uinsn", "user instructions per I/O", "insn", False, scalar="user_insn_per_io"),
        MetricDef("misses", "deadline misses", "", False, scalar="deadline_miss_frac"),
        # over workload.<d>_target_ms at completion, any scheduler (data/fio.py)
        MetricDef("late", "late completions", "", False, scalar="late_frac"),
        MetricDef("accuracy", "accuracy", "", True, scalar="kml.accuracy"),
        MetricDef("baseline_accuracy", "baseline", "", True, scalar="kml.baseline_accuracy"),
        MetricDef(
            "balanced_accuracy", "balanced accuracy", "", True, scalar="kml.balanced_accuracy"
        ),
    )
}
LATENCY_METRICS = ("mean", "p50", "p99", "p999")
DEFAULT_METRICS = ("mean", "p50", "p99", "p999", "lat_mean", "lat_p99", "iops")
ACCURACY_METRICS = ("accuracy", "baseline_accuracy", "balanced_accuracy")
ALIASES = {
    "p99.9": "p999",
    "p99_9": "p999",
    "p999.0": "p999",
    "bandwidth": "bw",
    "avg": "mean",
    # the cell-metric names of summary.json / metrics.json (clat_p99_us, bw_kib_s, ...)
    **{m.scalar: m.name for m in METRICS.values() if m.scalar and "." not in m.scalar},
}


def metric(name: str) -> MetricDef:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in METRICS:
        raise KeyError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")
    return METRICS[key]


@dataclass
class Sample:
    """One repeat as statistics see it: its latency histograms and scalars."""

    histogram: Histogram | None  # completion latency (clat)
    values: dict[str, float] = field(default_factory=dict)
    lat_histogram: Histogram | None = None  # total latency (lat), where fio kept it

    @classmethod
    def from_cell(cls, cell: Any, direction: str | None = None) -> Sample:
        """From a :class:`kmlbench.data.db.CellRow`; histograms of ``direction`` or
        all merged."""

        def pick(hists: Mapping[str, Histogram]) -> Histogram | None:
            if direction is None:
                hist = merge_histograms(hists.values()) if hists else None
            else:
                hist = hists.get(direction)
            return hist if hist is not None and hist.total > 0 else None

        prefix = f"{direction}_" if direction else ""
        values = {k[len(prefix) :]: v for k, v in cell.metrics.items() if k.startswith(prefix)}
        if direction is None:
            values = dict(cell.metrics)
        for k, v in (cell.kml_stats or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                values[f"kml.{k}"] = float(v)
        return cls(pick(cell.histograms), values, pick(cell.lat_histograms))

    def hist(self, m: MetricDef) -> Histogram | None:
        """The histogram ``m`` reads: the total latency's for a ``total`` metric."""
        return self.lat_histogram if m.total else self.histogram


def available(m: MetricDef, samples: Sequence[Sample]) -> bool:
    """Whether every sample has what ``m`` needs."""
    if not samples:
        return False
    if _uses_histograms(m, samples):
        return True
    return m.scalar is not None and all(m.scalar in s.values for s in samples)


def per_sample(m: MetricDef, samples: Sequence[Sample]) -> np.ndarray:
    """The metric for each repeat on its own (what the U test ranks)."""
    out = []
    for s in samples:
        hist = s.hist(m)
        if m.percentile is not None and hist is not None:
            out.append(hist.percentile(m.percentile) / 1000.0)
        elif m.latency_mean and hist is not None:
            out.append(hist.mean() / 1000.0)
        elif m.scalar is not None:
            out.append(float(s.values[m.scalar]))
        else:
            raise KeyError(f"{m.name}: no histogram in this sample and no scalar metric")
    return np.array(out, dtype=np.float64)


def _without_histogram(m: MetricDef, samples: Sequence[Sample]) -> list[Sample]:
    """``samples`` with the histogram ``m`` reads dropped (its scalar stays)."""
    if m.total:
        return [Sample(s.histogram, s.values, None) for s in samples]
    return [Sample(None, s.values, s.lat_histogram) for s in samples]


def _uses_histograms(m: MetricDef, samples: Sequence[Sample]) -> bool:
    return (m.percentile is not None or m.latency_mean) and all(
        s.hist(m) is not None for s in samples
    )


def _mixed_buckets(m: MetricDef, samples: Sequence[Sample]) -> str:
    """A note when the samples' histograms come from fio builds of different
    bucket widths (runs before and after the guest's finer fio): a
    percentile then moves by up to the coarser bucket for that alone."""
    widths = {
        bits
        for s in samples
        if (h := s.hist(m)) is not None and (bits := bucket_bits(h)) is not None
    }
    if len(widths) < 2:
        return ""
    coarse, fine = min(widths), max(widths)
    # a sample's percentile moves by up to half a bucket of each width
    bound = 50 / (1 << coarse) + 50 / (1 << fine)
    return (
        f"fio bucket widths differ (1/{1 << coarse} to 1/{1 << fine} of a power of two): "
        f"a change within {bound:.1f}% may be the buckets'"
    )


def group_estimate(m: MetricDef, samples: Sequence[Sample]) -> float:
    """The group's value of ``m`` (see the module docstring for the definition)."""
    if _uses_histograms(m, samples):
        merged = merge_histograms(h for s in samples if (h := s.hist(m)) is not None)
        if m.percentile is not None:
            return merged.percentile(m.percentile) / 1000.0
        return merged.mean() / 1000.0
    return float(per_sample(m, samples).mean())


class _Resampler:
    """Vectorised bootstrap estimates of one metric for one group."""

    def __init__(self, m: MetricDef, samples: Sequence[Sample]) -> None:
        self.m = m
        self.n = len(samples)
        self.hist = _uses_histograms(m, samples)
        hists = [h for s in samples if (h := s.hist(m)) is not None]
        if self.hist and m.percentile is not None:
            grid = np.unique(np.concatenate([h.values for h in hists]))
            mat = np.zeros((self.n, len(grid)), dtype=np.float64)
            for i, h in enumerate(hists):
                mat[i, np.searchsorted(grid, h.values)] = h.counts
            self.grid, self.mat = grid, mat
        elif self.hist:
            self.means = np.array([h.mean() for h in hists]) / 1000.0
            self.weights = np.array([h.total for h in hists], dtype=np.float64)
        else:
            self.vals = per_sample(m, samples)

    def draw(self, rng: np.random.Generator, n_boot: int) -> np.ndarray:
        w = rng.multinomial(self.n, np.full(self.n, 1.0 / self.n), size=n_boot).astype(float)
        if self.hist and self.m.percentile is not None:
            merged = w @ self.mat  # (n_boot, bins)
            cum = np.cumsum(merged, axis=1)
            thr = cum[:, -1] * (self.m.percentile / 100.0)
            idx = np.argmax(cum >= thr[:, None] * (1 - 1e-12), axis=1)
            return np.asarray(self.grid[idx] / 1000.0)
        if self.hist:
            ww = w * self.weights
            return np.asarray((ww @ self.means) / ww.sum(axis=1))
        return np.asarray((w @ self.vals) / self.n)


def bootstrap_ci(
    m: MetricDef,
    samples: Sequence[Sample],
    *,
    n_boot: int = 2000,
    conf: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the group estimate of ``m``."""
    if len(samples) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boots = _Resampler(m, samples).draw(rng, n_boot)
    lo, hi = np.quantile(boots, [(1 - conf) / 2, 1 - (1 - conf) / 2])
    return float(lo), float(hi)


@dataclass
class Comparison:
    """One metric compared between group A (baseline) and group B."""

    metric: str
    label: str
    unit: str
    higher_is_better: bool
    n_a: int
    n_b: int
    a: float
    b: float
    change: float  # relative: b / a - 1
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool
    verdict: str  # better | worse | no significant difference (B relative to A)
    underpowered: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in self.__dict__.items()
        }


def verdict_of(change: float, significant: bool, higher_is_better: bool) -> str:
    if not significant or change == 0 or math.isnan(change):
        return NO_DIFFERENCE
    return BETTER if (change > 0) == higher_is_better else WORSE


def compare_metric(
    name: str,
    a: Sequence[Sample],
    b: Sequence[Sample],
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare one metric between two groups of repeats (A is the baseline).

    Both sides are estimated the same way: when one has the metric's
    histograms and the other has not (cells recorded before fio kept the
    total latency's), both use the repeats' own values, and the note says so.
    """
    m = metric(name)
    note = ""
    if _uses_histograms(m, a) != _uses_histograms(m, b):
        a, b = _without_histogram(m, a), _without_histogram(m, b)
        note = "one side has no histograms: both estimated from the repeats' own values"
    elif m.percentile is not None and _uses_histograms(m, a):
        note = _mixed_buckets(m, [*a, *b])
    est_a, est_b = group_estimate(m, a), group_estimate(m, b)
    change = est_b / est_a - 1 if est_a else math.nan
    lo = hi = math.nan
    if len(a) >= 2 and len(b) >= 2:
        rng = np.random.default_rng(seed)
        ba = _Resampler(m, a).draw(rng, n_boot)
        bb = _Resampler(m, b).draw(rng, n_boot)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = bb / ba - 1
        ratios = ratios[np.isfinite(ratios)]
        if len(ratios):
            lo, hi = (float(x) for x in np.quantile(ratios, [alpha / 2, 1 - alpha / 2]))
    else:
        note = "; ".join(filter(None, [note, "needs at least 2 repeats per side for an interval"]))
    p = mann_whitney(per_sample(m, a), per_sample(m, b))
    underpowered = min_attainable_p(len(a), len(b)) >= alpha
    if underpowered and "at least 2 repeats" not in note:
        weak = (
            f"{len(a)} vs {len(b)} repeats: the U test cannot reach p < {alpha:g}"
            f" (smallest p = {min_attainable_p(len(a), len(b)):.3g})"
        )
        note = "; ".join(filter(None, [note, weak]))
    excludes_zero = not math.isnan(lo) and (lo > 0 or hi < 0)
    significant = bool(excludes_zero and p < alpha)
    return Comparison(
        metric=m.name,
        label=m.label,
        unit=m.unit,
        higher_is_better=m.higher_is_better,
        n_a=len(a),
        n_b=len(b),
        a=est_a,
        b=est_b,
        change=change,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        significant=significant,
        verdict=verdict_of(change, significant, m.higher_is_better),
        underpowered=underpowered,
        note=note,
    )


def compare_groups(
    a: Sequence[Sample],
    b: Sequence[Sample],
    metrics: Iterable[str] = DEFAULT_METRICS + ACCURACY_METRICS,
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[Comparison]:
    """Every metric in ``metrics`` that both groups have (others are skipped)."""
    out = []
    for name in metrics:
        m = metric(name)
        if not (available(m, a) and available(m, b)):
            continue
        if _uses_histograms(m, a) != _uses_histograms(m, b) and not (
            available(m, _without_histogram(m, a)) and available(m, _without_histogram(m, b))
        ):
            continue  # one side's histograms, the other's values: nothing alike to compare
        out.append(compare_metric(name, a, b, alpha=alpha, n_boot=n_boot, seed=seed))
    return out


# --------------------------------------------------------------------------
# Proportions and adaptive repeats.


def wilson_interval(successes: float, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. accuracy over n predictions)."""
    if n <= 0:
        return (math.nan, math.nan)
    from scipy.stats import norm  # late: run/runner imports stats: no scipy in run

    z = float(norm.ppf(1 - (1 - conf) / 2))
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: Sequence[float], conf: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean (NaN for fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    from scipy.stats import t  # late: run/runner imports stats: no scipy in run

    half = float(t.ppf(1 - (1 - conf) / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return (float(x.mean()) - half, float(x.mean()) + half)


MIN_REPEATS = 3


def needs_more_repeats(samples: Sequence[float], rel_halfwidth: float, cap: int) -> bool:
    """Whether another repeat is needed: the 95% interval of the mean is
    wider than ``rel_halfwidth`` (relative half-width, e.g. 0.05 for ±5%)
    and fewer than ``cap`` repeats ran.

    Uses the Student-t interval, which is honest for the small counts this
    decides about; at least :data:`MIN_REPEATS` repeats are always asked
    for (unless ``cap`` is lower).
    """
    n = len(samples)
    if n >= cap:
        return False
    if n < MIN_REPEATS:
        return True
    lo, hi = mean_ci(samples)
    mean = float(np.mean(samples))
    half = (hi - lo) / 2
    if mean == 0:
        return half > 0
    return half / abs(mean) > rel_halfwidth
