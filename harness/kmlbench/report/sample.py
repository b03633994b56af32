"""Sample runs from host fio: a run folder whose cells are real fio runs on the host.

:func:`make_host_run` records cells with the real
:class:`kmlbench.run.results.RunDir`, as the runner does, from fio on the
host (no guest, psync on a small file); :func:`host_params` shapes a cell's
params as the matrix would, and :func:`sample_kml_stats` gives synthetic
``kml_stats``. Used by the tests and by ``kmlbench report --benchmark N``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kmlbench import procs
from kmlbench.clock import clock_record
from kmlbench.data.fio import (
    fio_version,
    late_metrics,
    late_targets,
    metrics_from_fio,
    parse_fio_output,
)
from kmlbench.plan.cells import Cell, cell_id
from kmlbench.plan.fio_job import PREAMBLE
from kmlbench.plan.schema import SCHEDULERS, UNSET
from kmlbench.run.results import RunDir

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
    scheduler: str,
    template: str = "randread",
    *,
    model: dict[str, Any] | None = None,
    **workload: Any,
) -> dict[str, Any]:
    """Cell params shaped like the matrix's, for a host fio sample run.

    The scheduler gets its tunables' defaults, as ``kmlbench.plan.matrix`` resolves
    them (mq-deadline's read_expire etc.; none, kyber and bfq have none).
    """
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


def _host_cell_job(params: dict[str, Any], filename: Path, runtime_s: float, direct: int) -> str:
    wl = params["workload"]
    rw = wl.get("rw") or {"randrw": "randrw", "seqread": "read", "seqwrite": "write"}.get(
        wl["template"], wl["template"]
    )
    return PREAMBLE + _HOST_JOB.format(
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


def sample_kml_stats(
    seed: int, labels: Sequence[str] = ("read", "write", "mixed")
) -> dict[str, Any]:
    """``kml_stats`` shaped as docs/reporting.md proposes, from a seeded RNG.

    For exercising the model figures until the model axis exists; the
    numbers are synthetic and say so (``"synthetic": true``).
    """
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


def _manifest(run_id: str, accel: str, name: str) -> dict[str, Any]:
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
    configs: Sequence[dict[str, Any]],
    *,
    repeats: int = 2,
    run_id: str = "sample",
    runtime_s: float = 1.0,
    accel: str = "host",
    parallel: int = 2,
    kml_stats: Callable[[dict[str, Any], int], dict[str, Any] | None] | None = None,
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
    run = RunDir.create(Path(root), run_id)
    run.write_manifest(_manifest(run.run_id, accel, run_id))
    data_dir = Path(tempfile.mkdtemp(prefix="kmlbench-sample-", dir=run.path))
    cells = [Cell(cell_id(p, r), r, p, "default") for r in range(repeats) for p in configs]
    run.write_plan(cells)
    direct = 0
    running: list[tuple[Any, subprocess.Popen[Any]]] = []
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
                    report = parse_fio_output((cdir / "fio.json").read_text())
                    metrics = metrics_from_fio(report)
                    metrics.update(late_metrics(report, late_targets(cell.params["workload"])))
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
