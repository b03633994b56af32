"""build/kernel/compile.py: objects compiled out of the number expected, from make's output."""

from __future__ import annotations

from pathlib import Path

from kmlbench.build.kernel.compile import (
    CompileProgress,
    count_objects,
    read_object_count,
    write_object_count,
)

MAKE_OUTPUT = """\
make[1]: Entering directory '/cache/obj'
  SYNC    include/config/auto.conf.cmd
  HOSTCC  scripts/basic/fixdep
  CC      init/main.o
  AS      arch/x86/entry/entry_64.o
  CC [M]  fs/ext4/inode.o
  AR      init/built-in.a
  LD      vmlinux.o
  CC      lib/kml/kml_dd_feat.o
  CHK     kernel/kheaders_data.tar.xz
warning: CC      not/an/object.o  (not kbuild's short line)
"""


def test_counts_compiled_objects_and_reports_each_step() -> None:
    said: list[str] = []
    progress = CompileProgress(8, said.append, step_pct=25)
    for line in MAKE_OUTPUT.splitlines(keepends=True) * 2:
        progress.feed(line)
    assert progress.count == 8  # CC, AS, CC [M], CC per pass; not HOSTCC, AR, LD
    assert said == [
        "compiled 2/8 objects (25%)",
        "compiled 4/8 objects (50%)",
        "compiled 6/8 objects (75%)",
        "compiled 8/8 objects (100%)",
    ]


def test_without_an_expected_count_it_still_counts() -> None:
    said: list[str] = []
    progress = CompileProgress(None, said.append, step_pct=1)  # a line per 50 objects
    for _ in range(120):
        progress.feed("  CC      a/b.o\n")
    assert said == [
        "compiled 50 objects (no earlier build to count against)",
        "compiled 100 objects (no earlier build to count against)",
    ]


def test_the_count_is_remembered_for_the_next_build(tmp_path: Path) -> None:
    obj = tmp_path / "obj"
    assert read_object_count(obj) is None
    write_object_count(obj, 3000)
    write_object_count(obj, 40)  # a warm rebuild does not lower it
    assert read_object_count(obj) == 3000


def test_past_the_expected_count_it_says_so_and_never_claims_more_than_100() -> None:
    said: list[str] = []
    progress = CompileProgress(100, said.append, step_pct=1)  # past it: a line per 50
    for _ in range(300):
        progress.feed("  CC      a/b.o\n")
    assert said[:100] == [f"compiled {n}/100 objects ({n}%)" for n in range(1, 101)]
    assert said[100:] == [
        f"compiled {n} objects (more than the 100 expected)" for n in (150, 200, 250, 300)
    ]


def test_an_incremental_build_only_counts() -> None:
    said: list[str] = []
    progress = CompileProgress(None, said.append, running=False)
    for _ in range(600):
        progress.feed("  CC      a/b.o\n")
    assert progress.count == 600 and said == []


def test_before_any_build_the_estimate_says_about() -> None:
    said: list[str] = []
    progress = CompileProgress(4, said.append, step_pct=50, about=True)
    for _ in range(4):
        progress.feed("  CC      a/b.o\n")
    assert said == ["compiled 2/~4 objects (50%)", "compiled 4/~4 objects (100%)"]


def test_a_build_dir_is_counted_by_its_objects_not_by_what_this_build_compiled(
    tmp_path: Path,
) -> None:
    obj = tmp_path / "obj"
    for rel in ("init/main.o", "lib/kml/kml_nn.o", "fs/ext4/inode.o", "scripts/mod/empty.o",
                "tools/objtool/x.o", "vmlinux.a"):  # fmt: skip
        (obj / rel).parent.mkdir(parents=True, exist_ok=True)
        (obj / rel).write_text("")
    assert count_objects(obj) == 3  # not the host tools'
