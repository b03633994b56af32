"""The QEMU command line of a guest, built from its :class:`GuestConfig` as data.

No process is started here: :func:`build_command_line` turns a config and a
host port into argv (no default devices, serial console on stdio, SSH
forwarded from 127.0.0.1 only), so that a cell can record exactly what ran
and a test can check it without booting. Networking is QEMU user mode
with ``restrict=on``: no way out of the guest.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kmlbench import procs
from kmlbench.clock import icount_arg, kernel_append, tcg_cpu

QEMU = "qemu-system-x86_64"
QBOOT = Path("/usr/share/qemu/qboot.rom")
BASE_APPEND = "console=ttyS0 panic=-1 printk.time=1 random.trust_cpu=on"


@dataclass(frozen=True)
class QemuPlugin:
    """A TCG plugin QEMU loads (``-plugin PATH,NAME=VALUE,...``), e.g. the instruction counter."""

    path: Path
    args: tuple[tuple[str, str], ...] = ()

    def argument(self) -> str:
        """The ``-plugin`` option's value; QEMU's option syntax doubles a comma in a value."""
        parts = [str(self.path), *(f"{name}={value}" for name, value in self.args)]
        return ",".join(part.replace(",", ",,") for part in parts)


@dataclass
class GuestConfig:
    """How to boot one guest. ``extra_args`` come from :mod:`kmlbench.cell.device`.

    ``firmware`` (not in the original contract) is the ``-bios`` image:
    qboot by default when installed, since it reaches the kernel faster than
    SeaBIOS; ``None`` means QEMU's default SeaBIOS.
    """

    kernel: Path
    initrd: Path
    console_log: Path
    memory_mib: int = 1024
    cpus: int = 2
    accel: str = "tcg"
    extra_args: list[str] = field(default_factory=list)
    append: str = ""
    boot_timeout_s: float = 120
    silence_timeout_s: float = 120
    firmware: Path | None = field(default_factory=lambda: QBOOT if QBOOT.exists() else None)
    # "virtual": -icount shift=N,sleep=off (TCG only, one vCPU); see kmlbench.clock
    clock: str = "realtime"
    icount_shift: int = 0
    # TCG plugins (kmlbench.build.qemu_plugin's instruction counter): TCG only
    plugins: list[QemuPlugin] = field(default_factory=list)
    # TCG's threads: "multi" (one host thread per vCPU) or "single" (one host
    # thread runs every vCPU in turn). A guest that flips a static key while
    # another vCPU runs the patched code needs "single": under QEMU 7.2's
    # multi-threaded TCG a vCPU can trap on text_poke_bp()'s int3 when the
    # kernel no longer expects it ("int3: 0000 [#1]", a panic; how is not
    # pinned down: a translation made while the int3 was in place and
    # kept after the patch is the likely path). Flipping kml_mode under fio
    # on 2 vCPUs did it within the first 400 flips in 5 boots of 5;
    # single-threaded, never in 40,000 (docs/kml-iosched.md, "Cost per
    # request").
    tcg_thread: Literal["multi", "single"] = "multi"


TCG_THREADS = ("multi", "single")


def accel_arg(cfg: GuestConfig) -> str:
    """``-accel``'s value: the accelerator, and TCG's thread model if not the default."""
    if cfg.tcg_thread not in TCG_THREADS:
        choices = ", ".join(TCG_THREADS)
        raise ValueError(f"tcg_thread must be one of {choices}, not {cfg.tcg_thread!r}")
    if cfg.tcg_thread == "multi":
        return cfg.accel
    if cfg.accel != "tcg":
        raise ValueError(f"tcg_thread {cfg.tcg_thread} needs TCG, not {cfg.accel}")
    return f"tcg,thread={cfg.tcg_thread}"


def qemu_version() -> str:
    """``QEMU emulator version X.Y.Z (...)``'s version, or "" if QEMU is missing."""
    try:
        out = procs.run(
            [QEMU, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip()


def build_command_line(cfg: GuestConfig, port: int) -> list[str]:
    """The full QEMU argv: no default devices, serial on stdio, SSH on 127.0.0.1 only."""
    cmd = [QEMU, "-nodefaults", "-nographic", "-no-reboot", "-accel", accel_arg(cfg)]
    if cfg.accel == "tcg":
        cmd += ["-cpu", tcg_cpu(cfg.clock)]
    else:
        cmd += ["-cpu", "host"]
    if cfg.clock == "virtual":
        if cfg.accel != "tcg":
            raise ValueError(f"the virtual clock needs TCG (-icount), not {cfg.accel}")
        cmd += ["-icount", icount_arg(cfg.icount_shift)]
    if cfg.plugins and cfg.accel != "tcg":
        raise ValueError(f"QEMU plugins need TCG, not {cfg.accel}")
    for plugin in cfg.plugins:
        cmd += ["-plugin", plugin.argument()]
    if cfg.firmware is not None:
        cmd += ["-bios", str(cfg.firmware)]
    append = " ".join(a for a in (BASE_APPEND, kernel_append(cfg.clock), cfg.append) if a)
    cmd += [
        "-m", str(cfg.memory_mib),
        "-smp", str(cfg.cpus),
        "-kernel", str(cfg.kernel),
        "-initrd", str(cfg.initrd),
        "-append", append,
        "-serial", "stdio",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
        *cfg.extra_args,
    ]  # fmt: skip
    return cmd
