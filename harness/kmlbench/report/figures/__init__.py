"""Every figure of the reports and the paper, defined once, drawn from the database.

``kmlbench report`` and ``kmlbench figures --paper OUTDIR`` draw exactly the
same pictures: the figures registered in :data:`FIGURES`, each drawn from a
run's :class:`RunData` as loaded by :func:`load_run_data` and written by
:func:`render`. One job per module:

| module | one job |
|---|---|
| ``grouping`` | a run's cells from the database as panels (workload, device) of series |
| ``style`` | matplotlib's style, fixed colours, legends, labels, slugs, the clock caption |
| ``registry`` | :data:`FIGURES`, :class:`FigureSpec`, :class:`Drawn`, the ``@figure`` decorator |
| ``bars`` | grouped bars with bootstrap-interval whiskers |
| ``latency`` | latency CDFs and tails, latency percentiles, IOPS and bandwidth |
| ``model`` | the model's accuracy, confusion matrices, learning curves, inference time |
| ``writer`` | drawing the registered figures into files; ``kmlbench figures`` (:func:`command`) |

The figure modules register on import, ``latency`` before ``model``: that
order is the order of :data:`FIGURES` and of every report.
"""

from __future__ import annotations

# Imported for registering their figures, latency's before model's.
from kmlbench.report.figures import latency as latency
from kmlbench.report.figures import model as model
from kmlbench.report.figures.grouping import (
    Panel,
    RunData,
    Series,
    group_cells,
    load_run_data,
    model_state,
)
from kmlbench.report.figures.model import kml_panels
from kmlbench.report.figures.registry import FIGURES, Drawn, FigureSpec, figure
from kmlbench.report.figures.style import (
    MODE_COLOURS,
    MODEL_COLOURS,
    SCHEDULER_COLOURS,
    model_colour,
    series_style,
    setup_matplotlib,
    slug,
    wrap,
)
from kmlbench.report.figures.writer import Rendered, command, render

__all__ = [
    "FIGURES",
    "MODEL_COLOURS",
    "MODE_COLOURS",
    "SCHEDULER_COLOURS",
    "Drawn",
    "FigureSpec",
    "Panel",
    "Rendered",
    "RunData",
    "Series",
    "command",
    "figure",
    "group_cells",
    "kml_panels",
    "load_run_data",
    "model_colour",
    "model_state",
    "render",
    "series_style",
    "setup_matplotlib",
    "slug",
    "wrap",
]
