"""The trees kernels are built from: pristine source + KML in ``lib/kml/`` + the patches.

:func:`sync_work_tree` keeps one **work tree** per source id
(``cache/work/<source>/linux``, a hard-linked copy of the pristine source)
and brings it to the wanted KML sources and patch series on every cache
miss, rewriting only the files whose content changes, so ``make``
recompiles what an edit affects and nothing else. :func:`build_kernel
<kmlbench.build.kernel.pipeline.build_kernel>` compiles there, in one object
dir per requested config.

:func:`prepare_tree` makes a standalone, content-keyed tree
(``cache/src/<key>/``) for callers that want one; builds no longer use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kmlbench import paths
from kmlbench.build.kernel.common import KernelBuildError, Log, locked, run
from kmlbench.build.kernel.inputs import (
    TreeInputs,
    apply_patch,
    install_kml,
    patched_paths,
    read_tree_inputs,
)
from kmlbench.build.kernel.keys import prepared_tree_key, work_key
from kmlbench.build.kernel.source import ResolvedSource, pristine_tree
from kmlbench.files import atomic_write

_PREPARED_STAMP = ".kmlbench-prepared"

# --------------------------------------------------------------------------
# the prepared tree: standalone and content-keyed


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
    with locked(src_root / f"{key}.lock", "preparing the kernel tree", log):
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
            run(["cp", "-al", str(pristine), str(root)], tmp, log, "cp -al (link the source)")
            install_kml(root, inputs, log)
            for patch, data in inputs.patches:
                _unshare(root, patched_paths(data))
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
# the persistent work tree: incremental builds across KML/patch edits
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
        touched |= patched_paths(data)
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
    return Path(cache) / "work" / work_key(source_id)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def synced_overlay(work: Path) -> dict[str, str | None] | None:
    """The overlay of the last complete sync of ``work``: ``{path: sha256 or None}``.

    None if ``state.json`` is missing or unreadable.
    """
    state = _read_json(work / _WORK_STATE)
    if isinstance(state, dict) and isinstance(state.get("overlay"), dict):
        overlay: dict[str, str | None] = state["overlay"]
        return overlay
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
                run(["cp", "-al", str(pristine), str(tree)], work, log, "cp -al (link the source)")
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
