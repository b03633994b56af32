"""KML's policy ``cost`` in mq-deadline (issue 13, part 3), in a real guest.

One ``kmlbench run`` on the virtual clock (one vCPU, time is instructions,
so the figures are the same on every host) of the rotational disk model
(kernel/patches/0003: seeks, rotation, one head) under 16 random readers
and writers, with mq-deadline stock (``off``) and in active mode with
policy ``cost`` and no model. On a disk whose every read waits past its
100 ms deadline, stock mq-deadline starts each batch at the oldest request
and so seeks across the disk; cost goes to the request whose learned
service time, less its age credit, is least, which must give more I/O per
second and a much shorter tail. The learned table itself must look like a
disk: service times between one transfer and a few revolutions, and longer
for long seeks than for short ones. The kernel's refusal of a policy or
shift it does not know, and switching policies under I/O, are in
``tests/test_kml_faults.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kmlbench.plan.schema import NULL_BLK_SERVICE_MODELS
from test_insn_profile_guest import run_matrix

pytestmark = pytest.mark.kernel

ROT = NULL_BLK_SERVICE_MODELS["rotational"]
FLASH = NULL_BLK_SERVICE_MODELS["flash"]
TRANSFER_NS = 8 * ROT["svc_rev_ns"] / ROT["svc_track_sectors"]  # 4 KiB: 8 sectors

# One device, mq-deadline, one randrw load, three model entries: stock
# (off), policy cost untold, and policy cost told the device's geometry.
MATRIX = """\
name: {name}
seed: 13
guest: {{memory_mib: 512, clock: virtual, icount_shift: 0, cpus: 1, share_boot: true,
        boot_timeout_s: 300, command_timeout_s: 300, silence_timeout_s: 300}}
axes:
  device:
    - {{type: null_blk, irqmode: timer, service: {service}, hw_queue_depth: {depth},
       submit_queues: 1, size_mib: 1024}}
  scheduler:
    - {{name: mq-deadline, read_expire: {expire[0]}, write_expire: {expire[1]}, nr_requests: 64}}
  workload:
    - {{template: randrw, bs: 4k, iodepth: {iodepth}, rwmix_read: 70, runtime_s: {seconds},
       ramp_s: 0, size_mib: 1024, read_target_ms: {expire[0]}, write_target_ms: {expire[1]}}}
  model:
    - {{mode: off}}
    - {{mode: active, policy: cost{extra}}}
    - {{mode: active, policy: cost, geometry: true{extra}}}
{more}"""
# The disk's run also holds the tail's end of the trade (docs/kml-iosched.md,
# "The tail, if it matters more than the misses"): a missed request's credit
# grows on, and every request's as if it were due within the read expiry.
TAIL = """\
    - {mode: active, policy: cost, geometry: true, cost_credit_permille: 1250,
       cost_late_permille: 250, cost_horizon_ms: 100}
    - {mode: active, policy: cost, geometry: true, cost_credit_permille: 1250,
       cost_late_permille: 250, cost_horizon_ms: 100, cost_miss_budget_permille: 120}
