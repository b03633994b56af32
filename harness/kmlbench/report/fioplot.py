"""fio-plot's standard graphs of a run.

`fio-plot <https://github.com/louwrentius/fio-plot>`_ (PyPI ``fio-plot``,
CLI ``fio-plot``) reads a *benchmark directory* of fio JSON files, one per
(iodepth, numjobs) pair, named ``<rw>-<iodepth>-<numjobs>.json`` by its
companion ``bench-fio``; it keeps the files whose job options carry
``rw``, ``iodepth`` and ``numjobs`` matching ``-r``/``-d``/``-n``.
:func:`write_layout` writes that layout, one benchmark directory per
configuration (everything but the repeat)::

    <out>/data/<workload>-<device>-<scheduler>-<hash>/<rw>-<iodepth>-<numjobs>.json

one benchmark directory per configuration minus iodepth and numjobs (which
fio-plot puts on its axes). The files are the cells' own fio output (first
ok repeat; fio-plot cannot merge repeats), with only the
``rw``/``iodepth``/``numjobs`` job options that the job file left implicit
filled in from the cell's parameters, since fio reports only options that
were set. :func:`plan_graphs` lists the standard graphs drawn; all are
drawn by one background Python process that imports fio-plot once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmlbench import procs
from kmlbench.data.fio import parse_fio_output
from kmlbench.plan.fio_job import FioError

_DRIVER = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import fio_plot
results = []
for argv in json.load(sys.stdin):
    sys.argv = ["fio-plot"] + argv
    try:
        fio_plot.main()
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # report and carry on with the next graph
        print(f"fio-plot failed: {e!r}", file=sys.stderr)
        status = 1
    plt.close("all")
    results.append(status)
print("FIOPLOT-RESULTS " + json.dumps(results))
"""


def available() -> bool:
    """Whether fio-plot is importable by this Python."""
    try:
        import fio_plot  # noqa: F401  # late: the probe of an optional tool, and it loads matplotlib
    except ImportError:
        return False
    return True


@dataclass
class Benchmark:
    """One fio-plot benchmark directory: one configuration at every queue depth
    and job count the run has for it."""

    name: str
    path: Path
    workload: str
    rw: str
    group: tuple[Any, ...]  # configurations compared with -C share it (all but the scheduler)
    files: dict[tuple[int, int], str] = field(default_factory=dict)  # (iodepth, numjobs)

    @property
    def iodepths(self) -> list[int]:
        return sorted({d for d, _ in self.files})

    @property
    def numjobs(self) -> list[int]:
        return sorted({n for _, n in self.files})


@dataclass
class Graph:
    kind: str  # "iops-latency", "histogram", "compare"
    title: str
    path: Path
    argv: list[str]
    ok: bool = False


@dataclass
class Result:
    benchmarks: list[Benchmark] = field(default_factory=list)
    graphs: list[Graph] = field(default_factory=list)
    note: str = ""


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(text))
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-") or "x"


def _job_options(cell_params: dict[str, Any], job: dict[str, Any]) -> dict[str, str]:
    opts = dict(job.get("job options") or {})
    wl = cell_params.get("workload") or {}
    if "rw" not in opts:
        opts["rw"] = str(wl.get("rw") or wl.get("template") or job.get("jobname", "rw"))
    opts.setdefault("iodepth", str(wl.get("iodepth", 1)))
    opts.setdefault("numjobs", str(wl.get("numjobs", 1)))
    return opts


# Parameters that fio-plot puts on its axes rather than in the directory name.
_AXIS_KEYS = ("workload.iodepth", "workload.numjobs")


def _digest(items: tuple[Any, ...]) -> str:
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:8]


