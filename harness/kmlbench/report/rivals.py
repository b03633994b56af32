"""``kmlbench rivals RUN``: each KML configuration against the kernel's own alternatives.

Issue 13 asks every report to say whether KML-tuned mq-deadline beats the
schedulers the kernel already has on the same cells, not only itself with the
model off. Within one run, cells are grouped into *loads*: every parameter but
the scheduler's and the model's (and those given to ``--ignore``). In a load,
each configuration of :data:`~kmlbench.plan.schema.MODEL_SCHEDULER` with the
model on is a *contender*; every other configuration (stock mq-deadline with
the model off, none, kyber, bfq) is a *rival*.

For each metric a contender is compared with every rival by
:func:`kmlbench.data.stats.compare_metric` (bootstrap interval over repeats,
rank test; the rival is the baseline). The table shows the change against the
rival best at that metric; the contender *beats the alternatives* at it when it
is significantly better than each of them, and *beats them all* when it does so
at every metric compared. A load without both kinds of configuration is listed
and left out.

    kmlbench rivals RUN [--metrics lat_mean lat_p99 iops late] [--ignore KEY]
                        [--json FILE] [--html FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kmlbench.clock import clock_label, clock_meaning
from kmlbench.data import db as kdb
from kmlbench.data import stats
from kmlbench.plan.schema import MODEL_OFF, MODEL_SCHEDULER
from kmlbench.report.compare import (
    excluded_keys,
    judging_options,
    match_key,
    resolve_run,
    row_labels,
)
from kmlbench.report.tables import CSS, esc, fmt_value

# What a scheduler is judged by: the total latency (submission to completion:
# a request's wait for a tag is the scheduler's doing too), the throughput and
# the share of requests completed past their target. Those no cell has are
# left out.
DEFAULT_METRICS = ("lat_mean", "lat_p99", "iops", "late")
EXIT_OK = 0
EXIT_USAGE = 2


@dataclass(frozen=True)
class Against:
    """A contender at one metric, against the rivals of its load."""

    metric: str
    label: str
    unit: str
    value: float  # the contender's
    best: str  # the rival best at this metric
    vs_best: stats.Comparison  # the contender against that rival
    beats: bool  # significantly better than every rival
    worse_than: tuple[str, ...]  # the rivals significantly better than it
    level_with: tuple[str, ...]  # those neither better nor worse than it
    underpowered: bool  # some comparison could not reach significance


@dataclass(frozen=True)
class Contender:
    label: str
    repeats: int
    results: tuple[Against, ...]

    @property
    def beats_all(self) -> bool:
        return bool(self.results) and all(a.beats for a in self.results)

    @property
    def short_of(self) -> list[str]:
        """The metrics it does not beat every rival at, each with who holds it."""
        out = []
        for a in self.results:
            if not a.beats:
                who = ", ".join(a.worse_than) or "level with " + ", ".join(a.level_with)
                out.append(f"{a.label} ({who})")
        return out


@dataclass(frozen=True)
class Load:
    label: str
    rivals: dict[str, dict[str, float]]  # rival -> metric -> its value
    repeats: dict[str, int]  # rival -> its repeats
    contenders: tuple[Contender, ...]
    missing: tuple[str, ...] = ()  # metrics asked for that some of its cells lack


@dataclass(frozen=True)
class Result:
    loads: tuple[Load, ...]
    metrics: tuple[str, ...]
    incomplete: tuple[str, ...]  # loads with rivals only or contenders only


# What tells KML's configurations from the alternatives: never left out.
KIND_KEYS = ("scheduler.name", "model.mode")


def check_ignore(ignore: Sequence[str]) -> None:
    """Refuse an ``--ignore`` that would merge KML's cells with the others'."""
    for key in ignore:
        covers = [k for k in KIND_KEYS if k == key or (key.endswith(".") and k.startswith(key))]
        if covers:
            verb = "tell" if len(covers) > 1 else "tells"
            raise ValueError(
                f"--ignore {key}: {' and '.join(covers)} {verb} KML's configurations from the "
                "alternatives and cannot be left out"
            )


def _config_key(cell: kdb.CellRow, ignore: set[str]) -> tuple[Any, ...]:
    """A configuration: its parameters less ``ignore``, a cell without a model
    recorded as the model off (as stock mq-deadline and the others are)."""
    d = dict(match_key(cell, ignore))
    d["scheduler.name"] = cell.param("scheduler.name", "")
    d["model.mode"] = cell.param("model.mode", MODEL_OFF["mode"])
    return tuple(sorted(d.items()))


def is_contender(cell: kdb.CellRow) -> bool:
    """KML's scheduler with the model on."""
    mode = cell.param("model.mode", MODEL_OFF["mode"])
    return cell.param("scheduler.name") == MODEL_SCHEDULER and mode != MODEL_OFF["mode"]


