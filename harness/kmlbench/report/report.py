"""``kmlbench report RUN``: the HTML report and figures of one run.

Writes ``results/<run-id>/report/``::

    index.html              opens from disk: no server, no script, no external URL
    figures/<name>.png|pdf  every registered figure (kmlbench.report.figures), PNG and PDF
    fio-plot/               fio-plot's layout and standard graphs (kmlbench.report.fioplot)

The run folder is (re)ingested into the results database first, and every
figure is drawn from the database, so ``kmlbench figures`` reproduces them.

``kmlbench report --benchmark N`` (:func:`benchmark`) times building the
report of an N-cell run made from host fio (:mod:`kmlbench.report.sample`)
and gives the database size per cell.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmlbench.clock import clock_label, clock_meaning
from kmlbench.data import db as kdb
from kmlbench.data import skill, stats
from kmlbench.report import figures as kfig
from kmlbench.report import fioplot as kfp
from kmlbench.report import rivals
from kmlbench.report.sample import host_params, make_host_run
from kmlbench.report.tables import CSS, comparisons_table, esc, fmt_value, kv_table
from kmlbench.status import OK

REPORT_DIR = "report"


# --------------------------------------------------------------------------
# The page.


def _run_facts(run: kdb.RunRow, data: Any) -> list[tuple[str, Any]]:
    m = run.manifest
    facts: list[tuple[str, Any]] = [("run id", run.run_id), ("matrix", run.matrix)]
    facts.append(("accelerator", f"{run.accel} ({m.get('accel_reason', '')})".replace(" ()", "")))
    facts.append(("clock", clock_label(*run.clock)))
    facts.append(("harness", run.harness_git))
    for variant, k in (m.get("kernels") or {}).items():
        if isinstance(k, dict):
            facts.append(
                (
                    f"kernel {variant}",
                    f"{k.get('source_id', '?')}; config hash {k.get('config_hash', '?')}; "
                    f"patches {k.get('patch_series_hash', '?')}; {k.get('compiler', '')}",
                )
            )
    qemu = m.get("qemu")
    if isinstance(qemu, dict) and qemu.get("version"):
        facts.append(("QEMU", qemu["version"]))
    host = m.get("host")
    if isinstance(host, dict):
        facts.append(
            (
                "host",
                f"{host.get('cpu', '?')}, {host.get('cpus', '?')} CPUs, "
                f"Linux {host.get('kernel', '?')}",
            )
        )
    counts: dict[str, int] = {}
    for c in data.cells:
        counts[c.status] = counts.get(c.status, 0) + 1
    facts.append(("cells", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    return facts


# The model's figures in the cell table: accuracy never alone.
MODEL_COLUMNS = [
    ("accuracy", "accuracy"),
    ("baseline_accuracy", "majority baseline"),
    ("balanced_accuracy", "balanced accuracy"),
    ("mcc", "MCC"),
    ("auc", "AUC"),
    ("step_asides", "step-asides"),
]


def _cell_table(data: Any) -> str:
    varying = sorted(set(data.panel_keys) | set(data.series_keys))
    if not varying:
        varying = ["workload.template", "scheduler.name"]
    metrics = [
        ("iops", "IOPS"),
        ("bw_kib_s", "KiB/s"),
        ("clat_mean_us", "mean µs"),
        ("clat_p50_us", "p50 µs"),
        ("clat_p99_us", "p99 µs"),
        ("clat_p999_us", "p99.9 µs"),
    ]
    if any(c.metrics.get("lat_mean_us") is not None for c in data.cells):
        # total latency, from submission: the one that compares schedulers
        metrics += [("lat_mean_us", "total mean µs"), ("lat_p99_us", "total p99 µs")]
    if any(c.metrics.get("deadline_miss_frac") is not None for c in data.cells):
        metrics.append(("deadline_miss_frac", "missed deadlines"))
    if any(c.metrics.get("late_frac") is not None for c in data.cells):
        metrics.append(("late_frac", "late completions"))
    model = any(c.metrics.get("accuracy") is not None for c in data.cells)
    if model:  # every accuracy beside its baseline and balanced accuracy
        metrics += MODEL_COLUMNS
    heads = ["cell", "status", "repeat", *varying, *(h for _, h in metrics)]
    head = "".join(f"<th>{esc(h)}</th>" for h in heads + (["model flag"] if model else []))
    rows = []
    for c in sorted(data.cells, key=lambda c: (c.config_hash, c.repeat or 0, c.cell_id)):
        cls = "" if c.status == OK else " class=bad"
        cols = [f"<td>{esc(c.cell_id)}</td><td>{esc(c.status)}</td><td>{esc(c.repeat)}</td>"]
        cols += [f"<td>{esc(c.flat_params.get(k))}</td>" for k in varying]
        cols += [f"<td class=num>{fmt_value(c.metrics.get(k))}</td>" for k, _ in metrics]
        if model:
            flags = skill.baseline_flags(c.metrics)
            cols.append(f"<td class=worse>{esc(', '.join(flags))}</td>")
        rows.append(f"<tr{cls}>{''.join(cols)}</tr>")
    note = (
        "<p class=note>Model flag: <b>below-baseline</b> when the model's accuracy is below "
        "the majority-class baseline (always answering the commoner outcome), <b>no-skill</b> "
        "when its balanced accuracy is at most 0.5 (chance).</p>"
        if model
        else ""
    )
    return f"{note}<table><tr>{head}</tr>{''.join(rows)}</table>"


def _within_run_statistics(data: Any, n_boot: int = 1000) -> str:
    """Each series against the panel's first series (the baseline), per panel."""
    rows = []
    for panel in data.panels:
        series = list(panel.series.values())
        if len(series) < 2:
            continue
        base = series[0]
        for other in series[1:]:
            for c in stats.compare_groups(base.samples(), other.samples(), n_boot=n_boot):
                rows.append((f"{panel.label}: {other.label} vs {base.label}", c))
    if not rows:
        return "<p class=note>Only one configuration per workload: nothing to compare.</p>"
    return (
        "<p>B is each configuration, A the first one of its workload. Change is B/A − 1 with a "
        "bootstrap 95% interval over repeats; significant when the interval excludes 0 and "
        "the Mann-Whitney U test gives p &lt; 0.05 (see docs/reporting.md).</p>"
        + comparisons_table(rows)
    )


