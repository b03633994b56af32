"""A run's cells as the figures see them: panels (workload, device) of series.

:func:`load_run_data` reads a run from the results database (never from the
run folder) and :func:`group_cells` splits its ok cells into panels, one per
workload (and device, when devices vary), each holding one series per
configuration-minus-workload (scheduler, model, kernel...), with the labels
the figures print.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmlbench.data import db as kdb
from kmlbench.data import stats
from kmlbench.plan.schema import SPARSE_MODEL_MODES
from kmlbench.status import OK

# model.* parameters the state (colour, "model <state>" label) already shows.
_STATE_KEYS = ("model.mode", "model.enabled", "model.name")

Key = tuple[str | None, ...]


def model_state(params: dict[str, Any]) -> str | None:
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
        mode = model.get("mode")
        if isinstance(mode, str):
            return mode
        if "enabled" in model:
            return "on" if model["enabled"] else "off"
        model = model.get("name")
    return "off" if str(model or "").lower() in ("", "none", "off", "false") else "on"


@dataclass
class Series:
    """Cells of one configuration-minus-workload (scheduler, model, kernel...)."""

    key: Key
    label: str
    scheduler: str | None
    model: str | None
    cells: list[kdb.CellRow] = field(default_factory=list)

    def samples(self, direction: str | None = None) -> list[stats.Sample]:
        """One statistics sample per cell (repeat)."""
        return [stats.Sample.from_cell(c, direction) for c in self.cells]


@dataclass
class Panel:
    """One workload (and device, when devices vary): a figure or an x position."""

    key: Key
    label: str
    series: OrderedDict[Key, Series] = field(default_factory=OrderedDict)


@dataclass
class RunData:
    """A run and its cells, grouped into panels of series."""

    run: kdb.RunRow
    cells: list[kdb.CellRow]  # every cell, any status
    panels: list[Panel]
    series_keys: list[str]  # parameters that tell series apart
    panel_keys: list[str]  # parameters that tell panels apart

    @property
    def ok_cells(self) -> list[kdb.CellRow]:
        return [c for c in self.cells if c.status == OK]

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
    series apart, and listing every tunable would bury it. But a model key
    recorded only when not its default (``lazy``, ``observe_every``,
    ``sample_unclaimed``, policy ``cost``'s) is absent from a cell of its
    mode because it has the default: there its absence is a value, or
    predicting every request and lazily would be one series.
    """
    keys = sorted({k for c in cells for k in c.flat_params})
    out = []
    for k in keys:
        values: set[str | None] = {c.flat_params[k] for c in cells if k in c.flat_params}
        modes = SPARSE_MODEL_MODES.get(k.removeprefix("model.")) if k.startswith("model.") else None
        if modes is not None and any(
            c.flat_params.get("model.mode") in modes and k not in c.flat_params for c in cells
        ):
            values.add(None)
        if len(values) > 1:
            out.append(k)
    return out


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


def group_cells(run: kdb.RunRow, cells: list[kdb.CellRow]) -> RunData:
    """Split ok cells into panels (workload, device) and series (everything else)."""
    ok = [c for c in cells if c.status == OK]
    varying = _varying(ok)
    panel_keys = [k for k in varying if k.startswith(("workload.", "device."))]
    series_keys = [k for k in varying if k not in panel_keys]
    quiet = {
        k for k in panel_keys if k != "workload.template" and _implied(ok, k, "workload.template")
    }
    panels: OrderedDict[Key, Panel] = OrderedDict()
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