def _better(m: stats.MetricDef, x: float, y: float) -> bool:
    return x > y if m.higher_is_better else x < y


def _judge(
    name: str,
    rivals: dict[str, list[stats.Sample]],
    samples: list[stats.Sample],
    *,
    alpha: float,
    n_boot: int,
) -> Against:
    m = stats.metric(name)
    comps = {
        r: stats.compare_metric(name, rs, samples, alpha=alpha, n_boot=n_boot)
        for r, rs in rivals.items()
    }
    best = next(iter(comps))
    for r, c in comps.items():
        if _better(m, c.a, comps[best].a):
            best = r
    return Against(
        metric=m.name,
        label=m.label,
        unit=m.unit,
        value=comps[best].b,
        best=best,
        vs_best=comps[best],
        beats=all(c.verdict == stats.BETTER for c in comps.values()),
        worse_than=tuple(r for r, c in comps.items() if c.verdict == stats.WORSE),
        level_with=tuple(r for r, c in comps.items() if c.verdict == stats.NO_DIFFERENCE),
        underpowered=any(c.underpowered for c in comps.values()),
    )


def _available(metrics: Sequence[str], groups: Sequence[list[stats.Sample]]) -> list[str]:
    return [n for n in metrics if all(stats.available(stats.metric(n), g) for g in groups)]


def _varying(dicts: Sequence[dict[str, Any]]) -> list[str]:
    keys = {p for d in dicts for p in d} - set(KIND_KEYS)
    return sorted(p for p in keys if len({d.get(p) for d in dicts}) > 1)


def _labels(groups: OrderedDict[tuple[Any, ...], list[kdb.CellRow]]) -> dict[Any, str]:
    """A rival by its scheduler (stock mq-deadline marked "KML off"), a contender by
    its mode; each with the parameters it has that differ among the contenders,
    or among the rivals of its scheduler."""
    dicts = {k: dict(k) for k in groups}
    kind = {k: is_contender(g[0]) for k, g in groups.items()}
    out: dict[Any, str] = {}
    for k, d in dicts.items():
        name = d.get("scheduler.name", "")
        if kind[k]:
            head = f"KML {d.get('model.mode', '')}"
            peers = [e for j, e in dicts.items() if kind[j]]
        else:
            head = f"{name} (KML off)" if name == MODEL_SCHEDULER else name
            peers = [e for j, e in dicts.items() if not kind[j] and e.get("scheduler.name") == name]
        words = [f"{p.split('.', 1)[-1]}={d[p]}" for p in _varying(peers) if p in d]
        out[k] = " ".join([head, *words])
    if len(set(out.values())) < len(out):  # told apart by a key some lack: name them all
        return row_labels(list(groups))
    return out


def judge(
    cells: Sequence[kdb.CellRow],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    ignore: Sequence[str] = (),
    alpha: float = 0.05,
    n_boot: int = 2000,
) -> Result:
    """Every contender of every load against that load's rivals."""
    check_ignore(ignore)
    load_of = excluded_keys(KIND_KEYS, ignore)
    loads: OrderedDict[tuple[Any, ...], list[kdb.CellRow]] = OrderedDict()
    for c in cells:
        loads.setdefault(match_key(c, load_of), []).append(c)
    load_labels = row_labels(list(loads))
    out, incomplete, shown = [], [], set()
    for key, members in loads.items():
        groups: OrderedDict[tuple[Any, ...], list[kdb.CellRow]] = OrderedDict()
        for c in members:
            groups.setdefault(_config_key(c, set(ignore)), []).append(c)
        labels = _labels(groups)
        rivals = {labels[k]: g for k, g in groups.items() if not is_contender(g[0])}
        contenders = {labels[k]: g for k, g in groups.items() if is_contender(g[0])}
        if not rivals or not contenders:
            incomplete.append(load_labels[key])
            continue
        rs = {r: [stats.Sample.from_cell(c) for c in g] for r, g in rivals.items()}
        cs = {r: [stats.Sample.from_cell(c) for c in g] for r, g in contenders.items()}
        names = _available(metrics, [*rs.values(), *cs.values()])
        missing = tuple(n for n in metrics if n not in names)
        shown.update(names)
        rival_values = {
            r: {n: stats.group_estimate(stats.metric(n), s) for n in names} for r, s in rs.items()
        }
        judged = tuple(
            Contender(
                label,
                len(samples),
                tuple(_judge(n, rs, samples, alpha=alpha, n_boot=n_boot) for n in names),
            )
            for label, samples in cs.items()
        )
        repeats = {r: len(s) for r, s in rs.items()}
        out.append(Load(load_labels[key], rival_values, repeats, judged, missing))
    order = tuple(n for n in metrics if n in shown)
    return Result(tuple(out), order, tuple(incomplete))


