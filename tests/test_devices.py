"""Block devices and schedulers in a real guest: null_blk via configfs, virtio-blk, fio.

One guest serves the whole module: it boots with ``null_blk.nr_devices=0``
(for configfs) *and* a virtio disk attached, so both device types are
exercised with a single TCG boot.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmlbench.cell import device as devices
from kmlbench.cell.device import (
    DeviceError,
    direct_io_supported,
    disk_info,
    kernel_cmdline,
    qemu_disk_args,
    setup_script,
)
from kmlbench.guest.qemu import Guest
from test_qemu import boot

NULL_BLK = {
    "type": "null_blk",
    "completion_nsec": 50_000,
    "hw_queue_depth": 32,
    "submit_queues": 2,
    "size_mib": 256,
    "irqmode": "timer",
    "blocksize": 512,
}
# Not the defaults: the guest must see what the matrix asked for.
VIRTIO = {"type": "virtio", "size_mib": 64, "cache": "writethrough", "num_queues": 2}
DEADLINE = {
    "name": "mq-deadline",
    "read_expire": 250,
    "write_expire": 2500,
    "fifo_batch": 8,
    "writes_starved": 3,
    "front_merges": 0,
}


def test_kernel_cmdline() -> None:
    assert kernel_cmdline(NULL_BLK) == "null_blk.nr_devices=0"
    assert kernel_cmdline(VIRTIO) == ""
    with pytest.raises(DeviceError):
        kernel_cmdline({"type": "floppy"})


def test_virtio_disk_args(tmp_path: Path) -> None:
    args = qemu_disk_args(VIRTIO, tmp_path)
    image = tmp_path / "disk.img"
    assert image.stat().st_size == 64 << 20
    assert image.stat().st_blocks == 0  # sparse
    drive = args[args.index("-drive") + 1]
    assert "format=raw,if=none,id=d0" in drive and "aio=threads" in drive
    # The matrix's mode and queue count, not a probe's choice.
    assert "cache=writethrough" in drive
    blk = args[args.index("-device") + 1]
    assert blk.startswith("virtio-blk-pci,drive=d0") and blk.endswith(",num-queues=2")
    info = disk_info(tmp_path)
    assert info["cache"] == info["requested_cache"] == "writethrough"
    assert info["num_queues"] == 2 and "note" not in info
    assert qemu_disk_args(NULL_BLK, tmp_path) == []


def test_virtio_throttling_goes_on_the_drive(tmp_path: Path) -> None:
    device = {**VIRTIO, "throttle_iops_read": 200, "throttle_bps_total": 1 << 20,
              "throttle_iops_size": 8192}  # fmt: skip
    args = qemu_disk_args(device, tmp_path)
    drive = args[args.index("-drive") + 1].split(",")
    throttling = [opt for opt in drive if opt.startswith("throttling.")]
    assert throttling == [
        "throttling.iops-read=200",
        "throttling.bps-total=1048576",
        "throttling.iops-size=8192",
    ]
    assert disk_info(tmp_path)["throttling"] == {
        "throttling.iops-read": 200,
        "throttling.bps-total": 1048576,
        "throttling.iops-size": 8192,
    }
    # unthrottled: no option, no record
    plain = tmp_path / "plain"
    assert "throttling." not in qemu_disk_args(VIRTIO, plain)[1]
    assert "throttling" not in disk_info(plain)


@pytest.mark.parametrize("mode", ["none", "directsync", "writethrough", "writeback", "unsafe"])
def test_virtio_cache_mode_is_used(tmp_path: Path, mode: str) -> None:
    args = qemu_disk_args({"type": "virtio", "size_mib": 1, "cache": mode}, tmp_path)
    direct, _ = direct_io_supported(tmp_path)
    expected = (
        mode if direct else {"none": "writeback", "directsync": "writethrough"}.get(mode, mode)
    )
    assert f",cache={expected}," in args[args.index("-drive") + 1]
    assert args[args.index("-device") + 1].endswith(",num-queues=1")
    assert disk_info(tmp_path)["cache"] == expected


@pytest.mark.parametrize(
    ("mode", "fallback"), [("none", "writeback"), ("directsync", "writethrough")]
)
def test_virtio_cache_fallback_without_odirect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, fallback: str
) -> None:
    monkeypatch.setattr(devices, "direct_io_supported", lambda d: (False, f"{d}: refuses"))
    args = qemu_disk_args({"type": "virtio", "size_mib": 1, "cache": mode}, tmp_path)
    assert f",cache={fallback}," in args[args.index("-drive") + 1]
    info = disk_info(tmp_path)
    assert info["cache"] == fallback and info["requested_cache"] == mode
    assert f"cache={mode} unavailable" in info["note"]
    # A mode that does not need O_DIRECT is never replaced.
    args = qemu_disk_args({"type": "virtio", "size_mib": 1, "cache": "unsafe"}, tmp_path)
    assert ",cache=unsafe," in args[args.index("-drive") + 1]
    assert "note" not in disk_info(tmp_path)


def test_virtio_rejects_bad_cache_and_queues(tmp_path: Path) -> None:
    with pytest.raises(DeviceError):
        qemu_disk_args(
            {"type": "virtio", "size_mib": 1, "cache": "none,file=/etc/passwd"}, tmp_path
        )
    with pytest.raises(DeviceError):
        qemu_disk_args({"type": "virtio", "size_mib": 1, "num_queues": 0}, tmp_path)


def test_setup_script_rejects_bad_input() -> None:
    with pytest.raises(DeviceError):
        setup_script({**NULL_BLK, "irqmode": "sometimes"}, DEADLINE)
    with pytest.raises(DeviceError):
        setup_script({**NULL_BLK, "blocksize": 3000}, DEADLINE)
    with pytest.raises(DeviceError):
        setup_script(NULL_BLK, {"name": "mq-deadline; reboot"})
    with pytest.raises(DeviceError):
        setup_script(NULL_BLK, {"name": "mq-deadline", "read_expire": [1]})


@pytest.fixture(scope="module")
def dev_guest(
    guest_kernel: Path,
    base_image: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Guest]:
    # The cell folder lives in the repo's results-like scratch (a real disk
    # filesystem), where cache=none works; /tmp may be tmpfs.
    cell = tmp_path_factory.mktemp("devcell")
    extra = qemu_disk_args(VIRTIO, cell)
    with boot(
        cell, guest_kernel, base_image, extra_args=extra, append=kernel_cmdline(NULL_BLK)
    ) as guest:
        yield guest


def run_setup(guest: Guest, device: dict, scheduler: dict) -> tuple[str, list[str]]:
    result = guest.run(setup_script(device, scheduler), timeout=60)
    assert result.exit_status == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    return lines[-1], lines[:-1]


@pytest.mark.kernel
def test_null_blk_via_configfs(dev_guest: Guest) -> None:
    assert "nullb" not in dev_guest.run("ls /sys/block", timeout=30).stdout
    dev, info = run_setup(dev_guest, NULL_BLK, DEADLINE)
    assert dev == "/dev/nullb0"
    assert any("[mq-deadline]" in line for line in info)
    check = dev_guest.run(
        "cd /sys/kernel/config/nullb/nullb0 && "
        "cat completion_nsec irqmode hw_queue_depth submit_queues size power; "
        "cat /sys/block/nullb0/size; "
        "cd /sys/block/nullb0/queue/iosched && "
        "cat read_expire write_expire fifo_batch writes_starved front_merges",
        timeout=30,
    )
    values = check.stdout.split()
    assert values[:6] == ["50000", "2", "32", "2", "256", "1"]
    block = dev_guest.run(
        "cat /sys/kernel/config/nullb/nullb0/blocksize /sys/block/nullb0/queue/logical_block_size",
        timeout=30,
    )
    assert block.stdout.split() == ["512", "512"]
    assert int(values[6]) * 512 == 256 << 20
    # *_expire are kept in jiffies: 250 ms may read back as 252 ms at HZ=250.
    assert abs(int(values[7]) - 250) <= 10 and abs(int(values[8]) - 2500) <= 10
    assert values[9:] == ["8", "3", "0"]


@pytest.mark.kernel
def test_null_blk_latency_is_real(dev_guest: Guest) -> None:
    """completion_nsec=50 us must show in fio's completion latency."""
    result = dev_guest.run(
        "fio --name=lat --filename=/dev/nullb0 --rw=randread --bs=4k --direct=1 "
        "--ioengine=psync --runtime=2 --time_based --output-format=json",
        timeout=120,
    )
    assert result.exit_status == 0, result.stderr
    data = json.loads(result.stdout[result.stdout.index("{") :])
    clat_ns = data["jobs"][0]["read"]["clat_ns"]["mean"]
    assert clat_ns >= 50_000
    assert data["jobs"][0]["read"]["io_bytes"] > 0


