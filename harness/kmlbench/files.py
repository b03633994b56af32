"""Writing files so that a reader, or a crash, never sees half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

# The virtio disk a cell's guest writes (kmlbench.cell.device): scratch in
# the cell's folder, gigabytes of it, and not a result to keep safe.
SCRATCH_DISK = "disk.img"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then ``os.replace``.

    The result is 0644: mkstemp's 0600 would hide cache entries and results
    from the other users of a shared machine.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)  # the rename itself, through a crash


def sync_folder(folder: Path) -> None:
    """fsync every file under ``folder`` (but a :data:`SCRATCH_DISK`) and
    each folder: what a cell wrote with plain writes reaches the disk
    before its record says the cell finished."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or path.name == SCRATCH_DISK:
            continue
        if path.is_dir():
            _fsync_dir(path)
        elif path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """fsync a folder (its entries); a filesystem that cannot (some network
    and shared folders say EINVAL) is let be, as SQLite lets it be."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)
