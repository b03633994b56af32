"""Boot one disposable QEMU guest, watch its console, and always clean up.

Modeled on Linux's ``tools/testing/kunit/kunit_kernel.py``: QEMU is a child
process whose serial console is a pipe; a reader thread writes every line to
the cell's console log as it arrives and classifies it (:mod:`console`), so
a panic is seen the moment it is printed, not after a timeout.

Four watchdogs turn a stuck guest into a status instead of a stuck harness:

* boot deadline -- the guest must print its ready marker and accept SSH
  within ``boot_timeout_s`` ("boot-failure");
* per-command timeout -- :meth:`Guest.run` ("timeout");
* silence -- no console line for ``silence_timeout_s`` ("timeout", also
  during boot); armed from QEMU's start for the guest's whole life. The
  guest's /init prints a heartbeat every 5 s, so silence means the kernel
  no longer schedules user space, not that fio is busy;
* panic -- a "Kernel panic" line kills QEMU at once ("panic"); an oops or
  BUG fails the next command ("panic").

QEMU runs in its own process group with ``PR_SET_PDEATHSIG``: it is killed
on ``__exit__`` (normal, exception, KeyboardInterrupt), on SIGTERM (turned
into SystemExit while a guest is up), at interpreter exit (atexit), and by
the kernel if the harness itself dies. The command line (user-mode
networking, the only host port on 127.0.0.1) is :mod:`kmlbench.guest.command`'s.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import socket
import subprocess
import threading
import time
from typing import IO

from kmlbench import procs
from kmlbench.build.image import READY_MARKER
from kmlbench.guest.command import QEMU, GuestConfig, build_command_line
from kmlbench.guest.console import ConsoleEvent, classify_line, status_for
from kmlbench.guest.ssh import CommandResult, CommandTimeout, GuestSSH, SSHError, SSHKeys
from kmlbench.status import (
    BOOT_FAILURE,
    FAILED,
    INFRA_ERROR,
    PANIC,
    STATUSES,
    TIMEOUT,
)

# A hostfwd port taken between free_port() and QEMU's bind makes QEMU exit
# at once; such an attempt is retried on another port.
PORT_ATTEMPTS = 3


class GuestError(Exception):
    """The guest failed; ``status`` is one of :data:`kmlbench.status.STATUSES` (never ok)."""

    def __init__(self, status: str, message: str, events: list[ConsoleEvent] | None = None):
        assert status in STATUSES, status
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.events = list(events or [])


# --- process hygiene -----------------------------------------------------------

_LIVE: set[Guest] = set()
_LIVE_LOCK = threading.Lock()


def _kill_all_live() -> None:
    with _LIVE_LOCK:
        guests = list(_LIVE)
    for guest in guests:
        guest.kill()


atexit.register(_kill_all_live)


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (QEMU binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Guest:
    """A booted guest reachable over SSH; a context manager that always kills QEMU.

    ``with Guest(cfg, keys) as guest: guest.run("uname -r", timeout=30)``.
    Every failure is raised as :class:`GuestError` with a status.
    """

    def __init__(self, cfg: GuestConfig, keys: SSHKeys) -> None:
        self.cfg = cfg
        self.keys = keys
        self.command_line: list[str] = []
        self.boot_seconds = 0.0
        self.ready_marker_seconds = 0.0
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssh: GuestSSH | None = None
        self._lines: list[str] = []
        self._events: list[ConsoleEvent] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._exited = threading.Event()
        self._failure: GuestError | None = None
        self._last_output = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._log: IO[str] | None = None
        self._stderr: list[str] = []
        self._old_sigterm: object = None
        self._start = 0.0

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Guest:
        self._install_sigterm()
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Boot and wait for SSH; raise GuestError(boot-failure|panic|infra-error)."""
        self.cfg.console_log.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.cfg.console_log.open("w", encoding="utf-8", errors="replace")
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self.command_line = build_command_line(self.cfg, self.port)
            self._spawn()
            try:
                self._wait_until_ready()
                return
            except GuestError:
                # QEMU exits at once if another process took the port between
                # free_port() and its bind ("Could not set up host forwarding
                # rule"): try again on another port.
                if attempt == PORT_ATTEMPTS - 1 or not self._port_clash():
                    raise
                self._reap()

    def _spawn(self) -> None:
        self._ready.clear()
        self._exited.clear()
        self._stderr = []
        self._start = time.monotonic()
        self._last_output = self._start
        try:
            self.proc = procs.popen(
                self.command_line, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, die_with_parent=True,
            )  # fmt: skip
        except OSError as exc:
            raise GuestError(INFRA_ERROR, f"cannot start {QEMU}: {exc}") from exc
        with _LIVE_LOCK:
            _LIVE.add(self)
        proc = self.proc
        for target, name in ((self._read_console, "console"), (self._read_stderr, "stderr")):
            thread = threading.Thread(target=target, args=(proc,), name=f"qemu-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        watchdog = threading.Thread(target=self._watchdog, args=(proc,), daemon=True)
        watchdog.start()
        self._threads.append(watchdog)

    def _port_clash(self) -> bool:
        return any("hostfwd" in line or "forwarding rule" in line for line in self._stderr)

    def _wait_until_ready(self) -> None:
        deadline = self._start + self.cfg.boot_timeout_s
        last_error = "no ready marker on the console"
        while True:
            if self._failure is not None:
                raise self._failure
            # The process itself, not the watchdog's event (up to 0.5 s late):
            # a port clash retry should not wait for it.
            if self.proc is not None and self.proc.poll() is not None:
                self._reader_drain()
                raise self._exit_error("QEMU exited during boot")
            if time.monotonic() > deadline:
                raise GuestError(
                    BOOT_FAILURE,
                    f"not ready after {self.cfg.boot_timeout_s:g}s ({last_error})",
                    self.events(),
                )
            if self._ready.wait(0.1):
                ssh = GuestSSH(self.port, self.keys)
                try:
                    ssh.connect(timeout=max(1.0, min(10.0, deadline - time.monotonic())))
                except SSHError as exc:
                    if "mismatch" in str(exc):
                        raise GuestError(INFRA_ERROR, str(exc), self.events()) from exc
                    last_error = str(exc)
                    time.sleep(0.1)
                    continue
                self.ssh = ssh
                self.boot_seconds = time.monotonic() - self._start
                return

    def _exit_error(self, what: str) -> GuestError:
        events = self.events()
        code = self.proc.returncode if self.proc is not None else None
        stderr = " | ".join(self._stderr[-5:])
        detail = f"{what} (exit {code})" + (f": {stderr}" if stderr else "")
        if status_for(events) == PANIC or any(e.kind == "panic" for e in events):
            return GuestError(PANIC, detail, events)
        if not self._ready.is_set():
            status = INFRA_ERROR if not self._lines else BOOT_FAILURE
            return GuestError(status, detail, events)
        return GuestError(FAILED, detail, events)

    def kill(self) -> None:
        """Kill QEMU's whole process group now (idempotent, thread-safe)."""
        proc = self.proc
        if proc is None:
            return
        # QEMU gets no SIGTERM grace: the guest is disposable, and a guest
        # that has just panicked must not be given time to write more.
        procs.stop(proc, grace_s=0)

    def _reap(self) -> None:
        """Kill this attempt's QEMU, join its threads and close its pipes."""
        self.kill()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._threads = []
        if self.proc is not None:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def close(self) -> None:
        """Drop SSH, kill QEMU, join the threads, close the log. Safe to call twice."""
        if self.ssh is not None:
            self.ssh.close()
            self.ssh = None
        self._reap()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._restore_sigterm()

    def _install_sigterm(self) -> None:
        """Make SIGTERM unwind through ``__exit__`` instead of killing Python outright."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_sigterm(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        self._old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)  # type: ignore[arg-type]
            self._old_sigterm = None

    # --- console -----------------------------------------------------------------

    def _read_console(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n").replace("\r", "")
            with self._lock:
                self._lines.append(line)
                number = len(self._lines)
                self._last_output = time.monotonic()
                if self._log is not None:
                    self._log.write(line + "\n")
                    self._log.flush()
            if READY_MARKER in line:
                self.ready_marker_seconds = time.monotonic() - self._start
                self._ready.set()
            event = classify_line(line, number)
            if event is None:
                continue
            with self._lock:
                self._events.append(event)
            if event.kind == "panic" and self._failure is None:
                self._failure = GuestError(PANIC, event.excerpt, self.events())
                # Give the kernel a moment to print the backtrace, then kill.
                timer = threading.Timer(2.0, self.kill)
                timer.daemon = True
                timer.start()

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            self._stderr.append(raw.decode("utf-8", errors="replace").rstrip())

    def _reader_drain(self) -> None:
        """After QEMU exited: let the readers take in its last console and stderr lines."""
        for thread in self._threads:
            if thread.name in ("qemu-console", "qemu-stderr"):
                thread.join(timeout=3)

    def _watchdog(self, proc: subprocess.Popen[bytes]) -> None:
        while proc.poll() is None:
            silent = time.monotonic() - self._last_output
            if silent > self.cfg.silence_timeout_s and self._failure is None:
                self._failure = GuestError(
                    TIMEOUT, f"no console output for {silent:.0f}s", self.events()
                )
                self.kill()
            time.sleep(0.5)
        self._exited.set()

    def console_text(self) -> str:
        with self._lock:
            return "\n".join(self._lines) + ("\n" if self._lines else "")

    def events(self) -> list[ConsoleEvent]:
        with self._lock:
            return list(self._events)

    # --- commands ----------------------------------------------------------------

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._exited.is_set():
            self._reader_drain()
            raise self._exit_error("QEMU exited")

    def _after(self) -> None:
        """A fatal console event during the command fails it, even if it 'succeeded'."""
        if status_for(self.events()) == PANIC:
            time.sleep(0.5)  # let the rest of the trace reach the log
            raise GuestError(PANIC, self.events()[0].excerpt, self.events())
        self._check()

    def _ssh_failed(self, exc: SSHError) -> GuestError:
        # The connection usually drops because the guest died: let the console
        # and the watchdog have their say before blaming SSH.
        for _ in range(30):
            if self._failure is not None or self._exited.is_set():
                break
            time.sleep(0.1)
        if self._failure is not None:
            return self._failure
        if self._exited.is_set():
            self._reader_drain()
            return self._exit_error(f"QEMU exited: {exc}")
        if status_for(self.events()) == PANIC:
            return GuestError(PANIC, str(exc), self.events())
        return GuestError(INFRA_ERROR, str(exc), self.events())

    def run(self, cmd: str, timeout: float) -> CommandResult:
        """Run a shell command in the guest; GuestError on timeout, crash or lost guest."""
        self._check()
        assert self.ssh is not None
        try:
            result = self.ssh.run(cmd, timeout)
        except CommandTimeout as exc:
            if self._failure is not None:
                raise self._failure from exc
            raise GuestError(TIMEOUT, str(exc), self.events()) from exc
        except SSHError as exc:
            raise self._ssh_failed(exc) from exc
        self._after()
        return result

    def put(self, remote_path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file in the guest (over exec + cat: the guest has no sftp)."""
        self._check()
        assert self.ssh is not None
        try:
            self.ssh.put(remote_path, data, mode)
        except CommandTimeout as exc:
            raise GuestError(TIMEOUT, str(exc), self.events()) from exc
        except SSHError as exc:
            raise self._ssh_failed(exc) from exc
        self._after()

    def poweroff(self, timeout: float = 30) -> None:
        """Ask the guest to power off and wait for QEMU to exit (kill it if not)."""
        if self.ssh is not None and not self._exited.is_set():
            with contextlib.suppress(SSHError):
                self.ssh.run("sync; poweroff -f", timeout=5)
            self.ssh.close()
            self.ssh = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