"""


def _run(
    tmp_path_factory: pytest.TempPathFactory, name: str, more: str = "", **values: Any
) -> dict[str, Any]:
    """The cells of MATRIX with ``values``, by entry: off, cost, told (and tail)."""
    text = MATRIX.format(name=name, more=more, **values)
    run_dir = run_matrix(tmp_path_factory.mktemp(name), name, text)
    out = {}
    for cell in json.loads((run_dir / "summary.json").read_text())["cells"]:
        assert cell["status"] == "ok", cell
        model = cell["params"]["model"]
        if model.get("cost_window_permille"):
            out["window"] = cell
        elif model.get("cost_miss_budget_permille"):
            out["budget"] = cell
        elif "cost_svc_permille" in model:
            out["svc"] = cell
        elif model.get("cost_horizon_ms"):
            out["tail"] = cell
        else:
            out["told" if model.get("geometry") else model.get("policy", model["mode"])] = cell
    assert {"cost", "off", "told"} <= set(out), sorted(out)
    assert len(out) == 3 + more.count("mode:"), sorted(out)
    return out


def _disk(
    tmp_path_factory: pytest.TempPathFactory, name: str, iodepth: int, more: str
) -> dict[str, Any]:
    """The disk against 100/500 ms expiries, 6 s, with MATRIX's entries and ``more``."""
    return _run(
        tmp_path_factory, name, service="rotational", depth=1, expire=(100, 500),
        iodepth=iodepth, seconds=6, extra="", more=more,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The disk under 16 in flight, and the tail's points."""
    return _disk(tmp_path_factory, "policy", 16, TAIL)


def test_cost_beats_stock_order_on_a_disk(cells: dict[str, dict[str, Any]]) -> None:
    off, cost = cells["off"]["metrics"], cells["cost"]["metrics"]
    # measured over 8 s, 6 boots a side (docs/benchmarks.md, "mq-deadline's
    # writes were throttled"): IOPS +2.1% to +8.4%, boot against boot, and
    # total p99 at most 0.67 of stock's. The table is learned within the
    # first second, so a 6 s run keeps most of it. (Before kernel/patches/
    # 0004, which let stock's writes into the scheduler, IOPS were +13%.)
    assert cost["iops"] > off["iops"], (off["iops"], cost["iops"])
    assert cost["clat_mean_us"] < off["clat_mean_us"], (off, cost)
    assert cost["lat_p99_us"] < 0.8 * off["lat_p99_us"], (off["lat_p99_us"], cost["lat_p99_us"])
    stats = cells["cost"]["kml_stats"]
    assert stats["settings"]["policy"] == "cost"
    assert stats["counters"]["cost_age_shift"] == 6  # the matrix's default
    assert "kml_stats" not in cells["off"]  # off touches no KML


def test_the_learned_service_times_look_like_a_disk(cells: dict[str, dict[str, Any]]) -> None:
    table = cells["cost"]["kml_stats"]["svc_learned"]
    assert len(table) >= 4, table
    for row in table:
        # at least the transfer, at most a full-stroke seek and two turns
        assert TRANSFER_NS * 0.9 < row["ns"] < 60e6, row
    short, long = table[0], table[-1]
    assert long["lo"] >= 1 << 16, table  # seeks across the disk were learned
    # a long seek costs more than the shortest learned one, by at least the
    # seek curve's difference less half a turn of rotational noise
    assert long["ns"] > short["ns"] + 2e6, table


def test_told_the_disks_geometry_cost_wins_on_mean_and_misses(
    cells: dict[str, dict[str, Any]],
) -> None:
    """Told the revolution and the track and cylinder sizes, policy cost
    prices each candidate's seek and turn and credits a request by the share
    of its expiry it has waited. Measured over 20 s, 4 repeats a side, on
    this load (``workloads/disk-position.yaml``, docs/benchmarks.md): IOPS
    +25%, mean -20%, total p99 -45%, misses 29% against 56%. Here, over
    6 s that start unlearned: IOPS x1.21, mean x0.83, p99 x0.73, misses
    x0.54 (one run; the virtual clock repeats it to about 0.1%)."""
    off, cost, geo = (cells[k]["metrics"] for k in ("off", "cost", "told"))
    assert geo["iops"] > 1.1 * off["iops"], (off["iops"], geo["iops"])
    assert geo["iops"] > cost["iops"], (cost["iops"], geo["iops"])  # 67.6 against 60.4
    assert geo["lat_mean_us"] < 0.9 * off["lat_mean_us"], (off["lat_mean_us"], geo["lat_mean_us"])
    # a 6 s run's p99 is its 4th-longest request: the bound is loose (0.73 measured)
    assert geo["lat_p99_us"] < 0.85 * off["lat_p99_us"], (off["lat_p99_us"], geo["lat_p99_us"])
    assert geo["deadline_miss_frac"] < 0.75 * off["deadline_miss_frac"], (off, geo)
    # what the kernel was told is the device model's own geometry
    counters = cells["told"]["kml_stats"]["counters"]
    assert counters["cost_rev_ns"] == ROT["svc_rev_ns"]
    assert counters["cost_track_sectors"] == ROT["svc_track_sectors"]
    assert counters["cost_cyl_sectors"] == ROT["svc_cyl_sectors"]
    assert counters["cost_credit_permille"] == 1000
    assert cells["cost"]["kml_stats"]["counters"]["cost_rev_ns"] == 0  # not told


def test_the_tail_parameters_trade_misses_for_the_tail(
    cells: dict[str, dict[str, Any]],
) -> None:
    """With a missed request's credit growing on (cost_late_permille) and
    writes ageing as fast as reads (cost_horizon_ms), the tail is no longer
    the reads that just missed nor the writes: measured over 20 s, 4
    repeats (``workloads/disk-tail.yaml``), p99 within a few percent of
    FIFO's, and more misses than the default's. Here, 6 s from unlearned,
    over 6 invocations on 2026-12-05 (a 6 s cell's start differs from one
    invocation to the next): p99 x0.73 to x0.83 of the default's, the
    writes' mean x0.80 to x0.94, misses 63-65% against 27-31%. The writes'
    p99 is their longest one or two (about 130 writes): it was shorter in
    five invocations and in the same fio bucket in one, so it is not
    asserted."""
    told, tail = cells["told"], cells["tail"]
    geo, end = told["metrics"], tail["metrics"]
    assert end["lat_p99_us"] < 0.9 * geo["lat_p99_us"], (geo["lat_p99_us"], end["lat_p99_us"])
    assert end["write_lat_mean_us"] < geo["write_lat_mean_us"], (geo, end)
    assert end["deadline_miss_frac"] > geo["deadline_miss_frac"], (geo, end)
    counters = tail["kml_stats"]["counters"]
    assert (counters["cost_late_permille"], counters["cost_horizon_ms"]) == (250, 100)
    assert told["kml_stats"]["counters"]["cost_late_permille"] == 0


def test_a_miss_budget_keeps_the_tails_parameters_to_it(
    cells: dict[str, dict[str, Any]],
) -> None:
    """The same parameters under a budget of 12% late dispatches: under 16
    in flight more than that miss whatever the order, so the budget is
    spent and the policy keeps to the requests that can still meet their
    deadline; the misses stay below stock's by as much as the default
    credit's do, not above them as without the budget. Here, 6 s from
    unlearned: misses 24% against 65% without the budget and 53% stock,
    IOPS x1.21 and mean x0.83 of stock's (one run)."""
    off, told = cells["off"]["metrics"], cells["told"]["metrics"]
    tail, budget = cells["tail"]["metrics"], cells["budget"]["metrics"]
    assert budget["deadline_miss_frac"] < 0.6 * tail["deadline_miss_frac"], (tail, budget)
    assert budget["deadline_miss_frac"] < 0.75 * off["deadline_miss_frac"], (off, budget)
    assert budget["iops"] > 1.1 * off["iops"], (off["iops"], budget["iops"])
    assert budget["lat_mean_us"] < 0.9 * off["lat_mean_us"], (off, budget)
    assert told["deadline_miss_frac"] < 0.75 * off["deadline_miss_frac"]
    assert cells["budget"]["kml_stats"]["counters"]["cost_miss_budget_permille"] == 120


def test_a_request_dispatched_late_completes_late(cells: dict[str, dict[str, Any]]) -> None:
    """The share of requests that completed past the workload's targets (fio's
    total latency, counted whatever the scheduler) against mq-deadline's own
    count of those it dispatched past their deadline: a request dispatched
    late completes late, so the first holds the second, per direction, in
    every mode; the service time after a dispatch just in time adds more.
    The two windows differ only by fio's start and end (``ramp_s: 0``), and
    fio's bucket width (under 1%), hence the 0.97. And what policy cost
    saves at dispatch, it saves at completion: fewer late than stock."""
    for name, cell in cells.items():
        m = cell["metrics"]
        for d in ("", "read_", "write_"):
            late, missed = m[f"{d}late_frac"], m[f"{d}deadline_miss_frac"]
            assert 0.97 * missed <= late <= 1, (name, d, missed, late)
    off, told = cells["off"]["metrics"], cells["told"]["metrics"]
    assert told["late_frac"] < 0.9 * off["late_frac"], (off["late_frac"], told["late_frac"])


# The miss budget's point of workloads/disk-tail.yaml.
BUDGET = """\
    - {mode: active, policy: cost, geometry: true, cost_credit_permille: 1250,
       cost_late_permille: 250, cost_horizon_ms: 200, cost_miss_budget_permille: 120}
"""


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The disk under 8 in flight: fewer miss, and the budget has room."""
    return _disk(tmp_path_factory, "policy-light", 8, BUDGET)


def test_under_its_budget_the_tail_spends_misses(light: dict[str, dict[str, Any]]) -> None:
    """Under 8 in flight the default credit leaves fewer than 12% late, so
    the budget lets the tail's parameters act: more misses than the
    default's, about the budget's share, still far fewer than stock's, and a
    shorter tail than stock's. Measured over 20 s, 4 repeats
    (``workloads/disk-tail.yaml``): misses 13.3% against 8.9% and 27.8%,
    p99 327 against 432 ms. A 6 s cell's start is not the same from one
    invocation to the next: over 6 invocations on 2026-12-05, misses
    13.8-15.2% against the default's 6.4-11.9% (x1.16 to x2.4; in the five
    whose cells were kept) and stock's 26-28%, p99 x0.70 to x0.89 of
    stock's; its writes' p99 is its longest write or two, which moved by 8%
    either way: not asserted. The bounds are the claims themselves (more
    misses than the default's, a shorter tail than stock's), with the
    margins those invocations left."""
    off, told, budget = (light[k]["metrics"] for k in ("off", "told", "budget"))
    assert budget["deadline_miss_frac"] > told["deadline_miss_frac"], (told, budget)
    assert budget["deadline_miss_frac"] < 0.2, budget  # a 12% budget, from unlearned
    assert budget["deadline_miss_frac"] < 0.75 * off["deadline_miss_frac"], (off, budget)
    assert budget["lat_p99_us"] < 0.95 * off["lat_p99_us"], (off["lat_p99_us"], budget)


def _seek_ns(cylinders: int) -> float:
    """The rotational model's seek curve (kernel/patches/0003)."""
    if cylinders < ROT["svc_seek_boundary"]:
        return ROT["svc_seek_a_ns"] + ROT["svc_seek_b_ns"] * cylinders**0.5
    return ROT["svc_seek_c_ns"] + ROT["svc_seek_e_ns"] * cylinders


