"""Policy ``cost`` learns no seek from a head it did not see move (issue 13).

Told a disk's geometry, policy ``cost`` learns each seek length's time from
completions, the length being the distance from where the last request it
dispatched ended (``kq->head``). With ``kml_mode`` off KML tracks nothing,
so that sector stays where it was while the device's head moves on. The
first seek measured after ``kml_mode`` is written again was priced as if
from the old sector: in a shared boot, a cell run after an ``off`` cell
once learned a short seek as the longest bucket's, which then priced every
shorter one as short (``kml_dd_seek_predict()``: a seek is worth at most
what any longer one is) for the whole cell, and its order fell below
FIFO's (docs/benchmarks.md, "Policy cost against the kernel's
alternatives"). Since then the first dispatch after a mode write teaches
nothing.

One real guest on the virtual clock, the rotational disk model
(kernel/patches/0003) with one tag, told its geometry; single 4 KiB reads
with ``dd``, each alone in the scheduler, so each dispatch is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from device_guest import ROTATIONAL, VIRTUAL, device_guest
from kmlbench.build.kernel import KernelBuild
from kmlbench.cell import guest_paths
from kmlbench.data import kmlstats
from kmlbench.guest.qemu import Guest
from kmlbench.plan.schema import NULL_BLK_SERVICE_MODELS, device_geometry

pytestmark = pytest.mark.kernel

SCHEDULER = {"name": "mq-deadline", "read_expire": 10_000, "write_expire": 20_000}
DEV = "/dev/nullb0"
IOSCHED = "/sys/block/nullb0/queue/iosched"
SVC = "/sys/kernel/debug/block/nullb0/sched/kml_svc"
ROT = NULL_BLK_SERVICE_MODELS["rotational"]
MIB_SECTORS = 2048
FAR_MIB = 1000  # near the end of the 1 GiB disk: a full-stroke seek from its start


def sh(guest: Guest, cmd: str) -> str:
    result = guest.run(cmd, timeout=120)
    assert result.exit_status == 0, f"{cmd!r}: {result.stdout}{result.stderr}"
    return result.stdout


def read_at(guest: Guest, mib: int) -> None:
    """One 4 KiB direct read at ``mib`` MiB into the disk, alone in the scheduler."""
    sh(guest, f"dd if={DEV} of=/dev/null bs=4k count=1 skip={mib * 256} iflag=direct 2>/dev/null")


def mode(guest: Guest, name: str) -> None:
    sh(guest, f"echo {name} > {IOSCHED}/kml_mode && grep -q '\\[{name}\\]' {IOSCHED}/kml_mode")


def learned(guest: Guest) -> list[dict[str, int]]:
    """The learned seek table's rows (one per bucket of cylinders crossed)."""
    return kmlstats.parse_svc(sh(guest, f"cat {SVC}"))


def cylinders(mib: int) -> int:
    return mib * MIB_SECTORS // ROT["svc_cyl_sectors"]


@pytest.fixture(scope="module")
def disk(
    variant_kernel: Callable[[str], KernelBuild],
    base_image: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Guest]:
    """The disk under mq-deadline, policy cost told the disk's geometry."""
    work = tmp_path_factory.mktemp("seek-head")
    build = variant_kernel("stock")
    with device_guest(
        build.bzimage, work, base_image, ROTATIONAL, SCHEDULER, memory_mib=512, **VIRTUAL
    ) as (guest, dev):
        assert dev == DEV
        for param, value in device_geometry(ROTATIONAL).items():
            sh(guest, f"echo {value} > {guest_paths.KML_PARAMS}/{param}")
        sh(guest, f"echo cost > {guest_paths.KML_PARAMS}/policy")
        yield guest


def test_the_first_seek_after_a_mode_write_teaches_nothing(disk: Guest) -> None:
    """Tracked at the disk's start, then moved to its far end while off:
    after the mode write the next read is a seek of a cylinder or two from
    the far end, which the old sector would call a full stroke. It teaches
    nothing; the read after it, a short seek from a known head, teaches the
    short bucket, and no long one is ever learned."""
    mode(disk, "active")
    read_at(disk, 0)
    read_at(disk, 1)  # a known head: KML's sector and the device's agree
    mode(disk, "off")
    read_at(disk, FAR_MIB)  # the device's head moves; KML's does not
    mode(disk, "active")  # learns afresh: the table is empty
    assert learned(disk) == []
    read_at(disk, FAR_MIB + 1)  # stale: a full stroke from KML's sector
    assert learned(disk) == [], "a seek learned from a head not seen to move"
    read_at(disk, FAR_MIB + 2)  # from a known head: a cylinder and a half, 2 boundaries
    rows = learned(disk)
    assert len(rows) == 1, rows
    assert rows[0]["hi"] < 8, rows  # the bucket of a few cylinders
    # the far end is a full stroke away from the start: that bucket stays unlearned
    assert all(row["hi"] < cylinders(FAR_MIB) // 2 for row in rows), rows


def test_the_first_seek_after_a_policy_switch_teaches_nothing(disk: Guest) -> None:
    """Policy expire does not move policy cost's head: tracked at the disk's
    start under cost, moved to its far end under expire, then cost again
    without a mode write. What cost learned before is forgotten at its first
    dispatch, which teaches nothing (its head is not known); the read after
    it teaches the short bucket, and no long one is ever learned."""
    params = guest_paths.KML_PARAMS
    mode(disk, "active")
    read_at(disk, 0)
    read_at(disk, 1)
    assert learned(disk), "policy cost learned nothing from a known head"
    sh(disk, f"echo expire > {params}/policy")
    read_at(disk, FAR_MIB)  # the device's head moves; cost's does not
    sh(disk, f"echo cost > {params}/policy")
    read_at(disk, FAR_MIB + 1)  # would be a full stroke from cost's old sector
    assert learned(disk) == [], "a seek learned from a head not seen to move"
    read_at(disk, FAR_MIB + 2)
    rows = learned(disk)
    assert len(rows) == 1 and rows[0]["hi"] < 8, rows
    assert all(row["hi"] < cylinders(FAR_MIB) // 2 for row in rows), rows
    # writing the policy it already has is no change: nothing is forgotten
    sh(disk, f"echo cost > {params}/policy")
    read_at(disk, FAR_MIB + 3)
    assert len(learned(disk)) >= 1
