"""The guest CPU accounting around fio (cell.workload.cpu_metrics), on this host's /proc/stat."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kmlbench.cell.workload import cpu_metrics, parse_cpu_line


def read_cpu() -> dict[str, int]:
    return parse_cpu_line(Path("/proc/stat").read_text().splitlines()[0])


def test_busy_time_follows_real_work() -> None:
    """Half a second of spinning shows up as at least ~0.4 s of busy CPU."""
    before = read_cpu()
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        pass
    after = read_cpu()
    m = cpu_metrics(before, after, ios=1000)
    assert m["guest_cpu_busy_s"] >= 0.4
    assert 0 <= m["guest_kernel_cpu_s"] <= m["guest_cpu_busy_s"]
    assert m["kernel_cpu_us_per_io"] == pytest.approx(m["guest_kernel_cpu_s"] / 1000 * 1e6)


def test_kernel_time_is_system_irq_softirq_per_io() -> None:
    before = parse_cpu_line("cpu  100 5 200 9000 10 30 40 0 0 0")
    after = parse_cpu_line("cpu  150 5 260 9100 10 35 45 0 0 0")
    m = cpu_metrics(before, after, ios=200)
    assert m["guest_kernel_cpu_s"] == pytest.approx(0.70)  # (60 + 5 + 5) ticks
    assert m["guest_cpu_busy_s"] == pytest.approx(1.20)  # + 50 user ticks
    assert m["kernel_cpu_us_per_io"] == pytest.approx(3500.0)
    assert "kernel_cpu_us_per_io" not in cpu_metrics(before, after, ios=0)


def test_refuses_other_lines() -> None:
    with pytest.raises(ValueError, match="cpu line"):
        parse_cpu_line("cpu0 1 2 3 4")
