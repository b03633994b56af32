"""``kmlbench workers up / down`` over SSH, against an SSH server of the test's own.

The server is dropbear on 127.0.0.1 (a free port), in a mount namespace of
its own where ``/root`` is an overlay whose changes (the test's authorized
key) land in a folder of the test: the machine's own ``/root`` is not changed. The worker
that ``up`` starts must register with a scheduler on 127.0.0.1, and ``down``
must stop it.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

import dask_procs
from kmlbench import paths, procs
from kmlbench.cli import main
from kmlbench.execution.workers import checkout_tarball
from kmlbench.guest.ssh import SSHKeys

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root"),
    pytest.mark.skipif(shutil.which("dropbear") is None, reason="dropbear-bin not installed"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[dict[str, object]]:
    """dropbear on 127.0.0.1; root logs in with a key made for this test."""
    keys = SSHKeys.generate(tmp_path / "keys")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(keys.authorized_key.strip() + "\n")
    upper, work = tmp_path / "root-upper", tmp_path / "root-work"
    upper.mkdir()
    work.mkdir()
    port = _free_port()
    # /root as an overlay whose changes land in upper/: the host's /root is untouched
    script = (
        f"mount -t overlay overlay -o lowerdir=/root,upperdir={upper},workdir={work} /root "
        f"&& mkdir -p /root/.ssh && chmod 700 /root /root/.ssh "
        f"&& cp {authorized} /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys "
        f"&& exec dropbear -F -E -s -p 127.0.0.1:{port} -r {keys.host_key} "
        f"-P {tmp_path / 'dropbear.pid'}"
    )
    log = (tmp_path / "dropbear.log").open("w")
    proc = procs.popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"dropbear did not start: {(tmp_path / 'dropbear.log').read_text()}"
                    )
                time.sleep(0.1)
        yield {"port": port, "identity": keys.client_key}
    finally:
        procs.stop(proc)


def test_the_checkout_tarball_has_what_setup_needs() -> None:
    with tarfile.open(fileobj=io.BytesIO(checkout_tarball()), mode="r:gz") as tar:
        names = set(tar.getnames())
    assert {"scripts/setup.sh", "pyproject.toml", "harness/kmlbench/cli.py"} <= names
    assert not any(n.startswith((".venv/", "results/2")) for n in names)


def test_workers_up_starts_a_worker_the_scheduler_sees_and_down_stops_it(
    tmp_path: Path, ssh_server: dict[str, object]
) -> None:
    ssh = ["--ssh-port", str(ssh_server["port"]), "--identity", str(ssh_server["identity"])]
    remote = tmp_path / "remote"
    common = [*ssh, "--user", "root", "--dir", str(remote)]
    with dask_procs.scheduler(tmp_path) as address, Client(address, timeout=30) as client:
        up = [
            "workers", "up", "127.0.0.1", *common, "--scheduler", address, "--no-setup",
            "--python", str(Path(paths.REPO_ROOT / ".venv" / "bin" / "python")),
            "--worker-host", "127.0.0.1", "--cache", str(tmp_path / "worker-cache"),
        ]  # fmt: skip
        try:
            assert main(up) == 0
            client.wait_for_workers(1, timeout=60)
            (info,) = client.scheduler_info()["workers"].values()
            assert info["host"] == "127.0.0.1" and info["nthreads"] == 1
            pid = int((remote / "dask-worker.pid").read_text())
            assert main(["workers", "down", "127.0.0.1", *common]) == 0
            deadline = time.monotonic() + 30
            while client.scheduler_info()["workers"] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.scheduler_info()["workers"] == {}
            assert not (remote / "dask-worker.pid").exists()
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
            # a second down finds nothing to stop
            assert main(["workers", "down", "127.0.0.1", *common]) == 1
        finally:
            pid_file = remote / "dask-worker.pid"
            if pid_file.exists():  # the test failed half-way: leave no worker behind
                pid = int(pid_file.read_text())
                for sig in (15, 9):
                    try:
                        os.killpg(pid, sig)
                    except ProcessLookupError:
                        break
                    time.sleep(2)
