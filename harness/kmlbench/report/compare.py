"""``kmlbench compare``: two runs, or two filters, side by side with statistics.

::

    kmlbench compare RUN_A RUN_B [options]
    kmlbench compare --a scheduler.name=none --b scheduler.name=mq-deadline [--run RUN] [options]

A run is a run id in the database or a run folder (ingested first). Cells
of side A and side B are matched by their parameters minus the compared
dimension (the keys named in the filters; for two runs, the run), so each
row compares the repeats of one configuration in A with those of the same
configuration in B. Comparing ``scheduler.name``, ``device.type`` or
``model.mode`` compares the whole axis: the scheduler's tunables
(mq-deadline's ``read_expire`` etc.), the device's settings or the model's
trainer, ring and files are left out of the match too (narrow a side with
more filter keys, ``--b model.mode=active,model.trainer=user``). A is the
baseline: change = B / A - 1.

Options: ``--metrics mean p50 p99 p999 iops`` (default; ``accuracy``,
``baseline_accuracy`` (the majority-class baseline) and ``balanced_accuracy``
are added when cells carry ``kml_stats``, and a side whose model is below
its baseline or at chance is flagged in the note),
``--ignore KEY`` (a parameter not to match on; ``KEY.`` ignores a whole
prefix), ``--html FILE``,
``--json FILE``, ``--alpha``, ``--boot``, and ``--fail-on`` for CI.

``--fail-on METRIC:±N%`` (repeatable, or comma-separated): exit status 1
when the metric changed *significantly* (see kmlbench.data.stats) in the given
direction by more than N% in any matched row, e.g. ``p99:+10%`` (p99
latency up by more than 10%) or ``iops:-5%`` (IOPS down by more than 5%).
Metrics may also be named as cells name them (``clat_p99_us``, ``bw_kib_s``,
see ``kmlbench.data.stats.ALIASES``).
Without a sign the metric's worse direction is used. A gate's metric is
compared whether or not ``--metrics`` names it. Exit status 2 means a
usage error, nothing to compare, or a gate whose metric no matched cell
carries (it could never trip).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import math
import re
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from kmlbench.clock import clock_label, clock_meaning
from kmlbench.data import db as kdb
from kmlbench.data import skill, stats
from kmlbench.report.tables import CSS, comparisons_table

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_USAGE = 2

_FAIL_RE = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*:\s*([+-]?)\s*([0-9]*\.?[0-9]+)\s*%?\s*$")


@dataclass(frozen=True)
class Threshold:
    metric: str
    sign: int  # +1: fail on increase, -1: fail on decrease
    fraction: float  # 0.10 for 10%

    def tripped(self, c: stats.Comparison) -> bool:
        if c.metric != self.metric or not c.significant or math.isnan(c.change):
            return False
        return c.change * self.sign > self.fraction

    def __str__(self) -> str:
        return f"{self.metric}:{'+' if self.sign > 0 else '-'}{self.fraction:.0%}"


def parse_threshold(text: str) -> Threshold:
    """``p99:+10%`` -> Threshold("p99", +1, 0.10)."""
    m = _FAIL_RE.match(text)
    if not m:
        raise ValueError(f"bad --fail-on {text!r}: expected METRIC:+N% or METRIC:-N%")
    metric = stats.metric(m.group(1))
    sign = (1 if m.group(2) == "+" else -1) if m.group(2) else -1 if metric.higher_is_better else 1
    return Threshold(metric.name, sign, float(m.group(3)) / 100.0)


@dataclass
class Row:
    label: str
    key: tuple[Any, ...]
    a_cells: list[kdb.CellRow]
    b_cells: list[kdb.CellRow]
    comparisons: list[stats.Comparison]


@dataclass
class Result:
    rows: list[Row]
    only_a: list[str]
    only_b: list[str]
    compared: list[str]  # the dimension(s) compared
    tripped: list[tuple[str, stats.Comparison, Threshold]]


# Comparing these keys compares the whole axis: mq-deadline carries five
# tunables that none, kyber and bfq lack, so ``scheduler.name`` alone would
# leave every mq-deadline cell without a twin on the other side. Likewise a
# model that is off records only its mode, one that is on its trainer, ring...
WHOLE_AXIS_KEYS = {
    "scheduler.name": "scheduler.",
    "device.type": "device.",
    "model.mode": "model.",
    "model.enabled": "model.",
}


def excluded_keys(compared: Sequence[str], ignore: Sequence[str] = ()) -> set[str]:
    """Keys not to match cells on: the compared ones and ``ignore``.

    An entry ending in ``.`` is a prefix: comparing ``scheduler.name`` or
    ``device.type`` excludes every ``scheduler.*`` or ``device.*`` key.
    """
    out = {k for k in compared if k != "run"} | set(ignore)
    out |= {WHOLE_AXIS_KEYS[k] for k in compared if k in WHOLE_AXIS_KEYS}
    return out


def _is_excluded(key: str, excluded: set[str]) -> bool:
    return key in excluded or any(p.endswith(".") and key.startswith(p) for p in excluded)


def match_key(cell: kdb.CellRow, excluded: set[str]) -> tuple[Any, ...]:
    return tuple(
        sorted((k, v) for k, v in cell.flat_params.items() if not _is_excluded(k, excluded))
    )


def row_labels(keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], str]:
    """Label each matched configuration by the parameters that differ between rows."""
    dicts = [dict(k) for k in keys]
    all_keys = sorted({k for d in dicts for k in d})
    varying = [k for k in all_keys if len({d.get(k) for d in dicts}) > 1]
    out = {}
    for key, d in zip(keys, dicts, strict=True):
        parts = []
        for k in varying:
            v = d.get(k, "-")
            parts.append(
                v
                if k in ("workload.template", "scheduler.name", "device.type")
                else f"{k.split('.', 1)[-1]}={v}"
            )
        out[key] = " ".join(parts) or "all cells"
    return out


def _side_flags(by_name: dict[str, stats.Comparison], side: str) -> list[str]:
    """skill.baseline_flags of one side's mean figures (``side`` "a" or "b")."""
    figures: dict[str, Any] = {
        name: getattr(by_name[name], side)
        for name in ("accuracy", "baseline_accuracy", "balanced_accuracy")
        if name in by_name
    }
    return skill.baseline_flags(figures)


