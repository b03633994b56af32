"""Host child processes: each in a session of its own, stopped as a group.

Every process the harness starts on the host (fio, fio-plot, QEMU, make,
compilers, git, helper tools) goes through :func:`popen` or :func:`run`.
Killing only the process we started is not enough: fio forks its job
processes, make its compilers, and a child that outlives its parent keeps
the parent's stdout pipe open, so a ``communicate()`` after ``kill()`` waits
for an end of file that never comes (issue 16: an orphaned fio job process,
stuck on a lock its killed parent held, hung CI that way).

So each child starts a new session (its own process group), :func:`stop`
signals the whole group (SIGTERM, a grace period, then SIGKILL), and every
wait for output after a stop is bounded (:data:`READ_AFTER_STOP_S`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

# How long a stopped group gets to exit on SIGTERM before SIGKILL.
GRACE_S = 3.0
# How long output is still read after a group was stopped: whatever holds the
# pipe after SIGKILL to its group is not ours, and is not waited for.
READ_AFTER_STOP_S = 5.0
_POLL_S = 0.02
# How often communicate() looks whether the child has exited while a pipe
# is still open.
_STEP_S = 0.5

_PR_SET_PDEATHSIG = 1


def _resolve_prctl() -> Any:
    """libc's ``prctl``, looked up once, in the parent, at import time."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved here, not in the child: between fork and exec only async-signal-
# safe work is allowed, and dlopen/dlsym take locks that another thread (rich's
# Live refresh, QEMU's console readers) may hold at the moment of fork.
_PRCTL = _resolve_prctl()
_SIGKILL = int(signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the thread that started it dies.

    Only a call through the pre-resolved function pointer happens here.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL)


