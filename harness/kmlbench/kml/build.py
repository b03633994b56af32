"""Building ``libkml.so`` from ``kernel/kml/`` into ``kml/_lib``: one job, no ctypes.

The library is built from the very sources the kernel compiles, keyed by a
hash of them, so an edit rebuilds it and concurrent users never see a
half-written file.  :mod:`kmlbench.kml.ffi` loads what this builds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from kmlbench import paths, procs

__all__ = ["KmlBuildError", "build_libkml"]


class KmlBuildError(RuntimeError):
    """libkml.so could not be built (missing compiler, compile error)."""


def _sources() -> list[Path]:
    src = paths.KML_SRC_DIR
    return sorted([*src.glob("*.c"), *src.glob("*.h"), src / "Makefile.user", src / "Makefile"])


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in _sources():
        if p.exists():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _lib_root() -> Path:
    root = Path(__file__).resolve().parent / "_lib"
    try:
        root.mkdir(exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return paths.cache_dir() / "libkml"


def build_libkml(force: bool = False, cc: str | None = None) -> Path:
    """Build ``libkml.so`` from ``kernel/kml`` into ``harness/kmlbench/kml/_lib``.

    Equivalent to ``make -C kernel/kml -f Makefile.user OUT=<dir>``.  The
    result is keyed by a hash of the sources, so edits trigger a rebuild and
    concurrent users never see a half-written library.  ``KML_LIB`` in the
    environment names a prebuilt library instead.
    """
    env_lib = os.environ.get("KML_LIB")
    if env_lib and not force:
        return Path(env_lib)
    out_dir = _lib_root() / _source_hash()
    target = out_dir / "libkml.so"
    if target.exists() and not force:
        return target
    cc = cc or os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise KmlBuildError(
            f"cannot build libkml.so: C compiler {cc!r} not found in PATH "
            "(install gcc, e.g. `apt-get install gcc make`, or set CC)"
        )
    if shutil.which("make") is None:
        raise KmlBuildError("cannot build libkml.so: 'make' not found in PATH")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        cmd = ["make", "-s", "-C", str(paths.KML_SRC_DIR), "-f", "Makefile.user", f"OUT={tmp}"]
        proc = procs.run(
            cmd, capture_output=True, text=True, env={**os.environ, "CC": cc}, check=False
        )
        if proc.returncode != 0:
            raise KmlBuildError(
                f"building libkml.so failed ({' '.join(cmd)}):\n{proc.stdout}{proc.stderr}"
            )
        os.replace(Path(tmp) / "libkml.so", target)
    return target