def flag_baseline(comps: list[stats.Comparison]) -> list[stats.Comparison]:
    """The comparisons, the accuracy ones noting a side whose model is below
    the majority baseline or at chance (skill.baseline_flags)."""
    by_name = {c.metric: c for c in comps}
    notes = [f"{side.upper()} {flag}" for side in ("a", "b") for flag in _side_flags(by_name, side)]
    if not notes:
        return comps
    out = []
    for c in comps:
        if c.metric in stats.ACCURACY_METRICS:
            c = dataclasses.replace(c, note="; ".join(filter(None, [c.note, *notes])))
        out.append(c)
    return out


def compare_cells(
    a_cells: Sequence[kdb.CellRow],
    b_cells: Sequence[kdb.CellRow],
    excluded: set[str],
    metrics: Sequence[str],
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    thresholds: Sequence[Threshold] = (),
    compared: Sequence[str] = (),
) -> Result:
    """Match cells of A and B by parameters (minus ``excluded``) and compare each match."""
    groups_a: OrderedDict[tuple[Any, ...], list[kdb.CellRow]] = OrderedDict()
    groups_b: OrderedDict[tuple[Any, ...], list[kdb.CellRow]] = OrderedDict()
    for c in a_cells:
        groups_a.setdefault(match_key(c, excluded), []).append(c)
    for c in b_cells:
        groups_b.setdefault(match_key(c, excluded), []).append(c)
    keys = [k for k in groups_a if k in groups_b]
    labels = row_labels(list(groups_a) + [k for k in groups_b if k not in groups_a])
    rows, tripped = [], []
    for key in sorted(keys, key=lambda k: labels[k]):
        sa = [stats.Sample.from_cell(c) for c in groups_a[key]]
        sb = [stats.Sample.from_cell(c) for c in groups_b[key]]
        comps = flag_baseline(stats.compare_groups(sa, sb, metrics, alpha=alpha, n_boot=n_boot))
        row = Row(labels[key], key, groups_a[key], groups_b[key], comps)
        rows.append(row)
        for comp in comps:
            for t in thresholds:
                if t.tripped(comp):
                    tripped.append((row.label, comp, t))
    return Result(
        rows,
        sorted(labels[k] for k in groups_a if k not in groups_b),
        sorted(labels[k] for k in groups_b if k not in groups_a),
        list(compared),
        tripped,
    )


# --------------------------------------------------------------------------
# Output.


