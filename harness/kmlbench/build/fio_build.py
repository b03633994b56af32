"""A lean, static fio for the guest, built from Debian's own fio source.

Debian's ``/usr/bin/fio`` links ~84 MB of libraries (ceph, gluster, icu),
which would bloat every initramfs and slow every TCG boot. Instead we fetch
the distribution's fio *source* package through the private apt
configuration of :mod:`kmlbench.build.debian_source` (the host's apt setup
is never touched), apply our fixes to it (``guest-image/fio-patches/``,
in name order, each saying why), configure it ``--build-static`` with the
heavy engines disabled, and cache the single binary under
``cache_dir()/fio/<key>/fio``.

``<key>`` hashes the source package version, the patches, the configure
flags and the compiler, so a new Debian upload, a new patch or a changed
recipe rebuilds, and an unchanged one never touches the network. Build
prerequisites (apt): ``build-essential dpkg-dev libaio-dev zlib1g-dev``
(``patch`` comes with ``dpkg-dev``).

If the static build cannot be done (no network to the Debian mirror, no
compiler), :func:`guest_fio` falls back to the host's dynamically linked
``/usr/bin/fio`` plus its ldd libraries and says so in :class:`FioBinary`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kmlbench import procs
from kmlbench.build.debian_source import (
    SourceError,
    apt_dir,
    compiler_id,
    download_source,
    file_lock,
    run_logged,
    source_versions,
)
from kmlbench.paths import FIO_PATCHES_DIR, cache_dir

# Bump when the recipe below changes in a way the flags do not show.
RECIPE_VERSION = 1

CONFIGURE_FLAGS: tuple[str, ...] = (
    "--build-static",
    # The guest runs under TCG "-cpu max" or KVM on another host: never -march=native.
    "--disable-native",
    "--disable-numa",
    "--disable-rdma",
    "--disable-rados",
    "--disable-rbd",
    "--disable-http",
    "--disable-gfapi",
    "--disable-libnfs",
    "--disable-pmem",
    "--disable-xnvme",
    "--disable-libzbc",
    "--disable-tcmalloc",
    "--disable-dfs",
    "--disable-lex",
)

APT_PACKAGES = ("build-essential", "dpkg-dev", "libaio-dev", "zlib1g-dev")


class FioBuildError(SourceError):
    """The static fio could not be fetched or built; the message says which step."""


@dataclass(frozen=True)
class FioBinary:
    """The fio to put into the guest.

    ``kind`` is "static" (our build) or "host-dynamic" (the fallback, in which
    case ``libraries`` lists the shared objects that must go with it).
    """

    path: Path
    version: str
    kind: str
    note: str = ""
    libraries: tuple[Path, ...] = field(default_factory=tuple)


def build_static_fio(cache: Path | None = None, patches: Sequence[Path] | None = None) -> FioBinary:
    """Return the cached static fio, fetching and building it on a miss.

    ``patches``: what to apply to Debian's source; our fixes
    (:func:`fio_patches`) unless given (``[]``: Debian's fio as it is, which
    tests/test_guest_fio.py runs to show the fix is needed).
    Raises :class:`FioBuildError` naming the failed step and its log.
    """
    try:
        return _build_static_fio(cache, fio_patches() if patches is None else list(patches))
    except FioBuildError:
        raise
    except SourceError as exc:
        raise FioBuildError(str(exc)) from exc


def fio_patches() -> list[Path]:
    """Our fixes to Debian's fio source, in the order they apply."""
    return sorted(FIO_PATCHES_DIR.glob("*.patch"))


def _apply_patches(src: Path, patches: list[Path], log: Path) -> None:
    for patch in patches:
        run_logged(["patch", "-p1", "--batch", "--forward", "--fuzz=0", "-i", str(patch)],
                   src, log, f"patch {patch.name}", 60)  # fmt: skip


def _build_static_fio(cache: Path | None, patches: list[Path]) -> FioBinary:
    root = (cache or cache_dir()) / "fio"
    apt = apt_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        log = root / "last-build.log"
        log.write_text("")
        version = source_versions("fio", apt, log)[0]
        recipe = {
            "recipe": RECIPE_VERSION,
            "source": f"debian:fio:{version}",
            "patches": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in patches},
            "flags": list(CONFIGURE_FLAGS),
            "compiler": compiler_id(),
        }
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        out_dir = root / f"{version.split('-')[0]}-{key}"
        binary = out_dir / "fio"
        if binary.exists():
            return FioBinary(binary, _fio_version(binary), "static")

        with tempfile.TemporaryDirectory(dir=root, prefix="build-") as tmp:
            work = Path(tmp)
            dsc = download_source("fio", version, apt, work, log)
            run_logged(["dpkg-source", "--no-check", "-x", dsc.name, "src"],
                       work, log, "dpkg-source -x", 300)  # fmt: skip
            src = work / "src"
            _apply_patches(src, patches, log)
            run_logged(["./configure", *CONFIGURE_FLAGS], src, log, "fio ./configure", 300)
            jobs = str(min(2, os.cpu_count() or 1))
            run_logged(["nice", "make", f"-j{jobs}", "fio"], src, log, "make fio", 1200)
            built = src / "fio"
            _check_static(built, log)
            procs.run(["strip", str(built)], check=False)
            staging = work / "out"
            staging.mkdir()
            shutil.copy2(built, staging / "fio")
            (staging / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
            shutil.copy2(log, staging / "build.log")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staging.rename(out_dir)
        return FioBinary(binary, _fio_version(binary), "static")


def _check_static(binary: Path, log: Path) -> None:
    if not binary.exists():
        raise FioBuildError(f"make did not produce {binary} (log: {log})")
    proc = procs.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if "not a dynamic executable" not in proc.stdout + proc.stderr:
        raise FioBuildError(f"{binary} is not static: {proc.stdout.strip()}")


def _fio_version(binary: Path) -> str:
    try:
        out = procs.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except OSError:
        return "unknown"
    return out or "unknown"


def ldd_libraries(binary: Path) -> list[Path]:
    """Shared objects (and the loader) that ``binary`` needs, as absolute paths."""
    proc = procs.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    libs: list[Path] = []
    for line in proc.stdout.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def guest_fio(cache: Path | None = None) -> FioBinary:
    """The fio for the guest: static if at all possible, else the host's with its libs."""
    try:
        return build_static_fio(cache)
    except FioBuildError as exc:
        host = shutil.which("fio")
        if host is None:
            raise FioBuildError(
                f"{exc}\nand no host fio to fall back to (apt-get install fio)"
            ) from exc
        path = Path(host).resolve()
        return FioBinary(
            path,
            _fio_version(path),
            "host-dynamic",
            note=(
                f"static build failed, using {host} with its libraries and without"
                f" {FIO_PATCHES_DIR.name}/: {exc}"
            ),
            libraries=tuple(ldd_libraries(path)),
        )
