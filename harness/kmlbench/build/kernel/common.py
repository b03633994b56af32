"""What every step of the kernel build shares: its error, its log, locks, short commands.

:class:`KernelBuildError` is the one error type the package raises (its
subclasses name a patch or the options Kconfig dropped); :data:`Log` is the
line sink every step writes to; :func:`locked` serializes kmlbench
processes that would do the same work; :func:`run` runs a short command
into the log and :func:`make_env` is the environment every ``make`` gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from kmlbench import procs

Log = Callable[[str], None]


class KernelBuildError(Exception):
    """Any failure to produce a kernel; the message is meant for the user.

    ``log_path`` points at the full log when there is one.
    """

    def __init__(self, message: str, log_path: Path | None = None) -> None:
        if log_path is not None:
            message = f"{message}\n(full log: {log_path})"
        super().__init__(message)
        self.log_path = log_path


@contextlib.contextmanager
def locked(lock_path: Path, what: str, log: Log) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path`` for the duration.

    Two kmlbench processes asking for the same tree or build must not both
    do the work (or worse, write into the same directory); the second one
    waits and then finds the first one's result. flock is released by the
    kernel if the holder dies, so a crash never leaves a stale lock.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another kmlbench process to finish {what} ({lock_path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run(cmd: Sequence[str | Path], cwd: Path, log: Log, what: str) -> str:
    """Run a short command, log its output, raise KernelBuildError on failure."""
    argv = [str(c) for c in cmd]
    log("$ " + " ".join(argv))
    proc = procs.run(
        argv,
        cwd=cwd,
        env=make_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    out: str = proc.stdout
    for line in out.splitlines():
        log(line)
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-20:])
        raise KernelBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return out


def make_env() -> dict[str, str]:
    """The environment for make: without variables that would redirect it.

    A stray KBUILD_OUTPUT or KCONFIG_CONFIG in the user's shell would make
    kbuild read or write somewhere other than the build dir we hash.
    """
    env = dict(os.environ)
    for var in ("KBUILD_OUTPUT", "KCONFIG_CONFIG", "KCONFIG_ALLCONFIG", "O"):
        env.pop(var, None)
    env["LC_ALL"] = "C"
    return env
