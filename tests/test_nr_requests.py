"""mq-deadline's write throttle follows nr_requests (kernel/patches/0004), in a real guest.

mq-deadline holds writes (and asynchronous requests) to ``async_depth``
scheduler tags, which ``dd_depth_updated()`` sets to ``nr_requests``.
Linux 6.1 called it before storing a new ``nr_requests``, so after the
scheduler's default (twice the hardware queue depth: 2 on the rotational
model) was raised to 64, ``async_depth`` stayed at 2 and writes shared one
tag per sbitmap word: at iodepth 16 fio's writes waited 45-54 ms in
``io_submit`` (their submission latency, ``slat``) and its reads 8 us.

The guest runs on the virtual clock (one vCPU), so the latencies are the
device model's arithmetic and the kernel's instructions, nearly the same
on every host (SSH's interrupts still land when the host sends them): a
queued request costs microseconds, a wait for a tag a disk's service time
(about 20 ms), and the bound sits between them with a wide margin.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_guest import ROTATIONAL, VIRTUAL, device_guest
from kmlbench.guest.qemu import Guest
from test_kml_faults import sh

pytestmark = pytest.mark.kernel

Q = "/sys/block/nullb0/queue"
# 30% writes at iodepth 16: about five writes in flight, more than the four
# tags the stale async_depth left them
FIO = (
    "fio --name=depth --filename=/dev/nullb0 --direct=1 --ioengine=libaio --iodepth=16"
    " --rw=randrw --rwmixread=70 --bs=4k --number_ios=300"
    " --output-format=json"
)


@pytest.fixture(scope="module")
def guest(
    guest_kernel: Path, base_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guest]:
    """The rotational model under mq-deadline, nr_requests raised from 2 to 64 by the harness."""
    work = tmp_path_factory.mktemp("nr-requests")
    scheduler = {"name": "mq-deadline", "nr_requests": 64}
    with device_guest(
        guest_kernel,
        work,
        base_image,
        ROTATIONAL,
        scheduler,
        memory_mib=512,
        **VIRTUAL,
    ) as (g, dev):
        assert dev == "/dev/nullb0"
        yield g


def read(guest: Guest, path: str) -> int:
    return int(sh(guest, f"cat {path}").stdout)


def test_async_depth_follows_nr_requests(guest: Guest) -> None:
    assert read(guest, f"{Q}/nr_requests") == 64
    assert read(guest, f"{Q}/iosched/async_depth") == 64
    for depth in (16, 64):
        sh(guest, f"echo {depth} > {Q}/nr_requests")
        assert read(guest, f"{Q}/iosched/async_depth") == depth


def test_a_refused_depth_changes_nothing(guest: Guest) -> None:
    """Over the scheduler's limit (MAX_SCHED_RQ, 2048): refused, and a
    throttle set by hand stays."""
    sh(guest, f"echo 8 > {Q}/iosched/async_depth")
    try:
        assert guest.run(f"echo 9000 > {Q}/nr_requests", timeout=30).exit_status != 0
        assert read(guest, f"{Q}/nr_requests") == 64
        assert read(guest, f"{Q}/iosched/async_depth") == 8
    finally:
        guest.run(f"echo 64 > {Q}/iosched/async_depth", timeout=30)


def test_writes_do_not_wait_in_io_submit(guest: Guest) -> None:
    assert read(guest, f"{Q}/nr_requests") == read(guest, f"{Q}/iosched/async_depth") == 64
    result = sh(guest, FIO, timeout=600)
    job = json.loads(result.stdout[result.stdout.index("{") :])["jobs"][0]
    slat_us = {d: job[d]["slat_ns"]["mean"] / 1000 for d in ("read", "write")}
    assert job["write"]["total_ios"] >= 50, job["write"]
    assert slat_us["read"] < 1000 and slat_us["write"] < 1000, slat_us
