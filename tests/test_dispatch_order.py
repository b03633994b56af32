"""``off`` is stock mq-deadline: the same dispatch order as a kernel without KML (issue 13).

Two real guests on the virtual clock, one per kernel: the stock KML kernel
with ``kml_mode`` off, and the same sources built without KML's hooks
(``kernel/configs/no-kml-iosched.config``, the ``nokml`` variant). Each
runs the same fio job on the rotational device model (null_blk, one
hardware slot, so the device serves requests one at a time in the order
mq-deadline dispatches them, and fio's completion log is that order).

The job submits its requests in batches of :data:`BATCH` I/Os (one
``io_submit`` under one block plug) and waits for a whole batch before the
next. The plug hands the scheduler its requests in flushes of at most 32
(a large I/O may split into several requests): the first dispatch of a
flush happens at once, every later one at a completion, milliseconds
later, when the whole batch has long been inserted. Where the splits and
flushes fall depends on the sizes alone, so each dispatch chooses among
the same requests on both kernels, whatever the few instructions KML's
tests of the mode add to the timing: the order is the scheduler's
algorithm's, and fio's random offsets repeat (``randrepeat``). No request
comes near an expiry (the expiries are set far beyond a batch's time),
which would make the order depend on time.

The comparison can fail: on the KML kernel, active mode with policy
``cost`` (no model needed) must give another order, and the stock order
must be mq-deadline's (ascending sector runs), not fio's submission order.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device_guest import ROTATIONAL, VIRTUAL, device_guest
from kmlbench.build.kernel import KernelBuild
from kmlbench.cell import guest_paths
from kmlbench.guest.qemu import Guest

pytestmark = pytest.mark.kernel

DEVICE = ROTATIONAL
# Expiries far beyond a batch's time on this disk (a batch of 32 random
# requests takes up to a second), so that no order depends on time; stock
# fifo_batch and writes_starved; enough scheduler requests for a batch.
SCHEDULER = {
    "name": "mq-deadline",
    "read_expire": 10_000,
    "write_expire": 20_000,
    "nr_requests": 64,
}
DEV = "/dev/nullb0"
IOSCHED = "/sys/block/nullb0/queue/iosched"
BATCH = 32  # the block plug flushes at 32 requests (BLK_MAX_REQUEST_COUNT)
BATCHES = 24
LOG = "/tmp/order"
FIO = (
    f"fio --name=order --filename={DEV} --direct=1 --ioengine=libaio"
    " --rw=randrw --rwmixread=70 --bssplit=4k/60:64k/30:256k/10 --size=1024M"
    f" --iodepth={BATCH} --iodepth_batch_submit={BATCH}"
    f" --iodepth_batch_complete_min={BATCH} --number_ios={BATCH * BATCHES}"
    f" --randrepeat=1 --write_lat_log={LOG} --log_offset=1 --output-format=terse"
)
# Far below the read expiry: no request's order depends on time.
MAX_CLAT_MS = 5_000


Order = list[tuple[int, int, int]]  # (direction, offset, size) in completion order


@contextlib.contextmanager
def _booted(build: KernelBuild, work: Path, base_image: Path) -> Iterator[Guest]:
    """A guest of ``build`` on the virtual clock, the device and mq-deadline set up."""
    with device_guest(
        build.bzimage,
        work,
        base_image,
        DEVICE,
        SCHEDULER,
        memory_mib=512,
        **VIRTUAL,
    ) as (guest, dev):
        assert dev == DEV
        yield guest


def _order(guest: Guest) -> Order:
    """Run the job: the requests in the order the device completed them."""
    ran = guest.run(f"rm -f {LOG}_*; {FIO}", timeout=600)
    assert ran.exit_status == 0, ran.stdout + ran.stderr
    text = guest.run(f"cat {LOG}_clat.1.log", timeout=60)
    assert text.exit_status == 0, text.stderr
    order: Order = []
    slowest_ns = 0
    for line in text.stdout.splitlines():
        # fio 3.33: msec, clat ns, direction, size, offset[, priority]
        fields = [f.strip() for f in line.split(",")]
        slowest_ns = max(slowest_ns, int(fields[1]))
        order.append((int(fields[2]), int(fields[4]), int(fields[3])))
    assert len(order) == BATCH * BATCHES, (len(order), text.stdout[-500:])
    assert slowest_ns < MAX_CLAT_MS * 1_000_000, f"a request took {slowest_ns / 1e6:.0f} ms"
    return order


@pytest.fixture(scope="module")
def orders(
    variant_kernel: Callable[[str], KernelBuild],
    base_image: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Order]]:
    """The order on each kernel: ``off`` and ``cost`` (KML kernel), ``nokml``."""
    stock = variant_kernel("stock")  # first: the nokml build starts from its objects
    nokml = variant_kernel("nokml")
    result: dict[str, Order] = {}
    with _booted(nokml, tmp_path_factory.mktemp("order-nokml"), base_image) as guest:
        assert guest.run(f"test -e {IOSCHED}/kml_mode", timeout=30).exit_status != 0
        result["nokml"] = _order(guest)
    with _booted(stock, tmp_path_factory.mktemp("order-kml"), base_image) as guest:
        setmode = f"echo {{}} > {IOSCHED}/kml_mode && cat {IOSCHED}/kml_mode"
        mode = guest.run(setmode.format("off"), timeout=30).stdout.strip()
        assert mode == "[off] observe active"
        result["off"] = _order(guest)
        policy = f"echo cost > {guest_paths.KML_PARAMS}/policy"
        assert guest.run(policy, timeout=30).exit_status == 0
        mode = guest.run(setmode.format("active"), timeout=30).stdout.strip()
        assert mode == "off observe [active]"
        result["cost"] = _order(guest)
    yield result


def _first_difference(a: Order, b: Order) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return f"request {i} (batch {i // BATCH}): {x} against {y}"
    return "none"


def test_off_dispatches_as_a_kernel_without_kml(orders: dict[str, Order]) -> None:
    assert orders["off"] == orders["nokml"], _first_difference(orders["off"], orders["nokml"])


def test_the_same_requests_in_every_mode(orders: dict[str, Order]) -> None:
    # fio's offsets repeat: each batch holds the same requests whatever their order
    for name in ("off", "cost"):
        for b in range(BATCHES):
            batch = slice(b * BATCH, (b + 1) * BATCH)
            assert sorted(orders[name][batch]) == sorted(orders["nokml"][batch]), (name, b)


def test_the_comparison_sees_another_order(orders: dict[str, Order]) -> None:
    # policy cost picks by seek cost and age: another order of the same requests
    moved = sum(x != y for x, y in zip(orders["cost"], orders["nokml"], strict=True))
    assert moved > BATCH, f"policy cost moved only {moved} of {len(orders['cost'])}"


def test_the_stock_order_is_mq_deadlines(orders: dict[str, Order]) -> None:
    # mq-deadline dispatches in ascending sector order within a direction and
    # a batch: most consecutive same-direction pairs ascend (random: half)
    order = orders["nokml"]
    pairs = [(a, b) for a, b in itertools.pairwise(order) if a[0] == b[0]]
    ascending = sum(b[1] > a[1] for a, b in pairs)
    assert ascending > 0.8 * len(pairs), (ascending, len(pairs))
