"""cell/: one vocabulary with the matrix, and one way from a device name to its sysfs paths."""

from __future__ import annotations

import re

import pytest

from kmlbench.cell import device, kml_reset, model
from kmlbench.cell.guest_paths import BlockDevice, DeviceError, block_device
from kmlbench.plan import schema
from kmlbench.plan.schema import DEVICE_TYPES, MODEL_FIELDS


def _choices(check: object) -> tuple[str, ...]:
    """The values a matrix Field check accepts, from what it says of a bad one."""
    assert callable(check)
    message = check(-12345 if check(4096) is None else "\x00")
    found = re.fullmatch(r"must be one of (.*), got .*", message)
    assert found, message
    return tuple(found.group(1).split(", "))


@pytest.mark.parametrize(
    ("constant", "check"),
    [
        (schema.NULL_BLK_IRQMODES, DEVICE_TYPES["null_blk"]["irqmode"].check),
        (tuple(map(str, schema.NULL_BLK_BLOCKSIZES)), DEVICE_TYPES["null_blk"]["blocksize"].check),
        (schema.VIRTIO_CACHE_MODES, DEVICE_TYPES["virtio"]["cache"].check),
        (schema.RING_MODES, MODEL_FIELDS["ring_mode"].check),
        (schema.SAMPLE_FILTERS, MODEL_FIELDS["sample_filter"].check),
        (schema.TRAINERS, MODEL_FIELDS["trainer"].check),
        (schema.MODEL_MODES, MODEL_FIELDS["mode"].check),
    ],
)
def test_the_named_choices_are_the_ones_the_matrix_checks(constant: tuple, check: object) -> None:
    assert _choices(check) == tuple(constant)


def test_cell_takes_its_vocabulary_from_the_matrix() -> None:
    assert device.IRQ_MODES == {"none": 0, "softirq": 1, "timer": 2}  # null_blk's numbers
    assert device.NULL_BLK_DEFAULTS == {
        "completion_nsec": 10_000, "hw_queue_depth": 64, "submit_queues": 1,
        "size_mib": 1024, "irqmode": "timer", "blocksize": 4096,
    }  # fmt: skip
    assert device.VIRTIO_DEFAULTS == {"size_mib": 1024, "cache": "none", "num_queues": 1}
    assert device.QUEUE_ATTRS == {"nr_requests"} == set(schema.QUEUE_FIELDS)
    assert model.KML_MODES == ("observe", "active")
    assert schema.TRAINERS[0] == MODEL_FIELDS["trainer"].default == "none"


# --- block devices: /dev/nullb0 and nullb0 are one device, with one sysfs path ---------


@pytest.mark.parametrize("text", ["/dev/nullb0", "nullb0"])
def test_a_device_node_and_its_name_are_the_same_device(text: str) -> None:
    dev = block_device(text)
    assert dev == BlockDevice("nullb0")
    assert dev.dev == "/dev/nullb0"
    assert dev.sysfs == "/sys/block/nullb0"
    assert dev.iosched == "/sys/block/nullb0/queue/iosched"


@pytest.mark.parametrize(
    "text",
    ["", "/dev/", "/sys/block/nullb0", "/dev/block/nullb0", "dev/nullb0", "..", ".", "../sda",
     "/dev/..", "nullb0 ", "/dev/null b0; rm", "nullb0\n", "$dev", "nullb0/queue"],
)  # fmt: skip
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(DeviceError, match="bad block device"):
        block_device(text)
    with pytest.raises(DeviceError, match="bad block device"):
        BlockDevice(text.removeprefix("/dev/") or "/")


def test_every_kml_script_derives_sysfs_paths_from_the_name() -> None:
    # what once went wrong: a reset handed /dev/nullb0 wrote /sys/block//dev/nullb0/...,
    # found no kml_mode there, and the next "off" cell ran with the hooks on
    for text in ("/dev/nullb0", "nullb0"):
        dev = block_device(text)
        reset = kml_reset.kml_reset_script(dev)
        assert "if [ -e /sys/block/nullb0/queue/iosched/kml_mode ]; then" in reset
        setup = model.kml_setup_script({"mode": "observe"}, dev, trainer_seconds=1)
        assert 'q="/sys/block/nullb0/queue/iosched"' in setup
        for script in (reset, setup):
            assert "/dev/" not in script.replace("/dev/null", "")
    assert kml_reset.kml_reset_script(block_device("/dev/vda")) != kml_reset.kml_reset_script(
        block_device("nullb0")
    )
