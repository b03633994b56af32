"""null_blk's service-time models (kernel/patches/0003), in a real guest.

The guest runs on the virtual clock (QEMU ``-icount shift=0,sleep=off``,
one vCPU): guest time is instructions and the model's own timers, so the
latencies below are the model's arithmetic plus a few microseconds of
kernel and fio, the same on every host. The bounds are therefore exact
enough to be tight. The devices are set up by the harness's own guest
script (:func:`kmlbench.cell.device.setup_script`), as a cell would.

- rotational (HP 97560, Ruemmler and Wilkes 1994): a sequential 4 KiB read
  is a transfer (8 sectors of 72 per 15.0 ms revolution: 1.67 ms); a random
  one over 1 GiB adds a seek (about 12 ms) and half a revolution on
  average; random reads within one cylinder skip the seek.
- flash (Agrawal et al. 2008): a 4 KiB read takes 125 us, a write 300 us,
  and a read waits behind a write on its channel but not on another.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmlbench.cell.device import kernel_cmdline, setup_script
from kmlbench.guest.qemu import Guest
from kmlbench.plan.schema import NULL_BLK_SERVICE_MODELS
from test_qemu import boot

pytestmark = pytest.mark.kernel

BASE = {"type": "null_blk", "irqmode": "timer", "submit_queues": 1, "size_mib": 1024}
ROTATIONAL = {**BASE, "service": "rotational", "hw_queue_depth": 1}
FLASH = {**BASE, "service": "flash", "hw_queue_depth": 8}
REMOVE = "nb=/sys/kernel/config/nullb/nullb0; if [ -d $nb ]; then echo 0 > $nb/power; rmdir $nb; fi"
FIO = "fio --filename=/dev/nullb0 --direct=1 --ioengine=psync --bs=4k --output-format=json"

ROT = NULL_BLK_SERVICE_MODELS["rotational"]
SECTOR_NS = ROT["svc_rev_ns"] / ROT["svc_track_sectors"]
FL = NULL_BLK_SERVICE_MODELS["flash"]


@pytest.fixture(scope="module")
def vguest(
    guest_kernel: Path, base_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guest]:
    work = tmp_path_factory.mktemp("service-models")
    with boot(
        work,
        guest_kernel,
        base_image,
        append=kernel_cmdline(BASE),
        clock="virtual",
        icount_shift=0,
        cpus=1,
        boot_timeout_s=300,
        silence_timeout_s=300,
    ) as guest:
        yield guest


def device(guest: Guest, spec: dict[str, Any]) -> None:
    """A fresh nullb0 of ``spec`` under ``none`` (the device sees fio's order)."""
    assert guest.run(REMOVE, timeout=60).exit_status == 0
    result = guest.run(setup_script(spec, {"name": "none"}), timeout=60)
    assert result.exit_status == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "/dev/nullb0"


def fio(guest: Guest, args: str) -> dict[str, dict[str, Any]]:
    """fio's jobs by name: mean completion latency (us) and I/Os, per direction."""
    result = guest.run(f"{FIO} {args}", timeout=600)
    assert result.exit_status == 0, result.stderr
    data = json.loads(result.stdout[result.stdout.index("{") :])
    out = {}
    for job in data["jobs"]:
        out[job["jobname"]] = {
            d: {"us": job[d]["clat_ns"]["mean"] / 1000, "ios": job[d]["total_ios"]}
            for d in ("read", "write")
        }
    return out


def test_the_configfs_values_are_the_models(vguest: Guest) -> None:
    device(vguest, ROTATIONAL)
    for attr, value in ROT.items():
        got = vguest.run(f"cat /sys/kernel/config/nullb/nullb0/{attr}", timeout=30).stdout
        assert got.strip() == str(value), attr


def test_rotational_sequential_random_and_within_a_cylinder(vguest: Guest) -> None:
    device(vguest, ROTATIONAL)
    transfer_us = 8 * SECTOR_NS / 1000  # 1.67 ms
    seq = fio(vguest, "--name=seq --rw=read --size=2m")["seq"]["read"]
    assert seq["ios"] == 512
    assert transfer_us <= seq["us"] <= transfer_us + 100, seq
    rnd = fio(vguest, "--name=rnd --rw=randread --number_ios=150 --randseed=7")["rnd"]["read"]
    # seeks of 0-1533 cylinders (8-20 ms), half a revolution on average
    assert 14_000 <= rnd["us"] <= 28_000, rnd
    # within one cylinder (684 KiB): no seek, rotation and transfer only
    cyl = fio(vguest, "--name=cyl --rw=randread --size=640k --number_ios=150 --randseed=7")
    near = cyl["cyl"]["read"]
    rev_us = ROT["svc_rev_ns"] / 1000
    assert transfer_us <= near["us"] <= rev_us + transfer_us, near
    assert near["us"] < 0.7 * rnd["us"] and rnd["us"] > 8 * seq["us"]
    print(f"rotational 4k reads, mean us: sequential {seq['us']:.0f}, random {rnd['us']:.0f},"
          f" within a cylinder {near['us']:.0f}")  # fmt: skip


def test_flash_reads_writes_and_a_read_behind_a_write(vguest: Guest) -> None:
    device(vguest, FLASH)
    read_us = (FL["svc_read_ns"] + 4 * FL["svc_xfer_ns_kib"]) / 1000  # 125
    write_us = (FL["svc_write_ns"] + 4 * FL["svc_xfer_ns_kib"]) / 1000  # 300
    alone = fio(vguest, "--name=r --rw=randread --number_ios=300 --name=w --rw=randwrite "
                "--number_ios=300 --stonewall")  # fmt: skip
    assert read_us <= alone["r"]["read"]["us"] <= read_us + 40, alone
    assert write_us <= alone["w"]["write"]["us"] <= write_us + 40, alone
    # one writer on channel 0; readers on channel 0 (32 KiB on) and channel 1
    stripe = FL["svc_stripe_sectors"] * 512
    width = stripe * FL["svc_channels"]
    both = fio(
        vguest,
        "--time_based --runtime=1 --size=4k"
        " --name=writer --rw=write --offset=0"
        f" --name=same --rw=read --offset={width}"
        f" --name=other --rw=read --offset={stripe}",
    )
    same, other = both["same"]["read"], both["other"]["read"]
    assert same["ios"] > 100 and other["ios"] > 100, both
    assert read_us <= other["us"] <= read_us + 40, both
    # a read that arrives during a write waits for the rest of it
    assert same["us"] >= other["us"] + 60, both
    print(f"flash 4k, mean us: read {alone['r']['read']['us']:.0f},"
          f" write {alone['w']['write']['us']:.0f}; under a writer: read on its channel"
          f" {same['us']:.0f}, on another {other['us']:.0f}")  # fmt: skip
