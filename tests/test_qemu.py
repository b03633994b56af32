"""Boot real guests: SSH, commands, files, watchdogs, and no QEMU left behind.

The guest kernel comes from the ``guest_kernel`` fixture in conftest.py: the
repository's kernel, built (or found in the cache) by the real pipeline.
Boots are TCG and cost a few seconds each: tests that can share one guest do.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from kmlbench.build.image import make_guest_initrd
from kmlbench.guest.command import GuestConfig, build_command_line, qemu_version
from kmlbench.guest.kvm import probe_kvm
from kmlbench.guest.qemu import Guest, GuestError
from kmlbench.guest.ssh import GuestSSH, SSHError, SSHKeys
from kmlbench.paths import REPO_ROOT


@contextmanager
def boot(
    workdir: Path,
    kernel: Path,
    base: Path,
    **overrides: object,
) -> Iterator[Guest]:
    """Boot a guest with fresh per-run keys in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    keys = SSHKeys.generate(workdir / "keys")
    initrd = make_guest_initrd(base, workdir, keys.authorized_key, keys.host_key)
    cfg = GuestConfig(
        kernel=kernel,
        initrd=initrd,
        console_log=workdir / "console.log",
        memory_mib=512,
        boot_timeout_s=90,
        silence_timeout_s=60,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    with Guest(cfg, keys) as guest:
        yield guest


def assert_gone(guest: Guest) -> None:
    """QEMU has exited and nothing is left in its process group."""
    assert guest.proc is not None
    assert guest.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(guest.proc.pid, 0)


@pytest.fixture(scope="module")
def guest(
    guest_kernel: Path, base_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guest]:
    with boot(tmp_path_factory.mktemp("shared"), guest_kernel, base_image) as shared:
        yield shared
    assert_gone(shared)


def test_qemu_version() -> None:
    assert qemu_version()[0].isdigit()


def test_command_line_is_locked_down(tmp_path: Path) -> None:
    cfg = GuestConfig(kernel=tmp_path / "k", initrd=tmp_path / "i", console_log=tmp_path / "c")
    cmd = build_command_line(cfg, 4242)
    joined = " ".join(cmd)
    assert "-nodefaults" in cmd and "-no-reboot" in cmd
    assert "restrict=on" in joined
    assert "hostfwd=tcp:127.0.0.1:4242-:22" in joined
    assert "console=ttyS0 panic=-1" in joined


def test_tcg_thread_model_reaches_accel(tmp_path: Path) -> None:
    files = {"kernel": tmp_path / "k", "initrd": tmp_path / "i", "console_log": tmp_path / "c"}

    def accel(**cfg: object) -> str:
        cmd = build_command_line(GuestConfig(**files, **cfg), 4242)  # type: ignore[arg-type]
        return cmd[cmd.index("-accel") + 1]

    assert accel() == "tcg"  # QEMU's default: a thread per vCPU
    assert accel(tcg_thread="single") == "tcg,thread=single"
    with pytest.raises(ValueError, match="tcg_thread single needs TCG, not kvm"):
        accel(accel="kvm", tcg_thread="single")
    with pytest.raises(ValueError, match="tcg_thread must be one of multi, single, not 'one'"):
        accel(tcg_thread="one")


def test_child_setup_does_not_dlopen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between fork and exec only the pre-resolved prctl runs (no dlopen, no locks).

    QEMU is started through ``procs.popen(..., die_with_parent=True)``.
    """
    from kmlbench import procs

    def no_dlopen(*args: object, **kwargs: object) -> None:
        raise RuntimeError("dlopen in the forked child")

    monkeypatch.setattr(procs.ctypes, "CDLL", no_dlopen)
    probe = (
        "import ctypes; v = ctypes.c_int(); "
        "ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)"  # PR_GET_PDEATHSIG
    )
    out = procs.run(
        [sys.executable, "-c", probe],
        capture_output=True, text=True, check=True, die_with_parent=True,
    )  # fmt: skip
    assert out.stdout.strip() == str(int(signal.SIGKILL))
    plain = procs.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert plain.stdout.strip() == "0"


@pytest.mark.kernel
def test_port_clash_is_retried(
    guest_kernel: Path, base_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the port free_port() picked: the next port is used."""
    from kmlbench.guest import qemu

    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy = taken.getsockname()[1]
    ports = iter([busy])
    real_free_port = qemu.free_port
    monkeypatch.setattr(qemu, "free_port", lambda: next(ports, None) or real_free_port())
    procs: list[subprocess.Popen[bytes]] = []
    real_spawn = Guest._spawn

    def spawn(self: Guest) -> None:
        real_spawn(self)
        assert self.proc is not None
        procs.append(self.proc)

    monkeypatch.setattr(Guest, "_spawn", spawn)
    try:
        start = time.monotonic()
        with boot(tmp_path, guest_kernel, base_image) as g:
            assert g.port != busy
            assert g.run("echo up", timeout=30).stdout.strip() == "up"
            assert g.boot_seconds < 90 and time.monotonic() - start < 90
    finally:
        taken.close()
    assert len(procs) == 2
    first = procs[0]
    assert first.returncode not in (None, 0)
    # The dead attempt's pipes are closed, not leaked.
    assert first.stdout is not None and first.stdout.closed
    assert first.stderr is not None and first.stderr.closed


@pytest.mark.kernel
def test_boot_run_put(guest: Guest) -> None:
    assert 0 < guest.boot_seconds < 90
    assert guest.command_line[0] == "qemu-system-x86_64"
    result = guest.run("uname -s; id -u; echo oops-not-really >&2; exit 3", timeout=30)
    assert result.exit_status == 3
    assert result.stdout.split() == ["Linux", "0"]
    assert "oops-not-really" in result.stderr
    payload = bytes(range(256)) * 64
    guest.put("/tmp/payload", payload, mode=0o600)
    check = guest.run("stat -c %a /tmp/payload; md5sum < /tmp/payload", timeout=30)
    import hashlib

    mode, digest = check.stdout.split()[:2]
    assert mode == "600"
    assert digest == hashlib.md5(payload).hexdigest()


@pytest.mark.kernel
def test_guest_has_tools(guest: Guest) -> None:
    result = guest.run(
        "fio --version; ls -d /sys/kernel/config /sys/kernel/debug/block; "
        "cat /sys/block/*/queue/scheduler | head -1; grep -c . /proc/mounts",
        timeout=30,
    )
    assert result.exit_status == 0, result.stderr
    assert result.stdout.startswith("fio-3.")
    assert "/sys/kernel/config" in result.stdout


@pytest.mark.kernel
def test_console_has_marker_and_heartbeat(guest: Guest) -> None:
    deadline = time.monotonic() + 20
    while "kmlbench-heartbeat" not in guest.console_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    text = guest.console_text()
    assert "KMLBENCH-GUEST-READY" in text
    assert "kmlbench-heartbeat" in text
    assert guest.cfg.console_log.read_text().startswith(text.splitlines()[0])


@pytest.mark.kernel
def test_command_timeout(guest: Guest) -> None:
    with pytest.raises(GuestError) as info:
        guest.run("sleep 30", timeout=1)
    assert info.value.status == "timeout"
    assert guest.run("echo still-alive", timeout=30).stdout.strip() == "still-alive"


class _RacyChannel:
    """A paramiko channel whose transport delivers the last burst, the exit
    status and EOF all at once, just after ``run`` found both buffers empty."""

    def __init__(self) -> None:
        self.status_event = threading.Event()
        self.eof_received = False
        self.closed = False
        self.out = b""
        self.err = b""
        self.checks = 0

    def exec_command(self, cmd: str) -> None:
        pass

    def recv_ready(self) -> bool:
        return bool(self.out)

    def recv_stderr_ready(self) -> bool:
        ready = bool(self.err)
        self.checks += 1
        if self.checks == 2:  # the transport thread runs between two checks
            self.out, self.err = b"{" + b"x" * 200_000 + b"}", b"warn"
            self.eof_received = True
            self.status_event.set()
        return ready

    def recv(self, n: int) -> bytes:
        data, self.out = self.out[:n], self.out[n:]
        return data

    def recv_stderr(self, n: int) -> bytes:
        data, self.err = self.err[:n], self.err[n:]
        return data

    def exit_status_ready(self) -> bool:
        return self.status_event.is_set()

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def test_ssh_run_reads_the_final_burst(tmp_path: Path) -> None:
    channel = _RacyChannel()
    transport = SimpleNamespace(open_session=lambda timeout: channel)
    ssh = GuestSSH(0, None)  # type: ignore[arg-type]
    ssh.client = SimpleNamespace(get_transport=lambda: transport)  # type: ignore[assignment]
    result = ssh.run("fio", timeout=10)
    assert result.exit_status == 0
    assert len(result.stdout) == 200_002 and result.stderr == "warn"


@pytest.mark.kernel
def test_final_output_burst_is_never_lost(guest: Guest) -> None:
    """fio prints its JSON as one burst at exit: run() must return all of it."""
    cmd = (
        "sleep 0.2; head -c 3000000 /dev/zero | tr '\\0' x; echo END; "
        "head -c 500000 /dev/zero | tr '\\0' y >&2; echo ERR-END >&2"
    )
    for _ in range(5):
        result = guest.run(cmd, timeout=60)
        assert result.exit_status == 0
        assert len(result.stdout) == 3_000_000 + 4 and result.stdout.endswith("xEND\n")
        assert len(result.stderr) == 500_000 + 8 and result.stderr.endswith("yERR-END\n")


@pytest.mark.kernel
def test_host_key_mismatch_is_refused(guest: Guest, tmp_path: Path) -> None:
    other = SSHKeys.generate(tmp_path / "other")
    wrong = dataclasses.replace(guest.keys, host_public=other.host_public)
    ssh = GuestSSH(guest.port, wrong)
    with pytest.raises(SSHError, match="mismatch"):
        ssh.connect(timeout=20)
    # And the right key still gets in.
    right = GuestSSH(guest.port, guest.keys)
    right.connect(timeout=20)
    assert right.run("echo ok", timeout=20).stdout.strip() == "ok"
    right.close()


@pytest.mark.kernel
def test_exception_in_block_kills_qemu(
    guest_kernel: Path, base_image: Path, tmp_path: Path
) -> None:
    holder: list[Guest] = []
    with pytest.raises(RuntimeError, match="boom"), boot(tmp_path, guest_kernel, base_image) as g:
        holder.append(g)
        raise RuntimeError("boom")
    assert_gone(holder[0])


@pytest.mark.kernel
def test_silence_watchdog(guest_kernel: Path, base_image: Path, tmp_path: Path) -> None:
    with boot(tmp_path, guest_kernel, base_image) as g:
        # A 3 s silence watchdog against a 5 s heartbeat: it must fire. (Set
        # after boot: before its first line a loaded TCG host can be silent
        # for more than 3 s while the kernel decompresses.)
        g.cfg.silence_timeout_s = 3
        with pytest.raises(GuestError) as info:
            g.run("sleep 20", timeout=30)
        assert info.value.status == "timeout"
        assert "no console output" in info.value.message
    assert_gone(g)


@pytest.mark.kernel
def test_clean_poweroff(guest_kernel: Path, base_image: Path, tmp_path: Path) -> None:
    with boot(tmp_path, guest_kernel, base_image) as g:
        g.poweroff(timeout=30)
        assert g.proc is not None and g.proc.returncode == 0
        assert "reboot: Power down" in g.console_text()
    assert_gone(g)


@pytest.mark.kernel
def test_boot_deadline(guest_kernel: Path, base_image: Path, tmp_path: Path) -> None:
    with (
        pytest.raises(GuestError) as info,
        boot(tmp_path, guest_kernel, base_image, boot_timeout_s=0.5),
    ):
        pass
    assert info.value.status == "boot-failure"


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("sig", "codes"),
    [
        (signal.SIGTERM, {128 + signal.SIGTERM}),  # SystemExit through __exit__
        (signal.SIGINT, {-signal.SIGINT, 130, 1}),  # KeyboardInterrupt through __exit__
        (signal.SIGKILL, {-signal.SIGKILL}),  # no Python at all: PR_SET_PDEATHSIG
    ],
    ids=["SIGTERM", "SIGINT", "SIGKILL"],
)
def test_killed_harness_leaves_no_qemu(
    guest_kernel: Path, base_image: Path, tmp_path: Path, sig: int, codes: set[int]
) -> None:
    """A harness stopped by a signal mid-cell takes its QEMU with it."""
    # A harness started from a terminal turns SIGINT into KeyboardInterrupt;
    # one started in the background by a shell (`.ci/run &`) inherits SIGINT
    # ignored, so the child asks for Python's usual handler explicitly.
    script = textwrap.dedent(
        f"""
        import signal, sys, time
        from pathlib import Path
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_qemu import boot
        with boot(Path({str(tmp_path)!r}), Path({str(guest_kernel)!r}),
                  Path({str(base_image)!r})) as g:
            print("PGID", g.proc.pid, flush=True)
            time.sleep(120)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith("PGID"), line
    pgid = int(line.split()[1])
    os.killpg(pgid, 0)  # QEMU is running
    child.send_signal(sig)
    assert child.wait(timeout=60) in codes
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


@pytest.mark.kernel
def test_probe_kvm_is_cached(tmp_path: Path) -> None:
    first = probe_kvm(timeout_s=5, cache=tmp_path)
    assert isinstance(first.usable, bool) and first.reason
    second = probe_kvm(timeout_s=5, cache=tmp_path)
    if os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert second.cached
    assert second.usable == first.usable


def test_doctor_reports(capsys: pytest.CaptureFixture[str]) -> None:
    from kmlbench import cli
    from kmlbench.run import doctor

    code = cli.main(["doctor", "--no-kvm-probe"])
    out = capsys.readouterr().out
    assert code in (0, 1)
    for row in ("QEMU", "guest fio", "CPUs", "memory", "/dev/kvm", "kernel source"):
        assert row in out
    checks = doctor.run_checks(5, probe=False, kernel=None)
    assert code == (1 if any(c.state == doctor.FAIL for c in checks) else 0)
