"""The figure registry: every figure of the reports and the paper, defined once.

A figure is a function from a run's :class:`RunData` to zero or more
:class:`Drawn` figures, registered in :data:`FIGURES` under its name with
:func:`figure`; ``kmlbench report`` and ``kmlbench figures`` draw the same
registry. A figure whose data is absent (no ``kml_stats``, say) returns
nothing and is skipped. The order of :data:`FIGURES` is the order of
registration: the latency module's figures, then the model's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from matplotlib.figure import Figure

from kmlbench.report.figures.grouping import RunData


@dataclass
class Drawn:
    """One drawn figure, not yet saved."""

    stem: str  # file name without extension
    figure: Figure
    caption: str


DrawFunction = Callable[[RunData], list[Drawn]]


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure: its name, title, description and drawing function."""

    name: str
    title: str
    description: str
    draw: DrawFunction


FIGURES: OrderedDict[str, FigureSpec] = OrderedDict()


def figure(name: str, title: str, description: str) -> Callable[[DrawFunction], DrawFunction]:
    """Register a figure function under ``name``."""

    def register(fn: DrawFunction) -> DrawFunction:
        FIGURES[name] = FigureSpec(name, title, description, fn)
        return fn

    return register
