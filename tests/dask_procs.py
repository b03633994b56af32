"""A Dask scheduler and workers as separate processes, on 127.0.0.1 only (tests).

:func:`scheduler` starts ``dask scheduler`` bound to 127.0.0.1 on a free
port, without a dashboard, and yields its address; :func:`worker` starts a
``dask worker`` for it with the environment given (its own
``KMLBENCH_CACHE``). Both are stopped as process groups when the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from kmlbench import procs

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent


def _pythonpath() -> str:
    return os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])


@contextmanager
def scheduler(folder: Path) -> Iterator[str]:
    """``dask scheduler`` on 127.0.0.1 (no dashboard); its address."""
    info = folder / "scheduler.json"
    # the scheduler unpickles tasks too: it imports kmlbench and the tests' fakes
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
    env["PYTHONPATH"] = _pythonpath()
    with (folder / "scheduler.log").open("w") as log:  # the child keeps its own copy
        proc = procs.popen(
            [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", info],
            stdout=subprocess.DEVNULL, stderr=log, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "scheduler.log").read_text())
            time.sleep(0.1)
        time.sleep(0.2)
        yield str(json.loads(info.read_text())["address"])
    finally:
        procs.stop(proc)


@contextmanager
def worker(address: str, folder: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A ``dask worker`` (one thread, nanny, no dashboard) on 127.0.0.1 for ``address``."""
    full = {**os.environ, **env}
    full["PYTHONPATH"] = _pythonpath()
    with (folder / f"worker-{len(list(folder.glob('worker-*.log')))}.log").open("w") as log:
        proc = procs.popen(
            [BIN / "dask", "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
             "--no-dashboard", "--memory-limit", "0"],
            stdout=subprocess.DEVNULL, stderr=log, env=full,
        )  # fmt: skip
    try:
        yield proc
    finally:
        with_sigterm(proc)


def with_sigterm(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker as its user would (SIGTERM lets the nanny end its worker), then surely."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    procs.stop(proc)


def wait_for_workers(address: str, n: int, timeout: float = 60) -> None:
    """Until the scheduler at ``address`` has ``n`` workers."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(n, timeout=timeout)
