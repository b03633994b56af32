"""The model figures, drawn from cells with ``kml_stats``: accuracy, confusion
matrices, learning curves and inference time.

Registered in this order: ``accuracy``, ``confusion``, ``learning_curve``,
``inference_time``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from kmlbench.data import db as kdb
from kmlbench.data import histogram, skill, stats
from kmlbench.report.figures.bars import bar_positions, ci_err
from kmlbench.report.figures.grouping import Panel, RunData, model_state
from kmlbench.report.figures.registry import Drawn, figure
from kmlbench.report.figures.style import (
    DOUBLE_COLUMN_IN,
    EXTRA_COLOURS,
    LINESTYLES,
    MODEL_COLOURS,
    SINGLE_COLUMN_IN,
    plain_log_axis,
    series_legend,
    setup_matplotlib,
    slug,
    wrap,
)


def _kml(cell: kdb.CellRow) -> dict[str, Any]:
    """A cell's ``kml_stats`` (every cell :func:`kml_panels` returns has them)."""
    return cell.kml_stats or {}


def kml_panels(
    data: RunData, *, prefer_observe: bool = False
) -> list[tuple[Panel, list[kdb.CellRow]]]:
    """Per panel, the cells with ``kml_stats``.

    ``prefer_observe`` keeps only the ``observe`` cells of a panel that has
    any: in ``active`` mode the predictions change the dispatch order, hence
    the outcome they predict, so only observe measures the model's accuracy.
    """
    out = []
    for p in data.panels:
        cells = [c for s in p.series.values() for c in s.cells if c.kml_stats]
        observing = [c for c in cells if model_state(c.params) == "observe"]
        if prefer_observe and observing:
            cells = observing
        if cells:
            out.append((p, cells))
    return out


