"""Every figure of the reports and the paper, defined once, drawn from the database.

Figures are registered in :data:`FIGURES` with :func:`figure`; each is a
function from a run's :class:`RunData` (loaded from the results database,
never from the run folder) to zero or more :class:`Drawn` figures, so that
``kmlbench report`` and ``kmlbench figures --paper OUTDIR`` draw exactly
the same pictures. A figure whose data is absent (no ``kml_stats`` before
the model axis exists, say) returns nothing and is skipped.

Style: matplotlib's Agg backend, vector PDF with embedded TrueType fonts,
PNG at 200 dpi, 8-9 pt fonts at the printed size (3.4 in single column,
7 in double), the Okabe-Ito colour-blind-safe palette, and fixed colours:
*model off* is always blue, *model on* always vermillion; without a model
axis each scheduler keeps its own colour in every figure.

Command line::

    kmlbench figures --paper OUTDIR [--run RUN_ID] [--db FILE] [--only NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kmlbench.clock import clock_meaning
from kmlbench.data import db as kdb
from kmlbench.data import stats

SINGLE_COLUMN_IN = 3.4
DOUBLE_COLUMN_IN = 7.0
PNG_DPI = 200

# Okabe-Ito
MODEL_COLOURS = {"off": "#0072B2", "on": "#D55E00"}
# The model axis's modes (docs/matrix.md): active is "on"; observe predicts but
# leaves dispatch alone, so it gets the sky blue next to off's blue.
MODE_COLOURS = {"off": MODEL_COLOURS["off"], "observe": "#56B4E9", "active": MODEL_COLOURS["on"]}
# model.* parameters the state (colour, "model <state>" label) already shows.
_STATE_KEYS = ("model.mode", "model.enabled", "model.name")
SCHEDULER_COLOURS = {
    "none": "#999999",
    "mq-deadline": "#0072B2",
    "bfq": "#009E73",
    "kyber": "#CC79A7",
}
EXTRA_COLOURS = ["#E69F00", "#56B4E9", "#F0E442", "#000000", "#D55E00", "#009E73"]
HATCHES = ["", "//", "..", "xx", "\\\\", "++"]
LINESTYLES = ["-", "--", ":", "-."]
LATENCY_BARS = ("mean", "p50", "p99", "p999")


# --------------------------------------------------------------------------
# Data.


def model_state(params: dict) -> str | None:
    """The model's state for a cell with a model axis, None without one.

    With the matrix's model axis (``params["model"]["mode"]``) the state is
    the mode: ``off``, ``observe`` or ``active``. The older proposed shape
    ``{"name": ..., "enabled": bool}`` gives ``on``/``off``: ``enabled``
    decides when present; otherwise a model named ``none``/``off`` (or
    empty) is off.
    """
    model = params.get("model")
    if model is None:
        return None
    if isinstance(model, dict):
        if isinstance(model.get("mode"), str):
            return model["mode"]
        if "enabled" in model:
            return "on" if model["enabled"] else "off"
        model = model.get("name")
    return "off" if str(model or "").lower() in ("", "none", "off", "false") else "on"


def model_colour(state: str) -> str:
    """Colour of a model state: off blue, on/active vermillion, observe sky blue."""
    return MODEL_COLOURS.get(state) or MODE_COLOURS.get(state) or EXTRA_COLOURS[0]


@dataclass
class Series:
    """Cells of one configuration-minus-workload (scheduler, model, kernel...)."""

    key: tuple
    label: str
    scheduler: str | None
    model: str | None
    cells: list[kdb.CellRow] = field(default_factory=list)

    def samples(self, direction: str | None = None) -> list[stats.Sample]:
        return [stats.Sample.from_cell(c, direction) for c in self.cells]


@dataclass
class Panel:
    """One workload (and device, when devices vary): a figure or an x position."""

    key: tuple
    label: str
    series: OrderedDict[tuple, Series] = field(default_factory=OrderedDict)


@dataclass
class RunData:
    run: kdb.RunRow
    cells: list[kdb.CellRow]  # every cell, any status
    panels: list[Panel]
    series_keys: list[str]  # parameters that tell series apart
    panel_keys: list[str]  # parameters that tell panels apart

    @property
    def ok_cells(self) -> list[kdb.CellRow]:
        return [c for c in self.cells if c.status == "ok"]

    @property
    def has_model_axis(self) -> bool:
        return any("model" in c.params for c in self.cells)

    @property
    def has_kml_stats(self) -> bool:
        return any(c.kml_stats for c in self.ok_cells)


def _varying(cells: Sequence[kdb.CellRow]) -> list[str]:
    """Parameters that take different values among the cells that have them.

    A key only some cells have (mq-deadline's tunables, absent for ``none``)
    does not vary by being absent: the scheduler name already tells those
    series apart, and listing every tunable would bury it.
    """
    keys = sorted({k for c in cells for k in c.flat_params})
    return [k for k in keys if len({c.flat_params[k] for c in cells if k in c.flat_params}) > 1]


def _short(key: str) -> str:
    return key.split(".", 1)[1] if "." in key else key


# Device parameters in panel labels: short names, times with their unit, so
# that a panel fits under its bars ("completion 500µs", not
# "completion_nsec=500000").
_DEVICE_WORDS = {
    "device.completion_nsec": ("completion", 1e-9),
    "device.hw_queue_depth": ("depth", None),
    "device.submit_queues": ("queues", None),
    "device.size_mib": ("MiB", None),
}


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:g}{unit}"
    return f"{seconds * 1e9:g}ns"


def _device_label(cell: kdb.CellRow, keys: Sequence[str]) -> str:
    parts = []
    for k in keys:
        value = cell.flat_params.get(k)
        if value is None:
            continue
        word, scale = _DEVICE_WORDS.get(k, (_short(k), None))
        if k == "device.type":
            parts.append(value)
        elif scale is not None and value.lstrip("-").isdigit():
            parts.append(f"{word} {_time(int(value) * scale)}")
        else:
            parts.append(f"{word} {value}")
    return " ".join(parts)


def _model_word(key: str, value: str) -> str | None:
    """A model parameter as a series label says it (None: says nothing new)."""
    name = key.removeprefix("model.")
    if name.endswith("_sha256"):
        return None  # follows its file
    if value == "null":
        return {"warm_start": "cold start", "model_file": "no model file"}.get(name)
    words = {
        "trainer": f"{value} trainer" if value != "none" else "no trainer",
        "ring_mode": f"{value} ring",
        "rate": f"{value}/s" if value != "0" else "no rate cap",
        "cpu_pct": f"{value}% CPU",
        "publish_every": f"publish /{value}",
        "sample_filter": f"{value} samples",
        "decision_permille": f"threshold {value}‰",
        "warm_start": "warm start",
        "model_file": Path(value).stem,
    }
    return words.get(name, f"{name}={value}")


def _model_words(cell: kdb.CellRow, keys: Sequence[str]) -> str:
    """The model keys that vary, in words: ``user trainer block ring 500/s 25% CPU``."""
    order = {k: i for i, k in enumerate(_MODEL_WORD_ORDER)}
    chosen = sorted(
        (k for k in keys if k.startswith("model.") and k in cell.flat_params),
        key=lambda k: (order.get(k.removeprefix("model."), len(order)), k),
    )
    words = [w for k in chosen if (w := _model_word(k, cell.flat_params[k])) is not None]
    return " ".join(words)


_MODEL_WORD_ORDER = (
    "model_file", "trainer", "ring_mode", "rate", "cpu_pct", "publish_every",
    "sample_filter", "decision_permille", "warm_start",
)  # fmt: skip


def _label(cell: kdb.CellRow, keys: Sequence[str], primary: str | None) -> str:
    parts = []
    if primary and primary in cell.flat_params:
        parts.append(cell.flat_params[primary])
    for k in keys:
        if k == primary or k not in cell.flat_params:
            continue
        parts.append(f"{_short(k)}={cell.flat_params[k]}")
    return " ".join(parts) if parts else (cell.flat_params.get(primary or "", "") or "all")


def _implied(cells: Sequence[kdb.CellRow], key: str, by: str) -> bool:
    """Whether ``key`` has one value per value of ``by`` (it says nothing more).

    bursty's thinktime defaults differ from randrw's: they vary across the
    run but only with the template, and spelling them out in every label
    buries what matters.
    """
    seen: dict[str, str] = {}
    for c in cells:
        if (
            key in c.flat_params
            and by in c.flat_params
            and seen.setdefault(c.flat_params[by], c.flat_params[key]) != c.flat_params[key]
        ):
            return False
    return True


def wrap(label: str, width: int = 18) -> str:
    """A label broken into lines of about ``width`` characters (tick labels, titles)."""
    import textwrap

    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False)) or label


def group_cells(run: kdb.RunRow, cells: list[kdb.CellRow]) -> RunData:
    """Split ok cells into panels (workload, device) and series (everything else)."""
    ok = [c for c in cells if c.status == "ok"]
    varying = _varying(ok)
    panel_keys = [k for k in varying if k.startswith(("workload.", "device."))]
    series_keys = [k for k in varying if k not in panel_keys]
    quiet = {
        k for k in panel_keys if k != "workload.template" and _implied(ok, k, "workload.template")
    }
    panels: OrderedDict[tuple, Panel] = OrderedDict()
    for c in sorted(ok, key=lambda c: tuple(c.flat_params.get(k, "") for k in varying)):
        pkey = tuple(c.flat_params.get(k) for k in panel_keys)
        panel = panels.get(pkey)
        if panel is None:
            wl = [k for k in panel_keys if k.startswith("workload.") and k not in quiet]
            rest = [k for k in panel_keys if not k.startswith("workload.")]
            label = _label(c, wl, "workload.template")
            if rest:
                label += " / " + _device_label(c, sorted(rest, key=lambda k: k != "device.type"))
            panel = panels[pkey] = Panel(pkey, label)
        skey = tuple(c.flat_params.get(k) for k in series_keys)
        series = panel.series.get(skey)
        if series is None:
            state = model_state(c.params)
            label = _label(
                c, [k for k in series_keys if not k.startswith("model.")], "scheduler.name"
            )
            words = _model_words(c, [k for k in series_keys if k not in _STATE_KEYS])
            if words:
                label += f" {words}"
            if state is not None and any(k.startswith("model.") for k in series_keys):
                label += f", model {state}"
            series = panel.series[skey] = Series(
                skey, label, c.flat_params.get("scheduler.name"), state
            )
        series.cells.append(c)
    return RunData(run, cells, list(panels.values()), series_keys, panel_keys)


def load_run_data(db_path: Path, run_id: str | None = None) -> RunData:
    """A run (default: the newest in the database) ready for the figures."""
    conn = kdb.connect(db_path)
    try:
        runs = kdb.list_runs(conn)
        if not runs:
            raise LookupError(f"the database {db_path} holds no run")
        run = runs[-1] if run_id is None else kdb.get_run(conn, run_id)
        cells = kdb.load_cells(conn, run.run_id, status=None)
    finally:
        conn.close()
    return group_cells(run, cells)


# --------------------------------------------------------------------------
# Style.


def setup_matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 8,
            "axes.titlesize": 9,
            "axes.labelsize": 8,
            "legend.fontsize": 7,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "grid.linewidth": 0.5,
            "lines.linewidth": 1.2,
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "figure.constrained_layout.use": True,
        }
    )
    return plt


def plain_log_axis(axis: Any) -> None:
    """Log-scale tick labels as plain numbers (1, 10, 100, 1000): easier to read than
    powers of ten, and cheaper to draw than mathtext."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _colour(data: RunData, series: Series, schedulers: list[str]) -> str:
    if series.model is not None and data.has_model_axis:
        return model_colour(series.model)
    colour = SCHEDULER_COLOURS.get(series.scheduler or "")
    if colour is None:
        colour = EXTRA_COLOURS[schedulers.index(series.scheduler or "") % len(EXTRA_COLOURS)]
    return colour


def series_style(data: RunData, series: Series) -> dict[str, Any]:
    """Colour, hatch and line style of a series, the same in every figure of a run.

    The colour says model on/off (when the run has a model axis) or else the
    scheduler; series that share a colour (other schedulers under one model
    state, other tunables of one scheduler) get distinct line styles and hatches.
    """
    everyone: dict[tuple, Series] = {}
    for p in data.panels:
        for s in p.series.values():
            everyone.setdefault(s.key, s)
    ordered = sorted(everyone.values(), key=lambda s: tuple(str(v) for v in s.key))
    schedulers = sorted({s.scheduler or "" for s in ordered})
    colour = _colour(data, series, schedulers)
    same = [s.key for s in ordered if _colour(data, s, schedulers) == colour]
    rank = same.index(series.key) if series.key in same else 0
    return {
        "color": colour,
        "hatch": HATCHES[rank % len(HATCHES)],
        "linestyle": LINESTYLES[rank % len(LINESTYLES)],
    }


# More series than this and the legend leaves the axes (below the figure,
# two columns): inside, it would cover the data or squeeze the axes to nothing.
LEGEND_INSIDE_MAX = 4


def series_legend(fig: Any, ax: Any, n_series: int, **inside: Any) -> None:
    """The legend of the series: inside ``ax`` when few, below the figure when many."""
    if n_series <= LEGEND_INSIDE_MAX:
        ax.legend(frameon=False, **inside)
        return
    handles, names = ax.get_legend_handles_labels()
    # as many columns as the longest label allows (5 pt: about 0.045 in a character)
    width_in = fig.get_size_inches()[0]
    per_col = 0.045 * max((len(n) for n in names), default=1) + 0.4
    ncol = max(1, min(len(names), int(width_in // per_col)))
    fig.legend(handles, names, frameon=False, fontsize=5, loc="outside lower center", ncol=ncol)
    rows = -(-len(names) // ncol)
    fig.set_size_inches(width_in, fig.get_size_inches()[1] + 0.1 * rows)  # room for it


@dataclass
class Drawn:
    stem: str  # file name without extension
    figure: Any  # matplotlib Figure
    caption: str


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    description: str
    draw: Callable[[RunData], list[Drawn]]


FIGURES: OrderedDict[str, FigureSpec] = OrderedDict()


def figure(name: str, title: str, description: str) -> Callable:
    """Register a figure function under ``name``."""

    def register(fn: Callable[[RunData], list[Drawn]]) -> Callable[[RunData], list[Drawn]]:
        FIGURES[name] = FigureSpec(name, title, description, fn)
        return fn

    return register


def _slug(text: str) -> str:
    text = text.replace("µ", "u")  # file names stay ASCII
    out = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "-" for ch in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-").lower() or "all"


def _emulated_note(data: RunData) -> str:
    clock, shift = data.run.clock
    if clock == "virtual":
        text = clock_meaning(clock, shift)
        return f" {text[0].upper()}{text[1:]}."
    if data.run.emulated:
        return " Emulated (TCG), realtime clock: absolute latencies are not those of hardware."
    return ""


def _bar_positions(n_groups: int, n_series: int, width: float = 0.8) -> tuple[np.ndarray, float]:
    w = width / max(n_series, 1)
    return np.arange(n_groups), w


def _ci_err(values: list[float], cis: list[tuple[float, float]]) -> np.ndarray | None:
    lo = [v - c[0] if not math.isnan(c[0]) else 0.0 for v, c in zip(values, cis, strict=True)]
    hi = [c[1] - v if not math.isnan(c[1]) else 0.0 for v, c in zip(values, cis, strict=True)]
    if not any(lo) and not any(hi):
        return None
    return np.array([np.maximum(lo, 0), np.maximum(hi, 0)])


def _estimate(m: Any, samples: list) -> tuple[float, tuple[float, float]]:
    """A group's estimate of ``m`` and its bootstrap 95% interval (NaN when absent)."""
    if samples and stats.available(m, samples):
        return stats.group_estimate(m, samples), stats.bootstrap_ci(m, samples, n_boot=500)
    return math.nan, (math.nan, math.nan)


def _bars(
    ax: Any,
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
        yerr=_ci_err(vals, cis),
        label=series.label,
        color=style["color"],
        hatch=style["hatch"],
        edgecolor="white" if not style["hatch"] else "black",
        linewidth=0.3,
        error_kw={"elinewidth": 0.7, "capsize": 1.5},
    )


# --------------------------------------------------------------------------
# Latency and throughput.


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
            merged = stats.merge_histograms(h for c in s.cells for h in c.histograms.values())
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
                f"latency_cdf-{_slug(panel.label)}",
                fig,
                f"{panel.label}: CDF (left) and tail (right) of completion latency, "
                f"all repeats of each configuration merged." + _emulated_note(data),
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
        x, w = _bar_positions(len(LATENCY_BARS), len(series))
        drew = False
        for i, s in enumerate(series):
            samples = s.samples()
            vals, cis = [], []
            for name in LATENCY_BARS:
                val, ci = _estimate(stats.metric(name), samples)
                vals.append(val)
                cis.append(ci)
            if all(math.isnan(v) for v in vals):
                continue
            drew = True
            _bars(ax, data, s, x + (i - (len(series) - 1) / 2) * w, w, vals, cis)
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
                f"latency_percentiles-{_slug(panel.label)}",
                fig,
                f"{panel.label}: latency percentiles (log scale); error bars are bootstrap "
                f"95% intervals over repeats." + _emulated_note(data),
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
    labels: OrderedDict[tuple, Series] = OrderedDict()
    for p in data.panels:
        for k, s in p.series.items():
            labels.setdefault(k, s)
    fig, axes = plt.subplots(1, 2, figsize=(DOUBLE_COLUMN_IN, 2.6))
    x, w = _bar_positions(len(data.panels), len(labels))
    for ax, name, ylabel in ((axes[0], "iops", "IOPS"), (axes[1], "bw", "bandwidth (KiB/s)")):
        m = stats.metric(name)
        for i, (key, proto) in enumerate(labels.items()):
            vals, cis = [], []
            for p in data.panels:
                s = p.series.get(key)
                val, ci = _estimate(m, s.samples() if s else [])
                vals.append(val)
                cis.append(ci)
            _bars(ax, data, proto, x + (i - (len(labels) - 1) / 2) * w, w, vals, cis)
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
            "bootstrap 95% intervals." + _emulated_note(data),
        )
    ]


# --------------------------------------------------------------------------
# Model quality (cells with kml_stats).


def _kml_panels(
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
    "baseline (observe cells when there are any: active mode changes what it predicts); "
    "Wilson 95% intervals for one repeat, Student-t over repeats otherwise.",
)
def accuracy(data: RunData) -> list[Drawn]:
    panels = _kml_panels(data, prefer_observe=True)
    rows = []
    for p, cells in panels:
        entry = {"label": p.label}
        for key in ("accuracy", "balanced_accuracy", "majority_baseline"):
            vals = [float(c.kml_stats[key]) for c in cells if key in c.kml_stats]
            if not vals:
                continue
            mean = float(np.mean(vals))
            if len(vals) == 1:
                n = int(cells[0].kml_stats.get("n_predictions", 0) or 0)
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
    x, w = _bar_positions(len(rows), 2)
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
            yerr=_ci_err(vals, cis),
            color=colour,
            label=label,
            error_kw={"elinewidth": 0.7, "capsize": 1.5},
        )
    base = [r.get("majority_baseline", (math.nan, None))[0] for r in rows]
    ax.scatter(x, base, marker="_", s=300, color="black", zorder=3, label="majority baseline")
    ax.set_xticks(x, [wrap(r["label"], 12) for r in rows], fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction")
    ax.legend(frameon=False, fontsize=6, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    return [
        Drawn(
            "accuracy",
            fig,
            "Model accuracy and balanced accuracy per workload; the "
            "black mark is the majority-class baseline.",
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
    for p, cells in _kml_panels(data, prefer_observe=True):
        mats = [
            np.asarray(c.kml_stats["confusion_matrix"], dtype=float)
            for c in cells
            if "confusion_matrix" in c.kml_stats
        ]
        if not mats or any(m.shape != mats[0].shape for m in mats):
            continue
        total = np.sum(mats, axis=0)
        labels = cells[0].kml_stats.get("labels") or [str(i) for i in range(total.shape[0])]
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
                f"confusion-{_slug(p.label)}",
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
        loss_ax.set_xlabel(steps)
        loss_ax.set_ylabel("loss" if left == "loss" else "issue-time MAE (µs)")
        acc_ax.set_xlabel(steps)
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_ylim(0, 1)
        entries = len(groups) if len(groups) > 1 else len(every)
        series_legend(fig, acc_ax, entries, fontsize=6)
        fig.suptitle(wrap(f"{p.label}: learning curve", 100), fontsize=9)
        out.append(
            Drawn(
                f"learning_curve-{_slug(p.label)}",
                fig,
                f"{p.label}: training "
                f"{'loss' if left == 'loss' else 'issue-time error'} (left) and accuracy (right) "
                "of each window before training on it; one colour per configuration, one line "
                "style per repeat.",
            )
        )
    return out


def _inference_hist(kml: dict) -> stats.Histogram | None:
    inf = kml.get("inference_ns")
    if isinstance(inf, dict) and isinstance(inf.get("bins"), dict):
        return stats.Histogram.from_bins(inf["bins"])
    if isinstance(inf, list) and inf:
        return stats.histogram_from_samples(inf)
    return None


@figure(
    "inference_time",
    "Inference time",
    "Distribution of the model's per-inference time in the kernel, all workloads.",
)
def inference_time(data: RunData) -> list[Drawn]:
    per_panel = []
    for p, cells in _kml_panels(data):
        hs = [h for c in cells if (h := _inference_hist(c.kml_stats)) is not None]
        if hs:
            per_panel.append((p, stats.merge_histograms(hs)))
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


# --------------------------------------------------------------------------
# Rendering.


@dataclass
class Rendered:
    name: str  # registry name
    title: str
    stem: str
    caption: str
    files: dict[str, Path]


def render(
    data: RunData,
    out_dir: Path,
    *,
    names: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> tuple[list[Rendered], list[str]]:
    """Draw the registered figures into ``out_dir``; returns (rendered, skipped names)."""
    plt = setup_matplotlib()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered: list[Rendered] = []
    skipped: list[str] = []
    for name, spec in FIGURES.items():
        if names and name not in names:
            continue
        drawn = spec.draw(data)
        if not drawn:
            skipped.append(name)
        for d in drawn:
            files = {}
            # raster first; the vector copies then reuse its layout instead of
            # solving the constrained layout again
            for fmt in sorted(formats, key=lambda f: f != "png"):
                path = out_dir / f"{d.stem}.{fmt}"
                if fmt == "pdf":
                    d.figure.savefig(path, format="pdf", metadata={"CreationDate": None})
                else:
                    d.figure.savefig(path, format=fmt, dpi=PNG_DPI)
                files[fmt] = path
                d.figure.set_layout_engine("none")
            plt.close(d.figure)
            rendered.append(Rendered(name, spec.title, d.stem, d.caption, files))
    return rendered, skipped


def command(args: argparse.Namespace) -> int:
    """``kmlbench figures``: draw a run's figures into --paper (or --list them)."""
    if args.list:
        for spec in FIGURES.values():
            print(f"{spec.name:22} {spec.description}")
        return 0
    if args.paper is None:
        print("kmlbench figures: --paper OUTDIR is required (or --list)", file=sys.stderr)
        return 2
    unknown = sorted(set(args.only or []) - set(FIGURES))
    if unknown:
        print(f"kmlbench figures: unknown figure(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    db_path = args.db or kdb.default_db_path()
    try:
        data = load_run_data(db_path, args.run)
    except (LookupError, FileNotFoundError) as e:
        print(f"kmlbench figures: {e}", file=sys.stderr)
        return 2
    rendered, skipped = render(data, args.paper, names=args.only, formats=args.format)
    for r in rendered:
        print(f"kmlbench figures: {r.stem}: " + ", ".join(str(p) for p in r.files.values()))
    for name in skipped:
        print(f"kmlbench figures: {name}: skipped (no data for it in run {data.run.run_id})")
    return 0