def print_table(result: Result, title: str, file: TextIO | None = None) -> None:
    console = Console(file=file or sys.stdout, width=160)
    table = Table(title=title, show_lines=False)
    for col, just in (
        ("configuration", "left"),
        ("metric", "left"),
        ("nA", "right"),
        ("nB", "right"),
        ("A", "right"),
        ("B", "right"),
        ("change", "right"),
        ("95% CI", "right"),
        ("p", "right"),
        ("verdict", "left"),
        ("note", "left"),
    ):
        table.add_column(col, justify="right" if just == "right" else "left")
    for row in result.rows:
        for i, c in enumerate(row.comparisons):
            ci = "" if math.isnan(c.ci_low) else f"[{c.ci_low:+.1%}, {c.ci_high:+.1%}]"
            style = {"better": "green", "worse": "bold red"}.get(c.verdict, "")
            verdict = c.verdict + (" (underpowered)" if c.underpowered else "")
            table.add_row(
                row.label if i == 0 else "",
                c.label,
                str(c.n_a),
                str(c.n_b),
                f"{c.a:.4g}",
                f"{c.b:.4g}",
                "" if math.isnan(c.change) else f"{c.change:+.1%}",
                ci,
                f"{c.p_value:.3g}",
                f"[{style}]{verdict}[/]" if style else verdict,
                f"[bold red]{c.note}[/]" if "baseline" in c.note or "skill" in c.note else c.note,
            )
    console.print(table)
    if result.only_a:
        console.print(f"only in A (not compared): {', '.join(result.only_a)}")
    if result.only_b:
        console.print(f"only in B (not compared): {', '.join(result.only_b)}")
    for label, c, t in result.tripped:
        console.print(
            f"[bold red]REGRESSION[/] {label}: {c.label} {c.change:+.1%} "
            f"(95% CI [{c.ci_low:+.1%}, {c.ci_high:+.1%}], p={c.p_value:.3g}) beyond {t}"
        )