@figure(
    "accuracy",
    "Model accuracy",
    "Per workload: accuracy and balanced accuracy of the model against the majority-class "
    "baseline and chance (0.5 balanced), a workload whose model is below either flagged "
    "(observe cells when there are any: active mode changes what it predicts); "
    "Wilson 95% intervals for one repeat, Student-t over repeats otherwise.",
)
def accuracy(data: RunData) -> list[Drawn]:
    panels = kml_panels(data, prefer_observe=True)
    rows = []
    for p, cells in panels:
        entry: dict[str, Any] = {"label": p.label}
        for key in ("accuracy", "balanced_accuracy", "majority_baseline"):
            # a cell with no prediction (no model, or none scored) records None
            scored = [c for c in cells if _kml(c).get(key) is not None]
            vals = [float(_kml(c)[key]) for c in scored]
            if not vals:
                continue
            mean = float(np.mean(vals))
            if len(vals) == 1:
                n = int(_kml(scored[0]).get("n_predictions", 0) or 0)
                ci = stats.wilson_interval(mean * n, n) if n else (math.nan, math.nan)
            else:
                ci = stats.mean_ci(vals)
            entry[key] = (mean, ci)
        if "accuracy" in entry:
            rows.append(entry)
    if not rows:
        return []
    plt = setup_matplotlib()
    fig, ax = plt.subplots(figsize=(SINGLE_COLUMN_IN, 2.4))
    x, w = bar_positions(len(rows), 2)
    for i, (key, colour, label) in enumerate(
        (
            ("accuracy", MODEL_COLOURS["on"], "accuracy"),
            ("balanced_accuracy", "#E69F00", "balanced accuracy"),
        )
    ):
        vals = [r.get(key, (math.nan, None))[0] for r in rows]
        cis = [r.get(key, (math.nan, (math.nan, math.nan)))[1] for r in rows]
        ax.bar(
            x + (i - 0.5) * w,
            vals,
            w,
            yerr=ci_err(vals, cis),
            color=colour,
            label=label,
            error_kw={"elinewidth": 0.7, "capsize": 1.5},
        )
    base = [r.get("majority_baseline", (math.nan, None))[0] for r in rows]
    ax.scatter(x, base, marker="_", s=300, color="black", zorder=3, label="majority baseline")
    ax.axhline(0.5, color="#888888", linewidth=0.6, linestyle=":", zorder=1)
    flagged = 0
    for xi, r in zip(x, rows, strict=True):
        figures = {
            "accuracy": r["accuracy"][0],
            "baseline_accuracy": r.get("majority_baseline", (None, None))[0],
            "balanced_accuracy": r.get("balanced_accuracy", (None, None))[0],
        }
        if skill.below_baseline(figures):
            flagged += 1
            ax.text(xi, 0.04, "below\nbaseline", ha="center", va="bottom", fontsize=5,
                    color="#c62828", fontweight="bold")  # fmt: skip
    ax.set_xticks(x, [wrap(r["label"], 12) for r in rows], fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.legend(frameon=False, fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    return [
        Drawn(
            "accuracy",
            fig,
            "Model accuracy and balanced accuracy per workload; the black mark is the "
            "majority-class baseline, the dotted line chance (0.5) for balanced accuracy"
            + (
                f"; {flagged} workload(s) flagged 'below baseline' (accuracy under the "
                "majority baseline or balanced accuracy at most 0.5)."
                if flagged
                else "."
            ),
        )
    ]


@figure(
    "confusion",
    "Confusion matrices",
    "Per workload: the model's confusion matrix (rows: true class, columns: predicted), "
    "summed over repeats (observe cells when there are any) and normalised per row.",
)
def confusion(data: RunData) -> list[Drawn]:
    out = []
    for p, cells in kml_panels(data, prefer_observe=True):
        mats = [
            np.asarray(_kml(c)["confusion_matrix"], dtype=np.float64)
            for c in cells
            if _kml(c).get("confusion_matrix") is not None
        ]
        if not mats or any(m.shape != mats[0].shape for m in mats):
            continue
        total = np.sum(mats, axis=0)
        labels = _kml(cells[0]).get("labels") or [str(i) for i in range(total.shape[0])]
        norm = total / np.maximum(total.sum(axis=1, keepdims=True), 1)
        plt = setup_matplotlib()
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN_IN, SINGLE_COLUMN_IN * 0.85))
        ax.grid(False)
        # pcolormesh, not imshow: cells stay vector shapes in the PDF
        im = ax.pcolormesh(norm, cmap="Blues", vmin=0, vmax=1, edgecolors="white", linewidth=0.5)
        ax.set_aspect("equal")
        ax.invert_yaxis()
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                ax.text(
                    j + 0.5,
                    i + 0.5,
                    f"{norm[i, j]:.2f}\n({int(total[i, j])})",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.6 else "black",
                )
        ticks = np.arange(len(labels)) + 0.5
        ax.set_xticks(ticks, labels, rotation=30, ha="right")
        ax.set_yticks(ticks, labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(wrap(p.label, 50))
        fig.colorbar(im, ax=ax, shrink=0.8)
        out.append(
            Drawn(
                f"confusion-{slug(p.label)}",
                fig,
                f"{p.label}: confusion matrix over {len(mats)} repeat(s), row-normalised "
                "(counts in brackets).",
            )
        )
    return out


@figure(
    "learning_curve",
    "Learning curves",
    "Per workload: the model's training loss and accuracy against training step, one "
    "line per repeat.",
)
def learning_curve(data: RunData) -> list[Drawn]:
    out = []
    for p in data.panels:
        # (series, its curves in repeat order): one colour per series, one
        # line style per repeat, one legend entry per series
        groups = []
        for series in p.series.values():
            curves = [
                c.kml_stats["learning_curve"]
                for c in sorted(series.cells, key=lambda c: c.repeat or 0)
                if c.kml_stats and isinstance(c.kml_stats.get("learning_curve"), dict)
            ]
            curves = [cv for cv in curves if cv.get("step")]
            if curves:
                groups.append((series, curves))
        if not groups:
            continue
        every = [cv for _, curves in groups for cv in curves]
        # kmlctl's trainer reports the issue-time error of each window, not a loss
        left = "loss" if any(cv.get("loss") for cv in every) else "mae_us"
        steps = "samples seen" if any(cv.get("step_name") for cv in every) else "training step"
        plt = setup_matplotlib()
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(DOUBLE_COLUMN_IN, 2.2))
        for g, (series, curves) in enumerate(groups):
            colour = (
                MODEL_COLOURS["on"] if len(groups) == 1 else EXTRA_COLOURS[g % len(EXTRA_COLOURS)]
            )
            alpha = 1.0 if len(every) == 1 else 0.5 + 0.5 / len(curves)
            for r, cv in enumerate(curves):
                style = {"color": colour, "alpha": alpha,
                         "linestyle": LINESTYLES[r % len(LINESTYLES)]}  # fmt: skip
                if cv.get(left):
                    loss_ax.plot(cv["step"], cv[left], **style)
                if cv.get("accuracy"):
                    label = series.label if len(groups) > 1 else f"repeat {r}"
                    acc_ax.plot(cv["step"], cv["accuracy"], **style,
                                label=label if r == 0 or len(groups) == 1 else None)  # fmt: skip
                if cv.get("balanced_accuracy"):  # beside accuracy, thinner
                    thin = {**style, "linewidth": 0.6, "marker": ".", "markersize": 2}
                    acc_ax.plot(cv["step"], cv["balanced_accuracy"], **thin)
        loss_ax.set_xlabel(steps)
        loss_ax.set_ylabel("loss" if left == "loss" else "issue-time MAE (µs)")
        acc_ax.set_xlabel(steps)
        acc_ax.set_ylabel("accuracy (dots: balanced)")
        acc_ax.axhline(0.5, color="#888888", linewidth=0.6, linestyle=":")
        acc_ax.set_ylim(0, 1)
        entries = len(groups) if len(groups) > 1 else len(every)
        series_legend(fig, acc_ax, entries, fontsize=6)
        fig.suptitle(wrap(f"{p.label}: learning curve", 100), fontsize=9)
        out.append(
            Drawn(
                f"learning_curve-{slug(p.label)}",
                fig,
                f"{p.label}: training "
                f"{'loss' if left == 'loss' else 'issue-time error'} (left) and accuracy (right; "
                "dotted: balanced accuracy, the grey line chance) "
                "of each window before training on it; one colour per configuration, one line "
                "style per repeat.",
            )
        )
    return out


