"""build/kernel/compile.py: a new config's object dir starts as a copy of a finished sibling.

The copy's point is kbuild's incremental rules, which read timestamps: the
tests check that the newest finished sibling is the one copied, with its
timestamps, and that nothing half made is left or taken. That a seeded
build is a correct kernel is tests/test_dispatch_order.py's (it boots the
``nokml`` variant built this way).
"""

from __future__ import annotations

import os
from pathlib import Path

from kmlbench.build.kernel.compile import BZIMAGE, SEED_SCRATCH_PREFIX, seed_object_dir


def _obj(work: Path, name: str, finished: bool, mtime: float) -> Path:
    obj = work / name
    (obj / "lib").mkdir(parents=True)
    (obj / "lib" / "x.o").write_text(name)
    os.utime(obj / "lib" / "x.o", (mtime - 100, mtime - 100))
    (obj / ".config").write_text(f"# {name}\n")
    # objtool's records name files by absolute path (tools/build)
    record = obj / "tools" / "objtool" / ".check.o.cmd"
    record.parent.mkdir(parents=True)
    record.write_text(f"deps := {obj}/tools/objtool/check.o\n")
    os.utime(record, (mtime - 50, mtime - 50))
    if finished:
        (obj / BZIMAGE).parent.mkdir(parents=True)
        (obj / BZIMAGE).write_text("kernel")
        os.utime(obj / BZIMAGE, (mtime, mtime))
    return obj


def test_copies_the_newest_finished_sibling_with_its_timestamps(tmp_path: Path) -> None:
    _obj(tmp_path, "obj-old", True, 1_000_000)
    newest = _obj(tmp_path, "obj-new", True, 2_000_000)
    _obj(tmp_path, "obj-unfinished", False, 3_000_000)  # no bzImage: never taken
    said: list[str] = []
    target = tmp_path / "obj-variant"
    assert seed_object_dir(target, said.append) == newest
    assert (target / "lib" / "x.o").read_text() == "obj-new"
    assert (target / "lib" / "x.o").stat().st_mtime == 2_000_000 - 100
    assert (target / BZIMAGE).stat().st_mtime == 2_000_000
    record = target / "tools" / "objtool" / ".check.o.cmd"
    assert record.read_text() == f"deps := {target}/tools/objtool/check.o\n"
    assert record.stat().st_mtime == 2_000_000 - 50
    assert str(newest) in (newest / "tools" / "objtool" / ".check.o.cmd").read_text()
    assert not list(tmp_path.glob(SEED_SCRATCH_PREFIX + "*"))
    assert said and "seeded obj-variant from obj-new" in said[0]


def test_an_existing_dir_or_no_finished_sibling_is_left_alone(tmp_path: Path) -> None:
    existing = _obj(tmp_path, "obj-a", True, 1_000_000)
    assert seed_object_dir(existing, print) is None
    assert (existing / "lib" / "x.o").read_text() == "obj-a"
    lonely = tmp_path / "other"
    _obj(lonely, "obj-unfinished", False, 1_000_000)
    assert seed_object_dir(lonely / "obj-new", print) is None
    assert not (lonely / "obj-new").exists()


def test_a_copy_left_by_an_interrupted_seed_is_removed(tmp_path: Path) -> None:
    _obj(tmp_path, "obj-a", True, 1_000_000)
    stale = tmp_path / f"{SEED_SCRATCH_PREFIX}obj-b"
    (stale / "half").mkdir(parents=True)
    seed_object_dir(tmp_path / "obj-b", print)
    assert not stale.exists()
    assert (tmp_path / "obj-b" / "lib" / "x.o").read_text() == "obj-a"


def test_a_scratch_path_it_cannot_clear_is_never_copied_into(tmp_path: Path) -> None:
    _obj(tmp_path, "obj-a", True, 1_000_000)
    blocker = tmp_path / f"{SEED_SCRATCH_PREFIX}obj-b"
    blocker.write_text("not a dir: rmtree leaves it")
    said: list[str] = []
    assert seed_object_dir(tmp_path / "obj-b", said.append) is None
    assert not (tmp_path / "obj-b").exists()
    assert blocker.read_text() == "not a dir: rmtree leaves it"
    assert "could not remove" in said[-1]


def test_records_under_a_symlinked_path_are_pointed_at_the_copy(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    work = tmp_path / "link"  # the cache reached through a symlink
    source = _obj(work, "obj-a", True, 1_000_000)
    record = source / "tools" / "objtool" / ".check.o.cmd"
    record.write_text(f"deps := {(real / 'obj-a').resolve()}/tools/objtool/check.o\n")
    target = work / "obj-b"
    assert seed_object_dir(target, print) == source
    copied = (target / "tools" / "objtool" / ".check.o.cmd").read_text()
    assert copied == f"deps := {target.resolve()}/tools/objtool/check.o\n"
