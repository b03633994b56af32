"""The kernel build's cache keys are pinned: a refactor must not change them.

Every entry of the build cache (``~/.cache/kmlbench``: pristine source, work
tree, object dir, memoized configs, build dirs) is named by a key
(``kmlbench/build/kernel/keys.py``). A changed key silently turns every
machine's next run into a cold build (5-13 minutes), and, as worktrees on
one machine share the cache, makes old and new code build the same kernel
twice. So the keys of the shipped matrices' kernel request are pinned here.

The machine's real inputs cannot be pinned (the Debian tarball, gcc, ld and
``kernel/`` itself change), so the request runs in a frozen world: the
source ``"debian"`` points at a small git tree (its id is its commit,
made with fixed names and dates), KML, patches and fragments are small
fixed files, gcc/ld/pahole/rustc are fixed strings, and configure and make
are replaced by stand-ins (the final ``.config`` is the fragments after a
fixed header; make writes a ``bzImage``). Everything else is the real
``build_kernel``: source id, patch series, work tree sync, memos, publish.

Where the pinned values come from: :func:`run_scenario` was run once with
the single-module ``kernel.py`` of commit 9c3e592 (the last commit before it
became a package: ``git show 9c3e592:harness/kmlbench/build/kernel.py``,
imported from a temp dir), with its ``_toolchain_fingerprint`` stubbed
for ``toolchain_fingerprint``; :data:`SOURCE_ID`, :data:`PINNED_BUILDS`
and :data:`PINNED_LAYOUT` are what it returned. On that machine the old and
the new code also agreed on the real request (``kernel/`` at 9c3e592,
Debian's tarball, gcc 12.2.0): config memo ``2e188c37707d...``, build key
``e4258d302c13...``, a cache hit either way.

If this test fails after a change that *means* to change a key (a new
input, a new cache layout), bump ``CACHE_VERSION`` in ``keys.py`` and pin
the new values; otherwise the change broke the keys.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from kmlbench import paths
from kmlbench.build import kernel
from kmlbench.build.kernel import pipeline
from kmlbench.plan.matrix import load_matrix

# The kernel requests the shipped matrices make: (source, fragment names).
# At 9c3e592 every workloads/*.yaml builds one kernel: Debian's, no fragment.
SHIPPED_REQUESTS = [("debian", ())]
# One more with a variant fragment (looked up in kernel/configs/ by name), so
# that fragments in the keys are covered too.
REQUESTS = [*SHIPPED_REQUESTS, ("debian", ("extra.config",))]
# Shipped variants of one fragment each (workloads/sanitizers.yaml,
# workloads/hooks.yaml, workloads/lean.yaml): their keys are made exactly as extra.config's
# above, which pins that path.
SHIPPED_VARIANTS = [
    ("debian", ("debug.config",)),
    ("debian", ("kcsan.config",)),
    ("debian", ("no-kml-iosched.config",)),
    ("debian", ("kml-lean.config",)),
]

# -- the frozen world ------------------------------------------------------------

SOURCE_FILES = {
    "Makefile": "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 99\nEXTRAVERSION = -keys\n",
    "lib/Makefile": "obj-y += sort.o\n",
    "lib/Kconfig": 'menu "Library routines"\n\nconfig SORT\n\tbool\n\nendmenu\n',
    "block/mq-deadline.c": "int dd_dispatch(void) { return 0; }\n",
}
KML_FILES = {
    "Kconfig": 'config KML\n\ttristate "KML"\n',
    "Makefile": "obj-$(CONFIG_KML) += kml.o\nkml-y := kml_math.o\n",
    "kml_math.c": '#include "include/kml.h"\nint kml_answer(void) { return 42; }\n',
    "include/kml.h": "int kml_answer(void);\n",
    # not sources: never hashed, never copied
    "kml_math.o": "\x7fELF",
    ".kml_math.c.swp": "swap",
}
PATCHES = {
    "0001-lib-build-kml.patch": (
        "--- a/lib/Makefile\n+++ b/lib/Makefile\n@@ -1 +1,2 @@\n"
        " obj-y += sort.o\n+obj-$(CONFIG_KML) += kml/\n"
    ),
    "0002-lib-kconfig-kml.patch": (
        "--- a/lib/Kconfig\n+++ b/lib/Kconfig\n@@ -4,3 +4,5 @@ config SORT\n"
        " \tbool\n \n"
        '+source "lib/kml/Kconfig"\n+\n'
        " endmenu\n"
    ),
    "0003-block-mq-deadline-kml.patch": (
        "--- a/block/mq-deadline.c\n+++ b/block/mq-deadline.c\n@@ -1 +1,2 @@\n"
        "+int kml_answer(void);\n int dd_dispatch(void) { return 0; }\n"
    ),
    "README.md": "not a patch\n",
}
CONFIGS = {
    "base.config": "CONFIG_64BIT=y\nCONFIG_BLOCK=y\n# CONFIG_MODULES is not set\n",
    "kml.config": "CONFIG_KML=y\n",
    "extra.config": "CONFIG_MQ_IOSCHED_DEADLINE=y\n",
}
COMPILER = "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"
TOOLCHAIN = "GNU ld (GNU Binutils for Debian) 2.40\npahole: none\nrustc: none"
CONFIG_HEADER = "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.99-keys\n#\n"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "kmlbench",
    "GIT_AUTHOR_EMAIL": "kmlbench@example.org",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
    "GIT_COMMITTER_NAME": "kmlbench",
    "GIT_COMMITTER_EMAIL": "kmlbench@example.org",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

# -- pinned (see the module docstring) -------------------------------------------

SOURCE_ID = "git:cccd5be75de183a6920e6c8122dca3a3667539da"
# request -> build key (cache/builds/<key>/)
PINNED_BUILDS = {
    ("debian", ()): "f5e66964e853d8cfe61f6bac4f2ea5423b2e51ced97cfb9a21ffafe1ef40198c",
    (
        "debian",
        ("extra.config",),
    ): "5b8aac6d735dfdd3e7ca16c6432e5d481d52ff7115ceb515020288d633b2b9b4",
}
# the cache entries both requests leave (build dirs, config memos, work tree
# and its object dirs, pristine source)
PINNED_LAYOUT = [
    "builds/5b8aac6d735dfdd3e7ca16c6432e5d481d52ff7115ceb515020288d633b2b9b4",
    "builds/f5e66964e853d8cfe61f6bac4f2ea5423b2e51ced97cfb9a21ffafe1ef40198c",
    "configs/03f22a9f64d660777a6c699bd99839c2dd3a439c1140bb0dacf79f65118c19a4",
    "configs/d7b51058db7406482483936bc0548832ede1b4fe60584af54732e5604adb1775",
    "configs/kconfig-1e56ce6019bf00739c47493fd8b5e83d50d6f6cc09bffc383d2cc204dea014ee",
    "configs/kconfig-fe8365568dbeb4cba758399163664ea2adb4943cbe20fa3440f4434132cddefb",
    "work/b84c75387788ac51",
    "work/b84c75387788ac51/obj-51f00ee46ab69339",
    "work/b84c75387788ac51/obj-90e1eced17f6d2c3",
    "src/pristine/e7c8a55c08b9d95c72fd2cedaf968d583ebb989278ab964bfcbf12da0b37cea6",
]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _git_tree(root: Path) -> Path:
    _write(root, SOURCE_FILES)
    env = {**os.environ, **GIT_ENV}
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "--no-gpg-sign", "--no-verify", "-m", "linux 6.1.99-keys"],
    ):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    return root


def layout(cache: Path) -> list[str]:
    """The named entries of the cache: what the keys decide (no locks, logs, temp dirs)."""
    found = []
    for top in ("builds", "configs", "work", "src/pristine"):
        for p in sorted((cache / top).glob("*")):
            if p.name.startswith(".") or p.suffix in (".lock", ".done"):
                continue
            found.append(f"{top}/{p.name}")
            if top == "work" and p.is_dir():
                found += [f"{top}/{p.name}/{o.name}" for o in sorted(p.glob("obj-*"))]
    return found


def run_scenario(
    impl: ModuleType,
    stub: Callable[[str, Callable[..., Any]], None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[dict[tuple[str, tuple[str, ...]], Any], list[str]]:
    """Build every request of :data:`REQUESTS` cold, then warm, in the frozen world.

    ``impl`` provides ``build_kernel`` and ``KernelRequest``; ``stub(name,
    function)`` replaces what build_kernel calls as ``compiler_version``,
    ``toolchain_fingerprint``, ``configure`` and ``compile_kernel`` (in the
    new ``pipeline`` module, or under their old names in the old module).
    Returns ``{request: KernelBuild}`` and the cache layout.
    """
    tree = _git_tree(tmp_path / "linux")
    kml_dir = _write(tmp_path / "kml", KML_FILES)
    patches_dir = _write(tmp_path / "patches", PATCHES)
    configs_dir = _write(tmp_path / "configs", CONFIGS)
    cache, logs = tmp_path / "cache", tmp_path / "logs"

    def configure(
        tree: Path, build_dir: Path, fragments: Any, log: Any = None, texts: Any = None
    ) -> str:
        build_dir.mkdir(parents=True, exist_ok=True)
        text = CONFIG_HEADER + "".join(texts)
        (build_dir / ".config").write_text(text)
        return text

    def compile_kernel(
        tree: Path, build_dir: Path, build_log: Path, log_files: Any, jobs: int, log: Any
    ) -> None:
        build_log.write_text("  LD      vmlinux\n")
        (build_dir / "arch/x86/boot").mkdir(parents=True, exist_ok=True)
        (build_dir / "arch/x86/boot/bzImage").write_bytes(b"bzImage")

    monkeypatch.setattr(paths, "DEBIAN_KERNEL_TARBALL", tree)
    stub("compiler_version", lambda: COMPILER)
    stub("toolchain_fingerprint", lambda: TOOLCHAIN)
    stub("configure", configure)
    stub("compile_kernel", compile_kernel)
    monkeypatch.chdir(tmp_path)  # fragment names are looked up from the cwd first

    builds = {}
    for warm in (False, True):
        for source, names in REQUESTS:
            request = impl.KernelRequest(source, tuple(Path(n) for n in names))
            build = impl.build_kernel(
                request,
                cache,
                logs,
                progress=None,
                jobs=1,
                kml_dir=kml_dir,
                patches_dir=patches_dir,
                configs_dir=configs_dir,
            )
            assert build.compiled is not warm
            if warm:
                assert build.build_key == builds[(source, names)].build_key
            builds[(source, names)] = build
    return builds, layout(cache)


def test_keys_of_the_shipped_kernel_request_are_unchanged(tmp_path, monkeypatch):
    def stub(name: str, function: Callable[..., Any]) -> None:
        monkeypatch.setattr(pipeline, name, function)

    builds, found = run_scenario(kernel, stub, tmp_path, monkeypatch)
    assert {request: b.build_key for request, b in builds.items()} == PINNED_BUILDS
    assert {b.source_id for b in builds.values()} == {SOURCE_ID}
    assert found == PINNED_LAYOUT


def test_the_shipped_matrices_make_the_pinned_requests():
    """Each workloads/*.yaml asks for a request whose keys are pinned above.

    A matrix with a new kernel variant fails here: add its request to
    SHIPPED_REQUESTS and pin its keys (once the existing ones still pass,
    the current code computes the new ones as the old code did).
    """
    matrices = sorted(paths.WORKLOADS_DIR.glob("*.yaml"))
    assert matrices
    for path in matrices:
        matrix = load_matrix(path)
        for variant, fragments in matrix.kernel_variants.items():
            request = (matrix.kernel_source, tuple(Path(f).name for f in fragments))
            shipped = [*SHIPPED_REQUESTS, *SHIPPED_VARIANTS]
            assert request in shipped, f"{path.name}: variant {variant}: {request}"