def _inference_hist(kml: dict[str, Any]) -> histogram.Histogram | None:
    inf = kml.get("inference_ns")
    if isinstance(inf, dict) and isinstance(inf.get("bins"), dict):
        return histogram.Histogram.from_bins(inf["bins"])
    if isinstance(inf, list) and inf:
        return histogram.histogram_from_samples(inf)
    return None


@figure(
    "inference_time",
    "Inference time",
    "Distribution of the model's per-inference time in the kernel, all workloads.",
)
def inference_time(data: RunData) -> list[Drawn]:
    per_panel = []
    for p, cells in kml_panels(data):
        hs = [h for c in cells if (h := _inference_hist(_kml(c))) is not None]
        if hs:
            per_panel.append((p, histogram.merge_histograms(hs)))
    if not per_panel:
        return []
    plt = setup_matplotlib()
    fig, ax = plt.subplots(figsize=(SINGLE_COLUMN_IN, 2.3))
    lo = min(float(h.values[0]) for _, h in per_panel)
    hi = max(float(h.values[-1]) for _, h in per_panel)
    edges = np.geomspace(max(lo, 1.0) / 1.05, hi * 1.05, 40)
    for i, (p, h) in enumerate(per_panel):
        ax.hist(
            h.values,
            bins=edges,
            weights=h.counts / h.total,
            histtype="step",
            color=EXTRA_COLOURS[i % len(EXTRA_COLOURS)]
            if len(per_panel) > 1
            else MODEL_COLOURS["on"],
            label=f"{p.label} (p99 {h.percentile(99):.0f} ns)",
        )
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("inference time (ns)")
    ax.set_ylabel("fraction of inferences")
    ax.legend(frameon=False, fontsize=6)
    return [Drawn("inference_time", fig, "Per-inference time of the model (log scale).")]
