"""Whether ``-accel kvm`` really runs a guest on this host: probe once, cache the verdict.

/dev/kvm existing is not enough: on some hosts KVM guests hang. The probe
boots QEMU with KVM for a moment (a kernel to its ready marker, or a tiny
firmware that writes to the serial port) and caches the verdict per host
boot, QEMU version and method.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kmlbench import procs
from kmlbench.build.image import READY_MARKER
from kmlbench.guest.command import BASE_APPEND, QBOOT, QEMU, qemu_version
from kmlbench.paths import cache_dir


@dataclass(frozen=True)
class KvmProbe:
    """Whether ``-accel kvm`` actually runs a guest on this host, and why (not)."""

    usable: bool
    reason: str
    cached: bool = False


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _serial_probe_firmware() -> bytes:
    """A 64 KiB BIOS whose reset vector prints ``KVMOK`` on COM1 and halts.

    Used when no kernel is given: it proves the CPU enters guest mode and
    returns from it, without needing a kernel build.
    """
    code = bytes([0xBA, 0xF8, 0x03])  # mov dx, 0x3f8
    for char in b"KVMOK\n":
        code += bytes([0xB0, char, 0xEE])  # mov al, char; out dx, al
    code += bytes([0xFA, 0xF4, 0xEB, 0xFD])  # cli; hlt; jmp $-1
    rom = bytearray(b"\xff" * 0x10000)
    rom[0xFF00 : 0xFF00 + len(code)] = code
    rom[0xFFF0:0xFFF3] = bytes([0xE9, 0x0D, 0xFF])  # jmp near 0xff00 (from 0xfff3)
    return bytes(rom)


def probe_kvm(
    timeout_s: float = 30,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cache: Path | None = None,
) -> KvmProbe:
    """Boot briefly with ``-accel kvm`` and see whether the guest gets anywhere.

    /dev/kvm existing is not enough: on some hosts KVM guests hang. With a
    kernel and initrd the probe waits for the guest's ready marker; without
    one it runs a tiny firmware that writes to the serial port. The verdict
    is cached per host boot (``/proc/sys/kernel/random/boot_id``), per QEMU
    version and per method, in ``cache/kvm-probe.json``.
    """
    if not os.path.exists("/dev/kvm"):
        return KvmProbe(False, "/dev/kvm does not exist")
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError as exc:
        return KvmProbe(False, f"/dev/kvm not openable: {exc.strerror}")
    if shutil.which(QEMU) is None:
        return KvmProbe(False, f"{QEMU} not installed")

    method = "firmware"
    if kernel is not None and initrd is not None:
        digest = hashlib.sha256(kernel.read_bytes()).hexdigest()[:12]
        method = f"kernel:{digest}"
    key = f"{_boot_id()}|{qemu_version()}|{method}"
    cache_file = (cache or cache_dir()) / "kvm-probe.json"
    try:
        verdicts = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if key in verdicts:
        hit = verdicts[key]
        return KvmProbe(bool(hit["usable"]), str(hit["reason"]), cached=True)

    probe = _run_kvm_probe(timeout_s, kernel, initrd)
    verdicts = {k: v for k, v in verdicts.items() if k.startswith(_boot_id())}
    verdicts[key] = {"usable": probe.usable, "reason": probe.reason}
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(verdicts, indent=2) + "\n")
    os.replace(tmp, cache_file)
    return probe


def _run_kvm_probe(timeout_s: float, kernel: Path | None, initrd: Path | None) -> KvmProbe:
    with tempfile.TemporaryDirectory(prefix="kmlbench-kvm-") as tmp:
        cmd = [QEMU, "-nodefaults", "-nographic", "-no-reboot", "-accel", "kvm",
               "-cpu", "host", "-m", "256", "-serial", "stdio"]  # fmt: skip
        if kernel is not None and initrd is not None:
            marker = READY_MARKER.encode()
            cmd += ["-kernel", str(kernel), "-initrd", str(initrd),
                    "-append", BASE_APPEND]  # fmt: skip
            if QBOOT.exists():
                cmd += ["-bios", str(QBOOT)]
        else:
            marker = b"KVMOK"
            bios = Path(tmp) / "probe.bin"
            bios.write_bytes(_serial_probe_firmware())
            cmd += ["-bios", str(bios)]
        start = time.monotonic()
        proc = procs.popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            die_with_parent=True,
        )  # fmt: skip
        seen = bytearray()
        found = threading.Event()

        def reader() -> None:
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr,attr-defined]
                seen.extend(chunk)
                if marker in seen:
                    found.set()
                    return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            # Stop early when QEMU dies (e.g. it cannot set the host CPU's MSRs).
            deadline = start + timeout_s
            while not found.wait(0.2) and proc.poll() is None and time.monotonic() < deadline:
                pass
        finally:
            procs.stop(proc, grace_s=0)  # QEMU has no children: stderr is at EOF now
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            thread.join(timeout=2)
        took = time.monotonic() - start
        what = "guest ready marker" if kernel is not None else "firmware serial output"
        if found.is_set():
            return KvmProbe(True, f"KVM guest reached {what} in {took:.1f}s")
        tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
        detail = f" ({tail[0]})" if tail else ""
        if took < timeout_s - 0.5:
            return KvmProbe(False, f"QEMU/KVM exited after {took:.1f}s before {what}{detail}")
        return KvmProbe(False, f"KVM guest did not reach {what} within {timeout_s:g}s{detail}")