def write_layout(cells: list[Any], run_dir: Path, out: Path) -> list[Benchmark]:
    """Write fio-plot's layout for ``cells`` (:class:`kmlbench.data.db.CellRow`, status ok).

    ``run_dir`` is the run folder the cells' ``fio.json`` files are read from.
    A benchmark directory holds one configuration (every parameter but
    iodepth and numjobs) with one file per (iodepth, numjobs): the first ok
    repeat's ``fio.json``.
    """
    data_dir = Path(out) / "data"
    benchmarks: dict[str, Benchmark] = {}
    for cell in sorted(cells, key=lambda c: (c.config_hash, c.repeat or 0, c.cell_id)):
        flat = cell.flat_params
        key = tuple(sorted((k, v) for k, v in flat.items() if k not in _AXIS_KEYS))
        group = tuple((k, v) for k, v in key if not k.startswith("scheduler."))
        name = _slug(
            "-".join(
                str(flat[k])
                for k in ("workload.template", "device.type", "scheduler.name")
                if k in flat
            )
            + f"-{_digest(key)}"
        )
        fio_path = Path(run_dir) / "cells" / cell.cell_id / "fio.json"
        try:
            data = parse_fio_output(fio_path.read_text(errors="replace"))
        except (OSError, FioError):
            continue
        jobs = data.get("jobs") or []
        if not jobs:
            continue
        for job in jobs:
            job["job options"] = _job_options(cell.params, job)
        opts = jobs[0]["job options"]
        try:
            iodepth, numjobs = int(opts["iodepth"]), int(opts["numjobs"])
        except ValueError:
            continue
        bench = benchmarks.get(name)
        if bench is None:
            bench = benchmarks[name] = Benchmark(
                name,
                data_dir / name,
                str(flat.get("workload.template", opts["rw"])),
                opts["rw"],
                group,
            )
        if (iodepth, numjobs) in bench.files:  # first ok repeat only
            continue
        bench.path.mkdir(parents=True, exist_ok=True)
        # fio-plot lets "global options" override the job's: keep them consistent
        glob = data.get("global options")
        if isinstance(glob, dict):
            for k in ("rw", "iodepth", "numjobs"):
                if k in glob:
                    glob[k] = opts[k]
        (bench.path / f"{opts['rw']}-{iodepth}-{numjobs}.json").write_text(json.dumps(data))
        bench.files[(iodepth, numjobs)] = cell.cell_id
    return list(benchmarks.values())


def _filters(rw: str) -> list[list[str]]:
    """fio-plot wants one direction at a time for mixed workloads (``-f``)."""
    if rw in ("rw", "readwrite", "randrw", "trimwrite", "randtrimwrite"):
        return [["-f", "read"], ["-f", "write"]]
    return [[]]


def _graph(kind: str, title: str, path: Path, argv: list[str]) -> Graph:
    return Graph(kind, title, path, [*argv, "-o", str(path)])


def plan_graphs(benchmarks: list[Benchmark], out: Path, title: str) -> list[Graph]:
    """fio-plot's standard graphs for the layout.

    Per benchmark directory: ``-l`` (IOPS and latency across its queue
    depths, one graph per job count) and ``-H`` (latency histogram at its
    deepest queue). Per group of directories that differ only in the
    scheduler: ``-C`` at each (iodepth, numjobs) they all have. Mixed
    workloads are drawn per direction (``-f read`` / ``-f write``).
    """
    graphs_dir = Path(out) / "graphs"
    graphs: list[Graph] = []
    for b in benchmarks:
        base = ["-i", str(b.path), "-r", b.rw]
        for filt in _filters(b.rw):
            sfx = f"-{filt[1]}" if filt else ""
            for nj in b.numjobs:
                depths = [str(d) for d in b.iodepths if (d, nj) in b.files]
                graphs.append(
                    _graph(
                        "iops-latency",
                        f"{b.name}: IOPS and latency by queue depth{sfx.replace('-', ' ')}",
                        graphs_dir / f"{b.name}-iops-latency-nj{nj}{sfx}.png",
                        [
                            *base,
                            "-d",
                            *depths,
                            "-n",
                            str(nj),
                            *filt,
                            "-l",
                            "-T",
                            f"{title} {b.name}",
                        ],
                    )
                )
            depth, nj = max(b.files)
            graphs.append(
                _graph(
                    "histogram",
                    f"{b.name}: latency histogram at iodepth {depth}{sfx.replace('-', ' ')}",
                    graphs_dir / f"{b.name}-histogram-d{depth}-nj{nj}{sfx}.png",
                    [
                        *base,
                        "-d",
                        str(depth),
                        "-n",
                        str(nj),
                        *filt,
                        "-H",
                        "-T",
                        f"{title} {b.name}",
                    ],
                )
            )
    groups: dict[tuple[Any, ...], list[Benchmark]] = {}
    for b in benchmarks:
        groups.setdefault(b.group, []).append(b)
    for group in groups.values():
        if len(group) < 2:
            continue
        common = set(group[0].files).intersection(*(set(b.files) for b in group[1:]))
        stem = _slug(f"compare-{group[0].workload}-{_digest(group[0].group)}")
        for depth, nj in sorted(common):
            for filt in _filters(group[0].rw):
                sfx = f"-{filt[1]}" if filt else ""
                graphs.append(
                    _graph(
                        "compare",
                        f"{group[0].workload}: schedulers compared at iodepth {depth}, "
                        f"numjobs {nj}{sfx.replace('-', ' ')}",
                        graphs_dir / f"{stem}-d{depth}-nj{nj}{sfx}.png",
                        [
                            "-i",
                            *(str(b.path) for b in group),
                            "-r",
                            group[0].rw,
                            "-d",
                            str(depth),
                            "-n",
                            str(nj),
                            *filt,
                            "-C",
                            "-T",
                            f"{title} {group[0].workload}",
                        ],
                    )
                )
    return graphs