def write_html(result: Result, title: str, path: Path) -> None:
    rows = [(row.label, c) for row in result.rows for c in row.comparisons]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>A is the baseline; change is B/A − 1 with a bootstrap 95% interval over "
        "repeats; significant when the interval excludes 0 and the Mann-Whitney U test "
        "gives p &lt; alpha.</p>",
        comparisons_table(rows),
    ]
    if result.tripped:
        listed = "".join(
            f"<li>{html.escape(label)}: {html.escape(c.label)} {c.change:+.1%} beyond "
            f"{html.escape(str(t))}</li>"
            for label, c, t in result.tripped
        )
        parts.append(f"<h2 class=worse>Regressions</h2><ul>{listed}</ul>")
    for side, items in (("A", result.only_a), ("B", result.only_b)):
        if items:
            parts.append(f"<p class=note>Only in {side}: {html.escape(', '.join(items))}</p>")
    parts.append("</body></html>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(parts))


def result_json(result: Result) -> dict[str, Any]:
    return {
        "compared": result.compared,
        "rows": [
            {
                "configuration": r.label,
                "a_cells": [f"{c.run_id}/{c.cell_id}" for c in r.a_cells],
                "b_cells": [f"{c.run_id}/{c.cell_id}" for c in r.b_cells],
                "comparisons": [c.as_dict() for c in r.comparisons],
            }
            for r in result.rows
        ],
        "only_a": result.only_a,
        "only_b": result.only_b,
        "regressions": [
            {"configuration": label, "metric": c.metric, "change": c.change, "threshold": str(t)}
            for label, c, t in result.tripped
        ],
    }


# --------------------------------------------------------------------------
# Command line.


def resolve_run(arg: str, db_path: Path) -> str:
    """A run id in the database, or a run folder (ingested now)."""
    path = Path(arg)
    if path.is_dir() and (path / "cells").is_dir():
        kdb.ingest_run(db_path, path)
        return kdb.run_id_of(path)
    conn = kdb.connect(db_path)
    try:
        known = {r.run_id for r in kdb.list_runs(conn)}
    finally:
        conn.close()
    if arg in known:
        return arg
    try:
        run_dir = kdb.resolve_run_dir(arg)
    except FileNotFoundError:
        raise LookupError(f"run {arg!r} is neither in the database nor a run folder") from None
    kdb.ingest_run(db_path, run_dir)
    return kdb.run_id_of(run_dir)


def judging_options(args: argparse.Namespace) -> list[str] | None:
    """The metrics named by ``--metrics`` (None: the default), after checking
    ``--boot`` and ``--alpha``; ValueError or KeyError on a bad one (the
    options ``compare`` and ``rivals`` share)."""
    metrics = [stats.metric(m).name for m in args.metrics] if args.metrics else None
    if args.boot < 1:
        raise ValueError(f"--boot {args.boot}: at least 1 resample")
    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha {args.alpha}: a level between 0 and 1, e.g. 0.05")
    return metrics


def command(args: argparse.Namespace) -> int:
    """``kmlbench compare``: compare two runs or filters; the exit status gates CI."""
    db_path = args.db or kdb.default_db_path()
    try:
        thresholds = [parse_threshold(t) for spec in args.fail_on for t in spec.split(",") if t]
        metrics = judging_options(args)
    except (ValueError, KeyError) as e:
        print(f"kmlbench compare: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.runs:
            if len(args.runs) != 2 or args.filter_a or args.filter_b:
                print("kmlbench compare: give RUN_A RUN_B, or --a and --b", file=sys.stderr)
                return EXIT_USAGE
            run_a, run_b = (resolve_run(r, db_path) for r in args.runs)
            where_a: dict[str, str] = {"run": run_a}
            where_b: dict[str, str] = {"run": run_b}
            compared = ["run"]
            title = f"{run_b} vs {run_a} (baseline)"
        elif args.filter_a and args.filter_b:
            where_a = kdb.parse_filter(args.filter_a)
            where_b = kdb.parse_filter(args.filter_b)
            if args.run:
                rid = resolve_run(args.run, db_path)
                where_a.setdefault("run", rid)
                where_b.setdefault("run", rid)
            compared = sorted(set(where_a) | set(where_b))
            title = f"{args.filter_b} vs {args.filter_a} (baseline)"
        else:
            print("kmlbench compare: give RUN_A RUN_B, or --a and --b", file=sys.stderr)
            return EXIT_USAGE
    except (LookupError, ValueError, FileNotFoundError) as e:
        print(f"kmlbench compare: {e}", file=sys.stderr)
        return EXIT_USAGE
    conn = kdb.connect(db_path)
    try:
        a_cells = kdb.load_cells(conn, where=where_a)
        b_cells = kdb.load_cells(conn, where=where_b)
        run_clocks = {r.run_id: r.clock for r in kdb.list_runs(conn)}
    finally:
        conn.close()
    if not a_cells or not b_cells:
        side = "A" if not a_cells else "B"
        print(f"kmlbench compare: no ok cells on side {side}", file=sys.stderr)
        return EXIT_USAGE
    clocks_a = sorted({run_clocks[c.run_id] for c in a_cells}, key=str)
    clocks_b = sorted({run_clocks[c.run_id] for c in b_cells}, key=str)
    if len(set(clocks_a) | set(clocks_b)) > 1:
        what = (
            f"side A ran under {', '.join(clock_label(*c) for c in clocks_a)}, "
            f"side B under {', '.join(clock_label(*c) for c in clocks_b)}"
        )
        if not args.force:
            print(
                f"kmlbench compare: {what}: their times are not comparable "
                "(--force compares them anyway)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        print(f"kmlbench compare: warning: {what} (--force)", file=sys.stderr)
    clock_line = "clock: " + "; ".join(
        sorted({f"{clock_label(*c)}: {clock_meaning(*c)}" for c in clocks_a + clocks_b})
    )
    excluded = excluded_keys(compared, args.ignore)
    if metrics is None:
        metrics = list(stats.DEFAULT_METRICS + stats.ACCURACY_METRICS)
    # a gate compares its own metric, whether or not the table shows it
    metrics += [t.metric for t in thresholds if t.metric not in metrics]
    result = compare_cells(
        a_cells,
        b_cells,
        excluded,
        metrics,
        alpha=args.alpha,
        n_boot=args.boot,
        thresholds=thresholds,
        compared=compared,
    )
    if not result.rows:
        print("kmlbench compare: no configuration is on both sides", file=sys.stderr)
        if result.only_a or result.only_b:
            print(f"  only in A: {', '.join(result.only_a)}", file=sys.stderr)
            print(f"  only in B: {', '.join(result.only_b)}", file=sys.stderr)
        return EXIT_USAGE
    print_table(result, title)
    print(clock_line)
    if args.html:
        write_html(result, f"{title} ({clock_line})", args.html)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        clocks = sorted({clock_label(*c) for c in clocks_a + clocks_b})
        doc = {**result_json(result), "clock": clocks}
        args.json.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str))
    if result.tripped:
        return EXIT_REGRESSION  # whatever else a gate could not check
    compared_metrics = {c.metric for row in result.rows for c in row.comparisons}
    unchecked = [str(t) for t in thresholds if t.metric not in compared_metrics]
    if unchecked:
        print(
            f"kmlbench compare: --fail-on {', '.join(unchecked)}: no matched cells carry "
            "that metric, so the gate cannot be checked",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK
