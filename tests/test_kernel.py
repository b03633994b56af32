"""Tests for kmlbench.build.kernel: sources, prepared trees, config checks, builds.

The fast tests use small fake trees and tarballs (patching, downloads,
locking) or run only Kconfig on the real Debian source (seconds). The one
``kernel``-marked test builds a real kernel; with ``KMLBENCH_CACHE`` set it
shares its cache with other test sessions and CI, so only the first one
pays for the compile.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmlbench import paths
from kmlbench.build import kernel
from kmlbench.build.kernel import (
    ConfigError,
    KernelBuild,
    KernelBuildError,
    KernelRequest,
    PatchError,
    ResolvedSource,
)
from kmlbench.build.kernel.compile import built_modules, publish, read_stamp
from kmlbench.build.kernel.inputs import patched_paths
from kmlbench.build.kernel.keys import kconfig_memo_key

# --------------------------------------------------------------------------
# helpers: a fake kernel tree, tarballs, patches


FAKE_FILES = {
    "Makefile": "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 99\nEXTRAVERSION = -fake\n",
    "lib/Makefile": "obj-y += a.o\nobj-y += b.o\nobj-y += c.o\n",
    "lib/Kconfig": 'menu "Library routines"\n\nconfig A\n\tbool\n\nendmenu\n',
}


def make_tree(root: Path, files: dict[str, str] = FAKE_FILES) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def make_tarball(tmp_path: Path, name: str = "linux-fake.tar.gz") -> Path:
    """A tarball with one top directory, like kernel.org's and Debian's."""
    tree = make_tree(tmp_path / "tarball-src" / "linux-fake")
    tarball = tmp_path / name
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="linux-fake")
    return tarball


def make_patch(rel: str, old: str, new: str) -> str:
    """A real unified diff (``diff -u``) turning ``old`` into ``new`` in ``rel``."""
    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d) / "a", Path(d) / "b"
        a.write_text(old)
        b.write_text(new)
        proc = subprocess.run(
            ["diff", "-u", "--label", f"a/{rel}", "--label", f"b/{rel}", str(a), str(b)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr
    return proc.stdout


GOOD_PATCH = make_patch(
    "lib/Makefile",
    FAKE_FILES["lib/Makefile"],
    FAKE_FILES["lib/Makefile"] + "obj-$(CONFIG_KML) += kml/\n",
)
# Written against a lib/Kconfig that is not the one in the tree: no fuzz saves it.
BAD_PATCH = make_patch(
    "lib/Kconfig",
    'menu "Other"\n\nconfig ZZZ\n\tdef_bool y\n\tselect FOO\n\nendmenu\n',
    'menu "Other"\n\nconfig ZZZ\n\tdef_bool n\n\tselect FOO\n\n'
    'source "lib/kml/Kconfig"\n\nendmenu\n',
)


def quiet(_: str) -> None:
    pass


def tarball_source(tarball: Path) -> ResolvedSource:
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    return ResolvedSource("tarball", tarball, digest)


def completed_entries(src_root: Path) -> list[str]:
    """Prepared trees in cache/src (not temp dirs, locks or the hash memo)."""
    if not src_root.exists():
        return []
    return sorted(
        p.name
        for p in src_root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name != "pristine"
    )


# --------------------------------------------------------------------------
# sources


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on 127.0.0.1; yields (dir, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_source_with_good_sha256_is_downloaded_once(tmp_path, http_dir):
    served, base = http_dir
    tarball = make_tarball(served)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    src = kernel.resolve_source({"url": f"{base}/{tarball.name}", "sha256": digest}, cache, quiet)
    assert src.kind == "tarball"
    assert src.source_id == digest
    assert src.path.parent == cache / "downloads"
    assert src.path.read_bytes() == tarball.read_bytes()
    # The second resolve is served from the cache: no network needed.
    tarball.unlink()
    again = kernel.resolve_source({"url": f"{base}/{tarball.name}", "sha256": digest}, cache, quiet)
    assert again == src


def test_url_source_with_bad_sha256_fails_and_leaves_nothing(tmp_path, http_dir):
    served, base = http_dir
    tarball = make_tarball(served)
    good = hashlib.sha256(tarball.read_bytes()).hexdigest()
    bad = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(KernelBuildError) as exc:
        kernel.resolve_source({"url": f"{base}/{tarball.name}", "sha256": bad}, cache, quiet)
    msg = str(exc.value)
    assert "sha256 mismatch" in msg
    assert bad in msg and good in msg
    assert tarball.name in msg
    leftovers = [p.name for p in (cache / "downloads").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_url_source_needs_a_sha256(tmp_path):
    with pytest.raises(KernelBuildError, match="sha256"):
        kernel.resolve_source({"url": "https://cdn.kernel.org/x.tar.xz"}, tmp_path, quiet)


def test_tarball_source_id_is_its_sha256_and_memoized(tmp_path):
    tarball = make_tarball(tmp_path)
    cache = tmp_path / "cache"
    src = kernel.resolve_source(str(tarball), cache, quiet)
    assert src.source_id == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert str(tarball.resolve()) in (cache / "src" / "tarball-sha256.json").read_text()


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(KernelBuildError, match="does not exist"):
        kernel.resolve_source(str(tmp_path / "nope.tar.xz"), tmp_path, quiet)


def _git(tree: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    return subprocess.run(
        ["git", "-C", str(tree), *args], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def test_git_tree_source_id_is_head_plus_dirty_flag(tmp_path):
    tree = make_tree(tmp_path / "linux")
    _git(tree, "init", "-q")
    _git(tree, "add", ".")
    _git(tree, "commit", "-q", "-m", "base")
    head = _git(tree, "rev-parse", "HEAD")
    assert kernel.tree_source_id(tree) == f"git:{head}"
    (tree / "lib" / "Makefile").write_text("obj-y += edited.o\n")
    dirty1 = kernel.tree_source_id(tree)
    assert dirty1.startswith(f"git:{head}-dirty-")
    (tree / "lib" / "Makefile").write_text("obj-y += edited-differently.o\n")
    assert kernel.tree_source_id(tree) not in (dirty1, f"git:{head}")


def test_plain_tree_source_id_uses_version_and_path(tmp_path):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    assert kernel.tree_source_id(a).startswith("tree:")
    assert kernel.tree_source_id(a) == kernel.tree_source_id(a)
    assert kernel.tree_source_id(a) != kernel.tree_source_id(b)


# --------------------------------------------------------------------------
# prepared trees: KML and patches


def test_prepare_places_kml_and_applies_series(tmp_path):
    cache = tmp_path / "cache"
    kml = tmp_path / "kml"
    make_tree(kml, {"Kconfig": "config KML\n\ttristate\n", "Makefile": "obj-y += x.o\n"})
    (kml / "x.o").write_text("build product: not a source")
    (kml / ".x.o.cmd").write_text("hidden: not a source")
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "0001-lib-hook-kml.patch").write_text(GOOD_PATCH)
    src = tarball_source(make_tarball(tmp_path))

    tree = kernel.prepare_tree(src, cache, quiet, kml_dir=kml, patches_dir=patches)

    assert tree.parent == cache / "src"
    assert sorted(p.name for p in (tree / "lib" / "kml").iterdir()) == ["Kconfig", "Makefile"]
    assert (tree / "lib" / "Makefile").read_text().endswith("obj-$(CONFIG_KML) += kml/\n")
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))
    # Hard-linked to the pristine source, except what the patch touched,
    # which must not have changed the pristine copy.
    pristine = kernel.pristine_tree(src, cache, quiet)
    assert (pristine / "lib" / "Makefile").read_text() == FAKE_FILES["lib/Makefile"]
    assert (tree / "Makefile").stat().st_ino == (pristine / "Makefile").stat().st_ino
    assert (tree / "lib" / "Makefile").stat().st_ino != (
        pristine / "lib" / "Makefile"
    ).stat().st_ino
    assert not (pristine / "lib" / "kml").exists()
    stamp = tree / ".kmlbench-prepared"
    mtime = stamp.stat().st_mtime_ns
    # Same inputs: the same tree, not redone.
    assert kernel.prepare_tree(src, cache, quiet, kml_dir=kml, patches_dir=patches) == tree
    assert stamp.stat().st_mtime_ns == mtime
    # A KML edit is a different tree.
    (kml / "Makefile").write_text("obj-y += y.o\n")
    other = kernel.prepare_tree(src, cache, quiet, kml_dir=kml, patches_dir=patches)
    assert other != tree
    assert (other / "lib" / "kml" / "Makefile").read_text() == "obj-y += y.o\n"


def test_patch_that_does_not_apply_names_patch_and_hunk(tmp_path):
    cache = tmp_path / "cache"
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "0001-lib-hook-kml.patch").write_text(GOOD_PATCH)
    (patches / "0002-kconfig-source-kml.patch").write_text(BAD_PATCH)
    src = tarball_source(make_tarball(tmp_path))

    with pytest.raises(PatchError) as exc:
        kernel.prepare_tree(src, cache, quiet, kml_dir=tmp_path / "none", patches_dir=patches)

    msg = str(exc.value)
    assert exc.value.patch.name == "0002-kconfig-source-kml.patch"
    assert "0002-kconfig-source-kml.patch" in msg
    assert "0001-lib-hook-kml.patch" not in msg
    assert "rejected hunk" in msg
    assert '+source "lib/kml/Kconfig"' in msg  # the hunk itself, from the .rej
    assert "lib/Kconfig.rej" in msg
    # Nothing that looks like a prepared tree, and no temp dir left behind.
    assert completed_entries(cache / "src") == []
    assert not list((cache / "src").glob(".tmp-*"))


def test_already_applied_patch_is_an_error_not_a_revert(tmp_path):
    tree = make_tree(tmp_path / "tree")
    patch = tmp_path / "0001-lib-hook-kml.patch"
    patch.write_text(GOOD_PATCH)
    kernel.apply_patches(tree, [patch], quiet)
    with pytest.raises(PatchError, match=r"0001-lib-hook-kml\.patch"):
        kernel.apply_patches(tree, [patch], quiet)
    assert (tree / "lib" / "Makefile").read_text().endswith("obj-$(CONFIG_KML) += kml/\n")


def test_series_file_orders_patches_and_checks_names(tmp_path):
    patches = tmp_path / "patches"
    patches.mkdir()
    for name in ("0001-a.patch", "0002-b.patch", "0003-unlisted.patch"):
        (patches / name).write_text("")
    assert [p.name for p in kernel.patch_series(patches)] == [
        "0001-a.patch",
        "0002-b.patch",
        "0003-unlisted.patch",
    ]
    (patches / "series").write_text("# order matters\n0002-b.patch\n\n0001-a.patch -p1\n")
    assert [p.name for p in kernel.patch_series(patches)] == ["0002-b.patch", "0001-a.patch"]
    assert [p.name for p in kernel.unlisted_patches(patches)] == ["0003-unlisted.patch"]
    (patches / "series").write_text("0002-b.patch\n0009-missing.patch\n")
    with pytest.raises(KernelBuildError, match=r"series:2: patch 0009-missing.patch"):
        kernel.patch_series(patches)
    assert kernel.patch_series(tmp_path / "absent") == []


def test_concurrent_prepares_extract_once(tmp_path):
    """Two callers for the same tree: one extracts, the other waits and reuses."""
    cache = tmp_path / "cache"
    src = tarball_source(make_tarball(tmp_path))
    logs: list[list[str]] = [[], []]
    results: list[Path | None] = [None, None]

    def worker(i: int) -> None:
        results[i] = kernel.prepare_tree(
            src, cache, logs[i].append, kml_dir=tmp_path / "none", patches_dir=tmp_path / "none"
        )

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] is not None and results[0] == results[1]
    extractions = sum(1 for log in logs for line in log if line.startswith("extracting"))
    assert extractions == 1
    assert completed_entries(cache / "src") == [results[0].name]


def test_tree_source_is_copied_not_modified(tmp_path):
    original = make_tree(tmp_path / "linux")
    (original / "lib" / "stale.o").write_text("build product")
    kml = make_tree(tmp_path / "kml", {"Kconfig": "config KML\n\ttristate\n"})
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "0001-lib-hook-kml.patch").write_text(GOOD_PATCH)
    src = kernel.resolve_source(str(original), tmp_path / "cache", quiet)
    assert src.kind == "tree"
    tree = kernel.prepare_tree(src, tmp_path / "cache", quiet, kml_dir=kml, patches_dir=patches)
    assert (tree / "lib" / "kml" / "Kconfig").exists()
    assert not (tree / "lib" / "stale.o").exists()
    assert not (original / "lib" / "kml").exists()
    assert (original / "lib" / "Makefile").read_text() == FAKE_FILES["lib/Makefile"]


# --------------------------------------------------------------------------
# the work tree: incremental sync (fake trees)

NEW_FILE_PATCH = "--- /dev/null\n+++ b/lib/new.c\n@@ -0,0 +1 @@\n+int new_file;\n"
PRISTINE_FILES = {**FAKE_FILES, "lib/a.c": "int a;\n", "scripts/run.sh": "#!/bin/sh\n"}


def make_pristine(tmp_path: Path) -> Path:
    """A fake pristine source whose files are a day old, like an extracted tarball's."""
    pristine = make_tree(tmp_path / "pristine", PRISTINE_FILES)
    (pristine / "scripts" / "run.sh").chmod(0o755)
    old = time.time() - 86400
    for p in pristine.rglob("*"):
        os.utime(p, (old, old))
    return pristine


def tree_inputs(
    tmp_path: Path, name: str, kml: dict[str, str], patches: dict[str, str]
) -> kernel.TreeInputs:
    kml_dir = make_tree(tmp_path / f"{name}-kml", kml) if kml else tmp_path / f"{name}-none"
    patches_dir = tmp_path / f"{name}-patches"
    patches_dir.mkdir()
    for patch_name, text in patches.items():
        (patches_dir / patch_name).write_text(text)
    return kernel.read_tree_inputs(kml_dir, patches_dir)


def contents(root: Path) -> dict[str, tuple[bytes, int]]:
    """(content, inode) of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_ino)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def age(tree: Path, *rels: str) -> None:
    """Set the mtime of some of the work tree's own files an hour back."""
    for rel in rels:
        assert (tree / rel).stat().st_nlink == 1, f"{rel} is linked to pristine"
        old = (tree / rel).stat().st_mtime - 3600
        os.utime(tree / rel, (old, old))


def fresh(tree: Path, rel: str) -> bool:
    """Whether ``rel`` was (re)written in the last 10 minutes."""
    return (tree / rel).stat().st_mtime > time.time() - 600


def test_work_tree_sync_adds_changes_and_removes_the_overlay(tmp_path):
    pristine = make_pristine(tmp_path)
    before = contents(pristine)
    work = tmp_path / "work"
    v1 = tree_inputs(
        tmp_path,
        "v1",
        {"Kconfig": "config KML\n", "Makefile": "obj-y += x.o\n", "x.c": "int x;\n"},
        {"0001-hook.patch": GOOD_PATCH, "0002-new.patch": NEW_FILE_PATCH},
    )
    tree = kernel.sync_work_tree(pristine, work, v1, "src", quiet)

    assert tree == work / "linux"
    assert (tree / "lib" / "kml" / "x.c").read_text() == "int x;\n"
    assert (tree / "lib" / "Makefile").read_text().endswith("obj-$(CONFIG_KML) += kml/\n")
    assert (tree / "lib" / "new.c").read_text() == "int new_file;\n"
    assert (tree / "Makefile").stat().st_ino == (pristine / "Makefile").stat().st_ino
    assert (tree / "lib" / "Makefile").stat().st_ino != (pristine / "Makefile").stat().st_ino
    assert (tree / "scripts" / "run.sh").stat().st_mode & 0o111
    assert not list(tree.rglob("*.orig")) and not list(tree.rglob("*.rej"))
    assert not (work / "dirty").exists()
    state = json.loads((work / "state.json").read_text())
    assert set(state["overlay"]) == {
        "lib/kml/Kconfig",
        "lib/kml/Makefile",
        "lib/kml/x.c",
        "lib/Makefile",
        "lib/new.c",
    }
    assert contents(pristine) == before

    # v2: x.c changed, Makefile removed, y.c added; the new-file patch dropped.
    age(tree, "lib/kml/Kconfig", "lib/kml/x.c", "lib/Makefile")
    kept = {rel: (tree / rel).stat().st_mtime_ns for rel in ("lib/kml/Kconfig", "lib/Makefile")}
    v2 = tree_inputs(
        tmp_path,
        "v2",
        {"Kconfig": "config KML\n", "x.c": "int x = 2;\n", "sub/y.c": "int y;\n"},
        {"0001-hook.patch": GOOD_PATCH},
    )
    kernel.sync_work_tree(pristine, work, v2, "src", quiet)

    assert (tree / "lib" / "kml" / "x.c").read_text() == "int x = 2;\n"
    assert fresh(tree, "lib/kml/x.c")
    assert (tree / "lib" / "kml" / "sub" / "y.c").read_text() == "int y;\n"
    assert not (tree / "lib" / "kml" / "Makefile").exists()
    assert not (tree / "lib" / "new.c").exists()
    # Unchanged files keep their mtimes: make will not rebuild what uses them.
    assert {rel: (tree / rel).stat().st_mtime_ns for rel in kept} == kept
    assert contents(pristine) == before

    # v3: no KML, no patches: back to the pristine content, freshly written.
    v3 = tree_inputs(tmp_path, "v3", {}, {})
    kernel.sync_work_tree(pristine, work, v3, "src", quiet)

    assert not (tree / "lib" / "kml").exists()
    assert (tree / "lib" / "Makefile").read_text() == PRISTINE_FILES["lib/Makefile"]
    assert fresh(tree, "lib/Makefile")  # newer than the objects built from the patched one
    assert {p: c for p, (c, _) in contents(tree).items()} == {p: c for p, (c, _) in before.items()}
    assert contents(pristine) == before
    assert json.loads((work / "state.json").read_text())["overlay"] == {}


def test_work_tree_sync_removes_stray_kml_files(tmp_path):
    pristine = make_pristine(tmp_path)
    work = tmp_path / "work"
    v1 = tree_inputs(tmp_path, "v1", {"x.c": "int x;\n"}, {})
    tree = kernel.sync_work_tree(pristine, work, v1, "src", quiet)
    (tree / "lib" / "kml" / "stray.c").write_text("not from kernel/kml\n")
    kernel.sync_work_tree(pristine, work, v1, "src", quiet)
    assert sorted(p.name for p in (tree / "lib" / "kml").iterdir()) == ["x.c"]


def test_interrupted_sync_relinks_the_tree_and_rewrites_what_may_differ(tmp_path):
    pristine = make_pristine(tmp_path)
    before = contents(pristine)
    work = tmp_path / "work"
    v1 = tree_inputs(tmp_path, "v1", {"x.c": "int x;\n"}, {"0001-hook.patch": GOOD_PATCH})
    tree = kernel.sync_work_tree(pristine, work, v1, "src", quiet)
    (work / "obj-0123").mkdir()
    # A sync towards "no patches" was killed after restoring lib/Makefile
    # but before the state was written; some other file got mangled.
    (work / "dirty").write_text(json.dumps(["lib/Makefile", "lib/a.c", "lib/kml/x.c"]))
    (tree / "lib" / "kml" / "x.c").write_text("half written")
    age(tree, "lib/Makefile")
    assert not fresh(tree, "lib/a.c")
    logs: list[str] = []

    kernel.sync_work_tree(pristine, work, v1, "src", logs.append)

    assert any("re-linking the work tree" in line for line in logs)
    assert (tree / "lib" / "kml" / "x.c").read_text() == "int x;\n"
    assert (tree / "lib" / "Makefile").read_text().endswith("obj-$(CONFIG_KML) += kml/\n")
    assert fresh(tree, "lib/Makefile")
    # lib/a.c may have been built from other content: rewritten although pristine.
    assert (tree / "lib" / "a.c").read_text() == PRISTINE_FILES["lib/a.c"]
    assert fresh(tree, "lib/a.c")
    assert not fresh(tree, "Makefile")  # not in any overlay: still linked, still old
    assert (work / "obj-0123").is_dir()  # what may differ is known: objects kept
    assert not (work / "dirty").exists()
    assert contents(pristine) == before

    # Without a readable state nothing is known about the objects: they go.
    (work / "state.json").unlink()
    kernel.sync_work_tree(pristine, work, v1, "src", logs.append)
    assert not (work / "obj-0123").exists()
    assert (tree / "lib" / "kml" / "x.c").read_text() == "int x;\n"
    assert contents(pristine) == before


def test_work_tree_patch_error_names_patch_and_leaves_tree_alone(tmp_path):
    pristine = make_pristine(tmp_path)
    work = tmp_path / "work"
    v1 = tree_inputs(tmp_path, "v1", {"x.c": "int x;\n"}, {"0001-hook.patch": GOOD_PATCH})
    tree = kernel.sync_work_tree(pristine, work, v1, "src", quiet)
    state = (work / "state.json").read_text()
    snap = contents(tree)
    bad = tree_inputs(
        tmp_path,
        "bad",
        {"x.c": "int x = 3;\n"},
        {"0001-hook.patch": GOOD_PATCH, "0002-kconfig-source-kml.patch": BAD_PATCH},
    )
    with pytest.raises(PatchError) as exc:
        kernel.sync_work_tree(pristine, work, bad, "src", quiet)
    msg = str(exc.value)
    assert exc.value.patch.name == "0002-kconfig-source-kml.patch"
    assert "rejected hunk" in msg and "lib/Kconfig.rej" in msg
    assert '+source "lib/kml/Kconfig"' in msg
    assert contents(tree) == snap
    assert (work / "state.json").read_text() == state
    assert not (work / "dirty").exists()
    assert not list(work.glob(".scratch-*"))


def test_built_modules_ignores_stale_ko_files(tmp_path):
    obj = tmp_path / "obj"
    make_tree(obj, {"lib/kml/kml_test.ko": "new", "lib/kml/kml_old.ko": "removed module"})
    assert set(built_modules(obj)) == {"kml_old", "kml_test"}
    (obj / "modules.order").write_text("lib/kml/kml_test.ko\n")
    assert built_modules(obj) == {"kml_test": obj / "lib/kml/kml_test.ko"}


def test_publish_copies_the_object_dir_with_its_stamp(tmp_path):
    obj = make_tree(
        tmp_path / "obj",
        {"arch/x86/boot/bzImage": "kernel", ".config": "CONFIG_A=y\n", "lib/kml/kml.o": "o"},
    )
    builds = tmp_path / "builds"
    builds.mkdir()
    (builds / "k1").mkdir()  # an unstamped, interrupted build of the old layout
    (builds / "k1" / "junk").write_text("x")
    final = publish(obj, builds, "k1", {"build_key": "k1"}, quiet)
    assert final == builds / "k1"
    assert read_stamp(final) == {"build_key": "k1"}
    assert (final / "lib" / "kml" / "kml.o").read_text() == "o"
    assert not (final / "junk").exists()
    assert sorted(p.name for p in builds.iterdir()) == ["k1"]
    # A copy, not links: rebuilding in the object dir leaves the build alone.
    assert (final / "arch/x86/boot/bzImage").stat().st_ino != (
        obj / "arch/x86/boot/bzImage"
    ).stat().st_ino


def test_kconfig_memo_key_ignores_c_files_but_not_kconfig():
    base = {"lib/kml/Kconfig": "k1", "lib/kml/kml_math.c": "c1", "lib/Kconfig": "p1"}

    def key(overlay: dict[str, str | None], fragments: tuple[str, ...] = ("CONFIG_A=y\n",)) -> str:
        return kconfig_memo_key("src", overlay, fragments, "gcc 12", "ld 2.40")

    same = [
        {**base, "lib/kml/kml_math.c": "c2"},
        {**base, "block/mq-deadline.c": "d1", "lib/kml/Kbuild": "b1", "block/Makefile": "m1"},
    ]
    differ = [
        {**base, "lib/kml/Kconfig": "k2"},
        {**base, "block/Kconfig.iosched": "i1"},
        {**base, "kernel/configs/tiny.config": None},
        {**base, "scripts/kconfig/conf.c": "s1"},
        {**base, "arch/x86/Makefile": "a1"},
    ]
    assert all(key(o) == key(base) for o in same)
    assert all(key(o) != key(base) for o in differ)
    assert key(base, ("CONFIG_A=n\n",)) != key(base)


# --------------------------------------------------------------------------
# config parsing, checking and hashing (no kernel needed)


def test_check_config_names_dropped_options_with_their_fragment(tmp_path):
    base = tmp_path / "base.config"
    base.write_text('CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_S="x"\n')
    extra = tmp_path / "extra.config"
    extra.write_text("# comment\nCONFIG_B=n\nCONFIG_D=m\n# CONFIG_E is not set\n")
    final = (
        "# header comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n"
        'CONFIG_S="x"\nCONFIG_D=y\n'
    )
    misses = kernel.check_config(final, [base, extra])
    assert [(m.symbol, m.fragment.name, m.line, m.actual) for m in misses] == [
        ("CONFIG_C", "base.config", 3, "CONFIG_C=y"),  # asked off, came out on
        ("CONFIG_D", "extra.config", 3, "CONFIG_D=y"),  # asked =m, came out =y
    ]
    # B: the later fragment wins (=n means "is not set"); E: absent counts as not set.
    text = kernel.format_config_misses(misses)
    assert "# CONFIG_C is not set" in text and f"{base}:3" in text
    assert "CONFIG_D=m" in text and f"{extra}:3" in text


def test_config_hash_ignores_comments_but_not_unset_options():
    a = "#\n# Linux/x86 6.1.1 Kernel Configuration\n#\nCONFIG_A=y\n# CONFIG_B is not set\n"
    b = (
        "#\n# Linux/x86 6.1.2 Kernel Configuration\n# built Tue\n"
        "CONFIG_A=y\n\n# CONFIG_B is not set\n"
    )
    c = "CONFIG_A=y\n"
    assert kernel.config_hash(a) == kernel.config_hash(b)
    assert kernel.config_hash(a) != kernel.config_hash(c)


def test_request_fragments_are_found_in_kernel_configs(tmp_path):
    configs = tmp_path / "configs"
    make_tree(configs, {"base.config": "CONFIG_A=y\n", "debug.config": "CONFIG_B=y\n"})
    assert [p.name for p in kernel.config_fragments([Path("debug.config")], configs)] == [
        "base.config",
        "debug.config",
    ]
    (configs / "kml.config").write_text("CONFIG_KML=y\n")
    assert [p.name for p in kernel.config_fragments([], configs)] == ["base.config", "kml.config"]
    again = kernel.config_fragments([configs / "base.config", Path("debug.config")], configs)
    assert [p.name for p in again] == ["base.config", "kml.config", "debug.config"]
    with pytest.raises(KernelBuildError, match=r"nope\.config does not exist"):
        kernel.config_fragments([Path("nope.config")], configs)


def test_error_summary_finds_the_compiler_error_in_a_noisy_log():
    noise = [f"  CC      drivers/x/file{i}.o" for i in range(500)]
    log = "\n".join(
        [
            *noise[:250],
            "lib/kml/kml_math.c: In function 'kml_dot':",
            "lib/kml/kml_math.c:42:9: error: 'y' undeclared (first use in this function)",
            "   42 |         y += 1;",
            *noise[250:],
            "make[3]: *** [scripts/Makefile.build:250: lib/kml/kml_math.o] Error 1",
            "make: *** [Makefile:2012: .] Error 2",
        ]
    )
    summary = kernel.error_summary(log)
    assert "kml_math.c:42:9: error: 'y' undeclared" in summary
    assert "In function 'kml_dot'" in summary
    assert len(summary.splitlines()) <= 20


def test_failed_make_raises_with_error_lines_and_log(tmp_path):
    """compile_kernel on a fake tree whose Makefile fails like a compiler."""
    tree = make_tree(
        tmp_path / "tree",
        {
            "Makefile": "bzImage:\n\t@echo '  CC      lib/ok.o'\n"
            "\t@echo 'lib/kml/kml.c:3:1: error: expected declaration' >&2\n\t@exit 1\n"
        },
    )
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / ".config").write_text("CONFIG_MODULES=y\nCONFIG_X=y\n")
    log = build_dir / "build.log"
    with pytest.raises(KernelBuildError) as exc:
        kernel.compile_kernel(tree, build_dir, log, [tmp_path / "run.log"], 1, quiet)
    msg = str(exc.value)
    assert "lib/kml/kml.c:3:1: error: expected declaration" in msg
    assert str(log) in msg and exc.value.log_path == log
    assert "error: expected declaration" in (tmp_path / "run.log").read_text()


# --------------------------------------------------------------------------
# Kconfig on the real Debian source (seconds, after a one-time extraction)


