"""How every figure looks: matplotlib's style, fixed colours, legends and captions.

Matplotlib's Agg backend, vector PDF with embedded TrueType fonts, PNG at
200 dpi, 8-9 pt fonts at the printed size (3.4 in single column, 7 in
double), the Okabe-Ito colour-blind-safe palette, and fixed colours:
*model off* is always blue, *model on* always vermillion; without a model
axis each scheduler keeps its own colour in every figure. Also the words
around figures: wrapped labels, ASCII file-name slugs and the caption's
note on the guest's clock.
"""

from __future__ import annotations

import textwrap
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, and the same output everywhere
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from kmlbench.clock import clock_meaning
from kmlbench.report.figures.grouping import RunData, Series

SINGLE_COLUMN_IN = 3.4
DOUBLE_COLUMN_IN = 7.0
PNG_DPI = 200

# Okabe-Ito
MODEL_COLOURS = {"off": "#0072B2", "on": "#D55E00"}
# The model axis's modes (docs/matrix.md): active is "on"; observe predicts but
# leaves dispatch alone, so it gets the sky blue next to off's blue.
MODE_COLOURS = {"off": MODEL_COLOURS["off"], "observe": "#56B4E9", "active": MODEL_COLOURS["on"]}
SCHEDULER_COLOURS = {
    "none": "#999999",
    "mq-deadline": "#0072B2",
    "bfq": "#009E73",
    "kyber": "#CC79A7",
}
EXTRA_COLOURS = ["#E69F00", "#56B4E9", "#F0E442", "#000000", "#D55E00", "#009E73"]
HATCHES = ["", "//", "..", "xx", "\\\\", "++"]
LINESTYLES = ["-", "--", ":", "-."]


def model_colour(state: str) -> str:
    """Colour of a model state: off blue, on/active vermillion, observe sky blue."""
    return MODEL_COLOURS.get(state) or MODE_COLOURS.get(state) or EXTRA_COLOURS[0]


def wrap(label: str, width: int = 18) -> str:
    """A label broken into lines of about ``width`` characters (tick labels, titles)."""
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False)) or label


def setup_matplotlib() -> ModuleType:
    """``matplotlib.pyplot`` with the figures' style set."""
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


def plain_log_axis(axis: Axis) -> None:
    """Log-scale tick labels as plain numbers (1, 10, 100, 1000): easier to read than
    powers of ten, and cheaper to draw than mathtext."""
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
    everyone: dict[tuple[str | None, ...], Series] = {}
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


def series_legend(fig: Figure, ax: Axes, n_series: int, **inside: Any) -> None:
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


def slug(text: str) -> str:
    """``text`` as an ASCII file-name stem: ``bursty / completion 500µs`` ->
    ``bursty-completion-500us``."""
    text = text.replace("µ", "u")  # file names stay ASCII
    out = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "-" for ch in text)
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-").lower() or "all"


def emulated_note(data: RunData) -> str:
    """The caption's sentence on the run's clock: what a latency means under the
    virtual clock, or a warning under emulation with the realtime clock."""
    clock, shift = data.run.clock
    if clock == "virtual":
        text = clock_meaning(clock, shift)
        return f" {text[0].upper()}{text[1:]}."
    if data.run.emulated:
        return " Emulated (TCG), realtime clock: absolute latencies are not those of hardware."
    return ""