# --------------------------------------------------------------------------
# Output.


def _fmt(name: str, value: float | None) -> str:
    """A latency in ms (or µs under 10 ms), a share in percent, else 4 digits."""
    if value is None or math.isnan(value):
        return ""
    m = stats.metric(name)
    if m.unit == "µs":
        return f"{value / 1000:,.1f} ms" if value >= 10_000 else f"{value:,.0f} µs"
    if not m.unit and not m.higher_is_better:  # a share of requests (late, misses)
        return f"{value:.1%}"
    return fmt_value(value)


def _cell_text(a: Against) -> str:
    c = a.vs_best
    change = "" if math.isnan(c.change) else f" {c.change:+.1%} vs {a.best}"
    mark = " ✓" if a.beats else " ✗" if a.worse_than else " ="
    return f"{_fmt(a.metric, a.value)}{change}{mark}"


UNDERPOWERED = (
    "Some comparisons have too few repeats for the rank test to reach significance (its "
    "smallest p is 0.029 with 4 repeats a side, 0.1 with 3): an = there says nothing."
)


def underpowered(result: Result) -> bool:
    return any(a.underpowered for load in result.loads for c in load.contenders for a in c.results)


def print_result(result: Result, title: str, file: Any = None) -> None:
    console = Console(file=file or sys.stdout, width=200)
    for load in result.loads:
        table = Table(title=f"{title}: {load.label}", show_lines=False)
        table.add_column("configuration")
        table.add_column("n", justify="right")
        for n in result.metrics:
            m = stats.metric(n)
            table.add_column(m.label, justify="right")
        table.add_column("beats every alternative")
        for rival, values in load.rivals.items():
            row = [_fmt(n, values.get(n)) for n in result.metrics]
            reps = str(load.repeats[rival])
            table.add_row(f"[dim]{escape(rival)}[/]", reps, *row, "[dim](alternative)[/]")
        for c in load.contenders:
            by = {a.metric: a for a in c.results}
            row = [escape(_cell_text(by[n])) if n in by else "" for n in result.metrics]
            verdict = "[green]yes[/]" if c.beats_all else escape("no: " + "; ".join(c.short_of))
            table.add_row(escape(c.label), str(c.repeats), *row, verdict)
        console.print(table)
        if load.missing:
            console.print(escape(_missing_note(load)))
    if result.incomplete:
        console.print(
            "not judged (no alternative or no KML configuration): " + ", ".join(result.incomplete)
        )
    console.print(LEGEND)
    if underpowered(result):
        console.print(f"[bold]{UNDERPOWERED}[/]")


LEGEND = (
    "✓ significantly better than every alternative; ✗ significantly worse than one (named "
    "in the last column); = neither, level with one at least. The change is against the "
    "alternative best at that metric."
)


def _missing_note(load: Load) -> str:
    names = ", ".join(stats.metric(n).label for n in load.missing)
    return f"{load.label}: judged without {names}, which not every cell of it has"


def _row(values: dict[str, float], result: Result) -> list[tuple[str, float | None]]:
    return [(n, values.get(n)) for n in result.metrics]


def _css(a: Against) -> str:
    return "better" if a.beats else "worse" if a.worse_than else ""


