"""Grouped bar charts with bootstrap-interval whiskers (latency, throughput, accuracy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes

from kmlbench.data import stats
from kmlbench.report.figures.grouping import RunData, Series
from kmlbench.report.figures.style import series_style


def bar_positions(n_groups: int, n_series: int, width: float = 0.8) -> tuple[np.ndarray, float]:
    """The groups' centres on the x axis and the width of one series' bar."""
    w = width / max(n_series, 1)
    return np.arange(n_groups), w


def ci_err(values: list[float], cis: list[tuple[float, float]]) -> np.ndarray | None:
    """``yerr`` for ``ax.bar`` from intervals (None when there are none)."""
    lo = [v - c[0] if not math.isnan(c[0]) else 0.0 for v, c in zip(values, cis, strict=True)]
    hi = [c[1] - v if not math.isnan(c[1]) else 0.0 for v, c in zip(values, cis, strict=True)]
    if not any(lo) and not any(hi):
        return None
    return np.array([np.maximum(lo, 0), np.maximum(hi, 0)])


def estimate(
    m: stats.MetricDef, samples: Sequence[stats.Sample]
) -> tuple[float, tuple[float, float]]:
    """A group's estimate of ``m`` and its bootstrap 95% interval (NaN when absent)."""
    if samples and stats.available(m, samples):
        return stats.group_estimate(m, samples), stats.bootstrap_ci(m, samples, n_boot=500)
    return math.nan, (math.nan, math.nan)


def series_bars(
    ax: Axes,
    data: RunData,
    series: Series,
    positions: np.ndarray,
    width: float,
    vals: list[float],
    cis: list[tuple[float, float]],
) -> None:
    """One series' bars with interval whiskers, in the series' fixed style."""
    style = series_style(data, series)
    ax.bar(
        positions,
        vals,
        width,
        yerr=ci_err(vals, cis),
        label=series.label,
        color=style["color"],
        hatch=style["hatch"],
        edgecolor="white" if not style["hatch"] else "black",
        linewidth=0.3,
        error_kw={"elinewidth": 0.7, "capsize": 1.5},
    )
