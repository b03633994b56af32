"""The instruction-counting QEMU plugin (``tools/qemu-plugin/symcount.c``), built and cached.

QEMU's plugin header (``include/qemu/qemu-plugin.h``) is not packaged by
Debian, so it comes from the source package of the installed
``qemu-system-x86`` (``dpkg-query``'s source version: a binNMU such as
``+b3`` is built from the source without it), fetched through the private
apt configuration of :mod:`kmlbench.build.debian_source`. Only the header
is taken from the orig tarball; a Debian patch that touches it (none does
in 7.2+dfsg-7) is applied to it. The header, the plugin and its recipe
live in ``cache_dir()/qemu-plugin/<key>/``, ``<key>`` hashing the QEMU
source version, the plugin's source and the compiler: an unchanged key
never touches the network.

:func:`kernel_symbols` writes the symbol file the plugin reads from a
kernel build's ``vmlinux`` (kept with the build in the kernel cache).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kmlbench import paths, procs
from kmlbench.build.debian_source import (
    SourceError,
    apt_dir,
    compiler_id,
    download_source,
    file_lock,
    installed_source_version,
    run_logged,
    source_versions,
)
from kmlbench.files import atomic_write
from kmlbench.hashing import sha256_file

PLUGIN_SOURCE = paths.REPO_ROOT / "tools" / "qemu-plugin" / "symcount.c"
QEMU_PACKAGE = "qemu-system-x86"
QEMU_SOURCE = "qemu"
HEADER = "include/qemu/qemu-plugin.h"
CFLAGS = ("-O2", "-Wall", "-Werror", "-Wno-unused-parameter", "-shared", "-fPIC")
# Bump when the recipe below changes in a way the key does not show.
RECIPE_VERSION = 1
# The plugin's default marker: busybox `sync` in the guest enters it.
DEFAULT_MARK = "__x64_sys_sync"
# nm's types of text symbols, the ones the plugin counts.
TEXT_TYPES = frozenset("tTwW")


class PluginBuildError(SourceError):
    """The plugin could not be built (no header, no compiler); the message says which step."""


@dataclass(frozen=True)
class Plugin:
    """A built plugin: the ``.so`` QEMU loads, and what it was built from."""

    path: Path
    qemu_source_version: str
    key: str


def build_plugin(cache: Path | None = None, source: Path = PLUGIN_SOURCE) -> Plugin:
    """The cached plugin for the installed QEMU, built on a miss.

    Raises :class:`PluginBuildError` naming the failed step and its log.
    """
    try:
        return _build_plugin(cache or paths.cache_dir(), source)
    except PluginBuildError:
        raise
    except SourceError as exc:
        raise PluginBuildError(str(exc)) from exc


def _build_plugin(cache: Path, source: Path) -> Plugin:
    root = cache / "qemu-plugin"
    root.mkdir(parents=True, exist_ok=True)
    version = installed_source_version(QEMU_PACKAGE)
    recipe = {
        "recipe": RECIPE_VERSION,
        "qemu_source": f"debian:{QEMU_SOURCE}:{version}",
        "plugin_sha256": sha256_file(source),
        "cflags": list(CFLAGS),
        "compiler": compiler_id(),
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    out_dir = root / key
    so = out_dir / "symcount.so"
    if so.is_file():
        return Plugin(so, version, key)
    with file_lock(root / ".lock"):
        if so.is_file():
            return Plugin(so, version, key)
        log = root / "last-build.log"
        log.write_text("")
        with tempfile.TemporaryDirectory(dir=root, prefix="build-") as tmp:
            staging = Path(tmp) / "out"
            staging.mkdir()
            header = qemu_plugin_header(cache, version, staging, log)
            run_logged(
                ["cc", *CFLAGS, f"-I{header.parent}", "-o", str(staging / "symcount.so"),
                 str(source)],
                staging, log, "cc symcount.c", 300,
            )  # fmt: skip
            (staging / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
            shutil.copy2(log, staging / "build.log")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staging.rename(out_dir)
    return Plugin(so, version, key)


def qemu_plugin_header(cache: Path, version: str, dest: Path, log: Path) -> Path:
    """``qemu-plugin.h`` of QEMU's Debian source ``version``, written into ``dest``.

    Refuses a version not in the private lists: the header must be the
    installed QEMU's.
    """
    apt = apt_dir(cache)
    if version not in source_versions(QEMU_SOURCE, apt, log):
        raise PluginBuildError(
            f"{QEMU_SOURCE} source {version} (that of the installed {QEMU_PACKAGE}) is not in "
            f"the bookworm deb-src lists of {apt}; upgrade {QEMU_PACKAGE} (log: {log})"
        )
    with tempfile.TemporaryDirectory(dir=dest, prefix="src-") as tmp:
        work = Path(tmp)
        download_source(QEMU_SOURCE, version, apt, work, log)
        orig = next(work.glob(f"{QEMU_SOURCE}_*.orig.tar.*"), None)
        debian = next(work.glob(f"{QEMU_SOURCE}_*.debian.tar.*"), None)
        if orig is None or debian is None:
            raise PluginBuildError(f"no orig or debian tarball in {work} (log: {log})")
        run_logged(
            ["tar", "-xf", str(orig), "--wildcards", f"*/{HEADER}"], work, log,
            f"tar -x {HEADER}", 300,
        )  # fmt: skip
        found = sorted(work.glob(f"*/{HEADER}"))
        if len(found) != 1:
            raise PluginBuildError(f"{orig.name} has {len(found)} copies of {HEADER} (log: {log})")
        header = dest / "qemu-plugin.h"
        text = found[0].read_text()
        for name, diff in header_patches(debian):
            with log.open("a") as out:
                out.write(f"applying the {HEADER} part of debian/patches/{name}\n")
            patched = work / "patched.h"
            patched.write_text(text)
            (work / "part.diff").write_text(diff)
            run_logged(
                ["patch", "--no-backup-if-mismatch", str(patched), str(work / "part.diff")],
                work, log, f"patch {HEADER} with {name}", 60,
            )  # fmt: skip
            text = patched.read_text()
        header.write_text(text)
    return header


def header_patches(debian_tarball: Path) -> list[tuple[str, str]]:
    """The parts of Debian's patches (in series order) that change ``qemu-plugin.h``."""
    out: list[tuple[str, str]] = []
    with tarfile.open(debian_tarball) as tar:

        def read(name: str) -> str | None:
            try:
                member = tar.extractfile(f"debian/patches/{name}")
            except KeyError:
                return None
            return member.read().decode(errors="replace") if member else None

        series = read("series") or ""
        for name in (ln.split()[0] for ln in series.splitlines() if ln.strip()):
            if name.startswith("#"):
                continue
            text = read(name)
            if text and HEADER in text:
                part = file_part(text, HEADER)
                if part:
                    out.append((name, part))
    return out


