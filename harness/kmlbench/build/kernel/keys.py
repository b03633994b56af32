"""Every cache key of the kernel build, in one place.

A key names a cache entry by what went into it; a change to any function
here changes the names of entries every machine already has, and so
forces every machine to extract, configure or compile again (a cold
kernel build is 5-13 minutes). ``tests/test_kernel_keys.py`` pins them.
Bump :data:`CACHE_VERSION` only on purpose, when the layout or meaning of an
entry changes, so that old entries are not found instead of being misread.

Each names one entry of the cache (``paths.cache_dir()``) by its inputs:

- ``src/pristine/<pristine_key>/``: the source id;
- ``src/<prepared_tree_key>/``: source id, KML hash, patch series hash;
- ``work/<work_key>/``: the source id; in it ``obj-<obj_dir_key>/``:
  fragment contents, gcc, ld/pahole/rustc;
- ``configs/<config_memo_key>``: prepared-tree key, fragment contents,
  gcc, ld/pahole/rustc (decides a cache hit before anything is extracted);
- ``configs/<kconfig_memo_key>``: source id, the overlaid files Kconfig
  may read, fragment contents, toolchain;
- ``builds/<build_key>/``: source id, patch series hash, KML hash, final
  ``.config`` hash, gcc.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

CACHE_VERSION = "kmlbench-kernel-v1"


def sha256_parts(*parts: str) -> str:
    """Hash a sequence of strings unambiguously (NUL-separated)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def kml_hash(files: Sequence[tuple[str, bytes]]) -> str:
    """Hash of the KML sources: ``(path relative to kernel/kml, contents)`` in order."""
    parts = ["kml"]
    for rel, data in files:
        parts += [rel, hashlib.sha256(data).hexdigest()]
    return sha256_parts(*parts)


def series_hash(patches: Sequence[tuple[Path, bytes]]) -> str:
    """Hash of the patch series: order, names and contents of every patch."""
    parts = ["patches"]
    for p, data in patches:
        parts += [p.name, hashlib.sha256(data).hexdigest()]
    return sha256_parts(*parts)


def pristine_key(source_id: str) -> str:
    """Key of the extracted (or copied), unmodified source."""
    return sha256_parts(CACHE_VERSION, "pristine", source_id)


def prepared_tree_key(source_id: str, kml_hash: str, series_hash: str) -> str:
    """Key of a prepared tree: what it was extracted from and what went in."""
    return sha256_parts(CACHE_VERSION, "src", source_id, kml_hash, series_hash)


def work_key(source_id: str) -> str:
    """Name of the work dir of a source: 16 hex digits."""
    return sha256_parts(CACHE_VERSION, "work", source_id)[:16]


def obj_dir_key(fragment_texts: Sequence[str], compiler: str, toolchain: str) -> str:
    """Object dir of a work tree: per requested config (fragments) and toolchain.

    Not per final .config, so an edit to KML's Kconfig is an incremental
    build too (kbuild tracks config changes per symbol).
    """
    return sha256_parts(CACHE_VERSION, "obj", compiler, toolchain, *fragment_texts)[:16]


def affects_kconfig(rel: str) -> bool:
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


def kconfig_memo_key(
    source_id: str,
    overlay: Mapping[str, str | None],
    fragment_texts: Sequence[str],
    compiler: str,
    toolchain: str,
) -> str:
    """Key of a final .config by what Kconfig reads: ``kconfig-<sha256>``.

    The pristine source, the overlaid files that may affect Kconfig (with
    their hashes), the fragments and the toolchain. An edit of a KML C
    file or a patch to a C file keeps it, so the build skips configuring.
    """
    kconfig = {rel: h for rel, h in sorted(overlay.items()) if affects_kconfig(rel)}
    parts = [CACHE_VERSION, "kconfig", source_id, compiler, toolchain, json.dumps(kconfig)]
    return "kconfig-" + sha256_parts(*parts, *fragment_texts)


def config_memo_key(
    prep_key: str, fragment_texts: Sequence[str], compiler: str, toolchain: str
) -> str:
    """Key of a memoized final .config: fragment contents, not their paths.

    So the same fragments from another checkout (or a test's copy) hit too.
    """
    parts = [CACHE_VERSION, "config", prep_key, compiler, toolchain, *fragment_texts]
    return sha256_parts(*parts)


def build_key(source_id: str, series_hash: str, kml_hash: str, cfg_hash: str, compiler: str) -> str:
    """Everything that determines the kernel binary, hashed."""
    return sha256_parts(CACHE_VERSION, source_id, series_hash, kml_hash, cfg_hash, compiler)