class Drawing:
    """fio-plot drawing in a background process; :meth:`wait` collects the result."""

    def __init__(self, result: Result, out: Path, proc: subprocess.Popen[Any] | None) -> None:
        self.result, self.out, self.proc = result, out, proc

    def wait(self, timeout: float = 600) -> Result:
        """Collect the graphs; on ``TimeoutExpired`` fio-plot is killed first."""
        if self.proc is None:
            return self.result
        try:
            stdout, stderr = procs.communicate(self.proc, timeout)
        except BaseException:  # a timeout or an interrupt: fio-plot was stopped
            self.proc = None
            raise
        (self.out / "fio-plot.log").write_text(stdout + stderr)
        statuses: list[int] = []
        for line in stdout.splitlines():
            if line.startswith("FIOPLOT-RESULTS "):
                statuses = json.loads(line.split(" ", 1)[1])
        graphs = self.result.graphs
        for i, g in enumerate(graphs):
            g.ok = i < len(statuses) and statuses[i] == 0 and g.path.exists()
        failed = [g for g in graphs if not g.ok]
        if failed:
            self.result.note = (
                f"{len(failed)} of {len(graphs)} fio-plot graphs failed; see fio-plot.log"
            )
        self.proc = None
        return self.result

    def kill(self) -> None:
        """Stop fio-plot if it still runs and reap it; no-op once waited for."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        procs.stop(proc)
        procs.drain(proc)


def start(cells: list[Any], run_dir: Path, out: Path, *, title: str = "kmlbench") -> Drawing:
    """Write the layout and start drawing fio-plot's graphs in the background."""
    result = Result()
    out = Path(out)
    if not available():
        result.note = "fio-plot is not installed (pip install fio-plot): graphs skipped"
        return Drawing(result, out, None)
    if out.exists():
        shutil.rmtree(out)
    result.benchmarks = write_layout(cells, run_dir, out)
    if not result.benchmarks:
        result.note = "no fio output to draw"
        return Drawing(result, out, None)
    result.graphs = plan_graphs(result.benchmarks, out, title)
    (out / "graphs").mkdir(parents=True, exist_ok=True)
    proc = procs.popen(
        [sys.executable, "-c", _DRIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=out,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps([g.argv for g in result.graphs]))
    proc.stdin.close()
    proc.stdin = None  # communicate() must not touch it again
    return Drawing(result, out, proc)


def draw(
    cells: list[Any], run_dir: Path, out: Path, *, title: str = "kmlbench", timeout: float = 600
) -> Result:
    """Write the layout and draw fio-plot's graphs; a note instead when it is missing."""
    return start(cells, run_dir, out, title=title).wait(timeout)