def file_part(diff: str, path: str) -> str:
    """The hunks of a unified ``diff`` that change ``path`` (``---``/``+++`` headers kept)."""
    parts = re.split(r"(?m)^(?=diff |--- )", diff)
    keep: list[str] = []
    for part in parts:
        head = part.split("\n", 2)
        if (
            part.startswith("--- ")
            and len(head) > 1
            and head[1].startswith("+++ ")
            and head[1][4:].split("\t")[0].strip().endswith(path)
        ):
            keep.append(part)
    return "".join(keep)


# --- the kernel's symbols ------------------------------------------------------------


def kernel_symbols(build_dir: Path, out: Path) -> Path:
    """The text symbols of ``build_dir/vmlinux`` (``nm -n -S``) in ``out``, written once.

    Falls back to ``System.map`` (no sizes: a symbol ends where the next
    begins). ``out`` is rewritten only when its content would change.
    """
    vmlinux = build_dir / "vmlinux"
    text = ""
    if vmlinux.is_file():
        proc = procs.run(
            ["nm", "-n", "-S", "--defined-only", str(vmlinux)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            text = proc.stdout
    if not text:
        system_map = build_dir / "System.map"
        if not system_map.is_file():
            raise PluginBuildError(f"neither vmlinux nor System.map in {build_dir}")
        text = system_map.read_text()
    lines = [ln for ln in text.splitlines() if _is_text_symbol(ln)]
    body = "".join(f"{ln}\n" for ln in lines)
    if not out.is_file() or out.read_text() != body:
        atomic_write(out, body)
    return out


def _is_text_symbol(line: str) -> bool:
    fields = line.split()
    return len(fields) in (3, 4) and fields[-2] in TEXT_TYPES


def symbol_names(symbols: Path) -> set[str]:
    """The names in a symbol file of :func:`kernel_symbols`."""
    return {ln.split()[-1] for ln in symbols.read_text().splitlines() if ln.strip()}
