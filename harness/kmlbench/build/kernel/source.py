"""The Linux source: find, fetch and verify it, name its content, extract it once.

``kernel.source`` in a matrix is ``"debian"`` (the packaged
``linux-source-6.1`` tarball), a path to a tarball or to a kernel tree, or
``{"url", "sha256"}`` (downloaded once into ``cache/downloads/`` and
verified). :func:`resolve_source` turns it into a path and a *source id*
(the tarball's sha256, or a git commit for a tree) that every cache key
starts from; :func:`pristine_tree` extracts (or copies) it, unmodified,
once per source id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kmlbench import paths, procs
from kmlbench.build.kernel.common import KernelBuildError, Log, locked, run
from kmlbench.build.kernel.keys import pristine_key, sha256_parts
from kmlbench.files import atomic_write
from kmlbench.hashing import sha256_file


@dataclass(frozen=True)
class ResolvedSource:
    """Where the kernel source is and what identifies its content."""

    kind: str  # "tarball" or "tree"
    path: Path
    source_id: str


def _tarball_sha256(tarball: Path, cache: Path) -> str:
    """sha256 of a tarball, memoized by (path, size, mtime) in the cache.

    Hashing the 140 MB Debian tarball takes a second or two; doing it on
    every run would dominate a warm cache hit.
    """
    st = tarball.stat()
    memo_path = cache / "src" / "tarball-sha256.json"
    key = str(tarball.resolve())
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    entry = memo.get(key)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()):
        return str(entry["sha256"])
    digest = sha256_file(tarball)
    with locked(cache / "src" / "tarball-sha256.lock", "updating the hash memo", lambda _: None):
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        memo[key] = {**stamp, "sha256": digest}
        atomic_write(memo_path, json.dumps(memo, indent=1, sort_keys=True) + "\n")
    return digest


def download_source(url: str, sha256: str, cache: Path, log: Log) -> Path:
    """Download ``url`` into ``cache/downloads/`` and verify its sha256.

    An already downloaded file with the right hash is reused without any
    network access. On a mismatch the file is removed, so a corrupt or
    substituted tarball can never be picked up by a later run.
    """
    sha256 = sha256.lower().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise KernelBuildError(f"kernel source {url}: sha256 must be 64 hex digits, got {sha256!r}")
    name = Path(urllib.parse.urlparse(url).path).name or "source.tar"
    dest_dir = cache / "downloads"
    dest = dest_dir / f"{sha256}-{name}"
    with locked(dest_dir / f"{sha256}.lock", f"downloading {url}", log):
        if dest.exists():
            if _tarball_sha256(dest, cache) == sha256:
                return dest
            dest.unlink()
        log(f"downloading {url}")
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{sha256}-")
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise KernelBuildError(f"kernel source {url}: download failed: {e}") from e
        got = h.hexdigest()
        if got != sha256:
            tmp.unlink(missing_ok=True)
            raise KernelBuildError(
                f"kernel source {url}: sha256 mismatch\n"
                f"  expected {sha256}\n  got      {got}\n"
                "the downloaded file was removed; check the URL and the sha256 in the matrix"
            )
        os.replace(tmp, dest)
    return dest


def _makefile_version(tree: Path) -> str:
    """``VERSION.PATCHLEVEL.SUBLEVEL EXTRAVERSION`` from a tree's Makefile."""
    fields: dict[str, str] = {}
    try:
        text = (tree / "Makefile").read_text(errors="replace")
    except OSError as e:
        raise KernelBuildError(f"{tree} is not a kernel tree (no Makefile): {e}") from e
    for line in text.splitlines()[:20]:
        m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(.*)$", line)
        if m:
            fields[m.group(1)] = m.group(2).strip()
    return "{}.{}.{}{}".format(
        fields.get("VERSION", "?"),
        fields.get("PATCHLEVEL", "?"),
        fields.get("SUBLEVEL", "?"),
        fields.get("EXTRAVERSION", ""),
    )