@pytest.mark.kernel
def test_bad_tunable_fails_setup(dev_guest: Guest) -> None:
    result = dev_guest.run(
        setup_script(VIRTIO, {"name": "mq-deadline", "no_such_tunable": 1}), timeout=60
    )
    assert result.exit_status != 0
    assert "no_such_tunable" in result.stderr


@pytest.mark.kernel
def test_virtio_disk_with_scheduler_and_fio(dev_guest: Guest) -> None:
    dev, info = run_setup(dev_guest, VIRTIO, {"name": "kyber"})
    assert dev == "/dev/vda"
    # num_queues reached the guest: one blk-mq hardware context per queue.
    queues = dev_guest.run("ls /sys/block/vda/mq", timeout=30).stdout.split()
    assert sorted(queues) == ["0", "1"]
    assert any("[kyber]" in line for line in info)
    dev, info = run_setup(dev_guest, VIRTIO, DEADLINE)
    assert dev == "/dev/vda"
    assert "[mq-deadline]" in dev_guest.run("cat /sys/block/vda/queue/scheduler", 30).stdout
    assert any("iosched/fifo_batch=8" in line for line in info)
    result = dev_guest.run(
        "fio --name=smoke --filename=/dev/vda --rw=randrw --bs=4k --direct=1 "
        "--ioengine=libaio --iodepth=4 --runtime=2 --time_based --size=32m "
        "--output-format=json",
        timeout=120,
    )
    assert result.exit_status == 0, result.stderr
    data = json.loads(result.stdout[result.stdout.index("{") :])
    job = data["jobs"][0]
    assert job["error"] == 0
    assert job["read"]["total_ios"] > 0 and job["write"]["total_ios"] > 0
