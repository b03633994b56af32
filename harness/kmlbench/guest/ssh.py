"""SSH to the guest with keys that live for one run only.

Each run gets a fresh client key (Ed25519, made with ``cryptography``) and a
fresh dropbear host key (``dropbearkey``). Both go into the per-run initramfs
overlay; the host then *pins* the guest's host key instead of trusting
whatever answers on the forwarded port (no ``AutoAddPolicy``): another
process that grabbed the port, or a stale guest, is refused.

The session is plain paramiko ``exec``: the guest has no sftp-server, so
files are written with ``cat > path`` on the command's stdin.
"""

from __future__ import annotations

import base64
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kmlbench import procs

DROPBEARKEY = "dropbearkey"
# How long GuestSSH.run waits for EOF once the exit status is in (see there).
EOF_GRACE_S = 5.0

# While the guest boots, connection attempts fail by design (port forwarded
# before dropbear listens); paramiko would print each as a traceback.
logging.getLogger("paramiko.transport").addHandler(logging.NullHandler())
logging.getLogger("paramiko.transport").propagate = False


class SSHError(Exception):
    """SSH to the guest failed (connect, auth, host key, channel)."""


class CommandTimeout(SSHError):
    """A command ran past its timeout; ``partial`` holds what it printed so far."""

    def __init__(self, message: str, partial: CommandResult) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True)
class CommandResult:
    """What a guest command returned. ``exit_status`` is -1 if the guest never said."""

    exit_status: int
    stdout: str
    stderr: str
    seconds: float = 0.0


@dataclass(frozen=True)
class SSHKeys:
    """A run's key material, all inside ``directory`` (mode 0700).

    ``client_key``: OpenSSH private key the host logs in with;
    ``authorized_key``: its public line for the guest's authorized_keys;
    ``host_key``: dropbear-format private host key for the guest;
    ``host_public``: the OpenSSH public line the host expects to see.
    """

    directory: Path
    client_key: Path
    authorized_key: str
    host_key: Path
    host_public: str

    @classmethod
    def generate(cls, directory: Path) -> SSHKeys:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        private = Ed25519PrivateKey.generate()
        client_key = directory / "client_ed25519"
        client_key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        client_key.chmod(0o600)
        public = private.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        authorized_key = public.decode() + " kmlbench-run"

        host_key = directory / "dropbear_ed25519_host_key"
        host_key.unlink(missing_ok=True)  # dropbearkey refuses to overwrite
        try:
            proc = procs.run(
                [DROPBEARKEY, "-t", "ed25519", "-f", str(host_key)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
        except OSError as exc:
            raise SSHError(f"{DROPBEARKEY} not found (apt-get install dropbear-bin)") from exc
        host_public = _public_line(proc.stdout)
        if proc.returncode != 0 or host_public is None:
            raise SSHError(f"dropbearkey failed: {proc.stderr.strip() or proc.stdout.strip()}")
        host_key.chmod(0o600)
        (directory / "host_key.pub").write_text(host_public + "\n")
        return cls(directory, client_key, authorized_key, host_key, host_public)


def _public_line(dropbearkey_output: str) -> str | None:
    for line in dropbearkey_output.splitlines():
        if line.startswith(("ssh-ed25519 ", "ecdsa-sha2-", "ssh-rsa ")):
            return " ".join(line.split()[:2])
    return None


def _pinned_key(host_public: str) -> paramiko.PKey:
    kind, blob = host_public.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


class GuestSSH:
    """A paramiko session to one guest on 127.0.0.1:port, host key pinned."""

    def __init__(self, port: int, keys: SSHKeys, host: str = "127.0.0.1") -> None:
        self.port = port
        self.keys = keys
        self.host = host
        self.client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 10.0) -> None:
        """One connection attempt; raises :class:`SSHError` (BadHostKey included)."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pinned = _pinned_key(self.keys.host_public)
        client.get_host_keys().add(f"[{self.host}]:{self.port}", pinned.get_name(), pinned)
        try:
            client.connect(
                self.host, port=self.port, username="root",
                pkey=paramiko.Ed25519Key.from_private_key_file(str(self.keys.client_key)),
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                allow_agent=False, look_for_keys=False,
            )  # fmt: skip
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise SSHError(f"guest host key mismatch on port {self.port}: refusing") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise SSHError(f"ssh connect to {self.host}:{self.port}: {exc}") from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def run(self, cmd: str, timeout: float, stdin: bytes | None = None) -> CommandResult:
        """Run ``cmd`` with ``sh -c`` in the guest; raise CommandTimeout past ``timeout``."""
        if self.client is None or self.client.get_transport() is None:
            raise SSHError("not connected")
        transport = self.client.get_transport()
        assert transport is not None
        start = time.monotonic()
        try:
            channel = transport.open_session(timeout=min(timeout, 30))
            channel.exec_command(cmd)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(f"ssh exec: {exc}") from exc
        out, err = bytearray(), bytearray()
        try:
            if stdin is not None:
                channel.sendall(stdin)
                channel.shutdown_write()
            # paramiko's transport thread fills the buffers and sets the exit
            # status behind our back, and the guest may send the exit status
            # before the last of the output (fio's JSON is one final burst).
            # All output is here only once the channel has seen EOF (the guest
            # closed both streams) and both buffers are empty.
            status_seen = 0.0
            while True:
                if channel.recv_ready():
                    out += channel.recv(65536)
                    status_seen = 0.0
                    continue
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    status_seen = 0.0
                    continue
                if (channel.eof_received or channel.closed) and not (
                    channel.recv_ready() or channel.recv_stderr_ready()
                ):
                    break
                now = time.monotonic()
                if channel.exit_status_ready():
                    # A background child that keeps stdout open would hold
                    # off EOF forever; the command itself is done, so give
                    # its output a grace period, then stop waiting.
                    status_seen = status_seen or now
                    if now - status_seen > EOF_GRACE_S:
                        break
                if now - start > timeout:
                    partial = CommandResult(-1, _text(out), _text(err), now - start)
                    raise CommandTimeout(f"command timed out after {timeout:g}s: {cmd}", partial)
                if channel.exit_status_ready():
                    time.sleep(0.005)  # status_event stays set: do not spin
                else:
                    channel.status_event.wait(0.05)
            # The exit status may follow EOF (OpenSSH's order): wait for it or
            # for the channel to close, within what is left of the timeout.
            channel.status_event.wait(max(0.0, timeout - (time.monotonic() - start)))
            status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SSHError(f"ssh channel: {exc}") from exc
        finally:
            channel.close()
        return CommandResult(status, _text(out), _text(err), time.monotonic() - start)

    def put(self, remote_path: str, data: bytes, mode: int, timeout: float = 120) -> None:
        """Write a file in the guest via ``cat`` (the guest has no sftp-server)."""
        quoted = shlex.quote(remote_path)
        cmd = f"cat > {quoted} && chmod {mode:o} {quoted}"
        result = self.run(cmd, timeout, stdin=data)
        if result.exit_status != 0:
            raise SSHError(f"put {remote_path} failed ({result.exit_status}): {result.stderr}")


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")
