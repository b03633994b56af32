"""The instruction counter without a kernel: its build, QEMU's command line, the profile maths.

The plugin is really built (its header from Debian's qemu source package,
fetched once into the cache) and really loaded by QEMU: firmware code runs
in the lower half of the address space, so it counts as ``[user]``; the
plugin refuses two vCPUs and a missing marker. The parts table, the
snapshot difference and the comparison of ``kmlbench bench hooks`` are
checked on made-up counts. The real guest is ``test_insn_profile_guest.py``.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from kmlbench import paths
from kmlbench.bench import hooks
from kmlbench.build import qemu_plugin
from kmlbench.cell import workload
from kmlbench.cell.context import ProfileSpec
from kmlbench.cell.lifecycle import profile_plugin
from kmlbench.data import insn_profile as prof
from kmlbench.guest.command import QBOOT, GuestConfig, QemuPlugin, build_command_line
from kmlbench.run import runner

SYMBOLS = """\
ffffffff80ff0000 0000000000000010 t local_clock
ffffffff81000000 0000000000000020 T fake_a
ffffffff81000008 t .E_label_inside_a
ffffffff81000020 t fake_alias_at_b
ffffffff81000020 0000000000000010 T fake_b
ffffffff81000040 T __x64_sys_sync
ffffffff81000050 d not_text
ffffffff81000060 0000000000000004 t local_clock
"""


@pytest.fixture(scope="module")
def plugin() -> qemu_plugin.Plugin:
    return qemu_plugin.build_plugin()


def _qemu(plugin: Path, args: str, *extra: str, seconds: float = 3) -> subprocess.CompletedProcess:
    cmd = [
        "timeout", "-s", "TERM", str(seconds), "qemu-system-x86_64", "-nodefaults",
        "-nographic", "-accel", "tcg", "-icount", "shift=0,sleep=off",
        *(["-bios", str(QBOOT)] if QBOOT.exists() else []),
        "-plugin", f"{plugin},{args}", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_plugin_is_cached_by_key(plugin: qemu_plugin.Plugin) -> None:
    assert plugin.path.is_file() and plugin.path.name == "symcount.so"
    recipe = json.loads((plugin.path.parent / "recipe.json").read_text())
    assert recipe["qemu_source"].startswith("debian:qemu:")
    assert plugin.qemu_source_version in recipe["qemu_source"]
    header = (plugin.path.parent / "qemu-plugin.h").read_text()
    assert "QEMU_PLUGIN_VERSION" in header and "#include <glib" not in header
    assert qemu_plugin.build_plugin() == plugin  # warm: same key, no rebuild


def test_plugin_counts_firmware_as_user_and_writes_at_exit(
    plugin: qemu_plugin.Plugin, tmp_path: Path
) -> None:
    symbols, out = tmp_path / "syms.txt", tmp_path / "snap.jsonl"
    symbols.write_text(SYMBOLS)
    _qemu(plugin.path, f"symbols={symbols},out={out}")
    snaps = prof.read_snapshots(out)
    assert [s["reason"] for s in snaps] == ["exit"]
    assert snaps[0]["counts"][prof.USER] > 1000  # the firmware ran, in the lower half


def test_plugin_resolves_the_symbol_table(plugin: qemu_plugin.Plugin, tmp_path: Path) -> None:
    symbols, dump = tmp_path / "syms.txt", tmp_path / "dump.txt"
    symbols.write_text(SYMBOLS)
    _qemu(plugin.path, f"symbols={symbols},out={tmp_path / 'o.jsonl'},dump={dump}", seconds=1)
    table = [line.split() for line in dump.read_text().splitlines()]
    assert table == [
        ["ffffffff80ff0000", "ffffffff80ff0010", "local_clock"],
        # the label inside fake_a is fake_a's; the sized global of an address names it
        ["ffffffff81000000", "ffffffff81000020", "fake_a"],
        ["ffffffff81000020", "ffffffff81000030", "fake_b"],
        # no size: up to the next symbol (data is not text)
        ["ffffffff81000040", "ffffffff81000060", "__x64_sys_sync"],
        ["ffffffff81000060", "ffffffff81000064", "local_clock"],
    ]


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        ("out=X", (), "needs symbols=FILE and out=FILE"),
        ("symbols=SYMS,out=OUT,mark=no_such_symbol", (), "mark symbol no_such_symbol is not in"),
        ("symbols=SYMS,out=OUT", ("-smp", "2"), "one vCPU only"),
        ("symbols=SYMS,out=OUT,colour=blue", (), "unknown argument colour=blue"),
    ],
)
def test_plugin_refuses(
    plugin: qemu_plugin.Plugin, tmp_path: Path, args: str, extra: tuple[str, ...], message: str
) -> None:
    symbols = tmp_path / "syms.txt"
    symbols.write_text(SYMBOLS)
    args = args.replace("SYMS", str(symbols)).replace("OUT", str(tmp_path / "o.jsonl"))
    done = _qemu(plugin.path, args, *extra)
    assert message in done.stderr and "Could not load plugin" in done.stderr, done.stderr


def test_header_patches_take_only_the_header_part(tmp_path: Path) -> None:
    patch = (
        "Subject: x\n---\n"
        "diff --git a/include/qemu/qemu-plugin.h b/include/qemu/qemu-plugin.h\n"
        "--- a/include/qemu/qemu-plugin.h\n+++ b/include/qemu/qemu-plugin.h\n"
        "@@ -1 +1 @@\n-old\n+new\n"
        "diff --git a/other.c b/other.c\n--- a/other.c\n+++ b/other.c\n@@ -1 +1 @@\n-a\n+b\n"
    )
    tarball = tmp_path / "q.debian.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        for name, text in (("series", "p1.patch\n# off.patch\n"), ("p1.patch", patch)):
            data = text.encode()
            info = tarfile.TarInfo(f"debian/patches/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    [(name, part)] = qemu_plugin.header_patches(tarball)
    assert name == "p1.patch"
    assert "+new" in part and "other.c" not in part and "+b" not in part


def test_kernel_symbols_keeps_text_only(tmp_path: Path) -> None:
    (tmp_path / "System.map").write_text(SYMBOLS)
    out = qemu_plugin.kernel_symbols(tmp_path, tmp_path / "syms.txt")
    assert qemu_plugin.symbol_names(out) == {
        "local_clock", "fake_a", ".E_label_inside_a", "fake_alias_at_b", "fake_b",
        "__x64_sys_sync",
    }  # fmt: skip


def test_qemu_gets_the_plugin_as_data(tmp_path: Path) -> None:
    spec = ProfileSpec(Path("/p/symcount.so"), Path("/s/a,b.txt"), "__x64_sys_sync")
    plugin = profile_plugin(spec, tmp_path)
    cfg = GuestConfig(
        kernel=Path("/k"), initrd=Path("/i"), console_log=tmp_path / "c", cpus=1,
        clock="virtual", plugins=[plugin],
    )  # fmt: skip
    argv = build_command_line(cfg, 2222)
    value = argv[argv.index("-plugin") + 1]
    # QEMU's option syntax: a comma inside a value is doubled
    assert value == (
        f"/p/symcount.so,symbols=/s/a,,b.txt,out={tmp_path}/{prof.SNAPSHOTS_FILE},"
        "mark=__x64_sys_sync"
    )
    with pytest.raises(ValueError, match="plugins need TCG"):
        build_command_line(
            GuestConfig(Path("/k"), Path("/i"), tmp_path / "c", accel="kvm", plugins=[plugin]), 1
        )
    assert "-plugin" not in build_command_line(GuestConfig(Path("/k"), Path("/i"), tmp_path), 1)
    assert QemuPlugin(Path("/x.so")).argument() == "/x.so"


def test_fio_command_syncs_only_when_profiled() -> None:
    plain, profiled = workload.fio_command(), workload.fio_command(profiled=True)
    assert "sync" not in plain
    assert profiled.startswith("sync; head -1 /proc/stat")
    assert profiled.endswith("sync; exit $rc")
    assert profiled.replace("sync; ", "") == plain


@pytest.mark.parametrize(
    ("symbol", "part"),
    [
        ("__kml_dd_insert", "hooks"),
        ("kml_dd_something_new", "hooks"),
        ("kml_dd_feat_insert", "features"),
        ("kml_dd_lg", "features"),
        ("kml_dd_lg_q16_to_ns", "prediction"),
        # active mode's lazy prediction, the model's call inlined in it
        ("__kml_dd_predict_lazy", "prediction"),
        ("kml_dd_meets", "prediction"),
        ("kml_q16_matmul.isra.0", "prediction"),
        ("kernel_fpu_begin_mask", "prediction"),
        ("kml_linear_forward_q16", "prediction"),
        ("kml_sat32", "prediction"),
        ("kml_dd_decide_q16", "prediction"),
        ("kml_now_ns", "clock"),
        ("kml_dd_stat_inc", "statistics"),
        ("native_sched_clock", "clock"),
        ("local_clock", "clock"),
        ("ktime_get", "clock"),
        ("read_tsc", "clock"),
        ("ktime_get_mono_fast_ns", "clock"),
        ("timekeeping_get_ns", "clock"),
        ("llist_add_batch", "hooks"),
        ("kml_ring_push", "ring"),
        ("kml_dd_push_sample", "ring"),
        ("kml_dd_account", "statistics"),
        ("kml_dd_hist_add", "statistics"),
        ("kml_dd_stats_show", "statistics"),
        ("dd_insert_requests", "mq-deadline"),
        ("deadline_next_request", "mq-deadline"),
        ("__deadline_fifo_urgent", "mq-deadline"),
        ("blk_mq_submit_bio", "rest"),
        (prof.KERNEL_OTHER, "rest"),
    ],
)
def test_parts(symbol: str, part: str) -> None:
    assert prof.part_of(symbol) == part


def _snap(n: int, reason: str, counts: dict[str, int]) -> dict:
    return {"snapshot": n, "reason": reason, "counts": counts}


def test_profile_between_two_marks(tmp_path: Path) -> None:
    snaps = [
        _snap(0, "mark", {"dd_dispatch_request": 10, prof.USER: 5, "x": 7}),
        _snap(1, "mark", {"dd_dispatch_request": 110, prof.USER: 25, "x": 7, "kml_q16_dot": 50}),
    ]
    out = tmp_path / "s.jsonl"
    out.write_text("".join(json.dumps(s) + "\n" for s in snaps) + '{"snapshot": 2, "rea')
    got = prof.read_snapshots(out)  # the torn last line (QEMU killed mid-write) is skipped
    assert got == snaps
    profile = prof.profile_from_snapshots(got, 10, mark="m", ios_source="t")
    assert profile["totals"] == {"kernel": 150, "user": 20, "kernel_other": 0}
    assert profile["per_io"] == {"kernel": 15.0, "user": 2.0}
    assert profile["symbols"]["dd_dispatch_request"] == {"insns": 100, "per_io": 10.0}
    assert "x" not in profile["symbols"]  # did not move between the marks
    assert profile["parts_per_io"]["mq-deadline"] == 10.0
    assert profile["parts_per_io"]["prediction"] == 5.0
    with pytest.raises(prof.ProfileError, match="expected 2 snapshots"):
        prof.profile_from_snapshots(got[:1], 10, mark="m", ios_source="t")


def test_fio_ios_counts_every_job_and_direction() -> None:
    report = {
        "disk_util": [{"name": "nullb0", "read_ios": 900, "write_ios": 100}],
        "jobs": [
            {"read": {"total_ios": 800}, "write": {"total_ios": 50}},
            {"read": {"total_ios": 1}},
        ],
    }
    assert prof.fio_ios(report) == (851.0, "fio total_ios")


def _cell(
    run: Path, cid: str, mode: str, counts: dict[str, int], ios: int, variant: str = "default"
) -> dict:
    folder = run / "cells" / cid
    folder.mkdir(parents=True)
    profile = prof.build_profile(counts, ios, mark="m", ios_source="t")
    (folder / prof.PROFILE_FILE).write_text(json.dumps(profile))
    cell = {"id": cid, "status": "ok", "params": {"model": {"mode": mode}}}
    if variant != "default":
        cell["kernel_variant"] = variant
        cell["params"]["kernel"] = {"name": variant}
    return cell


def test_hooks_breakdown_and_render(tmp_path: Path) -> None:
    run = tmp_path / "run-1"
    cells = [
        _cell(run, "a", "off", {"dd_insert_request": 1000, "blk_x": 5000}, 100),
        _cell(run, "b", "observe", {"dd_insert_request": 1000, "blk_x": 5000,
                                    "kml_q16_dot": 800, "__kml_dd_insert": 200}, 100),
    ]  # fmt: skip
    (run / "summary.json").write_text(json.dumps({"cells": cells}))
    result = hooks.breakdown(run)
    obs = result["modes"]["observe"]
    assert obs["kernel_per_io"] == 70.0 and result["modes"]["off"]["kernel_per_io"] == 60.0
    diff = obs["vs_baseline"]
    assert diff["kernel_per_io"] == 10.0
    assert diff["parts_per_io"]["prediction"] == 8.0 and diff["parts_per_io"]["hooks"] == 2.0
    assert diff["top_symbols"][0] == {"symbol": "kml_q16_dot", "part": "prediction", "per_io": 8.0}
    text = hooks.render(result)
    assert "difference against off" in text and "kml_q16_dot" in text


def test_hooks_cost_against_off_and_the_stock_path(tmp_path: Path) -> None:
    """KML's parts only (the rest of the kernel moves from kernel to
    kernel), and against the kernel without hooks what off costs added."""
    run = tmp_path / "run-3"
    cells = [
        # the stock kernel: mq-deadline 3 fewer per I/O, the allocator 40 more
        _cell(run, "s", "off", {"dd_insert_request": 700, "blk_x": 9000}, 100, "nokml"),
        _cell(run, "a", "off", {"dd_insert_request": 1000, "blk_x": 5000}, 100),
        _cell(run, "b", "active", {"dd_insert_request": 1200, "blk_x": 5100,
                                   "__kml_dd_insert": 800}, 100),
    ]  # fmt: skip
    (run / "summary.json").write_text(json.dumps({"cells": cells}))
    result = hooks.breakdown(run)
    active = result["modes"]["active"]
    assert active["vs_baseline"]["kml_per_io"] == 10.0  # 8 hooks + 2 mq-deadline, not blk_x's 1
    assert result["stock"] == {"label": hooks.STOCK, "off_kml_per_io": 3.0}
    assert active["vs_stock_kml_per_io"] == 13.0
    assert result["modes"]["off"]["vs_stock_kml_per_io"] == 3.0
    text = hooks.render(result)
    assert f"against {hooks.STOCK}" in text and "13 (13.40%)" in text  # of stock's 97


def test_hooks_command_without_profiles(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run-2"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"cells": []}))
    with pytest.raises(hooks.HooksError, match="insn_profile"):
        hooks.breakdown(run)


def test_a_profiled_run_is_refused_with_jobs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = runner.main_run(
        matrix_path=paths.WORKLOADS_DIR / "hooks.yaml",
        resume=None,
        dry_run=False,
        accel="tcg",
        results_root=tmp_path,
        jobs=2,
    )
    assert status == 2
    assert "guest.insn_profile runs serially" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # refused before a run folder was made