def popen(
    argv: Sequence[str | os.PathLike[str]], *, die_with_parent: bool = False, **kwargs: Any
) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` in a new session, so that :func:`stop` reaches every descendant.

    A child in its own session no longer gets the signals sent to the
    harness's process group (a terminal's Ctrl-C, ``kill -- -PGID``), so the
    harness stops it itself: the callers' ``except``/``finally`` blocks, and
    at interpreter exit every child still running (:func:`_stop_all`).
    ``die_with_parent`` adds ``PR_SET_PDEATHSIG``: the kernel SIGKILLs the
    child when the thread that started it dies, even by SIGKILL (QEMU, make).
    Every child ends in :func:`stop` or :func:`communicate`, which forget it.
    """
    if "start_new_session" in kwargs or "preexec_fn" in kwargs or "process_group" in kwargs:
        raise TypeError("procs.popen chooses the session and preexec_fn itself")
    preexec = _die_with_parent if die_with_parent else None
    proc = subprocess.Popen(list(argv), start_new_session=True, preexec_fn=preexec, **kwargs)
    with _LIVE_LOCK:
        _LIVE.add(proc)
    return proc


_LIVE: set[subprocess.Popen[Any]] = set()
_LIVE_LOCK = threading.Lock()


def _stop_all() -> None:
    """At interpreter exit (also SystemExit from a signal handler): no child outlives us."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        stop(proc, grace_s=0)


atexit.register(_stop_all)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member that is not ours: nothing more to do
        return False
    return True


def _wait_group(proc: subprocess.Popen[Any], until: float) -> bool:
    """Reap the leader and wait for the group to empty; True if it did by ``until``."""
    while True:
        proc.poll()
        if proc.returncode is not None and not group_members(proc.pid):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(_POLL_S)


def stop(proc: subprocess.Popen[Any], grace_s: float = GRACE_S) -> None:
    """Stop ``proc``'s whole process group: SIGTERM, ``grace_s``, SIGKILL; reap the leader.

    Safe to call on a finished process and more than once. The group is
    signalled even when the leader has exited already: its forked children
    (fio's job processes) may still be running. Once the group has been
    seen empty it is never signalled again (its id may be reused).
    """
    pgid = proc.pid
    if getattr(proc, "_kmlbench_group_gone", False):
        return
    if proc.poll() is None and _pgid(pgid) not in (pgid, None):
        # Not started by popen(): only the process itself is ours to stop.
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=READ_AFTER_STOP_S)
        return
    if proc.returncode is None or group_members(pgid):
        if grace_s > 0 and signal_group(pgid, signal.SIGTERM):
            _wait_group(proc, time.monotonic() + grace_s)
        signal_group(pgid, signal.SIGKILL)
        # SIGKILL cannot be ignored; a member in uninterruptible sleep dies
        # when its I/O returns, so this wait is bounded, not assumed instant.
        gone = _wait_group(proc, time.monotonic() + READ_AFTER_STOP_S)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=READ_AFTER_STOP_S)
        if not gone:
            return
    proc._kmlbench_group_gone = True  # type: ignore[attr-defined]
    with _LIVE_LOCK:
        _LIVE.discard(proc)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def drain(proc: subprocess.Popen[Any]) -> tuple[Any, Any]:
    """What is left on a stopped process's pipes, read for at most :data:`READ_AFTER_STOP_S`.

    Pipes still held open after that (by a process outside the group) are
    closed, and what was read until then is returned.
    """
    try:
        return proc.communicate(timeout=READ_AFTER_STOP_S)
    except ValueError:  # pipes already closed
        return None, None
    except subprocess.TimeoutExpired as exc:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        return _as_text(proc, exc.stdout), _as_text(proc, exc.stderr)


def _as_text(proc: subprocess.Popen[Any], data: bytes | str | None) -> Any:
    """Partial output of a timed-out ``communicate()`` (always bytes) in the pipe's mode."""
    if isinstance(data, bytes) and getattr(proc, "text_mode", False):
        # a cut may fall inside a character: replace, never raise, on partial output
        return data.decode(getattr(proc, "encoding", None) or "utf-8", "replace")
    return data


def _feed(pipe: IO[Any], data: Any) -> None:
    """Write ``data`` to the child's stdin and close it (a reader that left is fine)."""
    with contextlib.suppress(BrokenPipeError, OSError, ValueError):
        pipe.write(data)
    with contextlib.suppress(BrokenPipeError, OSError, ValueError):
        pipe.close()


def communicate(
    proc: subprocess.Popen[Any], timeout: float | None, input: Any = None, grace_s: float = GRACE_S
) -> tuple[Any, Any]:
    """``proc.communicate`` that never waits on a process that is not the child.

    Returns the output once the child has exited and its pipes are closed.
    If the child exited but a descendant still holds a pipe after
    :data:`READ_AFTER_STOP_S` (or past ``timeout``), the group is stopped
    and what was read is returned. While the child runs past ``timeout``,
    raises ``subprocess.TimeoutExpired`` carrying the output read so far,
    after the group is stopped; on any other exception (KeyboardInterrupt,
    SystemExit) the group is stopped and it propagates.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    exited_at: float | None = None
    if input is not None and proc.stdin is not None:
        # Written by a thread: communicate() only writes input on its first
        # call, and this one calls it again and again.
        stdin, proc.stdin = proc.stdin, None
        threading.Thread(target=_feed, args=(stdin, input), daemon=True).start()
    try:
        while True:
            now = time.monotonic()
            step = _STEP_S if deadline is None else max(0.0, min(_STEP_S, deadline - now))
            try:
                out, err = proc.communicate(timeout=step)
            except subprocess.TimeoutExpired:
                pass
            else:
                stop(proc, grace_s=0)  # leftovers that closed their pipes
                return out, err
            now = time.monotonic()
            if proc.poll() is not None:
                exited_at = exited_at if exited_at is not None else now
                if now - exited_at >= READ_AFTER_STOP_S or (deadline and now >= deadline):
                    stop(proc, grace_s)
                    return drain(proc)
            elif deadline is not None and now >= deadline:
                stop(proc, grace_s)
                out, err = drain(proc)
                raise subprocess.TimeoutExpired(proc.args, timeout or 0.0, out, err)
    except subprocess.TimeoutExpired:
        raise
    except BaseException:
        stop(proc, grace_s)
        drain(proc)
        raise


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = None,
    check: bool = False,
    input: Any = None,
    capture_output: bool = False,
    grace_s: float = GRACE_S,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` with the child in its own session, stopped as a group.

    Same arguments and results as ``subprocess.run``; unlike it, a timeout
    or an interrupt stops every process the child started, and the read of
    its remaining output is bounded, so a descendant that holds the pipe
    cannot hang the caller.
    """
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        kwargs["stdout"] = subprocess.PIPE
        kwargs["stderr"] = subprocess.PIPE
    proc = popen(argv, **kwargs)
    out, err = communicate(proc, timeout, input, grace_s)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result
