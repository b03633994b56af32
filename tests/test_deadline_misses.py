"""mq-deadline's count of missed deadlines (kernel/patches/0002), read by every
mq-deadline cell (:mod:`kmlbench.data.deadline_misses`).

The host tests pin the parsing and the arithmetic. The guest test runs one
boot on the virtual clock (one vCPU, time is instructions) with a device
whose every request takes 1 ms, one request at a time, under 16 readers:
each request waits about 15 ms in the scheduler. Against a 5 ms deadline
nearly all of them miss, against 1000 ms none does, and an observing model's
own labels (KML's nanosecond rule, computed apart from the scheduler's
jiffies one) agree with the scheduler's count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kmlbench import paths
from kmlbench.data.block_stat import BlockStatError, parse_stat, stat_metrics
from kmlbench.data.deadline_misses import MissCountError, miss_metrics, parse_counts
from test_insn_profile_guest import run_matrix

TEXT = "read_dispatched 5123\nread_missed 17\nwrite_dispatched 2211\nwrite_missed 0\n"


def test_parse_counts() -> None:
    assert parse_counts(TEXT) == {
        "read_dispatched": 5123,
        "read_missed": 17,
        "write_dispatched": 2211,
        "write_missed": 0,
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no read_dispatched, read_missed, write_dispatched, write_missed"),
        (TEXT + "read_missed 3\n", "line 5: read_missed twice"),
        (TEXT.replace("17", "-17"), "line 2: not '<counter> <count>'"),
        (TEXT + "queued 3\n", "line 5: not '<counter> <count>'"),
        ("read_dispatched 5 6\n", "line 1: not"),
    ],
)
def test_parse_counts_refuses(text: str, why: str) -> None:
    with pytest.raises(MissCountError, match=why):
        parse_counts(text)


def test_miss_metrics_per_direction_and_across_the_wrap() -> None:
    before = {"read_dispatched": 2**32 - 10, "read_missed": 5, "write_dispatched": 7,
              "write_missed": 7}  # fmt: skip
    after = {"read_dispatched": 30, "read_missed": 9, "write_dispatched": 7, "write_missed": 7}
    assert miss_metrics(before, after) == {
        "deadline_missed": 4.0,
        "deadline_dispatched": 40.0,
        "deadline_miss_frac": 0.1,
        "read_deadline_miss_frac": 0.1,
    }
    # nothing dispatched: a count, no fraction of nothing
    assert miss_metrics(after, after) == {"deadline_missed": 0.0, "deadline_dispatched": 0.0}


# a virtio disk's /sys/block/vda/stat as a 6.18 kernel printed it (the 17
# fields of 6.1 too, each "%8lu"), and the 11 of kernels before 4.18
STAT_17 = (
    "15499554   901564 948174730 14055451  4236785  6220763 440266256  3710226"
    "        0  2291520 18235358  4415429       91 316804192   443433   271686    26246\n"
)
STAT_11 = (
    "     120        3      960       40        7        0       56        2"
    "        0       42       42\n"
)


def test_parse_stat() -> None:
    assert parse_stat(STAT_17) == {
        "read_ios": 15499554,
        "read_merges": 901564,
        "read_sectors": 948174730,
        "read_ticks": 14055451,
        "write_ios": 4236785,
        "write_merges": 6220763,
        "write_sectors": 440266256,
        "write_ticks": 3710226,
    }
    before = parse_stat(STAT_11)
    assert (before["read_ios"], before["read_merges"], before["write_ios"]) == (120, 3, 7)
    assert stat_metrics(before, parse_stat(STAT_17)) == {
        "block_read_ios": 15499554.0 - 120,
        "block_read_merges": 901564.0 - 3,
        "block_write_ios": 4236785.0 - 7,
        "block_write_merges": 6220763.0,
    }
    with pytest.raises(BlockStatError, match="read_ios went down, 15499554 to 120"):
        stat_metrics(parse_stat(STAT_17), before)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not one line"),
        (STAT_17 + STAT_17, "not one line"),
        ("1 2 3 4 5 6 7\n", "not at least 8 unsigned counters"),
        (STAT_17.replace("901564", "-1"), "not at least 8 unsigned counters"),
        (STAT_17.replace("901564", "9x"), "not at least 8 unsigned counters"),
    ],
)
def test_parse_stat_refuses(text: str, why: str) -> None:
    with pytest.raises(BlockStatError, match=why):
        parse_stat(text)


MATRIX = """\
name: misses
seed: 7
guest: {{memory_mib: 512, clock: virtual, icount_shift: 0, cpus: 1, share_boot: true,
        boot_timeout_s: 300, command_timeout_s: 300, silence_timeout_s: 300}}
