"""``kmlbench report RUN``: the HTML report and figures of one run.

Writes ``results/<run-id>/report/``::

    index.html              opens from disk: no server, no script, no external URL
    figures/<name>.png|pdf  every registered figure (kmlbench.report.figures), PNG and PDF
    fio-plot/               fio-plot's layout and standard graphs (kmlbench.report.fioplot)

The run folder is (re)ingested into the results database first, and every
figure is drawn from the database, so ``kmlbench figures`` reproduces them.

Also here: :func:`make_host_run`, which builds a run folder with the real
:class:`kmlbench.run.results.RunDir` from real fio runs on the host (no guest),
used by the tests and by ``kmlbench report --benchmark N`` (time to build
the report of an N-cell run, database size per cell).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kmlbench import procs
from kmlbench.clock import clock_label, clock_meaning, clock_record
from kmlbench.data import db as kdb

REPORT_DIR = "report"


# --------------------------------------------------------------------------
# HTML.

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 78em;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em;
     border-bottom: 1px solid #ddd; }
.banner { padding: .6em 1em; border-radius: 4px; margin: 1em 0; }
.emulated { background: #fff4e5; border: 1px solid #f0a040; }
.virtual { background: #e8f4ff; border: 1px solid #4a90d9; }
.hardware { background: #eef7ee; border: 1px solid #7a7; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fde8e8; }
.better { color: #1a7f37; font-weight: 600; } .worse { color: #c62828; font-weight: 600; }
figure { display: inline-block; margin: 1em 1em 1em 0; vertical-align: top;
         max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; max-width: 60em; }
pre { background: #f6f8fa; padding: 1em; overflow: auto; font-size: 11px; }
.note { color: #555; font-style: italic; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}g}"
    return str(value)


def _kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def comparisons_table(rows: Sequence[tuple[str, Any]]) -> str:
    """HTML table of (group label, stats.Comparison) rows (also used by compare)."""
    head = (
        "<tr><th>group</th><th>metric</th><th>n A</th><th>n B</th><th>A</th><th>B</th>"
        "<th>change</th><th>95% CI</th><th>p (U test)</th><th>verdict</th><th>note</th></tr>"
    )
    body = []
    for label, c in rows:
        ci = "" if math.isnan(c.ci_low) else f"[{c.ci_low:+.1%}, {c.ci_high:+.1%}]"
        cls = {"better": "better", "worse": "worse"}.get(c.verdict, "")
        body.append(
            f"<tr><td>{_e(label)}</td><td>{_e(c.label)}</td><td class=num>{c.n_a}</td>"
            f"<td class=num>{c.n_b}</td><td class=num>{_fmt(c.a)} {_e(c.unit)}</td>"
            f"<td class=num>{_fmt(c.b)} {_e(c.unit)}</td>"
            f"<td class=num>{'' if math.isnan(c.change) else f'{c.change:+.1%}'}</td>"
            f"<td class=num>{ci}</td><td class=num>{c.p_value:.3g}</td>"
            f"<td class='{cls}'>{_e(c.verdict)}</td><td>{_e(c.note)}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


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
    head = "".join(
        f"<th>{_e(h)}</th>"
        for h in ["cell", "status", "repeat", *varying, *(h for _, h in metrics)]
    )
    rows = []
    for c in sorted(data.cells, key=lambda c: (c.config_hash, c.repeat or 0, c.cell_id)):
        cls = "" if c.status == "ok" else " class=bad"
        cols = [f"<td>{_e(c.cell_id)}</td><td>{_e(c.status)}</td><td>{_e(c.repeat)}</td>"]
        cols += [f"<td>{_e(c.flat_params.get(k))}</td>" for k in varying]
        cols += [f"<td class=num>{_fmt(c.metrics.get(k))}</td>" for k, _ in metrics]
        rows.append(f"<tr{cls}>{''.join(cols)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _within_run_statistics(data: Any, n_boot: int = 1000) -> str:
    """Each series against the panel's first series (the baseline), per panel."""
    from kmlbench.data import stats

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
    from kmlbench.report import figures as kfig

    run = data.run
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<link rel="icon" href="data:,">',
        f"<title>kmlbench report {_e(run.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>kmlbench report: {_e(run.run_id)}</h1>",
    ]
    clock, shift = run.clock
    if clock == "virtual":
        parts.append(
            f"<div class='banner virtual'><b>VIRTUAL CLOCK</b> — {_e(clock_meaning(clock, shift))}."
            " Latencies are exact for that machine and repeat from boot to boot; they are "
            "not those of hardware.</div>"
        )
    elif run.emulated:
        parts.append(
            f"<div class='banner emulated'><b>{_e(run.accel or 'tcg').upper()}</b> — "
            "emulated, realtime clock: absolute latencies are not those of hardware and vary "
            "with the host's load. Compare configurations within this run, not with hardware "
            "numbers.</div>"
        )
    else:
        parts.append(
            f"<div class='banner hardware'><b>{_e((run.accel or 'unknown').upper())}</b> — "
            "hardware virtualisation.</div>"
        )
    parts.append("<h2>Run</h2>" + _kv_table(_run_facts(run, data)))
    parts.append("<h2>Figures</h2>")
    for r in rendered:
        png = r.files["png"].relative_to(out_dir).as_posix()
        links = " ".join(
            f"<a href='{_e(p.relative_to(out_dir).as_posix())}'>{fmt.upper()}</a>"
            for fmt, p in r.files.items()
        )
        parts.append(
            f"<figure id='{_e(r.stem)}'><img src='{_e(png)}' alt='{_e(r.title)}'>"
            f"<figcaption><b>{_e(r.title)}.</b> {_e(r.caption)} {links}</figcaption></figure>"
        )
    if skipped:
        names = ", ".join(kfig.FIGURES[n].title.lower() for n in skipped)
        parts.append(
            f"<p class=note>Not drawn, no data for them in this run: {_e(names)} "
            "(model statistics appear once cells carry <code>kml_stats</code>).</p>"
        )
    parts.append("<h2>Statistics</h2>" + _within_run_statistics(data))
    parts.append("<h2>Cells</h2>" + _cell_table(data))
    parts.append("<h2>fio-plot</h2>")
    if fioplot_result is not None and fioplot_result.graphs:
        for g in fioplot_result.graphs:
            if g.ok:
                src = g.path.relative_to(out_dir).as_posix()
                parts.append(
                    f"<figure><img src='{_e(src)}' alt='{_e(g.title)}'>"
                    f"<figcaption>{_e(g.title)} (fio-plot)</figcaption></figure>"
                )
    note = fioplot_note or (fioplot_result.note if fioplot_result is not None else "")
    if note:
        parts.append(f"<p class=note>{_e(note)}</p>")
    parts.append(
        "<h2>Manifest</h2><details><summary>manifest.json</summary><pre>"
        + _e(json.dumps(run.manifest, indent=2, sort_keys=True))
        + "</pre></details>"
    )
    parts.append(
        f"<p class=note>Generated by kmlbench from the results database; "
        f"regenerate the figures with <code>kmlbench figures --paper DIR --run "
        f"{_e(run.run_id)}</code>.</p></body></html>"
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
    from kmlbench.report import figures as kfig
    from kmlbench.report import fioplot as kfp

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


# --------------------------------------------------------------------------
# Sample runs from host fio (tests, benchmarks).

_HOST_JOB = """\
; kmlbench sample run: fio on the host (no guest), psync on a file
[global]
ioengine=psync
direct={direct}
filename={filename}
size={size_mib}M
bs={bs}
time_based=1
runtime={runtime_ms}ms
rate_iops={rate_iops}
iodepth={iodepth}
randrepeat=0

[{name}]
rw={rw}
numjobs=1
"""


def host_params(
    scheduler: str, template: str = "randread", *, model: dict | None = None, **workload: Any
) -> dict:
    """Cell params shaped like the matrix's, for a host fio sample run.

    The scheduler gets its tunables' defaults, as ``kmlbench.plan.matrix`` resolves
    them (mq-deadline's read_expire etc.; none, kyber and bfq have none).
    """
    from kmlbench.plan.schema import SCHEDULERS, UNSET

    wl = {"template": template, "bs": "4k", "iodepth": 1, "numjobs": 1, "rate_iops": 2000}
    wl.update(workload)
    tunables = {
        k: f.default for k, f in SCHEDULERS.get(scheduler, {}).items() if f.default is not UNSET
    }
    params = {
        "kernel": {"name": "default", "fragments": []},
        "device": {"type": "host-file", "size_mib": 4},
        "scheduler": {"name": scheduler, **tunables},
        "workload": wl,
    }
    if model is not None:
        params["model"] = model
    return params


def _host_cell_job(params: dict, filename: Path, runtime_s: float, direct: int) -> str:
    wl = params["workload"]
    rw = wl.get("rw") or {"randrw": "randrw", "seqread": "read", "seqwrite": "write"}.get(
        wl["template"], wl["template"]
    )
    return _HOST_JOB.format(
        direct=direct,
        filename=filename,
        size_mib=wl.get("size_mib", 4),
        bs=wl.get("bs", "4k"),
        runtime_ms=int(runtime_s * 1000),
        rate_iops=wl.get("rate_iops", 2000),
        iodepth=wl.get("iodepth", 1),
        name=wl["template"],
        rw=rw,
    )


def sample_kml_stats(seed: int, labels: Sequence[str] = ("read", "write", "mixed")) -> dict:
    """``kml_stats`` shaped as docs/reporting.md proposes, from a seeded RNG.

    For exercising the model figures until the model axis exists; the
    numbers are synthetic and say so (``"synthetic": true``).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    k = len(labels)
    conf = rng.integers(5, 40, size=(k, k))
    conf[np.diag_indices(k)] += rng.integers(200, 400, size=k)
    n = int(conf.sum())
    acc = float(np.trace(conf) / n)
    recalls = np.diag(conf) / conf.sum(axis=1)
    steps = list(range(0, 1000, 50))
    loss = [float(1.2 * math.exp(-s / 300) + 0.1 + rng.normal(0, 0.01)) for s in steps]
    acc_curve = [float(0.3 + (acc - 0.3) * (1 - math.exp(-s / 200))) for s in steps]
    samples = rng.lognormal(mean=math.log(900), sigma=0.35, size=2000)
    return {
        "synthetic": True,
        "accuracy": acc,
        "balanced_accuracy": float(recalls.mean()),
        "majority_baseline": float(conf.sum(axis=1).max() / n),
        "n_predictions": n,
        "labels": list(labels),
        "confusion_matrix": conf.tolist(),
        "learning_curve": {"step": steps, "loss": loss, "accuracy": acc_curve},
        "inference_ns": [int(x) for x in samples],
    }


def _manifest(run_id: str, accel: str, name: str) -> dict:
    from kmlbench.data.fio import fio_version

    return {
        "run_id": run_id,
        "accel": accel,
        "accel_reason": "sample run: fio on the host, no guest",
        "emulated": accel != "kvm",
        **clock_record("realtime", 0),  # the host's own clock
        "matrix": {"name": name, "seed": 0},
        "harness": {"git": "sample"},
        "kernels": {
            "default": {
                "source_id": f"host {os.uname().release}",
                "config_hash": "host",
                "patch_series_hash": "none",
                "compiler": "n/a",
            }
        },
        "host": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "fio": fio_version(),
    }


def make_host_run(
    root: Path,
    configs: Sequence[dict],
    *,
    repeats: int = 2,
    run_id: str = "sample",
    runtime_s: float = 1.0,
    accel: str = "host",
    parallel: int = 2,
    kml_stats: Callable[[dict, int], dict | None] | None = None,
    on_cell: Callable[[Path, str], None] | None = None,
    timeout_s: float = 120,
) -> Path:
    """A run folder whose cells are real fio runs on the host (psync, a small file).

    ``configs`` are cell params (see :func:`host_params`); every config runs
    ``repeats`` times. Cells are recorded with :class:`kmlbench.run.results.RunDir`
    exactly as the runner records them; ``kml_stats(params, repeat)`` may
    add a ``kml_stats`` record, and ``on_cell(run_dir, cell_id)`` is called
    after each cell is recorded (e.g. :func:`kmlbench.data.db.ingest_cell`).
    A fio that runs past ``timeout_s`` raises ``subprocess.TimeoutExpired``
    after the rest of its batch is killed and the data files are removed.
    """
    from kmlbench.data.fio import metrics_from_fio, parse_fio_output
    from kmlbench.plan.cells import Cell, cell_id
    from kmlbench.run.results import RunDir

    run = RunDir.create(Path(root), run_id)
    run.write_manifest(_manifest(run.run_id, accel, run_id))
    data_dir = Path(tempfile.mkdtemp(prefix="kmlbench-sample-", dir=run.path))
    cells = [Cell(cell_id(p, r), r, p, "default") for r in range(repeats) for p in configs]
    run.write_plan(cells)
    direct = 0
    running: list[tuple[Any, subprocess.Popen]] = []
    try:
        pending = list(cells)
        while pending:
            batch, pending = pending[:parallel], pending[parallel:]
            running.clear()
            for cell in batch:
                cdir = run.cell_dir(cell.id)
                job = _host_cell_job(cell.params, data_dir / f"{cell.id}.dat", runtime_s, direct)
                run.write_cell_file(cell.id, "job.fio", job)
                running.append(
                    (
                        cell,
                        procs.popen(
                            [
                                "fio",
                                "--output-format=json+",
                                f"--output={cdir / 'fio.json'}",
                                str(cdir / "job.fio"),
                            ],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            text=True,
                        ),
                    )
                )
            for cell, proc in running:
                out, _ = procs.communicate(proc, timeout_s)
                cdir = run.cell_dir(cell.id)
                run.write_cell_file(
                    cell.id, "console.log", f"host fio run (no guest)\n$ fio ...\n{out}"
                )
                run.write_cell_file(cell.id, "dmesg.txt", "")
                extra: dict[str, Any] = {"host_fio": True}
                try:
                    metrics = metrics_from_fio(parse_fio_output((cdir / "fio.json").read_text()))
                    status = "ok" if proc.returncode == 0 else "failed"
                except Exception as e:  # a failed cell is recorded, like the runner does
                    metrics, status = {}, "failed"
                    extra["error"] = str(e)
                if kml_stats is not None:
                    ks = kml_stats(cell.params, cell.repeat)
                    if ks is not None:
                        extra["kml_stats"] = ks
                run.record_cell(cell, status, metrics, extra)
                if on_cell is not None:
                    on_cell(run.path, cell.id)
    finally:
        # a timeout or any error: stop the rest of the batch (each fio as a
        # group: its job processes outlive a killed parent), and never leave
        # the data files inside the run folder
        for _, proc in running:
            if proc.returncode is None:  # not collected yet
                procs.stop(proc)
                procs.drain(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
    return run.path


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
