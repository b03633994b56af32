"""``kmlbench doctor``: can this host run the benchmark, and how fast?

Answers the questions a first run would otherwise answer by failing half way:
is QEMU there, which fio goes into the guest, is there a kernel source
tarball and a toolchain, how many CPUs and how much memory, and whether KVM
actually runs a guest here (``/dev/kvm`` existing is not enough: on some
hosts KVM guests hang, so we probe, with a deadline, and cache the verdict
per host boot). Missing essentials exit 1; KVM being unusable is only a
warning, since the harness falls back to TCG.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kmlbench import procs
from kmlbench.build.image import build_base_image
from kmlbench.guest.command import QBOOT, qemu_version
from kmlbench.guest.kvm import probe_kvm
from kmlbench.paths import DEBIAN_KERNEL_TARBALL, cache_dir

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # OK, WARN or FAIL
    detail: str


def _version(cmd: list[str]) -> str:
    try:
        out = procs.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def _meminfo() -> dict[str, int]:
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            match = re.match(r"(\w+):\s+(\d+) kB", line)
            if match:
                info[match.group(1)] = int(match.group(2)) // 1024
    except OSError:
        pass
    return info


def _guest_fio(cache: Path) -> Check:
    builds = sorted((cache / "fio").glob("*/fio"), key=lambda p: p.stat().st_mtime)
    if not builds:
        return Check("guest fio", WARN, "static fio not built yet (first run builds it, ~30 s)")
    version = _version([str(builds[-1]), "--version"]) or "?"
    return Check("guest fio", OK, f"{version} static, {builds[-1]}")


def _tool(name: str, why: str, required: bool = True) -> Check:
    path = shutil.which(name)
    if path:
        return Check(name, OK, path)
    return Check(name, FAIL if required else WARN, f"missing ({why})")


def run_checks(kvm_timeout_s: float, probe: bool, kernel: Path | None) -> list[Check]:
    cache = cache_dir()
    checks: list[Check] = []
    qemu = qemu_version()
    checks.append(Check("QEMU", OK if qemu else FAIL, qemu or "qemu-system-x86_64 missing"))
    checks.append(
        Check("qboot firmware", OK if QBOOT.exists() else WARN,
              str(QBOOT) if QBOOT.exists() else "missing: SeaBIOS is used (slower boot)")
    )  # fmt: skip
    host_fio = _version(["fio", "--version"])
    checks.append(Check("host fio", OK if host_fio else WARN, host_fio or "not installed"))
    checks.append(_guest_fio(cache))
    cpus = os.cpu_count() or 0
    checks.append(Check("CPUs", OK if cpus >= 2 else WARN, str(cpus)))
    mem = _meminfo()
    total, avail = mem.get("MemTotal", 0), mem.get("MemAvailable", 0)
    checks.append(
        Check("memory", OK if avail >= 2048 else WARN, f"{total} MiB total, {avail} MiB available")
    )
    kvm_dev = os.path.exists("/dev/kvm")
    checks.append(Check("/dev/kvm", OK if kvm_dev else WARN, "present" if kvm_dev else "absent"))
    if probe and kvm_dev:
        initrd = None
        if kernel is not None:
            initrd = build_base_image(cache)
        verdict = probe_kvm(kvm_timeout_s, kernel=kernel, initrd=initrd, cache=cache)
        cached = " (cached for this host boot)" if verdict.cached else ""
        fallback = "" if verdict.usable else "; using TCG"
        state = OK if verdict.usable else WARN
        checks.append(Check("KVM usable", state, verdict.reason + cached + fallback))
    tarball = DEBIAN_KERNEL_TARBALL
    if tarball.exists():
        checks.append(Check("kernel source", OK, str(tarball)))
    else:
        checks.append(Check("kernel source", FAIL, f"{tarball} missing (linux-source-6.1)"))
    for name, why, required in (
        ("gcc", "build-essential", True),
        ("make", "build-essential", True),
        ("flex", "kernel build", True),
        ("bison", "kernel build", True),
        ("bc", "kernel build", True),
        ("lz4", "kernel build (LZ4-compressed bzImage)", True),
        ("dpkg-source", "dpkg-dev: fio source", True),
        ("cpio", "cpio: tests only", False),
    ):
        checks.append(_tool(name, why, required))
    for path, why in (
        ("/bin/busybox", "busybox-static"),
        ("/usr/sbin/dropbear", "dropbear-bin"),
        ("/usr/bin/dropbearkey", "dropbear-bin"),
    ):
        exists = Path(path).exists()
        checks.append(Check(Path(path).name, OK if exists else FAIL,
                            path if exists else f"missing (apt-get install {why})"))  # fmt: skip
    return checks


def command(args: argparse.Namespace) -> int:
    """``kmlbench doctor``: print the checks; 1 when an essential one failed."""
    checks = run_checks(args.kvm_timeout, not args.no_kvm_probe, args.kernel)
    table = Table(title="kmlbench doctor")
    table.add_column("check")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    style = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    for check in checks:
        table.add_row(check.name, f"[{style[check.state]}]{check.state}[/]", check.detail)
    Console().print(table)
    return 1 if any(check.state == FAIL for check in checks) else 0
