"""The latency and throughput figures: CDFs and tails, percentiles, IOPS and bandwidth.

Registered in this order: ``latency_cdf``, ``latency_percentiles``, ``throughput``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from kmlbench.data import histogram, stats
from kmlbench.report.figures.bars import bar_positions, estimate, series_bars
from kmlbench.report.figures.grouping import Key, RunData, Series
from kmlbench.report.figures.registry import Drawn, figure
from kmlbench.report.figures.style import (
    DOUBLE_COLUMN_IN,
    LEGEND_INSIDE_MAX,
    SINGLE_COLUMN_IN,
    emulated_note,
    plain_log_axis,
    series_legend,
    series_style,
    setup_matplotlib,
    slug,
    wrap,
)

LATENCY_BARS = ("mean", "p50", "p99", "p999")


@figure(
    "latency_cdf",
    "Completion-latency distribution",
    "Per workload: CDF and tail (1 - CDF) of fio completion latency, repeats merged "
    "histogram-wise, one line per scheduler (and model state).",
)
def latency_cdf(data: RunData) -> list[Drawn]:
    plt = setup_matplotlib()
    out = []
    for panel in data.panels:
        series = [s for s in panel.series.values() if any(c.histograms for c in s.cells)]
        if not series:
            continue
        fig, (ax, tail) = plt.subplots(1, 2, figsize=(DOUBLE_COLUMN_IN, 2.4))
        for s in series:
            merged = histogram.merge_histograms(h for c in s.cells for h in c.histograms.values())
            x, y = merged.cdf()
            x_us = x / 1000.0
            style = series_style(data, s)
            kw = {"color": style["color"], "linestyle": style["linestyle"], "where": "post"}
            ax.step(x_us, y, label=f"{s.label} (n={len(s.cells)})", **kw)
            ccdf = np.clip(1.0 - np.concatenate([[0.0], y[:-1]]), 1e-9, 1)
            tail.step(x_us, ccdf, **kw)
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
        ax.set_xlabel("completion latency (µs)")
        ax.set_ylabel("fraction of I/Os ≤ x")
        ax.set_ylim(0, 1.01)
        tail.set_xscale("log")
        tail.set_yscale("log")
        plain_log_axis(tail.xaxis)
        tail.set_xlabel("completion latency (µs)")
        tail.set_ylabel("fraction of I/Os ≥ x")
        for level, name in ((1e-2, "p99"), (1e-3, "p99.9")):
            tail.axhline(level, color="0.5", linewidth=0.6, linestyle=":")
            tail.annotate(
                name,
                (1.0, level),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                fontsize=6,
                color="0.4",
            )
        series_legend(fig, ax, len(panel.series), loc="lower right")
        fig.suptitle(wrap(f"{panel.label}: completion latency", 100), fontsize=9)
        out.append(
            Drawn(
                f"latency_cdf-{slug(panel.label)}",
                fig,
                f"{panel.label}: CDF (left) and tail (right) of completion latency, "
                f"all repeats of each configuration merged." + emulated_note(data),
            )
        )
    return out


@figure(
    "latency_percentiles",
    "Latency percentiles",
    "Per workload: mean, p50, p99 and p99.9 completion latency per scheduler (and model "
    "state), percentiles from merged histograms, bootstrap 95% intervals over repeats.",
)
def latency_percentiles(data: RunData) -> list[Drawn]:
    plt = setup_matplotlib()
    out = []
    for panel in data.panels:
        series = list(panel.series.values())
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN_IN, 2.4))
        x, w = bar_positions(len(LATENCY_BARS), len(series))
        drew = False
        for i, s in enumerate(series):
            samples = s.samples()
            vals, cis = [], []
            for name in LATENCY_BARS:
                val, ci = estimate(stats.metric(name), samples)
                vals.append(val)
                cis.append(ci)
            if all(math.isnan(v) for v in vals):
                continue
            drew = True
            series_bars(ax, data, s, x + (i - (len(series) - 1) / 2) * w, w, vals, cis)
        if not drew:
            plt.close(fig)
            continue
        ax.set_xticks(x, [stats.METRICS[n].label.replace(" latency", "") for n in LATENCY_BARS])
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.set_ylabel("completion latency (µs)")
        ax.set_title(wrap(panel.label, 60))
        series_legend(fig, ax, len(panel.series), fontsize=6)
        out.append(
            Drawn(
                f"latency_percentiles-{slug(panel.label)}",
                fig,
                f"{panel.label}: latency percentiles (log scale); error bars are bootstrap "
                f"95% intervals over repeats." + emulated_note(data),
            )
        )
    return out


@figure(
    "throughput",
    "IOPS and bandwidth",
    "IOPS and bandwidth of every workload per scheduler (and model state), mean over "
    "repeats with bootstrap 95% intervals.",
)
def throughput(data: RunData) -> list[Drawn]:
    plt = setup_matplotlib()
    if not data.panels:
        return []
    labels: OrderedDict[Key, Series] = OrderedDict()
    for p in data.panels:
        for k, s in p.series.items():
            labels.setdefault(k, s)
    fig, axes = plt.subplots(1, 2, figsize=(DOUBLE_COLUMN_IN, 2.6))
    x, w = bar_positions(len(data.panels), len(labels))
    for ax, name, ylabel in ((axes[0], "iops", "IOPS"), (axes[1], "bw", "bandwidth (KiB/s)")):
        m = stats.metric(name)
        for i, (key, proto) in enumerate(labels.items()):
            vals, cis = [], []
            for p in data.panels:
                found = p.series.get(key)
                val, ci = estimate(m, found.samples() if found else [])
                vals.append(val)
                cis.append(ci)
            series_bars(ax, data, proto, x + (i - (len(labels) - 1) / 2) * w, w, vals, cis)
        ax.set_xticks(x, [wrap(p.label, 14) for p in data.panels], fontsize=6)
        ax.set_ylabel(ylabel)
    # Above both axes: inside, it would sit on the bars of the first workload,
    # and hung on one axes it would push the other one away.
    handles, names = axes[0].get_legend_handles_labels()
    many = len(labels) > LEGEND_INSIDE_MAX
    fig.legend(
        handles, names, frameon=False, fontsize=5 if many else 6, loc="outside upper center",
        ncol=2 if many else len(labels),
    )  # fmt: skip
    return [
        Drawn(
            "throughput",
            fig,
            "IOPS (left) and bandwidth (right) per workload, mean over repeats with "
            "bootstrap 95% intervals." + emulated_note(data),
        )
    ]