@pytest.fixture(scope="session")
def kconfig_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian source, but only what Kconfig reads: 40 MB instead of 1.4 GB.

    Makefiles, Kconfig/Kbuild files, scripts/ and the configs/ folders are
    all that ``tinyconfig``/``merge_config.sh``/``olddefconfig`` touch
    (checked: base.config gives the same config hash as on a full tree).
    Keeps the fast suite from writing a full tree to /tmp on every run.
    """
    tarball = paths.DEBIAN_KERNEL_TARBALL
    if not tarball.exists():
        pytest.skip(f"{tarball} not installed")
    dest = tmp_path_factory.mktemp("kconfig-tree")
    patterns = ["*/Makefile*", "*/Kconfig*", "*/Kbuild*", "*/scripts/*", "*/configs/*"]
    subprocess.run(
        ["tar", "-xf", str(tarball), "--wildcards", "--no-same-owner", "-C", str(dest), *patterns],
        check=True,
    )
    (root,) = dest.iterdir()
    return root


def test_option_with_missing_dependency_or_unknown_symbol_is_named(kconfig_tree, tmp_path):
    fragment = tmp_path / "broken.config"
    fragment.write_text(
        "CONFIG_64BIT=y\n"
        "CONFIG_BLOCK=y\n"
        "# virtio-blk without virtio: VIRTIO_BLK depends on VIRTIO\n"
        "CONFIG_VIRTIO_BLK=y\n"
        "CONFIG_KMLBENCH_NO_SUCH_SYMBOL=y\n"
    )
    with pytest.raises(ConfigError) as exc:
        kernel.configure(kconfig_tree, tmp_path / "build", [fragment], quiet)
    assert sorted(m.symbol for m in exc.value.misses) == [
        "CONFIG_KMLBENCH_NO_SUCH_SYMBOL",
        "CONFIG_VIRTIO_BLK",
    ]
    msg = str(exc.value)
    assert f"CONFIG_VIRTIO_BLK=y  ({fragment}:4)" in msg
    assert "depends on VIRTIO" in msg
    assert f"CONFIG_KMLBENCH_NO_SUCH_SYMBOL=y  ({fragment}:5)" in msg
    assert "no such symbol" in msg


def test_build_kernel_stops_at_config_with_named_option_and_log(kconfig_tree, tmp_path):
    """The front half of build_kernel (tree source, prepare, config) fails cleanly."""
    configs = tmp_path / "configs"
    configs.mkdir()
    shutil.copy(paths.CONFIGS_DIR / "base.config", configs / "base.config")
    (configs / "bad.config").write_text(
        "# needs PCI_MSI\nCONFIG_VIRTIO_PCI=y\n# CONFIG_PCI is not set\n"
    )
    with pytest.raises(ConfigError) as exc:
        kernel.build_kernel(
            KernelRequest(str(kconfig_tree), (Path("bad.config"),)),
            tmp_path / "cache",
            tmp_path / "logs",
            progress=None,
            kml_dir=tmp_path / "no-kml",
            patches_dir=tmp_path / "no-patches",
            configs_dir=configs,
        )
    assert "CONFIG_VIRTIO_PCI=y" in {m.requested for m in exc.value.misses}
    assert f"{configs / 'bad.config'}:2" in str(exc.value)
    assert exc.value.log_path is not None and exc.value.log_path.parent == tmp_path / "logs"
    assert "CONFIG_VIRTIO_PCI=y" in exc.value.log_path.read_text()
    assert not (tmp_path / "cache" / "builds").exists() or not [
        p for p in (tmp_path / "cache" / "builds").iterdir() if not p.name.endswith(".lock")
    ]


def test_repo_fragments_survive_olddefconfig(kconfig_tree, tmp_path):
    """base.config and kml.config, with KML and the patches in place, all survive.

    The fast check a fragment or Kconfig edit needs, without a compile.
    """
    tree = tmp_path / "tree"
    shutil.copytree(kconfig_tree, tree, symlinks=True)
    inputs = kernel.read_tree_inputs(paths.KML_SRC_DIR, paths.PATCHES_DIR)
    # Patches may touch more than Kconfig and Makefiles: extract what they name.
    wanted = set().union(*(patched_paths(data) for _, data in inputs.patches))
    top = kconfig_tree.name
    missing = sorted(f"{top}/{rel}" for rel in wanted if not (tree / rel).exists())
    if missing:
        extra = tmp_path / "extra"
        extra.mkdir()
        tarball = paths.DEBIAN_KERNEL_TARBALL
        # Files a patch creates are not in the tarball: tar complains, we don't care.
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(extra), *missing], check=False)
        shutil.copytree(extra / top, tree, symlinks=True, dirs_exist_ok=True)
    kernel.install_kml(tree, inputs, quiet)
    for patch, data in inputs.patches:
        kernel.apply_patch(tree, patch, data, quiet)
    fragments = kernel.config_fragments(())
    text = kernel.configure(tree, tmp_path / "build", fragments, quiet)
    lines = text.splitlines()
    assert "CONFIG_VIRTIO_BLK=y" in lines
    assert "CONFIG_MQ_IOSCHED_DEADLINE=y" in lines
    # The sanitizer variants (built nightly) survive too, every option in
    # them checked by configure(); KCSAN and KASAN exclude each other.
    for name, on, off in (
        ("debug.config", "CONFIG_KASAN=y", "CONFIG_KCSAN=y"),
        ("kcsan.config", "CONFIG_KCSAN=y", "CONFIG_KASAN=y"),
    ):
        variant = kernel.config_fragments((Path(name),))
        lines = kernel.configure(tree, tmp_path / name, variant, quiet).splitlines()
        assert on in lines and off not in lines, name
        assert "CONFIG_KML_IOSCHED=y" in lines and "CONFIG_PROVE_LOCKING=y" in lines


# --------------------------------------------------------------------------
# a real build (slow)


def _snapshot(root: Path) -> dict[str, int]:
    """mtime of every file and directory under ``root``."""
    snap = {".": root.stat().st_mtime_ns}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            snap[str(p.relative_to(root))] = p.lstat().st_mtime_ns
    return snap


@pytest.mark.kernel
def test_build_then_rebuild_is_a_cache_hit(
    kernel_build: KernelBuild, kernel_cache: Path, kernel_inputs: dict[str, Path], tmp_path: Path
):
    first = kernel_build
    assert first.bzimage.is_file() and first.bzimage.stat().st_size > 1_000_000
    assert first.build_dir == kernel_cache / "builds" / first.build_key
    assert first.config_hash == kernel.config_hash(first.config_path.read_text())
    assert first.compiler.startswith("gcc")
    assert first.log_path.is_file()
    for name, ko in first.modules.items():
        assert ko.is_file() and ko.stem == name
    before = _snapshot(first.build_dir)

    second = kernel.build_kernel(
        KernelRequest("debian", ()), kernel_cache, tmp_path, **kernel_inputs
    )

    assert second.compiled is False
    assert second.bzimage == first.bzimage
    assert second.build_key == first.build_key
    assert second.config_hash == first.config_hash
    assert second.modules == first.modules
    assert _snapshot(first.build_dir) == before
    assert "cache hit" in second.log_path.read_text()
    # Every module the config asks for (=m) was built and collected.
    if "CONFIG_KML_KUNIT_TEST=m" in first.config_path.read_text().splitlines():
        assert "kml_test" in first.modules


@pytest.mark.kernel
def test_kml_edit_is_an_incremental_rebuild(
    kernel_build: KernelBuild, kernel_cache: Path, kernel_inputs: dict[str, Path], tmp_path: Path
):
    """After the session build, a one-line KML edit recompiles a few objects, not the kernel.

    The edit adds a unique string, so the build is always new; its build dir
    is removed afterwards (it is keyed by that string: nothing can reuse it).
    """
    kml = tmp_path / "kml"
    shutil.copytree(kernel_inputs["kml_dir"], kml)
    math = kml / "kml_math.c"
    if not math.is_file():
        pytest.skip(f"no kml_math.c in {kernel_inputs['kml_dir']}")
    inputs = {**kernel_inputs, "kml_dir": kml}
    request = KernelRequest("debian", ())
    original = math.read_text()
    stamp = json.loads((kernel_build.build_dir / ".kmlbench-complete").read_text())
    built: list[KernelBuild] = []
    try:
        obj = stamp.get("obj_dir")
        if not (obj and (Path(obj) / "vmlinux").is_file()):
            # The session's kernel was built before the work tree existed (or
            # its objects are gone): fill the work tree once, a cold build.
            math.write_text(original + f"\n/* {uuid.uuid4().hex} */\n")
            built.append(kernel.build_kernel(request, kernel_cache, tmp_path, **inputs))
        marker = f"kmlbench-incremental-{uuid.uuid4().hex}"
        math.write_text(original + f'\nconst char kml_incremental_marker[] = "{marker}";\n')
        started = time.monotonic()
        build = kernel.build_kernel(request, kernel_cache, tmp_path, **inputs)
        elapsed = time.monotonic() - started
        built.append(build)

        assert build.compiled
        assert build.build_key != kernel_build.build_key
        assert build.bzimage.read_bytes() != kernel_build.bzimage.read_bytes()
        in_kernel = [build.build_dir / "vmlinux", *build.modules.values()]
        assert any(marker.encode() in p.read_bytes() for p in in_kernel if p.is_file())
        compile_log = (build.build_dir / "kmlbench-build.log").read_text()
        compiled = [
            line.split()[-1] for line in compile_log.splitlines() if line.startswith("  CC ")
        ]
        assert "lib/kml/kml_math.o" in compiled
        assert len(compiled) < 60, compiled  # a cold build compiles about 1,260 objects
        # A cold build takes 250 s on the idle 2-core machine, 600+ s loaded.
        # The compile's own time (the stamp's): the call's can include a wait
        # for the work tree's lock while the other test worker builds.
        built_stamp = read_stamp(build.build_dir)
        assert built_stamp is not None
        compile_s = float(built_stamp["compile_s"])
        assert compile_s < 150, f"incremental build compiled for {compile_s:.0f}s"
        for name, ko in build.modules.items():
            assert ko.is_file() and ko.stem == name
        print(
            f"incremental rebuild: {elapsed:.1f}s ({compile_s:.1f}s compiling),"
            f" {len(compiled)} objects compiled"
        )
    finally:
        for b in built:
            shutil.rmtree(b.build_dir, ignore_errors=True)
