"""What a run records about the machine it runs on, and which accelerator its guests get.

The harness's git revision and the host's CPU, cores and kernel go into
every run's manifest; :func:`choose_accel` turns ``--accel auto|kvm|tcg``
and the matrix's clock into the accelerator the guests use, and why.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from kmlbench import paths, procs
from kmlbench.clock import KVM_REFUSED
from kmlbench.guest import kvm


def git_revision() -> str:
    """The harness's git sha, with ``-dirty`` when the tree has local changes."""
    try:
        sha = procs.run(
            ["git", "-C", str(paths.REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = procs.run(
            ["git", "-C", str(paths.REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else str(sha)


def host_description() -> dict[str, Any]:
    """The host facts a reader needs to judge the figures: CPU, cores, kernel."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def choose_accel(
    requested: str, kernel: Path, initrd: Path, clock: str = "realtime"
) -> tuple[str, str]:
    """Resolve ``auto``/``kvm``/``tcg`` into the accelerator and the reason.

    ``/dev/kvm`` opening is not enough: on nested hosts a KVM guest can hang
    in the firmware or the kernel, so ``auto`` trusts only a probe that boots
    the very kernel and image the cells will use. The virtual clock counts
    instructions, which only TCG can do.
    """
    if clock == "virtual":
        if requested == "kvm":
            raise SystemExit(f"kmlbench: {KVM_REFUSED}")
        return "tcg", "guest.clock virtual (-icount needs TCG)"
    if requested == "tcg":
        return "tcg", "requested"
    probe = kvm.probe_kvm(kernel=kernel, initrd=initrd, cache=paths.cache_dir())
    if probe.usable:
        return "kvm", probe.reason
    if requested == "kvm":
        raise SystemExit(f"kmlbench: --accel kvm requested but KVM is not usable: {probe.reason}")
    return "tcg", f"KVM not usable ({probe.reason}); using TCG"


def other_accel(run_id: str, began: str, accel: str, why: str) -> int:
    """Refuse a session under another accelerator than the run's (exit
    status 2): one run, one accelerator, as report and compare read the
    manifest's."""
    print(
        f"kmlbench: cannot resume: run {run_id} ran its cells under {began}, "
        f"this session would run under {accel} ({why}); "
        f"--accel {began} goes on as it began, or start a new run"
    )
    return 2