def write_html(
    out_dir: Path,
    data: Any,
    rendered: Sequence[Any],
    skipped: Sequence[str],
    fioplot_result: Any | None,
    fioplot_note: str = "",
) -> Path:
    run = data.run
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<link rel="icon" href="data:,">',
        f"<title>kmlbench report {esc(run.run_id)}</title><style>{CSS}</style></head><body>",
        f"<h1>kmlbench report: {esc(run.run_id)}</h1>",
    ]
    clock, shift = run.clock
    if clock == "virtual":
        meaning = esc(clock_meaning(clock, shift))
        parts.append(
            f"<div class='banner virtual'><b>VIRTUAL CLOCK</b> — {meaning}."
            " Latencies are exact for that machine and repeat from boot to boot; they are "
            "not those of hardware.</div>"
        )
    elif run.emulated:
        parts.append(
            f"<div class='banner emulated'><b>{esc(run.accel or 'tcg').upper()}</b> — "
            "emulated, realtime clock: absolute latencies are not those of hardware and vary "
            "with the host's load. Compare configurations within this run, not with hardware "
            "numbers.</div>"
        )
    else:
        parts.append(
            f"<div class='banner hardware'><b>{esc((run.accel or 'unknown').upper())}</b> — "
            "hardware virtualisation.</div>"
        )
    parts.append("<h2>Run</h2>" + kv_table(_run_facts(run, data)))
    parts.append("<h2>Figures</h2>")
    for r in rendered:
        png = r.files["png"].relative_to(out_dir).as_posix()
        links = " ".join(
            f"<a href='{esc(p.relative_to(out_dir).as_posix())}'>{fmt.upper()}</a>"
            for fmt, p in r.files.items()
        )
        parts.append(
            f"<figure id='{esc(r.stem)}'><img src='{esc(png)}' alt='{esc(r.title)}'>"
            f"<figcaption><b>{esc(r.title)}.</b> {esc(r.caption)} {links}</figcaption></figure>"
        )
    if skipped:
        names = ", ".join(kfig.FIGURES[n].title.lower() for n in skipped)
        parts.append(
            f"<p class=note>Not drawn, no data for them in this run: {esc(names)} "
            "(model statistics appear once cells carry <code>kml_stats</code>).</p>"
        )
    parts.append("<h2>Statistics</h2>" + _within_run_statistics(data))
    judged = rivals.judge(data.ok_cells, n_boot=1000)
    if judged.loads:
        parts.append("<h2>Against the kernel's alternatives</h2>" + rivals.html_section(judged))
    parts.append("<h2>Cells</h2>" + _cell_table(data))
    parts.append("<h2>fio-plot</h2>")
    if fioplot_result is not None and fioplot_result.graphs:
        for g in fioplot_result.graphs:
            if g.ok:
                src = g.path.relative_to(out_dir).as_posix()
                parts.append(
                    f"<figure><img src='{esc(src)}' alt='{esc(g.title)}'>"
                    f"<figcaption>{esc(g.title)} (fio-plot)</figcaption></figure>"
                )
    note = fioplot_note or (fioplot_result.note if fioplot_result is not None else "")
    if note:
        parts.append(f"<p class=note>{esc(note)}</p>")
    parts.append(
        "<h2>Manifest</h2><details><summary>manifest.json</summary><pre>"
        + esc(json.dumps(run.manifest, indent=2, sort_keys=True))
        + "</pre></details>"
    )
    parts.append(
        f"<p class=note>Generated by kmlbench from the results database; "
        f"regenerate the figures with <code>kmlbench figures --paper DIR --run "
        f"{esc(run.run_id)}</code>.</p></body></html>"
    )
    path = out_dir / "index.html"
    path.write_text("\n".join(parts))
    return path


