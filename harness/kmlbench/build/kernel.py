"""Build (or reuse) the KML-patched guest kernel.

One call, :func:`build_kernel`, walks a fixed pipeline, each step cached by
content so that re-running a matrix never rebuilds what it already has:

1. **source**: resolve ``"debian"``, a tarball, a kernel tree or a
   ``{"url", "sha256"}`` download to a *source id* (the tarball's sha256,
   or a git commit for a tree);
2. **work tree** (``cache/work/<source>/linux``): one hard-linked copy of
   the extracted source per source id, synced on every miss to
   ``kernel/kml/`` in ``lib/kml/`` plus the patch series, rewriting only the
   files whose content changes (see :func:`sync_work_tree`);
3. **config**: ``tinyconfig`` + ``base.config`` + ``kml.config`` + the
   request's fragments, ``olddefconfig``, then a check that every requested
   option survived (Kconfig silently drops options whose dependencies are
   missing, which would otherwise show up much later as a guest that does
   not boot or a scheduler that is not there);
4. **build**: ``make bzImage modules`` in the work tree's persistent object
   dir for this config (``cache/work/<source>/obj-<config>/``), so an edit
   recompiles only what it affects; the result is then copied to the
   content-keyed ``cache/builds/<build_key>/``, where a completed stamp
   makes the next identical request a pure cache hit.

Modeled on ``tools/testing/kunit/kunit_kernel.py``: out-of-tree builds
(``O=``), config fragments merged over a minimal base, and explicit checks
that the final ``.config`` is what was asked for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kmlbench import paths, procs
from kmlbench.files import atomic_write
from kmlbench.hashing import sha256_file

Log = Callable[[str], None]

# Bump when the layout or meaning of a cache entry changes, so that old
# entries are simply not found instead of being misread.
_CACHE_VERSION = "kmlbench-kernel-v1"
_PREPARED_STAMP = ".kmlbench-prepared"
_BUILD_STAMP = ".kmlbench-complete"
_BUILD_LOG = "kmlbench-build.log"

_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set\s*$")


class KernelBuildError(Exception):
    """Any failure to produce a kernel; the message is meant for the user.

    ``log_path`` points at the full log when there is one.
    """

    def __init__(self, message: str, log_path: Path | None = None) -> None:
        if log_path is not None:
            message = f"{message}\n(full log: {log_path})"
        super().__init__(message)
        self.log_path = log_path


class PatchError(KernelBuildError):
    """A patch of the series did not apply; names the patch and its rejects."""

    def __init__(self, patch: Path, message: str) -> None:
        super().__init__(message)
        self.patch = patch


@dataclass(frozen=True)
class ConfigMiss:
    """One requested option that is not in the final .config as asked."""

    symbol: str
    requested: str  # the fragment line, e.g. "CONFIG_VIRTIO_BLK=y"
    actual: str  # the final .config line, or "" if the symbol is absent
    fragment: Path
    line: int


class ConfigError(KernelBuildError):
    """Options requested by fragments did not survive olddefconfig."""

    def __init__(self, message: str, misses: list[ConfigMiss]) -> None:
        super().__init__(message)
        self.misses = misses


@dataclass(frozen=True)
class KernelRequest:
    source: str | dict
    fragments: tuple[Path, ...]  # in addition to kernel/configs/base.config


@dataclass(frozen=True)
class KernelBuild:
    bzimage: Path
    build_dir: Path
    config_path: Path
    log_path: Path
    build_key: str
    source_id: str
    patch_series_hash: str
    config_hash: str
    compiler: str
    compiled: bool  # False on a cache hit
    modules: dict[str, Path]  # "kml_test" -> .../kml_test.ko (if built as modules)


@dataclass(frozen=True)
class ResolvedSource:
    """Where the kernel source is and what identifies its content."""

    kind: str  # "tarball" or "tree"
    path: Path
    source_id: str


# --------------------------------------------------------------------------
# small helpers


def _sha256_parts(*parts: str) -> str:
    """Hash a sequence of strings unambiguously (NUL-separated)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path, what: str, log: Log) -> Iterator[None]:
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


def _run(cmd: Sequence[str | Path], cwd: Path, log: Log, what: str) -> str:
    """Run a short command, log its output, raise KernelBuildError on failure."""
    argv = [str(c) for c in cmd]
    log("$ " + " ".join(argv))
    proc = procs.run(
        argv,
        cwd=cwd,
        env=_make_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        check=False,
    )
    for line in proc.stdout.splitlines():
        log(line)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise KernelBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _make_env() -> dict[str, str]:
    """The environment for make: without variables that would redirect it.

    A stray KBUILD_OUTPUT or KCONFIG_CONFIG in the user's shell would make
    kbuild read or write somewhere other than the build dir we hash.
    """
    env = dict(os.environ)
    for var in ("KBUILD_OUTPUT", "KCONFIG_CONFIG", "KCONFIG_ALLCONFIG", "O"):
        env.pop(var, None)
    env["LC_ALL"] = "C"
    return env


def compiler_version() -> str:
    """First line of ``gcc --version``: part of the build key.

    A compiler upgrade changes the generated code (and the Kconfig
    CC_VERSION), so it must not reuse builds from the old compiler.
    """
    try:
        out = procs.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise KernelBuildError(f"cannot run gcc --version: {e}") from e
    return out.splitlines()[0].strip()


def _print_progress(msg: str) -> None:
    """Default progress sink: one short line per step on stderr."""
    print(f"kernel: {msg}", file=sys.stderr, flush=True)


