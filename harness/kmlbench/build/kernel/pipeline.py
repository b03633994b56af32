""":func:`build_kernel`: the steps in order, each cached, and the cache hit before any of them.

A request (:class:`KernelRequest`: a source and config fragments) becomes
a :class:`KernelBuild` (a ``bzImage`` and what it was built from):

1. **source**: resolve it to a *source id* (:mod:`.source`);
2. **work tree**: sync ``cache/work/<source>/linux`` to the KML sources
   and the patch series (:mod:`.inputs`, :mod:`.worktree`);
3. **config**: fragments over ``tinyconfig``, checked (:mod:`.kconfig`);
4. **build**: ``make`` in the work tree's object dir for this config (a
   new one starts as a copy of the newest finished sibling, so that kbuild
   recompiles only what the config change reaches), the result published
   to ``cache/builds/<build_key>/`` (:mod:`.compile`).

Every key comes from :mod:`.keys`. A warm call hashes a few small files and
reads one stamp: the final ``.config`` of an earlier identical request is
memoized, so the build key is known without extracting or configuring.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kmlbench import paths
from kmlbench.build.kernel.common import KernelBuildError, Log, locked
from kmlbench.build.kernel.compile import (
    BUILD_LOG,
    BZIMAGE,
    built_modules,
    collect_modules,
    compile_kernel,
    default_jobs,
    publish,
    read_stamp,
    remove_stale_scratch,
    seed_object_dir,
    wants_modules,
)
from kmlbench.build.kernel.inputs import read_tree_inputs, unlisted_patches
from kmlbench.build.kernel.kconfig import config_fragments, config_hash, configure, reuse_config
from kmlbench.build.kernel.keys import (
    build_key,
    config_memo_key,
    kconfig_memo_key,
    obj_dir_key,
    prepared_tree_key,
    sha256_parts,
)
from kmlbench.build.kernel.source import pristine_tree, resolve_source
from kmlbench.build.kernel.toolchain import compiler_version, toolchain_fingerprint
from kmlbench.build.kernel.worktree import sync_work_tree, synced_overlay, work_dir
from kmlbench.files import atomic_write


@dataclass(frozen=True)
class KernelRequest:
    """A kernel to build: a matrix's ``kernel.source`` and a variant's fragments."""

    source: str | dict[str, object]  # "debian" | a path | {"url": ..., "sha256": ...}
    fragments: tuple[Path, ...]  # in addition to kernel/configs/base.config


@dataclass(frozen=True)
class KernelBuild:
    """A built (or found) kernel: where it is and what it was built from."""

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


def _print_progress(msg: str) -> None:
    """Default progress sink: one short line per step on stderr."""
    print(f"kernel: {msg}", file=sys.stderr, flush=True)


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
    req_id = sha256_parts(json.dumps(req.source, sort_keys=True), *map(str, fragments))[:12]
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
            jobs or default_jobs(),
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
    toolchain = toolchain_fingerprint()
    memo = cache / "configs" / config_memo_key(prep_key, fragment_texts, compiler, toolchain)
    builds = cache / "builds"

    def result(
        build_dir: Path,
        compiled: bool,
        key: str,
        cfg_hash: str,
        stamp: dict[str, object] | None = None,
    ) -> KernelBuild:
        # On a hit the stamp lists the modules: no walk of the build dir.
        listed = (stamp or {}).get("modules")
        if isinstance(listed, dict):
            modules = {name: build_dir / rel for name, rel in listed.items()}
        else:
            modules = collect_modules(build_dir)
        return KernelBuild(
            bzimage=build_dir / BZIMAGE,
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
        stamp = read_stamp(build_dir)
        if stamp and stamp.get("config_hash") == cfg_hash:
            note(f"cache hit: {build_dir} (compile log: {build_dir / BUILD_LOG})")
            return result(build_dir, False, key, cfg_hash, stamp)

    pristine = pristine_tree(src, cache, note)
    work = work_dir(cache, src.source_id)
    obj = work / f"obj-{obj_dir_key(fragment_texts, compiler, toolchain)}"
    with locked(work.parent / f"{work.name}.lock", "using the kernel work tree", note):
        # Someone may have built this very kernel while we waited.
        if memo.is_file():
            cfg_hash = config_hash(memo.read_text())
            key = build_key(src.source_id, series_hash, kml_hash, cfg_hash, compiler)
            stamp = read_stamp(builds / key)
            if stamp and stamp.get("config_hash") == cfg_hash:
                note(f"cache hit: {builds / key} (compile log: {builds / key / BUILD_LOG})")
                return result(builds / key, False, key, cfg_hash, stamp)
        tree = sync_work_tree(pristine, work, inputs, src.source_id, note)
        # a new config's first build: from a sibling's objects, not from none
        seed_object_dir(obj, note)
        overlay = synced_overlay(work)
        kconfig_memo = None
        if overlay is not None:
            kconfig_key = kconfig_memo_key(
                src.source_id, overlay, fragment_texts, compiler, toolchain
            )
            kconfig_memo = cache / "configs" / kconfig_key
        config_text = kconfig_memo and reuse_config(tree, obj, kconfig_memo, log, note)
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
        remove_stale_scratch(builds)
        with locked(builds / f"{key}.lock", "building this kernel", note):
            stamp = read_stamp(build_dir)
            if stamp and stamp.get("config_hash") == cfg_hash:
                note(f"cache hit: {build_dir} (compile log: {build_dir / BUILD_LOG})")
                return result(build_dir, False, key, cfg_hash, stamp)
            started = time.monotonic()
            compile_kernel(tree, obj, obj / BUILD_LOG, [log_path], jobs, note)
            compile_s = time.monotonic() - started
            if not (obj / BZIMAGE).is_file():
                raise KernelBuildError(f"make succeeded but {obj / BZIMAGE} is missing")
            if config_hash((obj / ".config").read_text()) != cfg_hash:
                raise KernelBuildError(f"{obj}/.config changed during the build")
            # Without a `modules` target, modules.order and *.ko are left over.
            modules = built_modules(obj) if wants_modules(config_text) else {}
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
            publish(obj, builds, key, stamp, log)
            log(f"published {obj} to {build_dir} in {time.monotonic() - started:.1f}s")
            return result(build_dir, True, key, cfg_hash, stamp)