def tree_source_id(tree: Path) -> str:
    """Identify a kernel tree given as a directory.

    A git tree is its HEAD commit; a dirty one additionally gets a hash of
    ``git diff HEAD`` so different local edits don't share a cache entry
    (untracked files are not seen). A tree that is not the top of a git
    repository can only be identified by its Makefile version and its
    path: edits inside it are NOT detected, so change the path (or use a
    tarball or git) when changing such a tree.
    """
    tree = tree.resolve()
    top = procs.run(
        ["git", "-C", str(tree), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    if top.returncode == 0 and Path(top.stdout.strip()).resolve() == tree:
        head: str = procs.run(
            ["git", "-C", str(tree), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status: str = procs.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if not status.strip():
            return f"git:{head}"
        diff: bytes = procs.run(
            ["git", "-C", str(tree), "diff", "HEAD", "--binary"],
            capture_output=True,
            check=True,
        ).stdout
        return f"git:{head}-dirty-{hashlib.sha256(diff).hexdigest()[:16]}"
    return "tree:" + sha256_parts(_makefile_version(tree), str(tree))


def resolve_source(
    source: str | dict[str, object], cache: Path, log: Log = print
) -> ResolvedSource:
    """Turn the matrix's ``kernel.source`` into a path and a source id.

    ``"debian"`` is the packaged ``linux-source-6.1`` tarball; a string is a
    path to a tarball or to a kernel tree; a dict is ``{"url", "sha256"}``,
    downloaded once into the cache. Relative paths are taken relative to the
    current directory (matrix.py resolves them against the matrix file).
    """
    if isinstance(source, dict):
        url, sha = source.get("url"), source.get("sha256")
        if not isinstance(url, str) or not isinstance(sha, str):
            raise KernelBuildError(
                f"kernel source {source!r}: a URL source needs both 'url' and 'sha256'"
            )
        tarball = download_source(url, sha, cache, log)
        return ResolvedSource("tarball", tarball, sha.lower().strip())
    if not isinstance(source, str):
        raise KernelBuildError(f"kernel source must be a string or a mapping, got {source!r}")
    path = paths.DEBIAN_KERNEL_TARBALL if source == "debian" else Path(source).expanduser()
    if path.is_dir():
        return ResolvedSource("tree", path.resolve(), tree_source_id(path))
    if path.is_file():
        return ResolvedSource("tarball", path.resolve(), _tarball_sha256(path, cache))
    hint = " (apt-get install linux-source-6.1)" if source == "debian" else ""
    raise KernelBuildError(f"kernel source {source!r}: {path} does not exist{hint}")


def _copy_tree(src: Path, dest: Path, log: Log) -> None:
    """Copy a kernel tree given as a directory, without its build products.

    The copy gets KML and the patches, so the user's tree is never modified.
    An in-tree configured/built tree is made clean with ``make mrproper``,
    as kbuild refuses ``O=`` builds from a dirty source tree.
    """
    ignore = shutil.ignore_patterns(
        ".git", "*.o", "*.ko", "*.a", "*.cmd", "*.mod", "*.mod.c", "*.order", ".tmp_*"
    )
    log(f"copying {src}")
    shutil.copytree(src, dest, symlinks=True, ignore=ignore)
    configured = (
        (dest / ".config").exists()
        or (dest / "include" / "config").exists()
        or any((dest / "arch").glob("*/include/generated"))
    )
    if configured:
        run(["make", "mrproper"], dest, log, f"make mrproper in the copy of {src}")


def _extract(tarball: Path, into: Path, log: Log) -> Path:
    """Extract a tarball; return the tree root (its single top directory)."""
    log(f"extracting {tarball}")
    run(["tar", "-xf", str(tarball), "--no-same-owner", "-C", str(into)], into, log, "tar")
    entries = list(into.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return into


def pristine_tree(src: ResolvedSource, cache: Path, log: Log = print) -> Path:
    """The unmodified source, extracted (or copied) once per source id.

    At ``cache/src/pristine/<key>/``. Prepared trees are hard-linked copies
    of it (``cp -al``), so each KML edit costs a few MB and a few seconds
    instead of a 1.4 GB, 10 s extraction. Same temp-dir-and-rename and lock
    discipline as the prepared trees.
    """
    key = pristine_key(src.source_id)
    root_dir = cache / "src" / "pristine"
    final = root_dir / key
    with locked(root_dir / f"{key}.lock", "extracting the kernel source", log):
        if (root_dir / f"{key}.done").exists() and final.is_dir():
            return final
        if final.exists():
            shutil.rmtree(final)
        for stale in root_dir.glob(f".tmp-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root_dir, prefix=f".tmp-{key}-"))
        try:
            if src.kind == "tarball":
                tree = _extract(src.path, tmp, log)
            else:
                tree = tmp / "linux"
                _copy_tree(src.path, tree, log)
            os.rename(tree, final)
            # The marker lives outside the tree so it is not linked into copies.
            (root_dir / f"{key}.done").write_text(src.source_id + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
