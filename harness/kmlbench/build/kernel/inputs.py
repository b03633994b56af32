"""What goes into the source tree: KML's sources and the patch series.

``kernel/kml/`` (the single source of truth for KML's kernel code) is
copied to ``lib/kml/``, then ``kernel/patches/`` is applied in series
order. This module lists both, hashes them for the cache keys, snapshots
them once per build (:class:`TreeInputs`, so an edit in the middle of a
build cannot file it under the wrong key), and puts them into a tree
(:func:`install_kml`, :func:`apply_patch`).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kmlbench import procs
from kmlbench.build.kernel import keys
from kmlbench.build.kernel.common import KernelBuildError, Log


class PatchError(KernelBuildError):
    """A patch of the series did not apply; names the patch and its rejects."""

    def __init__(self, patch: Path, message: str) -> None:
        super().__init__(message)
        self.patch = patch


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
    return keys.kml_hash(_read_kml(kml_dir))


def _read_kml(kml_dir: Path) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(rel), (kml_dir / rel).read_bytes()) for rel in kml_source_files(kml_dir))


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
    return keys.series_hash([(p, p.read_bytes()) for p in patches])


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
        return keys.kml_hash(self.kml_files)

    @property
    def series_hash(self) -> str:
        return keys.series_hash(self.patches)


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
    raw: bytes = proc.stdout
    out = raw.decode(errors="replace")
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


def patched_paths(data: bytes) -> set[str]:
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