def _default_jobs() -> int:
    """``-j`` for make: KMLBENCH_JOBS if set, else the CPUs we may run on."""
    env = os.environ.get("KMLBENCH_JOBS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)))


# --------------------------------------------------------------------------
# 1. source


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
    with _locked(cache / "src" / "tarball-sha256.lock", "updating the hash memo", lambda _: None):
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
    with _locked(dest_dir / f"{sha256}.lock", f"downloading {url}", log):
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
        head = procs.run(
            ["git", "-C", str(tree), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = procs.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        if not status.strip():
            return f"git:{head}"
        diff = procs.run(
            ["git", "-C", str(tree), "diff", "HEAD", "--binary"],
            capture_output=True,
            check=True,
        ).stdout
        return f"git:{head}-dirty-{hashlib.sha256(diff).hexdigest()[:16]}"
    return "tree:" + _sha256_parts(_makefile_version(tree), str(tree))


def resolve_source(source: str | dict, cache: Path, log: Log = print) -> ResolvedSource:
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


# --------------------------------------------------------------------------
# 2. prepared tree: KML sources and the patch series


def _is_kml_source(rel: Path) -> bool:
    """Whether a file under kernel/kml/ is a source (copied and hashed).

    Build products or editor files left in kernel/kml/ must not change
    the cache key, nor end up in the kernel tree.
    """
    if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
        return False
    junk = (".o", ".ko", ".a", ".so", ".mod", ".mod.c", ".order", ".symvers", ".pyc", "~")
    return not rel.name.endswith(junk)


def kml_source_files(kml_dir: Path) -> list[Path]:
    """KML source files, relative to ``kml_dir``, in a stable order."""
    if not kml_dir.is_dir():
        return []
    files = [p.relative_to(kml_dir) for p in kml_dir.rglob("*") if p.is_file()]
    return sorted(p for p in files if _is_kml_source(p))


def kml_sources_hash(kml_dir: Path) -> str:
    """Hash of the KML sources (names and contents); constant if absent."""
    return _kml_hash(_read_kml(kml_dir))


def _read_kml(kml_dir: Path) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(rel), (kml_dir / rel).read_bytes()) for rel in kml_source_files(kml_dir))


def _kml_hash(files: Sequence[tuple[str, bytes]]) -> str:
    parts = ["kml"]
    for rel, data in files:
        parts += [rel, hashlib.sha256(data).hexdigest()]
    return _sha256_parts(*parts)


def patch_series(patches_dir: Path) -> list[Path]:
    """The ordered patches: from a quilt-style ``series`` file if present.

    Without a series file, every ``*.patch`` in name order (hence the
    ``0001-`` prefixes). In a series file, blank lines and ``#`` comments
    are ignored and only the first word of a line (the patch name) is used.
    """
    if not patches_dir.is_dir():
        return []
    series = patches_dir / "series"
    if not series.exists():
        return sorted(patches_dir.glob("*.patch"))
    result = []
    for n, raw in enumerate(series.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        patch = patches_dir / line.split()[0]
        if not patch.is_file():
            raise KernelBuildError(f"{series}:{n}: patch {patch.name} does not exist")
        result.append(patch)
    return result


def unlisted_patches(patches_dir: Path) -> list[Path]:
    """``*.patch`` files a ``series`` file leaves out (they are NOT applied).

    Worth a warning: with a series file, dropping a new patch into the
    directory is not enough, and forgetting to list it is easy.
    """
    if not (patches_dir / "series").exists():
        return []
    listed = set(patch_series(patches_dir))
    return [p for p in sorted(patches_dir.glob("*.patch")) if p not in listed]


def patch_series_hash(patches: Sequence[Path]) -> str:
    """Hash of the series: order, names and contents of every patch."""
    return _series_hash([(p, p.read_bytes()) for p in patches])


def _series_hash(patches: Sequence[tuple[Path, bytes]]) -> str:
    parts = ["patches"]
    for p, data in patches:
        parts += [p.name, hashlib.sha256(data).hexdigest()]
    return _sha256_parts(*parts)


@dataclass(frozen=True)
class TreeInputs:
    """KML sources and patches, read once.

    KML is being edited while kernels build: hashing the files at one
    moment and copying them a few seconds later could file a tree under
    the wrong key. Everything downstream uses these bytes instead.
    """

    kml_dir: Path
    kml_files: tuple[tuple[str, bytes], ...]  # (path relative to kml_dir, contents)
    patches: tuple[tuple[Path, bytes], ...]  # in series order

    @property
    def kml_hash(self) -> str:
        return _kml_hash(self.kml_files)

    @property
    def series_hash(self) -> str:
        return _series_hash(self.patches)


def read_tree_inputs(kml_dir: Path, patches_dir: Path) -> TreeInputs:
    """Snapshot ``kernel/kml/`` and the patch series."""
    patches = tuple((p, p.read_bytes()) for p in patch_series(patches_dir))
    return TreeInputs(kml_dir, _read_kml(kml_dir), patches)


def install_kml(tree: Path, inputs: TreeInputs, log: Log) -> None:
    """Write the KML sources (kernel/kml/, the single source of truth) to ``lib/kml/``."""
    if not inputs.kml_files:
        log(f"no KML sources in {inputs.kml_dir}; building without KML")
        return
    dest = tree / "lib" / "kml"
    if dest.exists():
        raise KernelBuildError(f"{dest} already exists in the source; refusing to overwrite it")
    for rel, data in inputs.kml_files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    log(f"copied {len(inputs.kml_files)} KML source files from {inputs.kml_dir} to lib/kml/")


def apply_patches(tree: Path, patches: Sequence[Path], log: Log) -> None:
    """Apply the series in order with ``patch -p1 --forward --batch``.

    ``--forward`` makes an already-applied patch an error instead of
    silently reverting it. On failure the error names the patch and shows
    the rejected hunks (from the ``.rej`` files), which is what one needs
    to rebase it.
    """
    for p in patches:
        apply_patch(tree, p, p.read_bytes(), log)


def apply_patch(tree: Path, patch: Path, data: bytes, log: Log) -> None:
    """Apply one patch (its contents ``data``, fed on stdin); see apply_patches."""
    log(f"applying {patch.name}")
    proc = procs.run(
        ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-d", str(tree)],
        input=data,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    out = proc.stdout.decode(errors="replace")
    for line in out.splitlines():
        log("  " + line)
    if proc.returncode == 0:
        return
    rejects = []
    for rel in re.findall(r"saving rejects to file (.+)$", out, re.MULTILINE):
        rej = tree / rel.strip()
        text = rej.read_text(errors="replace") if rej.is_file() else "(missing)"
        rejects.append(f"--- {rel.strip()}\n{text.rstrip()}")
    msg = f"patch {patch.name} does not apply ({patch}):\n{out.rstrip()}"
    if rejects:
        msg += "\nrejected hunk(s):\n" + "\n".join(rejects)
    raise PatchError(patch, msg)


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
        _run(["make", "mrproper"], dest, log, f"make mrproper in the copy of {src}")


def _extract(tarball: Path, into: Path, log: Log) -> Path:
    """Extract a tarball; return the tree root (its single top directory)."""
    log(f"extracting {tarball}")
    _run(["tar", "-xf", str(tarball), "--no-same-owner", "-C", str(into)], into, log, "tar")
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
    key = _sha256_parts(_CACHE_VERSION, "pristine", src.source_id)
    root_dir = cache / "src" / "pristine"
    final = root_dir / key
    with _locked(root_dir / f"{key}.lock", "extracting the kernel source", log):
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


def _patched_paths(data: bytes) -> set[str]:
    """Files (relative to the tree) a ``-p1`` patch may modify."""
    found: set[str] = set()
    for line in data.decode(errors="replace").splitlines():
        m = re.match(r"^diff --git a/(\S+) b/(\S+)", line)
        if m:
            found.update(m.groups())
            continue
        m = re.match(r"^(?:---|\+\+\+) (\S+)", line)
        if m and m.group(1) != "/dev/null" and "/" in m.group(1):
            found.add(m.group(1).split("/", 1)[1])
    return found


def _unshare(tree: Path, rels: set[str]) -> None:
    """Give hard-linked files their own inode before they are modified.

    Otherwise patching the prepared tree would also change the pristine
    source and every other prepared tree linked to it.
    """
    for rel in sorted(rels):
        path = tree / rel
        if path.is_file() and not path.is_symlink() and path.stat().st_nlink > 1:
            tmp = path.with_name(f".{path.name}.kmlbench-unshare")
            shutil.copy2(path, tmp)
            os.replace(tmp, path)


def prepared_tree_key(source_id: str, kml_hash: str, series_hash: str) -> str:
    """Key of a prepared tree: what it was extracted from and what went in."""
    return _sha256_parts(_CACHE_VERSION, "src", source_id, kml_hash, series_hash)


def prepare_tree(
    src: ResolvedSource,
    cache: Path,
    log: Log = print,
    *,
    kml_dir: Path = paths.KML_SRC_DIR,
    patches_dir: Path = paths.PATCHES_DIR,
    inputs: TreeInputs | None = None,
) -> Path:
    """The source with KML and the patches in, at ``cache/src/<key>/``.

    Not used by :func:`build_kernel` any more (it syncs one work tree per
    source instead, see :func:`sync_work_tree`); kept for callers that want
    a standalone, content-keyed tree.

    ``inputs`` (a snapshot of ``kml_dir`` and ``patches_dir``) is read here
    unless the caller already took one for its own keys. The tree is a
    hard-linked copy of :func:`pristine_tree`; files a patch touches are
    unshared first. Nothing writes into a prepared tree afterwards (builds
    are ``O=``), so the links are never modified in place.

    Work happens in a temp dir next to the final one and is renamed into
    place only when complete, so an interrupted extraction or a failed
    patch never leaves a half tree that looks ready. A lock per key makes
    concurrent kmlbench processes wait for each other instead of racing.
    """
    if inputs is None:
        inputs = read_tree_inputs(kml_dir, patches_dir)
    key = prepared_tree_key(src.source_id, inputs.kml_hash, inputs.series_hash)
    src_root = cache / "src"
    final = src_root / key
    with _locked(src_root / f"{key}.lock", "preparing the kernel tree", log):
        if (final / _PREPARED_STAMP).exists():
            return final
        if final.exists():  # not ours: no stamp, so not complete
            shutil.rmtree(final)
        for stale in src_root.glob(f".tmp-{key}-*"):  # left by a killed process
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=src_root, prefix=f".tmp-{key}-"))
        try:
            pristine = pristine_tree(src, cache, log)
            root = tmp / "linux"
            _run(["cp", "-al", str(pristine), str(root)], tmp, log, "cp -al (link the source)")
            install_kml(root, inputs, log)
            for patch, data in inputs.patches:
                _unshare(root, _patched_paths(data))
                apply_patch(root, patch, data, log)
            stamp = {
                "source_id": src.source_id,
                "source": str(src.path),
                "kml_dir": str(inputs.kml_dir),
                "kml_sources_hash": inputs.kml_hash,
                "patches": [p.name for p, _ in inputs.patches],
                "patch_series_hash": inputs.series_hash,
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (root / _PREPARED_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
            os.rename(root, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"prepared tree: {final}")
    return final


# --------------------------------------------------------------------------
# 2b. the persistent work tree: incremental builds across KML/patch edits
#
# build_kernel compiles in one work tree per source id, synced on every miss
# to the desired content (pristine + KML + patches), with one persistent
# object dir per requested config. Only files whose content changed are
# rewritten (with a fresh mtime), so make recompiles what changed; the
# finished build is then copied to the content-keyed cache/builds/<key>/.

_WORK_STATE = "state.json"
_WORK_DIRTY = "dirty"
_WORK_VERSION = 1


@dataclass(frozen=True)
class _Content:
    """What one path of a tree holds: a file (bytes, mode) or a symlink."""

    data: bytes = b""
    mode: int = 0o644
    link: str | None = None

    def digest(self) -> str:
        if self.link is not None:
            return "link:" + self.link
        return hashlib.sha256(self.data).hexdigest()


_DIRECTORY = _Content(link="\0directory")  # never equal to anything we want


def _read_content(path: Path) -> _Content | None:
    """The content at ``path`` (not following a final symlink); None if absent."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return _Content(link=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return _DIRECTORY
    return _Content(path.read_bytes(), stat.S_IMODE(st.st_mode))


def _put_content(tree: Path, rel: str, want: _Content | None) -> None:
    """Make ``tree/rel`` hold ``want`` (None: absent), as a new inode.

    Written to a temp file and renamed over the old entry, never modified
    in place: the old entry may be a hard link to the pristine source. The
    new file gets the current mtime, so make rebuilds what depends on it.
    """
    path = tree / rel
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    if want is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.kmlbench-sync")
    tmp.unlink(missing_ok=True)
    if want.link is not None:
        os.symlink(want.link, tmp)
    else:
        tmp.write_bytes(want.data)
        os.chmod(tmp, want.mode)
    os.replace(tmp, path)


def _remove_empty_dirs(tree: Path, pristine: Path, rel: str) -> None:
    """rmdir the now-empty parents of ``rel`` that the pristine source lacks."""
    parent = Path(rel).parent
    while parent != Path("."):
        if (pristine / parent).exists():
            return
        try:
            (tree / parent).rmdir()
        except OSError:  # not empty, or already gone
            if (tree / parent).exists():
                return
        parent = parent.parent


def desired_overlay(
    pristine: Path, inputs: TreeInputs, scratch: Path, log: Log
) -> dict[str, _Content | None]:
    """Every path KML or the patches put in the tree, with its content (None: absent).

    Computed without touching any tree: the files the patches name are
    copied from ``pristine`` into ``scratch`` (with the KML sources in
    ``lib/kml/``) and the series is applied there, so a patch that does not
    apply raises :class:`PatchError` (naming it and its rejected hunks)
    before the work tree is modified.
    """
    kml = {f"lib/kml/{rel}": data for rel, data in inputs.kml_files}
    if kml and (pristine / "lib" / "kml").exists():
        dest = pristine / "lib" / "kml"
        raise KernelBuildError(f"{dest} already exists in the source; refusing to overwrite it")
    if not kml:
        log(f"no KML sources in {inputs.kml_dir}; building without KML")
    want: dict[str, _Content | None] = {rel: _Content(data) for rel, data in kml.items()}
    if not inputs.patches:
        return want
    touched: set[str] = set()
    for _, data in inputs.patches:
        touched |= _patched_paths(data)
    for rel in sorted(touched):
        src = pristine / rel
        if src.is_file() or src.is_symlink():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, scratch / rel, follow_symlinks=False)
    for rel, data in kml.items():
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(data)
    for patch, data in inputs.patches:
        apply_patch(scratch, patch, data, log)
    for rel in sorted(touched | set(kml)):
        want[rel] = _read_content(scratch / rel)
    return want


def work_dir(cache: Path, source_id: str) -> Path:
    """``cache/work/<16 hex digits of the source id's hash>/``."""
    return Path(cache) / "work" / _sha256_parts(_CACHE_VERSION, "work", source_id)[:16]


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tree_looks_usable(tree: Path) -> bool:
    """A work tree exists and was never configured in-tree (kbuild would refuse O=)."""
    return (
        (tree / "Makefile").is_file()
        and not (tree / ".config").exists()
        and not (tree / "include" / "config").exists()
    )


def sync_work_tree(
    pristine: Path, work: Path, inputs: TreeInputs, source_id: str, log: Log
) -> Path:
    """Bring ``work/linux`` to pristine + KML + patches; return it.

    Only paths of the previous or the new overlay are looked at, and only
    those whose content differs are rewritten (as new files, never through
    a hard link to ``pristine``): unchanged files keep their mtimes, so an
    incremental ``make`` rebuilds just what changed. Paths no longer
    overlaid get their pristine content back (or are removed).

    ``work/state.json`` records the overlay (path: sha256) after a complete
    sync; ``work/dirty`` lists the paths a sync in progress may touch and
    is removed when it is done. A dirty marker, a missing or foreign state
    or a tree that looks wrong makes the tree be re-linked from
    ``pristine``: every path that may differ from what the object dirs were
    built from is then rewritten with a fresh mtime; if those paths are
    unknown, the object dirs are removed (the next build is cold). The
    caller holds the work dir's lock.
    """
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "linux"
    for stale in work.glob(".scratch-*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(dir=work, prefix=".scratch-"))
    try:
        want = desired_overlay(pristine, inputs, scratch, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    for attempt in range(2):
        state = _read_json(work / _WORK_STATE)
        previous: set[str] | None = None
        if (
            isinstance(state, dict)
            and state.get("version") == _WORK_VERSION
            and state.get("source_id") == source_id
            and isinstance(state.get("overlay"), dict)
        ):
            previous = set(state["overlay"])
        dirty = (work / _WORK_DIRTY).exists()
        marker = _read_json(work / _WORK_DIRTY) if dirty else []
        known: set[str] | None = None
        if previous is not None and isinstance(marker, list):
            known = previous | {str(p) for p in marker}
        elif not tree.exists() and not list(work.glob("obj-*")):
            known = set()  # a first sync: nothing was ever built here
        broken = attempt > 0 or dirty or previous is None or not _tree_looks_usable(tree)
        if known is None:
            log(f"work tree {tree}: state unknown; removing its object dirs (next build is cold)")
            for obj in work.glob("obj-*"):
                shutil.rmtree(obj)
            known = set()
        if tree.is_dir() and (tree / "lib" / "kml").is_dir():
            # Whatever is in lib/kml (absent from pristine) goes unless wanted.
            known |= {
                str(p.relative_to(tree)) for p in (tree / "lib" / "kml").rglob("*") if p.is_file()
            }
        paths_ = set(want) | known
        atomic_write(work / _WORK_DIRTY, json.dumps(sorted(paths_), indent=0) + "\n")
        try:
            if broken:
                if tree.exists() or tree.is_symlink():
                    log(f"re-linking the work tree {tree} from {pristine}")
                    shutil.rmtree(tree)
                else:
                    log(f"creating the work tree {tree} (cp -al {pristine})")
                _run(["cp", "-al", str(pristine), str(tree)], work, log, "cp -al (link the source)")
            force = known if broken else set()
            changed = []
            for rel in sorted(paths_):
                target = want[rel] if rel in want else _read_content(pristine / rel)
                current = _read_content(tree / rel)
                if current == target and (rel not in force or target is None):
                    continue
                _put_content(tree, rel, target)
                if target is None:
                    _remove_empty_dirs(tree, pristine, rel)
                changed.append(rel)
        except (OSError, KernelBuildError) as e:
            if attempt > 0:
                raise KernelBuildError(f"cannot sync the work tree {tree}: {e}") from e
            log(f"syncing the work tree failed ({e}); re-linking it from the pristine source")
            continue
        new_state = {
            "version": _WORK_VERSION,
            "source_id": source_id,
            "kml_dir": str(inputs.kml_dir),
            "kml_sources_hash": inputs.kml_hash,
            "patches": [p.name for p, _ in inputs.patches],
            "patch_series_hash": inputs.series_hash,
            "overlay": {rel: (c.digest() if c else None) for rel, c in sorted(want.items())},
            "synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write(work / _WORK_STATE, json.dumps(new_state, indent=1) + "\n")
        (work / _WORK_DIRTY).unlink()
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        shown = f" ({', '.join(changed[:5])}{more})" if changed else ""
        log(f"work tree {tree}: {len(changed)} file(s) changed{shown}")
        break
    return tree


def _obj_dir_key(fragment_texts: Sequence[str], compiler: str, toolchain: str) -> str:
    """Object dir of a work tree: per requested config (fragments) and toolchain.

    Not per final .config, so an edit to KML's Kconfig is an incremental
    build too (kbuild tracks config changes per symbol).
    """
    return _sha256_parts(_CACHE_VERSION, "obj", compiler, toolchain, *fragment_texts)[:16]


def _affects_kconfig(rel: str) -> bool:
    """Whether an overlaid file may change what configuring produces.

    C sources and headers, Kbuild files and subdirectory Makefiles cannot
    (Kconfig does not read them); Kconfig files, config fragments
    (``tinyconfig`` merges ``kernel/configs/tiny.config``), ``scripts/``, the
    top and arch Makefiles (included for config targets) and anything
    unknown are assumed to.
    """
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith("scripts/") or rel == "Makefile" or re.match(r"arch/[^/]+/Makefile", rel):
        return True
    inert = name in ("Kbuild", "Makefile") or name.endswith((".c", ".h", ".S", ".rst", ".md"))
    return not inert


def _kconfig_memo_key(
    source_id: str,
    overlay: dict[str, str | None],
    fragment_texts: Sequence[str],
    compiler: str,
    toolchain: str,
) -> str:
    """Key of a final .config by what Kconfig reads: ``kconfig-<sha256>``.

    The pristine source, the overlaid files that may affect Kconfig (with
    their hashes), the fragments and the toolchain. An edit of a KML C
    file or a patch to a C file keeps it, so the build skips configuring.
    """
    kconfig = {rel: h for rel, h in sorted(overlay.items()) if _affects_kconfig(rel)}
    parts = [_CACHE_VERSION, "kconfig", source_id, compiler, toolchain, json.dumps(kconfig)]
    return "kconfig-" + _sha256_parts(*parts, *fragment_texts)


def _reuse_config(tree: Path, obj: Path, memo: Path, log: Log, note: Log) -> str | None:
    """The memoized final .config for these Kconfig inputs, put in ``obj``; or None.

    Configuring takes three make runs (about 5-9 s); nothing Kconfig reads
    has changed since the memo was written (its key says so), so its text
    is the result. Already in ``obj/.config``: nothing to do (the file keeps
    its mtime); otherwise it is written and ``olddefconfig`` run, which must
    leave it as it is.
    """
    try:
        text = memo.read_text()
    except OSError:
        return None
    cfg = obj / ".config"
    with contextlib.suppress(OSError):
        if cfg.read_text() == text:
            note(f"configuration unchanged (no Kconfig input changed): {cfg}")
            return text
    obj.mkdir(parents=True, exist_ok=True)
    cfg.write_text(text)
    _run(["make", f"O={obj}", "olddefconfig"], tree, log, "make olddefconfig")
    if config_hash(cfg.read_text()) != config_hash(text):
        log(f"{memo} does not survive olddefconfig; configuring from scratch")
        return None
    note(f"configuration reused (no Kconfig input changed): {cfg}")
    return text


def _built_modules(obj: Path) -> dict[str, Path]:
    """The modules of the last build in ``obj``: those ``modules.order`` lists.

    An object dir is reused across KML versions, so a ``.ko`` of a module
    that no longer exists may still lie around; modules.order does not
    list it.
    """
    order = obj / "modules.order"
    if not order.is_file():
        return collect_modules(obj)
    result = {}
    for line in order.read_text().splitlines():
        rel = line.strip()
        if rel.endswith(".o"):
            rel = rel[:-2] + ".ko"
        if rel and (obj / rel).is_file():
            result[Path(rel).stem] = obj / rel
    return result


def _publish(obj: Path, builds: Path, key: str, stamp: dict, log: Log) -> Path:
    """Copy a finished object dir to ``builds/<key>/`` with its stamp, atomically.

    A full copy (about 230 MB, a second or two): the object dir is rebuilt
    in place by the next build, so hard links would be modified under the
    published copy. The caller holds the build key's lock.
    """
    final = builds / key
    for stale in builds.glob(f".publish-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=builds, prefix=f".publish-{key}-"))
    try:
        _run(["cp", "-a", f"{obj}/.", str(tmp)], builds, log, "cp -a (publish the build)")
        atomic_write(tmp / _BUILD_STAMP, json.dumps(stamp, indent=1) + "\n")
        if final.exists():  # without a stamp: an interrupted build of the old layout
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --------------------------------------------------------------------------
# 3. config


def parse_config_lines(text: str) -> dict[str, tuple[str, int]]:
    """``{symbol: (normalized line, line number)}`` of a .config or fragment.

    ``CONFIG_X=n`` is normalized to ``# CONFIG_X is not set`` (what Kconfig
    writes); later lines win, as they do in merge_config.sh.
    """
    result: dict[str, tuple[str, int]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = _SET_RE.match(line)
        if m:
            sym, val = m.groups()
            norm = f"# {sym} is not set" if val == "n" else f"{sym}={val}"
            result[sym] = (norm, n)
            continue
        m = _UNSET_RE.match(line)
        if m:
            result[m.group(1)] = (f"# {m.group(1)} is not set", n)
    return result


def check_config(
    final_config: str, fragments: Sequence[Path], texts: Sequence[str] | None = None
) -> list[ConfigMiss]:
    """Requested options that the final .config does not have as asked.

    Each symbol is checked against the last fragment that mentions it (the
    one merge_config.sh let win). ``# CONFIG_X is not set`` is satisfied
    by the symbol being absent too: a symbol hidden by an unmet dependency
    is, in effect, not set. ``texts``, if given, are the fragments'
    contents (a snapshot); otherwise the files are read.
    """
    if texts is None:
        texts = [f.read_text() for f in fragments]
    requested: dict[str, tuple[str, Path, int]] = {}
    for frag, text in zip(fragments, texts, strict=True):
        for sym, (line, n) in parse_config_lines(text).items():
            requested[sym] = (line, frag, n)
    final = {sym: line for sym, (line, _) in parse_config_lines(final_config).items()}
    misses = []
    for sym, (want, frag, n) in requested.items():
        have = final.get(sym, "")
        # "is not set" is also met by an absent (hidden) symbol.
        ok = have in ("", want) if want.startswith("#") else have == want
        if not ok:
            misses.append(ConfigMiss(sym, want, have, frag, n))
    return misses


def _kconfig_hints(tree: Path, symbols: set[str]) -> dict[str, str]:
    """Where each symbol is defined and what it depends on, for error messages.

    Only a hint (enclosing ``if``/``menu`` dependencies are not followed),
    but it turns "CONFIG_X was dropped" into "CONFIG_X depends on Y".
    """
    names = {s.removeprefix("CONFIG_") for s in symbols}
    hints: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith("Kconfig"):
                continue
            path = Path(dirpath) / fn
            current: str | None = None
            for line in path.read_text(errors="replace").splitlines():
                m = re.match(r"^\s*(?:menu)?config\s+(\w+)\s*$", line)
                if m:
                    current = m.group(1) if m.group(1) in names else None
                    if current:
                        hints.setdefault(current, []).append(f"defined in {path.relative_to(tree)}")
                    continue
                if re.match(r"^\s*(choice|endchoice|menu|endmenu|if|endif|source|comment)\b", line):
                    current = None
                    continue
                dep = re.match(r"^\s*depends on\s+(.*)$", line)
                if current and dep:
                    hints[current].append(f"depends on {dep.group(1).strip()}")
    return {f"CONFIG_{name}": "; ".join(h) for name, h in hints.items()}


def format_config_misses(misses: Sequence[ConfigMiss], tree: Path | None = None) -> str:
    """One line per dropped option: what was asked, where, what came out."""
    hints = _kconfig_hints(tree, {m.symbol for m in misses}) if tree else {}
    lines = [f"{len(misses)} requested config option(s) did not survive olddefconfig:"]
    for m in misses:
        got = f"final .config has '{m.actual}'" if m.actual else "absent from the final .config"
        hint = hints.get(m.symbol)
        if tree is not None and hint is None:
            hint = "no such symbol in this kernel's Kconfig"
        lines.append(
            f"  {m.requested}  ({m.fragment}:{m.line}): {got}" + (f" [{hint}]" if hint else "")
        )
    lines.append("Enable the missing dependencies in the same fragment, or drop the option.")
    return "\n".join(lines)


def config_hash(config_text: str) -> str:
    """sha256 of a .config without its comments and blank lines.

    ``# CONFIG_X is not set`` lines are kept (they are settings); the header
    comments carry the kernel version and sometimes a timestamp, which
    must not make identical configs hash differently.
    """
    keep = [
        line.strip()
        for line in config_text.splitlines()
        if line.strip() and (not line.startswith("#") or _UNSET_RE.match(line.strip()))
    ]
    return hashlib.sha256(("\n".join(keep) + "\n").encode()).hexdigest()


def config_fragments(
    req_fragments: Sequence[Path], configs_dir: Path = paths.CONFIGS_DIR
) -> list[Path]:
    """base.config, kml.config (if present), then the request's fragments.

    A request fragment that is a bare relative name not found from the
    current directory is looked up in ``kernel/configs/``. A fragment listed
    twice (say a matrix naming base.config) is merged once, where it first
    appears.
    """
    result = [configs_dir / "base.config"]
    if (configs_dir / "kml.config").exists():
        result.append(configs_dir / "kml.config")
    for frag in req_fragments:
        frag = Path(frag)
        if not frag.is_absolute() and not frag.exists() and (configs_dir / frag).exists():
            frag = configs_dir / frag
        result.append(frag)
    for frag in result:
        if not frag.is_file():
            raise KernelBuildError(f"config fragment {frag} does not exist")
    return list(dict.fromkeys(f.resolve() for f in result))


def configure(
    tree: Path,
    build_dir: Path,
    fragments: Sequence[Path],
    log: Log = print,
    texts: Sequence[str] | None = None,
) -> str:
    """Write the final .config into ``build_dir``; return its text.

    tinyconfig first (so that only what the fragments ask for is built:
    a small kernel compiles in minutes), then the fragments merged in
    order, then olddefconfig to resolve dependencies, then the survival
    check, since olddefconfig silently drops what it cannot satisfy.

    With ``texts`` (the fragments' contents, snapshotted by the caller),
    those are merged instead of re-reading the files, so that an edit in
    the middle cannot make the config disagree with its cache key; errors
    still name the original fragment files.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    if texts is None:
        texts = [f.read_text() for f in fragments]
    snap_dir = build_dir / ".kmlbench-fragments"
    snap_dir.mkdir(exist_ok=True)
    merged = []
    for i, (frag, text) in enumerate(zip(fragments, texts, strict=True)):
        merged.append(snap_dir / f"{i:02d}-{frag.name}")
        merged[-1].write_text(text)
    _run(["make", f"O={build_dir}", "tinyconfig"], tree, log, "make tinyconfig")
    merge = tree / "scripts" / "kconfig" / "merge_config.sh"
    # cwd=build_dir: merge_config.sh puts its temp files in the current dir.
    cmd = [merge, "-m", "-O", build_dir, build_dir / ".config", *merged]
    _run(cmd, build_dir, log, "merge_config.sh")
    _run(["make", f"O={build_dir}", "olddefconfig"], tree, log, "make olddefconfig")
    text = (build_dir / ".config").read_text()
    misses = check_config(text, fragments, texts)
    if misses:
        raise ConfigError(format_config_misses(misses, tree), misses)
    return text


# --------------------------------------------------------------------------
# 4. build


def build_key(source_id: str, series_hash: str, kml_hash: str, cfg_hash: str, compiler: str) -> str:
    """Everything that determines the kernel binary, hashed."""
    return _sha256_parts(_CACHE_VERSION, source_id, series_hash, kml_hash, cfg_hash, compiler)


_ERROR_RE = re.compile(r"error:|Error:|undefined reference|fatal error|No rule to make target")


def error_summary(log_text: str, limit: int = 20) -> str:
    """The last ``limit`` lines around compiler/linker errors in a build log.

    With ``-j`` make keeps going after the first error and buries it under
    other output; the ``error:`` lines and their neighbours are what tell
    the user what broke. Falls back to make's ``***`` lines, then the tail.
    """
    lines = log_text.splitlines()
    hits = [i for i, line in enumerate(lines) if _ERROR_RE.search(line)]
    if not hits:
        hits = [i for i, line in enumerate(lines) if "***" in line]
    if not hits:
        return "\n".join(lines[-limit:])
    chosen: list[int] = []
    for i in hits:
        for j in range(max(0, i - 2), min(len(lines), i + 3)):
            if not chosen or j > chosen[-1]:
                chosen.append(j)
    return "\n".join(lines[j] for j in chosen[-limit:])


def _wants_modules(config_text: str) -> bool:
    """``make modules`` only makes sense with CONFIG_MODULES=y and some =m."""
    cfg = parse_config_lines(config_text)
    if cfg.get("CONFIG_MODULES", ("",))[0] != "CONFIG_MODULES=y":
        return False
    return any(line.endswith("=m") for line, _ in cfg.values())


def collect_modules(build_dir: Path) -> dict[str, Path]:
    """``{module name: path}`` of every ``.ko`` in the build dir."""
    return {p.stem: p for p in sorted(build_dir.rglob("*.ko"))}


def compile_kernel(
    tree: Path, build_dir: Path, build_log: Path, log_files: Sequence[Path], jobs: int, log: Log
) -> None:
    """``make bzImage [modules]``, output streamed into ``build_log`` and ``log_files``.

    ``build_log`` starts empty on every attempt (so the error summary read
    from it is about this attempt); the ``log_files`` are appended to.
    """
    targets = ["bzImage"]
    if _wants_modules((build_dir / ".config").read_text()):
        targets.append("modules")
    argv = ["make", f"O={build_dir}", f"-j{jobs}", *targets]
    log("$ " + " ".join(argv) + f"  (output: {build_log})")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(build_log.open("w", buffering=1))]
        outs += [stack.enter_context(p.open("a", buffering=1)) for p in log_files if p != build_log]
        for out in outs:
            out.write("$ " + " ".join(argv) + "\n")
        proc = procs.popen(  # dies with us even when we are SIGKILLed mid-build
            argv,
            die_with_parent=True,
            cwd=tree,
            env=_make_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                for out in outs:
                    out.write(line)
        except BaseException:  # e.g. KeyboardInterrupt: don't leave make or its compilers running
            procs.stop(proc)
            raise
        rc = proc.wait()
        procs.stop(proc, grace_s=0)  # anything make left behind; forgets the group
    elapsed = time.monotonic() - started
    if rc != 0:
        summary = error_summary(build_log.read_text(errors="replace"))
        raise KernelBuildError(
            f"kernel build failed (make exit {rc} after {elapsed:.0f}s):\n{summary}", build_log
        )
    log(f"kernel built in {elapsed:.0f}s")


def _read_stamp(build_dir: Path) -> dict | None:
    """The completed-build stamp, if the build dir holds a finished build."""
    try:
        stamp = json.loads((build_dir / _BUILD_STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not (build_dir / "arch" / "x86" / "boot" / "bzImage").is_file():
        return None
    return stamp if isinstance(stamp, dict) else None


def _remove_stale_scratch(builds: Path, max_age_s: float = 86400) -> None:
    """Remove scratch dirs of killed processes (older than a day).

    Config scratch dirs (``.config-*``, from before the work tree) and
    half-copied builds (``.publish-*``): a live one is seconds old.
    """
    now = time.time()
    for d in [*builds.glob(".config-*"), *builds.glob(".publish-*")]:
        with contextlib.suppress(OSError):
            if now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)


def _config_memo_key(
    prep_key: str, fragment_texts: Sequence[str], compiler: str, toolchain: str
) -> str:
    """Key of a memoized final .config: fragment contents, not their paths.

    So the same fragments from another checkout (or a test's copy) hit too.
    """
    parts = [_CACHE_VERSION, "config", prep_key, compiler, toolchain, *fragment_texts]
    return _sha256_parts(*parts)


def _toolchain_fingerprint() -> str:
    """Versions of the tools Kconfig probes besides gcc (ld, pahole, rustc).

    6.1's Kconfig records LD_VERSION, PAHOLE_VERSION and Rust availability
    in .config, so a memoized config is only valid for the same tools.
    """
    lines = []
    for tool in (["ld", "--version"], ["pahole", "--version"], ["rustc", "--version"]):
        try:
            out = procs.run(tool, capture_output=True, text=True, check=False).stdout
        except OSError:
            out = ""
        lines.append(out.splitlines()[0] if out else f"{tool[0]}: none")
    return "\n".join(lines)


def build_kernel(
    req: KernelRequest,
    cache: Path,
    log_dir: Path,
    *,
    progress: Log | None = _print_progress,
    jobs: int | None = None,
    kml_dir: Path = paths.KML_SRC_DIR,
    patches_dir: Path = paths.PATCHES_DIR,
    configs_dir: Path = paths.CONFIGS_DIR,
) -> KernelBuild:
    """Build the kernel for ``req``, or return the cached build.

    Everything goes to ``log_dir/kernel-<request hash>.log``; ``progress``
    gets the few lines a person waiting at a terminal wants (stderr by
    default, None for silence).

    A cache hit is decided before anything is extracted or configured:
    the final .config of an earlier identical request (same KML sources,
    patches, fragments and toolchain) is memoized in ``cache/configs/``, so
    a warm run only hashes a few small files. On a miss, under the work
    tree's lock, the work tree is synced to the inputs, configured and
    built incrementally in its object dir for these fragments, and the
    result is published to ``cache/builds/<build_key>/`` under that key's
    lock (the build key depends on the final .config, so it is only known
    after configuring).
    """
    cache = Path(cache)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    fragments = config_fragments(req.fragments, configs_dir)
    req_id = _sha256_parts(json.dumps(req.source, sort_keys=True), *map(str, fragments))[:12]
    log_path = log_dir / f"kernel-{req_id}.log"
    log_path.write_text("")

    def _log(msg: str) -> None:
        with log_path.open("a") as f:
            f.write(msg + "\n")

    def _note(msg: str) -> None:
        _log(msg)
        if progress is not None:
            progress(msg)

    try:
        return _build_kernel(
            req,
            cache,
            log_path,
            fragments,
            _log,
            _note,
            jobs or _default_jobs(),
            kml_dir,
            patches_dir,
        )
    except KernelBuildError as e:
        _log(f"ERROR: {e}")
        if e.log_path is None:  # point at the full log, keeping the type (ConfigError, ...)
            e.log_path = log_path
            e.args = (f"{e}\n(full log: {log_path})",)
        raise


def _build_kernel(
    req: KernelRequest,
    cache: Path,
    log_path: Path,
    fragments: list[Path],
    log: Log,
    note: Log,
    jobs: int,
    kml_dir: Path,
    patches_dir: Path,
) -> KernelBuild:
    src = resolve_source(req.source, cache, note)
    log(f"source: {src.path} ({src.source_id})")
    compiler = compiler_version()
    inputs = read_tree_inputs(kml_dir, patches_dir)
    kml_hash, series_hash = inputs.kml_hash, inputs.series_hash
    fragment_texts = [f.read_text() for f in fragments]
    for p in unlisted_patches(patches_dir):
        note(f"warning: {p.name} is not listed in {patches_dir / 'series'}; not applied")
    prep_key = prepared_tree_key(src.source_id, kml_hash, series_hash)
    toolchain = _toolchain_fingerprint()
    memo = cache / "configs" / _config_memo_key(prep_key, fragment_texts, compiler, toolchain)
    builds = cache / "builds"

    def result(
        build_dir: Path, compiled: bool, key: str, cfg_hash: str, stamp: dict | None = None
    ) -> KernelBuild:
        # On a hit the stamp lists the modules: no walk of the build dir.
        listed = (stamp or {}).get("modules")
        if isinstance(listed, dict):
            modules = {name: build_dir / rel for name, rel in listed.items()}
        else:
            modules = collect_modules(build_dir)
        return KernelBuild(
            bzimage=build_dir / "arch" / "x86" / "boot" / "bzImage",
            build_dir=build_dir,
            config_path=build_dir / ".config",
            log_path=log_path,
            build_key=key,
            source_id=src.source_id,
            patch_series_hash=series_hash,
            config_hash=cfg_hash,
            compiler=compiler,
            compiled=compiled,
            modules=modules,
        )

    # Fast path: an identical request was configured and built before.
    if memo.is_file():
        cfg_hash = config_hash(memo.read_text())
        key = build_key(src.source_id, series_hash, kml_hash, cfg_hash, compiler)
        build_dir = builds / key
        stamp = _read_stamp(build_dir)
        if stamp and stamp.get("config_hash") == cfg_hash:
            note(f"cache hit: {build_dir} (compile log: {build_dir / _BUILD_LOG})")
            return result(build_dir, False, key, cfg_hash, stamp)

    pristine = pristine_tree(src, cache, note)
    work = work_dir(cache, src.source_id)
    obj = work / f"obj-{_obj_dir_key(fragment_texts, compiler, toolchain)}"
    with _locked(work.parent / f"{work.name}.lock", "using the kernel work tree", note):
        # Someone may have built this very kernel while we waited.
        if memo.is_file():
            cfg_hash = config_hash(memo.read_text())
            key = build_key(src.source_id, series_hash, kml_hash, cfg_hash, compiler)
            stamp = _read_stamp(builds / key)
            if stamp and stamp.get("config_hash") == cfg_hash:
                note(f"cache hit: {builds / key} (compile log: {builds / key / _BUILD_LOG})")
                return result(builds / key, False, key, cfg_hash, stamp)
        tree = sync_work_tree(pristine, work, inputs, src.source_id, note)
        state = _read_json(work / _WORK_STATE)
        kconfig_memo = None
        if isinstance(state, dict) and isinstance(state.get("overlay"), dict):
            kconfig_key = _kconfig_memo_key(
                src.source_id, state["overlay"], fragment_texts, compiler, toolchain
            )
            kconfig_memo = cache / "configs" / kconfig_key
        config_text = kconfig_memo and _reuse_config(tree, obj, kconfig_memo, log, note)
        if not config_text:
            names = ", ".join(f.name for f in fragments)
            note(f"configuring ({names}) in {obj}; log: {log_path}")
            config_text = configure(tree, obj, fragments, log, fragment_texts)
            if kconfig_memo:
                atomic_write(kconfig_memo, config_text)
        cfg_hash = config_hash(config_text)
        atomic_write(memo, config_text)
        key = build_key(src.source_id, series_hash, kml_hash, cfg_hash, compiler)
        build_dir = builds / key
        log(f"config hash {cfg_hash[:16]}, build key {key[:16]}")
        builds.mkdir(parents=True, exist_ok=True)
        _remove_stale_scratch(builds)
        with _locked(builds / f"{key}.lock", "building this kernel", note):
            stamp = _read_stamp(build_dir)
            if stamp and stamp.get("config_hash") == cfg_hash:
                note(f"cache hit: {build_dir} (compile log: {build_dir / _BUILD_LOG})")
                return result(build_dir, False, key, cfg_hash, stamp)
            started = time.monotonic()
            compile_kernel(tree, obj, obj / _BUILD_LOG, [log_path], jobs, note)
            compile_s = time.monotonic() - started
            if not (obj / "arch" / "x86" / "boot" / "bzImage").is_file():
                raise KernelBuildError(f"make succeeded but {obj}/arch/x86/boot/bzImage is missing")
            if config_hash((obj / ".config").read_text()) != cfg_hash:
                raise KernelBuildError(f"{obj}/.config changed during the build")
            # Without a `modules` target, modules.order and *.ko are left over.
            modules = _built_modules(obj) if _wants_modules(config_text) else {}
            stamp = {
                "build_key": key,
                "source_id": src.source_id,
                "source": str(src.path),
                "patch_series_hash": series_hash,
                "kml_sources_hash": kml_hash,
                "config_hash": cfg_hash,
                "compiler": compiler,
                "fragments": [str(f) for f in fragments],
                "modules": {n: str(p.relative_to(obj)) for n, p in modules.items()},
                "work_tree": str(tree),
                "obj_dir": str(obj),
                "compile_s": round(compile_s, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            started = time.monotonic()
            _publish(obj, builds, key, stamp, log)
            log(f"published {obj} to {build_dir} in {time.monotonic() - started:.1f}s")
            return result(build_dir, True, key, cfg_hash, stamp)
