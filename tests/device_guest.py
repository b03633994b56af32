"""A real guest with a block device and its scheduler set up: what KML's guest tests boot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kmlbench.build.image import make_guest_initrd
from kmlbench.cell import device
from kmlbench.guest.command import GuestConfig
from kmlbench.guest.qemu import Guest
from kmlbench.guest.ssh import SSHKeys

# The rotational disk (kernel/patches/0003) with one tag: the scheduler's
# order is the order the head moves in.
ROTATIONAL: dict[str, Any] = {
    "type": "null_blk",
    "irqmode": "timer",
    "service": "rotational",
    "hw_queue_depth": 1,
    "submit_queues": 1,
    "size_mib": 1024,
}
# A slow null_blk (200 us timer completions, two hardware slots): requests
# wait in the scheduler, so KML predicts and orders them.
SLOW_NULL_BLK: dict[str, Any] = {
    "type": "null_blk",
    "irqmode": "timer",
    "completion_nsec": 200_000,
    "hw_queue_depth": 2,
    "submit_queues": 1,
    "size_mib": 64,
}
# device_guest()'s other fields for a guest on the virtual clock: one vCPU
# (kmlbench.clock.VIRTUAL_CPUS_REASON) and the slower boot of a TCG guest
# counting instructions.
VIRTUAL: dict[str, Any] = {
    "cpus": 1,
    "clock": "virtual",
    "boot_timeout_s": 300,
    "silence_timeout_s": 300,
}


@contextlib.contextmanager
def device_guest(
    kernel: Path,
    work: Path,
    base_image: Path,
    dev: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    *,
    append: str = "",
    **cfg: Any,
) -> Iterator[tuple[Guest, str]]:
    """Boot ``kernel`` (per-run SSH keys and console log in ``work``), set up
    ``dev`` under ``scheduler``; yields the guest and the device's path.
    ``cfg``: the other :class:`GuestConfig` fields (memory, clock, ...)."""
    keys = SSHKeys.generate(work / "keys")
    initrd = make_guest_initrd(base_image, work, keys.authorized_key, keys.host_key)
    config = GuestConfig(
        kernel=kernel,
        initrd=initrd,
        console_log=work / "console.log",
        append=" ".join(a for a in (device.kernel_cmdline(dev), append) if a),
        **cfg,
    )
    with Guest(config, keys) as guest:
        setup = guest.run(device.setup_script(dev, scheduler), timeout=120)
        assert setup.exit_status == 0, setup.stdout + setup.stderr
        yield guest, setup.stdout.strip().splitlines()[-1]
