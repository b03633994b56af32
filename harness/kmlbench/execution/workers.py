"""``kmlbench workers up HOST... / down HOST...``: Dask workers on other machines, over SSH.

``up`` does on each host what the README does on a fresh machine, then
starts a worker for the run's scheduler: the checkout (the files git
tracks, as they are in this working tree) is copied to ``--dir`` on the
host and ``bash scripts/setup.sh`` is run there (Debian 12, as root: QEMU,
fio, dropbear, the virtualenv with kmlbench and Dask), and then
``dask worker SCHEDULER --nthreads 1`` is started in the background with
its pid in ``DIR/dask-worker.pid`` and its log in ``DIR/dask-worker.log``.
A worker needs no kernel tree and builds nothing: it fetches the run's
kernel and guest image by hash (``docs/distributed.md``). ``down`` stops
the worker that ``up`` started (SIGTERM: the nanny ends its worker, whose
guests die with it), and removes the pid file.

SSH is Fabric's (paramiko underneath), with the user's keys and
``~/.ssh/config``, or ``--identity``.
"""

from __future__ import annotations

import argparse
import io
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from fabric import Connection

from kmlbench import paths

PID_FILE = "dask-worker.pid"
LOG_FILE = "dask-worker.log"
SETUP = "bash scripts/setup.sh"


def checkout_tarball(root: Path = paths.REPO_ROOT) -> bytes:
    """The files git tracks (and new files it does not ignore), as in the working tree."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for raw in listed:
            name = raw.decode()
            if name and (root / name).is_file():
                tar.add(root / name, arcname=name, recursive=False)
    return buf.getvalue()


def connect(host: str, args: argparse.Namespace) -> Connection:
    """A Fabric connection to ``host`` with the options' user, port and key."""
    kwargs: dict[str, object] = {}
    if args.identity:
        kwargs["key_filename"] = str(args.identity)
    return Connection(
        host,
        user=args.user,
        port=args.ssh_port,
        connect_kwargs=kwargs,
        connect_timeout=args.connect_timeout,
    )


def _sh(conn: Connection, command: str, **kwargs: object) -> Any:
    """Run ``command`` on the host; our stdin is never forwarded (CI has none)."""
    return conn.run(command, in_stream=False, **kwargs)


def worker_command(args: argparse.Namespace, remote_dir: str) -> str:
    """The shell line that starts ``dask worker`` in the background on a host."""
    python = args.python or f"{remote_dir}/.venv/bin/python"
    argv = [
        python, "-m", "distributed.cli.dask_worker", args.scheduler,
        "--nthreads", "1", "--nworkers", str(args.nworkers), "--no-dashboard",
        "--pid-file", f"{remote_dir}/{PID_FILE}",
    ]  # fmt: skip
    if args.worker_host:
        argv += ["--host", args.worker_host]
    if args.cache:
        argv = ["env", f"KMLBENCH_CACHE={args.cache}", *argv]
    line = " ".join(shlex.quote(a) for a in argv)
    log = shlex.quote(f"{remote_dir}/{LOG_FILE}")
    return f"cd {shlex.quote(remote_dir)} && setsid nohup {line} > {log} 2>&1 < /dev/null &"


def up(host: str, args: argparse.Namespace, tarball: bytes | None) -> None:
    """Copy the checkout, run the setup, start the worker (on one host)."""
    remote_dir = args.dir
    with connect(host, args) as conn:
        _sh(conn, f"mkdir -p {shlex.quote(remote_dir)}", hide=True)
        if tarball is not None:
            print(f"kmlbench: {host}: copying the checkout to {remote_dir}")
            conn.put(io.BytesIO(tarball), f"{remote_dir}/kmlbench-checkout.tar.gz")
            _sh(
                conn,
                f"cd {shlex.quote(remote_dir)} && tar -xzf kmlbench-checkout.tar.gz "
                "&& rm kmlbench-checkout.tar.gz",
                hide=True,
            )
            print(f"kmlbench: {host}: {SETUP}")
            _sh(conn, f"cd {shlex.quote(remote_dir)} && {SETUP}", hide=not args.verbose)
        pid_file = shlex.quote(f"{remote_dir}/{PID_FILE}")
        running = _sh(
            conn, f"test -s {pid_file} && kill -0 $(cat {pid_file})", warn=True, hide=True
        )
        if running.ok:
            print(f"kmlbench: {host}: a worker is already running (pid file {pid_file})")
            return
        _sh(conn, worker_command(args, remote_dir), hide=True, pty=False)
        _sh(
            conn,
            f"for i in $(seq 100); do test -s {pid_file} && exit 0; sleep 0.1; done; "
            f"cat {shlex.quote(remote_dir + '/' + LOG_FILE)}; exit 1",
            hide=not args.verbose,
        )
        print(f"kmlbench: {host}: dask worker started for {args.scheduler}")


def down(host: str, args: argparse.Namespace) -> bool:
    """Stop the worker ``up`` started on ``host``; False if none was running."""
    pid_file = shlex.quote(f"{args.dir}/{PID_FILE}")
    script = (
        f"test -s {pid_file} || exit 3; pid=$(cat {pid_file}); kill -TERM $pid 2>/dev/null; "
        "for i in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; "
        "kill -0 $pid 2>/dev/null && kill -KILL -$pid $pid 2>/dev/null; "
        f"rm -f {pid_file}"
    )
    with connect(host, args) as conn:
        result = _sh(conn, script, warn=True, hide=True)
    if result.exited == 3:
        print(f"kmlbench: {host}: no worker started by kmlbench workers up ({args.dir})")
        return False
    print(f"kmlbench: {host}: dask worker stopped")
    return True


def command_up(args: argparse.Namespace) -> int:
    """``kmlbench workers up HOST... --scheduler tcp://HOST:PORT``."""
    tarball = None if args.no_setup else checkout_tarball()
    for host in args.hosts:
        up(host, args, tarball)
    return 0


def command_down(args: argparse.Namespace) -> int:
    """``kmlbench workers down HOST...``."""
    stopped = [down(host, args) for host in args.hosts]
    return 0 if all(stopped) else 1
