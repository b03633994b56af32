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

One module per job (imports only go down this list, no cycles):

- :mod:`.common`: the error type, the log sink, locks, short commands;
- :mod:`.keys`: every cache key (pinned by ``tests/test_kernel_keys.py``);
- :mod:`.toolchain`: gcc, ld, pahole and rustc versions, for the keys;
- :mod:`.source`: step 1, and the pristine (extracted) source;
- :mod:`.inputs`: the KML sources and the patch series: listed, hashed,
  snapshotted, put into a tree;
- :mod:`.worktree`: step 2 (and the standalone prepared tree);
- :mod:`.kconfig`: step 3;
- :mod:`.compile`: step 4: make, the build dirs and their stamps;
- :mod:`.pipeline`: :func:`build_kernel`, the steps in order.

This package exposes what the modules offer to the rest of kmlbench (the
names the single ``kernel.py`` module had); the rest stays in its module.
"""

from __future__ import annotations

from kmlbench.build.kernel.common import KernelBuildError, Log
from kmlbench.build.kernel.compile import collect_modules, compile_kernel, error_summary
from kmlbench.build.kernel.inputs import (
    PatchError,
    TreeInputs,
    apply_patch,
    apply_patches,
    install_kml,
    kml_source_files,
    kml_sources_hash,
    patch_series,
    patch_series_hash,
    read_tree_inputs,
    unlisted_patches,
)
from kmlbench.build.kernel.kconfig import (
    ConfigError,
    ConfigMiss,
    check_config,
    config_fragments,
    config_hash,
    configure,
    format_config_misses,
)
from kmlbench.build.kernel.keys import build_key, prepared_tree_key
from kmlbench.build.kernel.pipeline import KernelBuild, KernelRequest, build_kernel
from kmlbench.build.kernel.source import (
    ResolvedSource,
    download_source,
    pristine_tree,
    resolve_source,
    tree_source_id,
)
from kmlbench.build.kernel.toolchain import compiler_version
from kmlbench.build.kernel.worktree import (
    desired_overlay,
    prepare_tree,
    sync_work_tree,
    work_dir,
)
from kmlbench.plan.kernel import parse_config_lines

__all__ = [
    "ConfigError",
    "ConfigMiss",
    "KernelBuild",
    "KernelBuildError",
    "KernelRequest",
    "Log",
    "PatchError",
    "ResolvedSource",
    "TreeInputs",
    "apply_patch",
    "apply_patches",
    "build_kernel",
    "build_key",
    "check_config",
    "collect_modules",
    "compile_kernel",
    "compiler_version",
    "config_fragments",
    "config_hash",
    "configure",
    "desired_overlay",
    "download_source",
    "error_summary",
    "format_config_misses",
    "install_kml",
    "kml_source_files",
    "kml_sources_hash",
    "parse_config_lines",
    "patch_series",
    "patch_series_hash",
    "prepare_tree",
    "prepared_tree_key",
    "pristine_tree",
    "read_tree_inputs",
    "resolve_source",
    "sync_work_tree",
    "tree_source_id",
    "unlisted_patches",
    "work_dir",
]
