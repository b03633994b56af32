"""Kernel and guest image on a worker: found in its cache by content hash, or fetched.

A worker keeps what it boots from in ``<cache>/artifacts/<sha256>`` (its own
cache: ``KMLBENCH_CACHE`` on that machine). A file it lacks comes, in this
order, from a folder the user names on the worker (``KMLBENCH_ARTIFACTS``:
files named by their SHA-256, e.g. a shared mount or an rsync'ed mirror),
or through Dask from the client (a ``fetch`` callback). Whatever arrives is
hashed before it is renamed into the cache, so a cache never holds a file
under a name it does not hash to.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from kmlbench import paths
from kmlbench.execution.jobs import Artifact
from kmlbench.files import atomic_write
from kmlbench.hashing import sha256_file

ARTIFACTS_ENV = "KMLBENCH_ARTIFACTS"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_LOCK = threading.Lock()
# Files already checked in this process, by (path, size, mtime): no re-hash per cell.
_VERIFIED: set[tuple[str, int, int]] = set()


class ArtifactError(Exception):
    """An artifact could not be had, or what arrived does not hash to its name."""


def artifacts_dir(cache: Path | None = None) -> Path:
    """``<cache>/artifacts/``: files named by their SHA-256."""
    path = (cache or paths.cache_dir()) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _verified(path: Path, sha256: str) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo in _VERIFIED:
        return True
    if sha256_file(path) != sha256:
        return False
    _VERIFIED.add(memo)
    return True


def store(data: bytes, sha256: str, cache: Path | None = None) -> Path:
    """Put ``data`` into the cache as ``sha256``, refusing bytes that hash otherwise."""
    if not _SHA_RE.match(sha256):
        raise ArtifactError(f"not a SHA-256: {sha256!r}")
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ArtifactError(f"artifact {sha256[:12]}: received bytes hash to {got[:12]}")
    dest = artifacts_dir(cache) / sha256
    atomic_write(dest, data)
    return dest


def seed(artifact: Artifact, cache: Path | None = None) -> Path:
    """Put the client's own file into its cache by hash (a hard link where it can).

    Workers on the client's machine then find it without a transfer.
    """
    dest = artifacts_dir(cache) / artifact.sha256
    if _verified(dest, artifact.sha256):
        return dest
    dest.unlink(missing_ok=True)
    try:
        os.link(artifact.path, dest)
    except OSError:
        store(artifact.path.read_bytes(), artifact.sha256, cache)
    if not _verified(dest, artifact.sha256):
        raise ArtifactError(f"{artifact.name} {artifact.path} changed while it was cached")
    return dest


def ensure(
    artifact: Artifact, fetch: Callable[[Artifact], bytes], cache: Path | None = None
) -> tuple[Path, str]:
    """The local path of ``artifact`` and where it came from (``cache``, ``dir``, ``client``).

    ``fetch`` brings the bytes from the client (through Dask) when neither
    the cache nor ``KMLBENCH_ARTIFACTS`` has them.
    """
    dest = artifacts_dir(cache) / artifact.sha256
    with _LOCK:  # two tasks on one worker fetch once
        if _verified(dest, artifact.sha256):
            return dest, "cache"
        named = os.environ.get(ARTIFACTS_ENV)
        if named:
            candidate = Path(named) / artifact.sha256
            if _verified(candidate, artifact.sha256):
                return store(candidate.read_bytes(), artifact.sha256, cache), "dir"
        data = fetch(artifact)
        return store(data, artifact.sha256, cache), "client"