axes:
  device:
    - {{type: null_blk, irqmode: timer, completion_nsec: 1000000, hw_queue_depth: 1,
       submit_queues: 1, size_mib: 256}}
  scheduler:
    - {{name: mq-deadline, read_expire: 5, nr_requests: 64}}
    - {{name: mq-deadline, read_expire: 1000, nr_requests: 64}}
  workload:
    - {{template: randread, bs: 4k, iodepth: 16, runtime_s: 2, ramp_s: 0, size_mib: 256}}
  model:
    - {{mode: off}}
    - {{mode: observe, model_file: {model}}}
exclude:
  - {{scheduler.read_expire: 1000, model.mode: observe}}
"""


@pytest.mark.kernel
def test_the_scheduler_counts_the_deadlines_it_misses(tmp_path: Path) -> None:
    model = paths.WORKLOADS_DIR / "models" / "deadline.kmlm"
    run_dir = run_matrix(tmp_path, "misses", MATRIX.format(model=model))
    cells: dict[tuple[int, str], dict[str, Any]] = {}
    for cell in json.loads((run_dir / "summary.json").read_text())["cells"]:
        assert cell["status"] == "ok", cell
        cells[cell["params"]["scheduler"]["read_expire"], cell["params"]["model"]["mode"]] = cell
    assert sorted(cells) == [(5, "observe"), (5, "off"), (1000, "off")]

    for cell in cells.values():
        m = cell["metrics"]
        ios = json.loads((run_dir / "cells" / cell["id"] / "fio.json").read_text())
        # completions: fio's total_ios counts an I/O when its engine queues it
        # (fio's ioengines.c), which at the end of a run may never reach the
        # kernel; each completion has its latency sample
        done = sum(job["read"]["clat_ns"]["N"] for job in ios["jobs"])
        # every read request went through the FIFOs once: the block layer's
        # own count of those completed, which fio saw through before it
        # exited (a request requeued by its driver would go through twice;
        # null_blk requeues only under fault injection, not set here)
        assert m["deadline_dispatched"] == m["block_read_ios"], m
        # a read merged into a request still queued rides on it and is
        # never dispatched on its own (this run's reads 330 and 340 are
        # adjacent; whether the first is still queued when the second
        # arrives turns on microseconds, and a CI run merged them); beside
        # those, at most the 16 still queued or in flight when fio stopped
        # counting
        merged = m["block_read_merges"]
        assert done <= m["deadline_dispatched"] + merged <= done + 16, (done, m)
        assert m["block_write_ios"] == m["block_write_merges"] == 0
        assert m["deadline_miss_frac"] == m["read_deadline_miss_frac"]
        assert "write_deadline_miss_frac" not in m

    assert cells[1000, "off"]["metrics"]["deadline_missed"] == 0
    late = cells[5, "off"]["metrics"]["deadline_miss_frac"]
    # about 15 ms of wait against 5: all but the first requests of the run
    assert late > 0.75, cells[5, "off"]["metrics"]

    # the model changes no order in observe: the same misses, and its own
    # labels (nanoseconds, not jiffies) find them too
    observe = cells[5, "observe"]
    assert abs(observe["metrics"]["deadline_miss_frac"] - late) < 0.01
    counters = observe["kml_stats"]["counters"]
    labelled = (counters["miss_pred_met"] + counters["miss_pred_miss"]) / counters["predictions"]
    assert abs(labelled - observe["metrics"]["deadline_miss_frac"]) < 0.01, counters
