"""QEMU's block throttling on a virtio disk (``throttle_*`` device keys), in a real guest.

Realtime clock (the throttle's timers run on the host's clock; the matrix
refuses it under the virtual one), so the bounds are loose: a disk limited
to 100 requests a second runs near 100 (QEMU lets a burst of a tenth of a
second through first), the same disk unthrottled many times faster.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_insn_profile_guest import run_matrix

pytestmark = pytest.mark.kernel

MATRIX = """\
name: throttle
seed: 3
guest: {memory_mib: 512, clock: realtime, cpus: 1, boot_timeout_s: 300, command_timeout_s: 120,
        silence_timeout_s: 120}
axes:
  device:
    - {type: virtio, size_mib: 64}
    - {type: virtio, size_mib: 64, throttle_iops_total: 100}
  scheduler:
    - {name: none}
  workload:
    - {template: randread, bs: 4k, iodepth: 8, runtime_s: 3, ramp_s: 0, size_mib: 64}
"""


def test_a_throttled_virtio_disk_runs_at_its_limit(tmp_path: Path) -> None:
    run_dir = run_matrix(tmp_path, "throttle", MATRIX)
    cells = {}
    for cell in json.loads((run_dir / "summary.json").read_text())["cells"]:
        assert cell["status"] == "ok", cell
        cells[cell["params"]["device"].get("throttle_iops_total")] = cell
    throttled, plain = cells[100], cells[None]
    drive = throttled["qemu_command_line"][throttled["qemu_command_line"].index("-drive") + 1]
    assert drive.endswith(",throttling.iops-total=100")
    disk = json.loads((run_dir / "cells" / throttled["id"] / "disk.json").read_text())
    assert disk["throttling"] == {"throttling.iops-total": 100}
    assert 60 <= throttled["metrics"]["iops"] <= 140, throttled["metrics"]
    assert plain["metrics"]["iops"] >= 4 * throttled["metrics"]["iops"], plain["metrics"]