def html_section(result: Result) -> str:
    """The result as HTML tables, one per load (for the run's report)."""
    if not result.loads:
        return "<p class=note>No load has both a KML configuration and an alternative.</p>"
    parts = [
        "<p>Each mq-deadline configuration with KML on against the kernel's alternatives "
        "on the same load (stock mq-deadline, none, kyber, bfq): the change against the "
        "alternative best at each metric; <span class=better>✓</span> significantly better "
        "than every one, <span class=worse>✗</span> significantly worse than one, = neither "
        "(level with one at least).</p>"
    ]
    if underpowered(result):
        parts.append(f"<p class=note>{esc(UNDERPOWERED)}</p>")
    for load in result.loads:
        head = "".join(f"<th>{esc(stats.metric(n).label)}</th>" for n in result.metrics)
        rows = []
        for rival, values in load.rivals.items():
            tds = "".join(f"<td class=num>{esc(_fmt(n, v))}</td>" for n, v in _row(values, result))
            rows.append(
                f"<tr><td>{esc(rival)}</td><td class=num>{load.repeats[rival]}</td>{tds}"
                "<td>alternative</td></tr>"
            )
        for c in load.contenders:
            by = {a.metric: a for a in c.results}
            tds = "".join(
                f"<td class='num {_css(by[n])}'>{esc(_cell_text(by[n]))}</td>"
                if n in by
                else "<td></td>"
                for n in result.metrics
            )
            verdict = "yes" if c.beats_all else "no: " + "; ".join(c.short_of)
            cls = "better" if c.beats_all else ""
            rows.append(
                f"<tr><td>{esc(c.label)}</td><td class=num>{c.repeats}</td>{tds}"
                f"<td class='{cls}'>{esc(verdict)}</td></tr>"
            )
        parts.append(
            f"<h3>{esc(load.label)}</h3><table><tr><th>configuration</th><th>n</th>{head}"
            f"<th>beats every alternative</th></tr>{''.join(rows)}</table>"
        )
        if load.missing:
            parts.append(f"<p class=note>{esc(_missing_note(load))}</p>")
    return "".join(parts)


def _num(value: float) -> float | None:
    """A value for JSON, which has no NaN."""
    return None if math.isnan(value) else value


def result_json(result: Result) -> dict[str, Any]:
    return {
        "metrics": list(result.metrics),
        "loads": [
            {
                "load": load.label,
                "alternatives": {
                    r: {"repeats": load.repeats[r], "metrics": {n: _num(x) for n, x in v.items()}}
                    for r, v in load.rivals.items()
                },
                "kml": [
                    {
                        "configuration": c.label,
                        "repeats": c.repeats,
                        "beats_all": c.beats_all,
                        "metrics": {
                            a.metric: {
                                "value": _num(a.value),
                                "best_alternative": a.best,
                                "beats": a.beats,
                                "worse_than": list(a.worse_than),
                                "level_with": list(a.level_with),
                                "underpowered": a.underpowered,
                                "against_best": a.vs_best.as_dict(),
                            }
                            for a in c.results
                        },
                    }
                    for c in load.contenders
                ],
                "not_judged_by": list(load.missing),
            }
            for load in result.loads
        ],
        "not_judged": list(result.incomplete),
    }


# --------------------------------------------------------------------------
# Command line.


def command(args: argparse.Namespace) -> int:
    """``kmlbench rivals``: each KML configuration against the kernel's alternatives."""
    db_path = args.db or kdb.default_db_path()
    try:
        metrics = judging_options(args)
        check_ignore(args.ignore)
        run_id = resolve_run(args.run, db_path)
    except (ValueError, LookupError, FileNotFoundError) as e:
        # a KeyError's text is its repr: print its message as given
        why = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"kmlbench rivals: {why}", file=sys.stderr)
        return EXIT_USAGE
    conn = kdb.connect(db_path)
    try:
        cells = kdb.load_cells(conn, run_id)
        run = kdb.get_run(conn, run_id)
    finally:
        conn.close()
    result = judge(
        cells, metrics or DEFAULT_METRICS, ignore=args.ignore, alpha=args.alpha, n_boot=args.boot
    )
    if result.loads and not result.metrics:
        print(
            f"kmlbench rivals: no cell of the run has {', '.join(metrics or DEFAULT_METRICS)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not result.loads:
        print(
            f"kmlbench rivals: run {run_id} has no load with both a KML configuration "
            f"({MODEL_SCHEDULER} with the model on) and an alternative",
            file=sys.stderr,
        )
        return EXIT_USAGE
    clock = clock_label(*run.clock)
    print_result(result, run_id)
    print(f"clock: {clock}: {clock_meaning(*run.clock)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"run": run_id, "clock": clock, **result_json(result)}
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str))
    if args.html:
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(
            "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>{esc(run_id)}: against the alternatives</title><style>{CSS}</style>"
            f"</head><body><h1>{esc(run_id)}: against the kernel's alternatives</h1>"
            f"<p class=note>clock: {esc(clock)}</p>{html_section(result)}</body></html>"
        )
    return EXIT_OK