# --------------------------------------------------------------------------
# The report.


def build_report(
    run_dir: Path,
    *,
    db_path: Path | None = None,
    out_dir: Path | None = None,
    fioplot: bool = True,
    ingest: bool = True,
) -> Path:
    """Ingest ``run_dir``, draw everything, write the page; returns ``index.html``."""
    run_dir = Path(run_dir)
    db_path = Path(db_path) if db_path else kdb.default_db_path()
    if ingest:
        kdb.ingest_run(db_path, run_dir)
    run_id = kdb.run_id_of(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    data = kfig.load_run_data(db_path, run_id)
    # fio-plot draws in its own process while this one draws the figures
    drawing = (
        kfp.start(data.ok_cells, run_dir, out_dir / "fio-plot", title=run_id) if fioplot else None
    )
    try:
        rendered, skipped = kfig.render(data, out_dir / "figures")
        fp_result = drawing.wait() if drawing is not None else None
    finally:
        if drawing is not None:
            drawing.kill()  # only does something if render or wait raised
    note = "" if fioplot else "fio-plot graphs not requested (--no-fioplot)"
    return write_html(out_dir, data, rendered, skipped, fp_result, note)


def command(args: argparse.Namespace) -> int:
    """``kmlbench report``: write a run's report (or measure, with --benchmark)."""
    if args.benchmark:
        print(json.dumps(benchmark(args.benchmark, args.workdir), indent=2))
        return 0
    if not args.run:
        print("kmlbench report: give a run folder or run id", file=sys.stderr)
        return 2
    try:
        run_dir = kdb.resolve_run_dir(args.run)
    except FileNotFoundError as e:
        print(f"kmlbench report: {e}", file=sys.stderr)
        return 2
    index = build_report(run_dir, db_path=args.db, out_dir=args.out, fioplot=not args.no_fioplot)
    print(f"kmlbench report: {index}")
    return 0


def benchmark(n_cells: int, workdir: Path | None = None) -> dict[str, Any]:
    """Build an ``n_cells`` host run, then time ingest and report; sizes per cell."""
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="kmlbench-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    schedulers = ["none", "mq-deadline"]
    templates = ["randread", "randwrite", "randrw", "seqread", "seqwrite"]
    configs = [host_params(s, t) for s in schedulers for t in templates]
    repeats = max(1, math.ceil(n_cells / len(configs)))
    t0 = time.monotonic()
    run_dir = make_host_run(
        work / "results", configs, repeats=repeats, run_id=f"bench-{n_cells}", runtime_s=0.3
    )
    build_s = time.monotonic() - t0
    cells = sorted((run_dir / "cells").iterdir())
    db_path = work / "bench.db"
    t0 = time.monotonic()
    for c in cells:
        kdb.ingest_cell(db_path, run_dir, c.name)
    ingest_s = time.monotonic() - t0
    conn = kdb.connect(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db_bytes = db_path.stat().st_size
    fio_json_bytes = sum((c / "fio.json").stat().st_size for c in cells)
    t0 = time.monotonic()
    build_report(run_dir, db_path=db_path, fioplot=False, ingest=False)
    report_s = time.monotonic() - t0
    t0 = time.monotonic()
    build_report(run_dir, db_path=db_path, fioplot=True, ingest=False)
    report_fp_s = time.monotonic() - t0
    n = len(cells)
    figures = len(list((run_dir / REPORT_DIR / "figures").glob("*.png")))
    return {
        "cells": n,
        "workdir": str(work),
        "host_fio_build_s": round(build_s, 1),
        "ingest_s_total": round(ingest_s, 2),
        "ingest_ms_per_cell": round(1000 * ingest_s / n, 1),
        "db_bytes": db_bytes,
        "db_kib_per_cell": round(db_bytes / n / 1024, 1),
        "fio_json_kib_per_cell": round(fio_json_bytes / n / 1024, 1),
        "report_s_without_fioplot": round(report_s, 1),
        "report_s_with_fioplot": round(report_fp_s, 1),
        "figures_png": figures,
    }
