"""``kmlbench run --jobs 2`` in real TCG guests on the virtual clock (issue 14).

One small matrix (three short cells) runs twice: one cell after another,
and on a local Dask pool of two workers, which is interrupted with Ctrl-C
(SIGINT to the whole process group, as a terminal sends it) while a guest
runs, then resumed. The interrupt must leave no QEMU behind and keep the
finished cells; the resumed pool run must then agree with the serial run.

How closely: with the virtual clock a cell's numbers do not depend on how
many guests share the host, but they are not bit-identical from boot to
boot either: CPU-bound cells (iodepth 8 on a 50 us device: 58k IOPS) vary
by up to 1.9% in IOPS between two serial boots, tail percentiles and
instructions per I/O by up to 5% (docs/benchmarks.md, "Many guests at
once"). The cells here are device-bound (iodepth 1 on a 1 ms device, so
the guest's own path is 2% of each request), where IOPS and mean latency
repeat closely; those two are compared, and the tails only have to be
there. (On a 100 us device the mq-deadline cell once differed by 0.6%.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from test_e2e import _kmlbench, _qemu_pids_with

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]

MATRIX = """\
name: pool
seed: 1
repeat: 1
kernel: {source: debian}
guest: {memory_mib: 512, clock: virtual, icount_shift: 0, cpus: 1, boot_timeout_s: 300,
        command_timeout_s: 180, silence_timeout_s: 240}
axes:
  device:
    - {type: null_blk, completion_nsec: 1000000, irqmode: timer, hw_queue_depth: 32,
       submit_queues: 1, size_mib: 256}
  scheduler:
    - {name: mq-deadline}
    - {name: none}
  workload:
    - {template: [randread, randrw], bs: 4k, iodepth: 1, numjobs: 1, runtime_s: 2, ramp_s: 0,
       size_mib: 64}
exclude:
  - {scheduler.name: none, workload.template: randrw}
"""
CLOSE = ("iops", "clat_mean_us")
TOLERANCE = 0.005


def _records(results: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("*/cells/*/cell.json")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pool")
    matrix = base / "pool.yaml"
    matrix.write_text(MATRIX)
    tmp = base / "tmp"  # QEMU's initrd lives under it: finds our guests among others'
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), KMLBENCH_DB=str(base / "kmlbench.db"))
    serial = base / "serial"
    done = subprocess.run(
        _kmlbench("run", str(matrix), "--results", str(serial)),
        env=env, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    pool = base / "pool"
    first = subprocess.Popen(
        _kmlbench("run", str(matrix), "--results", str(pool), "--jobs", "2"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while not (_records(pool) and _qemu_pids_with(str(tmp))):  # a cell kept, a guest running
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "no cell finished while another ran"
            time.sleep(0.5)
        os.killpg(first.pid, signal.SIGINT)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    (base / "interrupted.txt").write_text(out)
    assert first.returncode == 130, out
    time.sleep(2)
    assert not _qemu_pids_with(str(tmp)), "QEMU survived the interrupt"
    kept = _records(pool)
    assert kept and len(kept) < 3, out
    (run_dir,) = [p for p in pool.iterdir() if p.is_dir() and not p.is_symlink()]
    resumed = subprocess.run(
        _kmlbench("run", "--resume", run_dir.name, "--results", str(pool), "--jobs", "2"),
        env=env, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 of 3 cells to run" in resumed.stdout or "2 of 3" in resumed.stdout
    assert not _qemu_pids_with(str(tmp))
    return {"serial": serial, "pool": pool}


def test_every_cell_of_the_pool_run_matches_the_serial_run(runs: dict[str, Path]) -> None:
    serial, pool = _records(runs["serial"]), _records(runs["pool"])
    assert len(serial) == 3 and sorted(serial) == sorted(pool)
    for cid, a in serial.items():
        b = pool[cid]
        assert a["status"] == b["status"] == "ok"
        assert a["clock"] == b["clock"] == "virtual"
        assert b["worker"]["address"].startswith("tcp://127.0.0.1:")
        for metric in CLOSE:
            x, y = a["metrics"][metric], b["metrics"][metric]
            assert abs(x - y) <= TOLERANCE * abs(x), (cid, metric, x, y)
        assert set(a["metrics"]) == set(b["metrics"])


def test_the_pool_cells_brought_their_files_back(runs: dict[str, Path]) -> None:
    for cell_json in runs["pool"].glob("*/cells/*/cell.json"):
        folder = cell_json.parent
        assert json.loads((folder / "fio.json").read_text())["jobs"]
        assert "Linux version" in (folder / "console.log").read_text()
        assert (folder / "dmesg.txt").is_file()
