"""``guest: {share_boot: true}``: cells that differ only in their model share a boot.

The grouping is checked on its own; then a real run in TCG guests: six
cells (off, observe with the shipped model, active with the kernel trainer,
two repeats) in one boot, each cell still with its own complete record, KML
put back to its booted state between cells (statistics zeroed, no model
left loaded, parameters restored), and what a cell changed not leaking into
the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kmlbench import paths
from kmlbench.build.kernel import KernelBuild
from kmlbench.plan.matrix import load_matrix
from kmlbench.plan.source import MatrixError
from kmlbench.run import runner

SHIPPED = paths.WORKLOADS_DIR / "models" / "deadline.kmlm"

MATRIX = """\
name: shared
seed: 3
repeat: 2
kernel: {{source: debian}}
guest: {{memory_mib: 512, clock: realtime, cpus: 2, boot_timeout_s: 300, command_timeout_s: 120,
         silence_timeout_s: 240, share_boot: {share}}}
axes:
  device:
    - {{type: null_blk, irqmode: timer, completion_nsec: 500000, hw_queue_depth: 1,
       submit_queues: 1, size_mib: 64}}
  scheduler:
    - {{name: mq-deadline, read_expire: 8, write_expire: 20, nr_requests: 128}}
  workload:
    - {{template: randrw, bs: 4k, iodepth: 16, rwmix_read: 70, runtime_s: 2, ramp_s: 0,
       size_mib: 32}}
  model:
    - {{mode: off}}
    - {{mode: observe, model_file: {shipped}, decision_permille: 700}}
    - {{mode: active, trainer: kernel, ring_mode: drop, publish_every: 128}}
"""


def _matrix(tmp_path: Path, share: str = "true") -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX.format(share=share, shipped=SHIPPED))
    return path


def test_groups_are_cells_that_differ_only_in_model(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    text = MATRIX.format(share="true", shipped=SHIPPED).replace(
        "    - {type: null_blk",
        "    - {type: null_blk, irqmode: timer, completion_nsec: 100000, size_mib: 64}\n"
        "    - {type: null_blk",
        1,
    )
    path.write_text(text)
    matrix = load_matrix(path)
    assert matrix.guest["share_boot"] is True
    groups = runner.shared_boot_groups(matrix.cells)
    assert len(groups) == 2 and sorted(map(len, groups)) == [6, 6]
    for group in groups:
        assert len({runner.boot_group_key(c) for c in group}) == 1
        assert len({c.params["device"]["completion_nsec"] for c in group}) == 1
        assert {c.params["model"]["mode"] for c in group} == {"off", "observe", "active"}
        # plan order kept inside a group
        plan = [c.id for c in matrix.cells]
        assert [c.id for c in group] == sorted((c.id for c in group), key=plan.index)


def test_share_boot_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match=r"m\.yaml:\d+: guest\.share_boot.*true or false"):
        load_matrix(_matrix(tmp_path, share="1"))
    assert load_matrix(_matrix(tmp_path, share="false")).guest["share_boot"] is False


@pytest.mark.kernel
def test_cells_share_one_boot_and_start_from_a_clean_kml(
    kernel_build: KernelBuild, tmp_path: Path
) -> None:
    env = dict(os.environ, KMLBENCH_RESULTS=str(tmp_path / "results"))
    proc = subprocess.run(
        [sys.executable, "-m", "kmlbench.cli", "run", str(_matrix(tmp_path))],
        env=env, capture_output=True, text=True, timeout=15 * 60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = (tmp_path / "results" / "latest").resolve()
    summary = json.loads((run_dir / "summary.json").read_text())
    cells = {c["id"]: c for c in summary["cells"]}
    assert len(cells) == 6 and all(c["status"] == "ok" for c in cells.values())

    records = {cid: json.loads((run_dir / "cells" / cid / "cell.json").read_text())
               for cid in cells}  # fmt: skip
    shared = {cid: r["shared_boot"] for cid, r in records.items()}
    (first,) = [cid for cid, s in shared.items() if s["position"] == 0]
    assert sorted(s["position"] for s in shared.values()) == list(range(6))
    assert all(s["boot_cell"] == first for s in shared.values())
    assert "boot_s" in records[first]["timings"]
    boot_console = (run_dir / "cells" / first / "console.log").read_text()
    assert "Linux version" in boot_console
    for cid, rec in records.items():
        folder = run_dir / "cells" / cid
        assert (folder / "fio.json").is_file() and (folder / "dmesg.txt").is_file()
        if cid == first:
            continue
        setup = (folder / "setup.log").read_text()
        assert f"set up by cell {first}" in setup and "(exit 0)" in setup, setup
        # the queue went back to off (an off cell after an active one runs stock)
        (mode,) = [ln.split("kml_mode", 1)[1].strip() for ln in setup.splitlines()
                   if "reset: kml_mode" in ln]  # fmt: skip
        assert mode == "off" or "[off]" in mode, setup
        assert f"../{first}/console.log" in (folder / "console.log").read_text()
        assert "boot_s" not in rec["timings"]

    by_mode: dict[str, list[dict]] = {}
    for c in cells.values():
        by_mode.setdefault(c["params"]["model"]["mode"], []).append(c)
    for c in by_mode["observe"] + by_mode["active"]:
        counters = c["kml_stats"]["counters"]
        ios = c["metrics"]["iops"] * 2  # 2 s of fio
        # zeroed between cells: one cell's requests only, not the boot's so far
        assert 0 < counters["samples"] <= 1.2 * ios + 64, (counters, ios)
    for c in by_mode["observe"]:
        counters = c["kml_stats"]["counters"]
        # its own threshold and model; no kernel trainer left running from
        # an earlier cell, publishing over it
        assert counters["decision_permille"] == 700, counters
        assert counters["model_loaded"] == 1, counters
        # nobody consumes its samples: they fill a ring that started empty
        expected = min(counters["samples"], counters["ring_capacity"])
        assert counters["ring_produced"] == expected, counters
        assert counters["ktrainer_samples"] == 0 and counters["updates_applied"] == 0, counters
    for c in by_mode["active"]:
        counters = c["kml_stats"]["counters"]
        assert counters["ktrainer_samples"] > 0 and counters["updates_applied"] >= 1, counters