def test_the_learned_seeks_follow_the_disks_curve(cells: dict[str, dict[str, Any]]) -> None:
    """With a geometry the table is per lg2 of the cylinders crossed, and each
    line the seek alone that KML prices at the bucket's shortest length,
    learned from completions (the turn and transfer taken out): above the
    model's seek curve at that length less a quarter turn (and above half
    of it), below the longest length in the bucket plus a quarter turn."""
    table = cells["told"]["kml_stats"]["svc_learned"]
    quarter = ROT["svc_rev_ns"] / 4
    spans = [row for row in table if row["lo"] >= 1]
    assert len(spans) >= 5, table
    for row in spans:
        low = max(_seek_ns(row["lo"]) - quarter, 0.5 * _seek_ns(row["lo"]))
        assert low < row["ns"] < _seek_ns(row["hi"]) + quarter, row
    # across the disk the seeks grow as the curve does, by most of its rise
    short, long = spans[0], spans[-1]
    assert long["ns"] - short["ns"] > 0.5 * (_seek_ns(long["lo"]) - _seek_ns(short["lo"])), table


# Flash's tail (docs/kml-iosched.md, "Given a flash device's channels"):
# past a 1 ms horizon a request's age counts a nanosecond for each one
# waited (4000 thousandths of the rate before at a shift of 2).
FLASH_TAIL = """\
    - {mode: active, policy: cost, geometry: true, cost_age_shift: 2,
       cost_late_permille: 4000, cost_horizon_ms: 1}
"""


@pytest.fixture(scope="module")
def flash(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Flash: 64 in flight against 2/5 ms expiries, 2 s, age credit >> 2, and the tail."""
    return _run(
        tmp_path_factory, "policy-flash", service="flash", depth=8, expire=(2, 5),
        iodepth=64, seconds=2, extra=", cost_age_shift: 2", more=FLASH_TAIL,
    )  # fmt: skip


def test_told_the_flash_channels_cost_keeps_them_busy(flash: dict[str, dict[str, Any]]) -> None:
    """Told the flash model's channels, policy cost sends the request whose
    channel frees first: more I/O per second than stock mq-deadline, whose
    order leaves channels idle while others queue. Measured over 4 s, 3
    repeats a side (``workloads/flash-channels.yaml``, docs/benchmarks.md):
    IOPS +27%, misses 23% against 39%. Here, 2 s from unlearned."""
    off, cost, told = (flash[k]["metrics"] for k in ("off", "cost", "told"))
    assert told["iops"] > 1.15 * off["iops"], (off["iops"], told["iops"])
    # what wins is the channels: untold, the same policy runs at stock's rate
    assert told["iops"] > 1.1 * cost["iops"], (cost["iops"], told["iops"])
    assert told["lat_mean_us"] < 0.9 * off["lat_mean_us"], (off, told)
    assert told["deadline_miss_frac"] < off["deadline_miss_frac"], (off, told)
    counters = flash["told"]["kml_stats"]["counters"]
    assert counters["cost_channels"] == FLASH["svc_channels"]
    assert counters["cost_stripe_sectors"] == FLASH["svc_stripe_sectors"]
    assert counters["cost_rev_ns"] == 0
    # a read's and a write's learned time on a channel: at least the page
    # and its transfer, and a write longer than a read
    table = {row["lo"]: row["ns"] for row in flash["told"]["kml_stats"]["svc_learned"]}
    read = FLASH["svc_read_ns"] + 4 * FLASH["svc_xfer_ns_kib"]
    write = FLASH["svc_write_ns"] + 4 * FLASH["svc_xfer_ns_kib"]
    assert read <= table[0] < 4 * read, table
    assert write <= table[1] < 4 * write, table
    assert table[1] > table[0], table


def test_on_flash_a_horizon_shortens_the_tail(
    flash: dict[str, dict[str, Any]],
) -> None:
    """Past the horizon a request goes about oldest first: a shorter tail
    than the plain credit's (whose p99 is the writes' waiting for a busy
    channel), and still more I/O than stock's. The throughput it gives up
    for that is in docs/benchmarks.md ("The tail against the misses on
    flash", ``workloads/flash-tail.yaml``, 4 s, 3 repeats, shift 3)."""
    off, told, tail = (flash[k]["metrics"] for k in ("off", "told", "tail"))
    assert tail["lat_p99_us"] < 0.97 * told["lat_p99_us"], (told, tail)
    assert tail["iops"] > 1.05 * off["iops"], (off["iops"], tail["iops"])
    counters = flash["tail"]["kml_stats"]["counters"]
    assert (counters["cost_late_permille"], counters["cost_horizon_ms"]) == (4000, 1)
    assert counters["cost_channels"] == FLASH["svc_channels"]


# Flash under a light load (docs/kml-iosched.md, "Given a flash device's
# channels"): none of a request's own time on its channel in its cost, so
# that a write no longer waits while reads keep coming; and the same with
# a window of the oldest requests a sixteenth of those in flight wide (one
# of each direction under 16: "A window of the oldest").
FLASH_SVC = """\
    - {mode: active, policy: cost, geometry: true, cost_age_shift: 3, cost_svc_permille: 0}
    - {mode: active, policy: cost, geometry: true, cost_age_shift: 3, cost_svc_permille: 0,
       cost_window_permille: 62}
"""


@pytest.fixture(scope="module")
def flash_light(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Flash: 16 in flight against 2/5 ms expiries (none missed), 2 s, shift 3."""
    return _run(
        tmp_path_factory, "policy-flash-light", service="flash", depth=8, expire=(2, 5),
        iodepth=16, seconds=2, extra=", cost_age_shift: 3", more=FLASH_SVC,
    )  # fmt: skip


def test_on_flash_under_a_light_load_reads_first_costs_the_tail(
    flash_light: dict[str, dict[str, Any]],
) -> None:
    """Under 16 in flight nothing misses, and counting a request's own time
    (reads first) only makes the writes wait: without it the p99 is far
    shorter than with it, at the same throughput, still well above stock's.
    Measured over 4 s, 3 repeats (``workloads/flash-svc.yaml``, run
    ``20261206-015755-flash-svc``; docs/benchmarks.md, "Reads first only
    where it pays, on flash"): p99 1,384 us against 1,810 with all of it
    counted (and a 2 ms horizon), and stock's 1,434; IOPS 31,377 against
    stock's 26,570. Here, 2 s: 1,352 against 1,794 us, IOPS 31,400 against
    31,799 and stock's 26,643."""
    off, told, svc = (flash_light[k]["metrics"] for k in ("off", "told", "svc"))
    assert svc["lat_p99_us"] < 0.85 * told["lat_p99_us"], (told, svc)
    assert svc["iops"] > 1.1 * off["iops"], (off["iops"], svc["iops"])
    assert svc["iops"] > 0.97 * told["iops"], (told["iops"], svc["iops"])
    counters = flash_light["svc"]["kml_stats"]["counters"]
    assert counters["cost_svc_permille"] == 0
    assert flash_light["told"]["kml_stats"]["counters"]["cost_svc_permille"] == 1000


def test_on_flash_under_a_light_load_a_window_keeps_the_fifos_tail(
    flash_light: dict[str, dict[str, Any]],
) -> None:
    """A window of the oldest, one of each direction under 16 in flight:
    no younger request goes to an idle channel before an older one of its
    direction, so the tail is about the FIFO's (none's), shorter than that
    of the 16 oldest as candidates, and the choice between the oldest read
    and the oldest write still buys some throughput over stock's. Measured
    over 4 s, 3 repeats (``workloads/flash-window.yaml``; docs/benchmarks.md,
    "A window on flash"): p99 1,253 us against none's 1,237, 1,384 with the
    16 oldest and stock's 1,417. Here, 2 s: 1,237 against 1,352 and stock's
    1,401; IOPS 27,628 against 31,400 and stock's 26,643."""
    off, svc, window = (flash_light[k]["metrics"] for k in ("off", "svc", "window"))
    assert window["lat_p99_us"] < 0.95 * svc["lat_p99_us"], (svc, window)
    assert window["lat_p99_us"] < 0.95 * off["lat_p99_us"], (off, window)
    assert window["iops"] > 1.02 * off["iops"], (off["iops"], window["iops"])
    assert window["iops"] < svc["iops"], (svc["iops"], window["iops"])
    assert flash_light["window"]["kml_stats"]["counters"]["cost_window_permille"] == 62
    assert flash_light["svc"]["kml_stats"]["counters"]["cost_window_permille"] == 0
