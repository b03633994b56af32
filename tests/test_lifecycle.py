"""A cell's life against a fake guest: every step, every way it can fail, in milliseconds.

``run_cell`` (a boot per cell) and ``run_shared_boot`` (cells that differ
only in their model, one boot) drive :class:`fake_guest.FakeGuest`, which
answers as a healthy guest with KML would and fails where a test tells it
to. The tests assert what the real code writes: status, metrics, the
record's keys in order, the files in the cell folder, the commands in
order, and that QEMU is always ended and disk images removed. The guest
shell itself is checked by tests/test_guest_scripts.py (text) and the
kernel-marked tests (real guests).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fake_guest import TRACE, TRAINED, Fail, FakeBoots
from kmlbench import paths
from kmlbench.cell.lifecycle import CellOutcome, run_cell, run_shared_boot
from kmlbench.plan.cells import Cell
from kmlbench.plan.matrix import Matrix, load_matrix

SHIPPED = paths.WORKLOADS_DIR / "models" / "deadline.kmlm"
MATRIX = """\
name: fake
seed: 5
guest: {{share_boot: {share}, command_timeout_s: 60}}
axes:
  device:
    - {{type: {device}, size_mib: 64}}
  scheduler:
    - {{name: mq-deadline, read_expire: 8}}
  workload:
    - {{template: randread, runtime_s: 2, ramp_s: 0, size_mib: 32}}
  model:
    - {{mode: off}}
    - {{mode: observe, model_file: {shipped}}}
    - {{mode: active, trainer: kernel}}
    - {{mode: active, trainer: user}}
"""
STATS = "fetch /sys/kernel/debug/kml/iosched"
# What every cell does before and after its KML part.
DEVICE = ["device", "put /tmp/job.fio", "fio_version"]
FIO = ["misses", "blockstat", "fio", "cpu", "misses", "blockstat"]
# The commands of each cell of MATRIX on its own boot, by name (mode-trainer).
COMMANDS = {
    "off": [*DEVICE, *FIO, "dmesg"],
    "observe": [*DEVICE, "put /tmp/model.kmlm", "kml_setup", *FIO, "kml_stop", STATS, "dmesg"],
    "active-kernel": [*DEVICE, "kml_setup", *FIO, "kml_stop", "fetch /tmp/trainer.txt", STATS,
                      "dmesg"],
    "active-user": [*DEVICE, "kml_setup", *FIO, "kml_stop", "fetch /tmp/trainer.txt",
                    "fetch /tmp/curve.jsonl", "fetch /tmp/trained.kmlm", STATS, "dmesg"],
}  # fmt: skip
FIO_METRICS = {"iops", "bw_kib_s", "clat_mean_us", "clat_p50_us", "clat_p99_us"}
CPU_METRICS = {"guest_cpu_busy_s", "guest_kernel_cpu_s", "kernel_cpu_us_per_io"}
KML_METRICS = {"accuracy", "predictions", "inference_ns_p50", "inference_insn_p50"}


def _name(cell: Cell) -> str:
    model = cell.params["model"]
    trainer = model.get("trainer", "none")
    return model["mode"] if trainer == "none" else f"{model['mode']}-{trainer}"


@dataclass
class Env:
    """One matrix, its fake guests and its cell folders."""

    matrix: Matrix
    boots: FakeBoots
    root: Path

    def cell(self, name: str) -> Cell:
        (cell,) = [c for c in self.matrix.cells if _name(c) == name]
        return cell

    def dir(self, cell: Cell) -> Path:
        folder = self.root / "cells" / cell.id
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def run_cell(self, name: str, **kw: object) -> CellOutcome:
        cell = self.cell(name)
        return run_cell(
            cell, cell_dir=self.dir(cell), kernel=self.root / "bzImage",
            initrd=self.root / "initrd", keys=None, matrix=self.matrix, accel="tcg",
            start_guest=self.boots, **kw,
        )  # fmt: skip

    def run_shared(self, names: list[str] | None = None) -> list[tuple[Cell, CellOutcome]]:
        cells = [c for c in self.matrix.cells if names is None or _name(c) in names]
        if names is not None:
            cells.sort(key=lambda c: names.index(_name(c)))
        self.announced: list[str] = []
        outcomes = run_shared_boot(
            cells, cell_dir=lambda cid: self.dir(next(c for c in cells if c.id == cid)),
            kernel=self.root / "bzImage", initrd=self.root / "initrd", keys=None,
            matrix=self.matrix, accel="tcg", before_cell=lambda c: self.announced.append(c.id),
            start_guest=self.boots,
        )  # fmt: skip
        return list(outcomes)


def _env(tmp_path: Path, *, share: bool = False, device: str = "null_blk",
         fail: dict[str, Fail] | None = None) -> Env:  # fmt: skip
    path = tmp_path / "m.yaml"
    text = MATRIX.format(share=str(share).lower(), device=device, shipped=SHIPPED)
    path.write_text(text)
    return Env(load_matrix(path), FakeBoots(fail), tmp_path)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield _env(tmp_path)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- run_cell: one boot per cell ------------------------------------------------------


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_step_of_a_healthy_cell(env: Env, name: str) -> None:
    out = env.run_cell(name)
    assert out.status == "ok", out.extra.get("error")
    (guest,) = env.boots.guests
    assert guest.log == COMMANDS[name] and guest.closed
    keys = ["timings", "qemu_command_line", "block_device", "guest_fio_version"]
    if name != "off":
        keys.append("kml_stats")
    assert list(out.extra) == [*keys, "console_events"]
    assert out.extra["block_device"] == "/dev/nullb0"
    assert out.extra["guest_fio_version"] == "fio-3.33"
    assert out.extra["console_events"] == []
    assert list(out.extra["timings"]) == ["boot_s", "fio_s", "total_s"]
    assert out.extra["timings"]["boot_s"] == 1.5
    assert set(out.metrics) >= FIO_METRICS | CPU_METRICS
    # the virtual clock: CPU time is instructions
    assert {"kernel_insn_per_io", "user_insn_per_io"} <= set(out.metrics)
    # mq-deadline's own count between the two readings, in every mode; the
    # writes' counter wrapped at 2^32 in between
    misses = {k: v for k, v in out.metrics.items() if "deadline_" in k}
    assert misses == {
        "deadline_missed": 40.0,
        "deadline_dispatched": 1010.0,
        "deadline_miss_frac": 40 / 1010,
        "read_deadline_miss_frac": 40 / 1000,
        "write_deadline_miss_frac": 0.0,
    }
    # the block layer's own count between its two readings, every scheduler
    block = {k: v for k, v in out.metrics.items() if k.startswith("block_")}
    assert block == {
        "block_read_ios": 1000.0,
        "block_read_merges": 3.0,
        "block_write_ios": 10.0,
        "block_write_merges": 0.0,
    }
    folder = env.dir(env.cell(name))
    expected = {"setup.log", "job.fio", "fio.json", "cpu.txt", "dmesg.txt"}
    if name != "off":
        assert set(out.metrics) >= KML_METRICS
        assert out.extra["kml_stats"]["mode"] == env.cell(name).params["model"]["mode"]
        expected |= {"kml_setup.log", "kml_stats.txt"}
    if name == "active-kernel":
        expected.add("trainer.txt")
    if name == "active-user":
        expected |= {"trainer.txt", "curve.jsonl", "trained.kmlm"}
        assert (folder / "trained.kmlm").read_bytes() == TRAINED
    assert set(_files(folder)) == expected
    assert "/dev/nullb0" in (folder / "setup.log").read_text()
    assert "filename=/dev/nullb0" in (folder / "job.fio").read_text()
    assert guest.uploads["/tmp/job.fio"] == (folder / "job.fio").read_bytes()
    if name == "observe":
        assert guest.uploads["/tmp/model.kmlm"] == SHIPPED.read_bytes()


def test_the_kml_set_up_is_for_the_device_the_set_up_printed(env: Env) -> None:
    env.run_cell("observe")
    (guest,) = env.boots.guests
    setup = guest.commands[guest.log.index("kml_setup")]
    assert 'q="/sys/block/nullb0/queue/iosched"' in setup
    assert "kmlctl load /tmp/model.kmlm" in setup


def test_a_virtio_cell_gets_its_disk_and_loses_the_image(tmp_path: Path) -> None:
    env = _env(tmp_path, device="virtio")
    out = env.run_cell("off")
    assert out.status == "ok" and out.extra["block_device"] == "/dev/vda"
    (guest,) = env.boots.guests
    assert "-drive" in guest.cfg.extra_args and guest.cfg.append == ""
    folder = env.dir(env.cell("off"))
    assert not list(folder.glob("*.img"))  # scratch space, removed
    assert json.loads((folder / "disk.json").read_text())["size_mib"] == 64


def test_null_blk_boots_without_its_default_device(env: Env) -> None:
    env.run_cell("off")
    assert env.boots.guests[0].cfg.append == "null_blk.nr_devices=0"


def test_a_trace_records_the_ring_in_an_off_cell(env: Env) -> None:
    out = env.run_cell("off", trace=True)
    assert out.status == "ok"
    (guest,) = env.boots.guests
    assert guest.log == [*DEVICE, "kml_setup", *FIO, "kml_stop", "fetch /tmp/trace.kmltrc",
                         "fetch /tmp/tracer.txt", STATS, "dmesg"]  # fmt: skip
    assert out.extra["kml_trace"] == {"file": "trace.kmltrc", "mode": "observe",
                                      "ring_mode": "block", "trainer_skipped": False}  # fmt: skip
    setup = guest.commands[guest.log.index("kml_setup")]
    assert "setchoice /sys/module/kml/parameters/ring_mode block" in setup
    assert "kmlctl trace /tmp/trace.kmltrc --seconds 32" in setup  # fio's 2 s + 30
    folder = env.dir(env.cell("off"))
    assert (folder / "trace.kmltrc").read_bytes() == TRACE
    assert (folder / "tracer.txt").read_text() == "records 42\n"


def test_a_trace_takes_the_ring_from_the_trainer(env: Env) -> None:
    out = env.run_cell("active-user", trace=True)
    assert out.status == "ok"
    assert out.extra["kml_trace"]["trainer_skipped"] is True
    (guest,) = env.boots.guests
    assert "kmlctl train" not in guest.commands[guest.log.index("kml_setup")]
    assert "fetch /tmp/trainer.txt" not in guest.log


def test_boot_failure(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"boot": Fail("boot-failure")})
    out = env.run_cell("observe")
    assert (out.status, out.metrics) == ("boot-failure", {})
    assert list(out.extra) == ["timings", "error", "console_events"]
    assert out.extra["error"] == "boot-failure: no SSH within 300 s"
    assert list(out.extra["timings"]) == ["total_s"]
    assert env.boots.logs == [[]] and env.boots.guests[0].closed


def test_a_panic_at_boot(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"boot": Fail("panic")})
    out = env.run_cell("off")
    assert out.status == "panic"
    assert [e["kind"] for e in out.extra["console_events"]] == ["panic"]


def test_a_harness_fault_at_boot_is_an_infra_error(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"boot": Fail("harness")})
    out = env.run_cell("off")
    assert out.status == "infra-error"
    assert out.extra["error"] == "RuntimeError: harness fault while booting"
    assert list(out.extra) == ["timings", "error", "traceback", "console_events"]


def test_device_set_up_failure_still_collects_dmesg(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"device": Fail("exit", stderr="no configfs")})
    out = env.run_cell("observe")
    assert (out.status, out.metrics) == ("failed", {})
    assert out.extra["error"] == "device setup failed (exit 1); see setup.log"
    assert env.boots.logs == [["device", "dmesg"]]
    assert list(out.extra) == ["timings", "qemu_command_line", "error", "console_events"]
    folder = env.dir(env.cell("observe"))
    assert (folder / "setup.log").read_text() == "no configfs"
    assert _files(folder) == ["dmesg.txt", "setup.log"]


def test_a_device_set_up_that_prints_no_device_node_is_a_harness_fault(tmp_path: Path) -> None:
    printed = Fail("answer", exit_status=0, stdout="kmlbench-device: ...\n/sys/block/nullb0\n")
    env = _env(tmp_path, fail={"device": printed})
    out = env.run_cell("observe")
    assert out.status == "infra-error"
    assert out.extra["error"].startswith("DeviceError: bad block device '/sys/block/nullb0'")
    assert env.boots.logs == [["device"]]  # nothing ran on a device it cannot name


def test_model_set_up_refused(tmp_path: Path) -> None:
    why = "kmlbench-kml: no /sys/module/kml/parameters: this kernel has no KML (CONFIG_KML)"
    env = _env(tmp_path, fail={"kml_setup": Fail("exit", stderr=why + "\n")})
    out = env.run_cell("active-kernel")
    assert (out.status, out.metrics) == ("failed", {})
    assert out.extra["error"] == f"KML set-up failed: {why} (see kml_setup.log)"
    assert env.boots.logs == [[*DEVICE, "kml_setup", "dmesg"]]  # no fio
    assert (env.dir(env.cell("active-kernel")) / "kml_setup.log").read_text() == why + "\n"


def test_model_set_up_failing_silently_says_its_exit_status(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"kml_setup": Fail("exit", exit_status=3)})
    out = env.run_cell("active-kernel")
    assert out.extra["error"] == "KML set-up failed: exit 3 (see kml_setup.log)"


def test_a_model_file_changed_since_the_matrix_was_loaded(env: Env) -> None:
    cell = env.cell("observe")
    cell.params["model"]["model_file_sha256"] = "0" * 64
    out = env.run_cell("observe")
    assert out.status == "failed"
    assert "changed since the matrix was loaded" in out.extra["error"]
    assert env.boots.logs == [[*DEVICE, "dmesg"]]  # nothing uploaded, no KML, no fio


def test_workload_timeout(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"fio": Fail("timeout")})
    out = env.run_cell("active-kernel")
    assert (out.status, out.metrics) == ("timeout", {})
    assert out.extra["error"].startswith("timeout: command timed out after ")
    # what the cell did before the timeout stays in its record
    assert list(out.extra) == ["timings", "qemu_command_line", "block_device",
                               "guest_fio_version", "error", "console_events"]  # fmt: skip
    assert env.boots.logs == [[*DEVICE, "kml_setup", "misses", "blockstat", "fio"]]
    assert env.boots.guests[0].closed


def test_fio_gets_more_host_time_on_the_virtual_clock(env: Env) -> None:
    env.run_cell("off")
    (guest,) = env.boots.guests
    assert guest.timeouts["device"] == 60  # guest.command_timeout_s
    assert guest.timeouts["fio"] > 60  # fio keeps the guest busy: slower than real time
    assert guest.timeouts["fio_version"] == guest.timeouts["dmesg"] == 30


def test_fio_failing_is_the_workloads_fault_and_kml_is_still_collected(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"fio": Fail("exit", stderr="fio: io_u error")})
    out = env.run_cell("active-kernel")
    assert (out.status, out.metrics) == ("failed", {})
    # no JSON on stdout: the output is kept as it was
    assert out.extra["error"].startswith("fio exited 1, no JSON: no fio JSON report")
    assert env.boots.logs == [[*DEVICE, "kml_setup", "misses", "blockstat", "fio", "kml_stop",
                               "fetch /tmp/trainer.txt", STATS, "dmesg"]]  # fmt: skip
    assert "kml_stats" in out.extra  # the model's record, even so
    folder = env.dir(env.cell("active-kernel"))
    assert (folder / "fio.stderr").read_text() == "fio: io_u error"
    assert (folder / "fio.out").read_text() == ""
    assert not (folder / "cpu.txt").exists()


def test_missing_kml_statistics_fail_a_model_cell(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={STATS: Fail("missing")})
    out = env.run_cell("observe")
    assert out.status == "failed"
    assert out.extra["error"] == "cannot read /sys/kernel/debug/kml/iosched"
    assert set(out.metrics) >= FIO_METRICS and "accuracy" not in out.metrics
    assert "kml_stats" not in out.extra


def test_a_user_trainer_that_died_fails_the_cell(tmp_path: Path) -> None:
    fail = {"fetch /tmp/trainer.txt": Fail("missing"), "fetch /tmp/trained.kmlm": Fail("missing")}
    env = _env(tmp_path, fail=fail)
    out = env.run_cell("active-user")
    assert out.status == "failed"
    assert out.extra["error"] == "kmlctl train ended without its summary (see trainer.txt)"
    folder = env.dir(env.cell("active-user"))
    assert not (folder / "trainer.txt").exists() and not (folder / "trained.kmlm").exists()
    assert (folder / "curve.jsonl").exists()


def test_stopping_the_trainer_failing_is_a_problem(tmp_path: Path) -> None:
    stop = Fail("exit", exit_status=2, stderr="kmlbench-kml: cannot stop ktrainer\n")
    env = _env(tmp_path, fail={"kml_stop": stop})
    out = env.run_cell("active-kernel")
    assert out.status == "failed"
    assert out.extra["error"] == "stopping the trainer failed (exit 2)"
    log = (env.dir(env.cell("active-kernel")) / "kml_setup.log").read_text()
    assert log.endswith("kmlbench-kml: cannot stop ktrainer\n")


def test_a_trace_that_wrote_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"fetch /tmp/trace.kmltrc": Fail("missing")})
    out = env.run_cell("off", trace=True)
    assert out.status == "failed" and out.extra["error"] == "kmlctl trace wrote no trace"


def test_kml_problems_of_a_failed_workload_are_kept_apart(tmp_path: Path) -> None:
    fail = {"fio": Fail("exit"), STATS: Fail("missing")}
    env = _env(tmp_path, fail=fail)
    out = env.run_cell("observe")
    assert out.status == "failed" and out.extra["error"].startswith("fio exited 1")
    assert out.extra["kml_problems"] == ["cannot read /sys/kernel/debug/kml/iosched"]


def test_no_cpu_snapshots_no_cpu_metrics(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"cpu": Fail("exit", stderr="cat: no such file")})
    out = env.run_cell("off")
    assert out.status == "ok" and set(out.metrics) >= FIO_METRICS
    assert not CPU_METRICS & set(out.metrics)
    assert (env.dir(env.cell("off")) / "cpu.txt").read_text() == "cat: no such file"


@pytest.mark.parametrize(
    ("fail", "why"),
    [
        (
            Fail("exit", stderr="cat: missed: No such file or directory"),
            "cat exited 1: cat: missed",
        ),
        (Fail("answer", exit_status=0, stdout="read_dispatched 1\n"), "no read_missed, write_"),
        (Fail("answer", exit_status=0, stdout="read_dispatched -1\n"), "line 1: not '<counter>"),
    ],
)
def test_unreadable_miss_counts_lose_the_metric_not_the_cell(
    tmp_path: Path, fail: Fail, why: str
) -> None:
    env = _env(tmp_path, fail={"misses": fail})
    out = env.run_cell("off")
    assert out.status == "ok" and set(out.metrics) >= FIO_METRICS | CPU_METRICS
    assert not [k for k in out.metrics if "deadline_" in k]
    error = out.extra["deadline_misses_error"]
    assert error.startswith("/sys/kernel/debug/block/nullb0/sched/missed: ") and why in error


@pytest.mark.parametrize(
    ("fail", "why"),
    [
        (Fail("exit", stderr="cat: stat: No such file or directory"), "cat exited 1: cat: stat"),
        (Fail("answer", exit_status=0, stdout="1 2 3\n"), "not at least 8 unsigned counters"),
        (Fail("answer", exit_status=0, stdout="1 2 3 4 5 6 7 -8\n"), "not at least 8 unsigned"),
        (Fail("answer", exit_status=0, stdout="1 2 3 4 5 6 7 8\n1\n"), "not one line"),
        # the second reading lower than the first: the device was made anew
        (Fail("answer", exit_status=0, stdout="0 0 0 0 0 0 0 0\n", after=1), "read_ios went down"),
    ],
)
def test_unreadable_block_counts_lose_the_metric_not_the_cell(
    tmp_path: Path, fail: Fail, why: str
) -> None:
    env = _env(tmp_path, fail={"blockstat": fail})
    out = env.run_cell("off")
    assert out.status == "ok" and set(out.metrics) >= FIO_METRICS | CPU_METRICS
    assert not [k for k in out.metrics if k.startswith("block_")]
    assert "deadline_dispatched" in out.metrics  # the other counters are not lost
    error = out.extra["block_stat_error"]
    assert error.startswith("/sys/block/nullb0/stat: ") and why in error


def test_other_schedulers_read_no_miss_counts(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    text = MATRIX.format(share="false", device="null_blk", shipped=SHIPPED)
    path.write_text(text.replace("{name: mq-deadline, read_expire: 8}", "{name: kyber}"))
    env = Env(load_matrix(path), FakeBoots(), tmp_path)
    out = env.run_cell("off")
    assert out.status == "ok" and "misses" not in env.boots.guests[0].log
    assert not [k for k in out.metrics if "deadline_" in k]
    # the block layer counts whatever the scheduler
    assert out.metrics["block_read_ios"] == 1000.0


def test_an_oops_during_fio_is_a_panic(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"fio": Fail("oops")})
    out = env.run_cell("observe")
    assert (out.status, out.metrics) == ("panic", {})
    assert [e["kind"] for e in out.extra["console_events"]] == ["oops"]
    assert env.boots.guests[0].closed


def test_a_warning_is_recorded_but_does_not_fail(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"fio": Fail("warn")})
    out = env.run_cell("off")
    assert out.status == "ok"
    assert [e["kind"] for e in out.extra["console_events"]] == ["warn"]


def test_ssh_lost_while_collecting_keeps_the_metrics(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"dmesg": Fail("ssh")})
    out = env.run_cell("off")
    assert out.status == "infra-error"
    assert out.extra["error"] == "infra-error: SSH channel closed"
    assert set(out.metrics) >= FIO_METRICS  # fio's run was complete
    assert not (env.dir(env.cell("off")) / "dmesg.txt").exists()


def test_a_harness_fault_in_a_step_is_an_infra_error(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"fio_version": Fail("harness")})
    out = env.run_cell("off")
    assert (out.status, out.metrics) == ("infra-error", {})
    assert out.extra["error"] == "RuntimeError: harness fault during fio_version"
    assert "Traceback" in out.extra["traceback"]
    assert env.boots.guests[0].closed


def test_an_upload_that_fails(tmp_path: Path) -> None:
    env = _env(tmp_path, fail={"put /tmp/model.kmlm": Fail("ssh")})
    out = env.run_cell("observe")
    assert out.status == "infra-error"
    assert env.boots.logs == [[*DEVICE, "put /tmp/model.kmlm"]]


# --- run_shared_boot: cells that differ only in their model, one boot ---------------------

ORDER = ["off", "observe", "active-kernel", "active-user"]


@pytest.fixture
def shared(tmp_path: Path) -> Env:
    return _env(tmp_path, share=True)


def _shared_log(name: str, position: int) -> list[str]:
    """A cell's commands inside a shared boot: set-up or reset, then as alone."""
    first = ["device", "kml_snapshot"] if position == 0 else ["kml_reset"]
    return first + COMMANDS[name][1:]


def test_a_shared_boot_runs_every_cell_in_one_guest(shared: Env) -> None:
    results = shared.run_shared(ORDER)
    assert [(_name(c), o.status) for c, o in results] == [(n, "ok") for n in ORDER]
    (guest,) = shared.boots.guests
    assert guest.closed
    assert guest.log == [k for p, n in enumerate(ORDER) for k in _shared_log(n, p)]
    assert sum(cmd == "dmesg -c" for cmd in guest.commands) == 4  # each cell its own part
    assert shared.announced == [c.id for c, _ in results]
    first = results[0][0]
    for position, (cell, out) in enumerate(results):
        assert out.extra["shared_boot"] == {"boot_cell": first.id, "position": position}
        keys = ["timings", "qemu_command_line", "shared_boot", "block_device",
                "guest_fio_version"]  # fmt: skip
        if position:
            keys.append("kml_stats")
        assert list(out.extra) == [*keys, "console_events"]
        timings = ["boot_s", "fio_s", "total_s"] if position == 0 else ["fio_s", "total_s"]
        assert list(out.extra["timings"]) == timings
        folder = shared.dir(cell)
        if position:
            setup = (folder / "setup.log").read_text()
            assert setup.startswith(
                f"shared boot: /dev/nullb0 and its scheduler were set up by cell {first.id}\n"
                "KML reset to its booted state (exit 0)\n"
            )
            assert (folder / "console.log").read_text() == (
                f"shared boot: the guest's console is in ../{first.id}/console.log\n"
            )
    reset = guest.commands[guest.log.index("kml_reset")]
    assert "if [ -e /sys/block/nullb0/queue/iosched/kml_mode ]" in reset


def test_an_off_cell_after_an_active_one_runs_stock(shared: Env) -> None:
    results = shared.run_shared(["active-kernel", "off"])
    assert [o.status for _, o in results] == ["ok", "ok"]
    (guest,) = shared.boots.guests
    off = guest.log[guest.log.index("dmesg") + 1 :]
    assert off == ["kml_reset", "put /tmp/job.fio", "fio_version", *FIO, "dmesg"]
    # the counters run on through the boot; the off cell keeps its own part
    assert results[1][1].metrics["read_deadline_miss_frac"] == 40 / 1000
    reset = guest.commands[guest.log.index("kml_reset")]
    # the queue the active cell switched on, by the name its set-up printed
    assert "then setchoice /sys/block/nullb0/queue/iosched/kml_mode off;" in reset
    assert "kml_stats" not in results[1][1].extra


def test_each_cell_of_a_shared_boot_gets_its_own_console_events(shared: Env) -> None:
    shared.boots.fail["fio"] = Fail("warn", after=1)
    results = shared.run_shared(["off", "observe", "active-kernel"])
    kinds = [[e["kind"] for e in o.extra["console_events"]] for _, o in results]
    assert kinds == [[], ["warn"], []]
    console = (shared.dir(results[1][0]) / "console.log").read_text().splitlines()
    assert console[1].startswith("{'kind': 'warn', 'line_no': 100")


def test_reset_failing_reruns_the_cell_in_a_fresh_boot(shared: Env) -> None:
    shared.boots.fail["kml_reset"] = Fail("exit", stderr="kmlbench-kml: a model is still loaded")
    results = shared.run_shared(ORDER)
    assert [(_name(c), o.status) for c, o in results] == [(n, "ok") for n in ORDER]
    first, second = shared.boots.guests
    assert first.closed and second.closed
    # the dirty guest ran nothing more: the observe cell went to a new boot,
    # as its first cell, and the rest followed it there
    assert first.log == [*_shared_log("off", 0), "kml_reset"]
    assert second.log == [k for p, n in enumerate(ORDER[1:]) for k in _shared_log(n, p)]
    observe = shared.cell("observe")
    assert results[1][1].extra["shared_boot"] == {"boot_cell": observe.id, "position": 0}
    assert results[2][1].extra["shared_boot"] == {"boot_cell": observe.id, "position": 1}
    failed_log = (shared.dir(observe) / "reset-failed.log").read_text()
    assert "KML reset to its booted state (exit 1)" in failed_log
    assert failed_log.endswith("kmlbench-kml: a model is still loaded")
    assert shared.announced == [c.id for c, _ in results]  # once each


def test_reset_timing_out_ends_the_boot(shared: Env) -> None:
    shared.boots.fail["kml_reset"] = Fail("timeout")
    results = shared.run_shared(ORDER)
    # a guest that cannot answer is not a dirty KML: the cell gets the status
    assert [o.status for _, o in results] == ["ok", "timeout", "ok", "ok"]
    assert results[1][1].extra["shared_boot"]["position"] == 1
    assert len(shared.boots.guests) == 2 and shared.boots.guests[1].log[0] == "device"


def test_collect_failing_in_a_shared_boot(shared: Env) -> None:
    shared.boots.fail["dmesg"] = Fail("ssh", after=1)
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["ok", "infra-error", "ok", "ok"]
    out = results[1][1]
    assert out.metrics == {}  # the boot's record: nothing of what the cell measured
    assert list(out.extra) == ["timings", "error", "console_events", "shared_boot"]
    assert len(shared.boots.guests) == 2


def test_missing_kml_statistics_in_a_shared_boot_do_not_end_it(shared: Env) -> None:
    shared.boots.fail[STATS] = Fail("missing")
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["ok", "failed", "ok", "ok"]
    assert len(shared.boots.guests) == 1


def test_a_guest_error_ends_the_boot_and_the_rest_boot_afresh(shared: Env) -> None:
    shared.boots.fail["fio"] = Fail("timeout")
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["timeout", "ok", "ok", "ok"]
    out = results[0][1]
    assert out.metrics == {}
    # the boot's record of the cell: what it did before is not kept
    assert list(out.extra) == ["timings", "error", "console_events", "shared_boot"]
    assert list(out.extra["timings"]) == ["total_s"]
    first, second = shared.boots.guests
    assert first.closed and second.closed
    assert first.log == [
        "device",
        "kml_snapshot",
        "put /tmp/job.fio",
        "fio_version",
        "misses",
        "blockstat",
        "fio",
    ]
    assert results[1][1].extra["shared_boot"] == {"boot_cell": results[1][0].id, "position": 0}


def test_a_timeout_in_a_later_cell(shared: Env) -> None:
    shared.boots.fail["fio"] = Fail("timeout", after=1)
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["ok", "timeout", "ok", "ok"]
    out = results[1][1]
    assert out.extra["shared_boot"] == {"boot_cell": results[0][0].id, "position": 1}
    assert list(out.extra) == ["timings", "error", "console_events", "shared_boot"]
    assert len(shared.boots.guests) == 2
    assert results[2][1].extra["shared_boot"] == {"boot_cell": results[2][0].id, "position": 0}


def test_boot_failure_in_a_shared_boot(shared: Env) -> None:
    shared.boots.fail["boot"] = Fail("boot-failure")
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["boot-failure", "ok", "ok", "ok"]
    out = results[0][1]
    assert list(out.extra) == ["timings", "error", "console_events", "shared_boot"]
    assert out.extra["shared_boot"] == {"boot_cell": results[0][0].id, "position": 0}
    assert shared.boots.guests[0].log == []


def test_a_harness_fault_at_a_shared_boot(shared: Env) -> None:
    shared.boots.fail["boot"] = Fail("harness")
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["infra-error", "ok", "ok", "ok"]
    out = results[0][1]
    assert out.extra["error"] == "RuntimeError: harness fault while booting"
    assert list(out.extra) == ["timings", "error", "console_events", "shared_boot", "traceback"]


def test_first_device_failing_boots_the_rest_afresh(shared: Env) -> None:
    shared.boots.fail["device"] = Fail("exit")
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["failed", "ok", "ok", "ok"]
    first, second = shared.boots.guests
    assert first.log == ["device", "dmesg"]
    assert second.log[:2] == ["device", "kml_snapshot"]


def test_saving_kmls_booted_state_failing(shared: Env) -> None:
    shared.boots.fail["kml_snapshot"] = Fail("exit", stderr="kmlbench-kml: cannot write x\n")
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["failed", "ok", "ok", "ok"]
    out = results[0][1]
    assert out.extra["error"] == "saving KML's booted state failed: kmlbench-kml: cannot write x"
    assert "block_device" not in out.extra
    assert shared.boots.logs[0] == ["device", "kml_snapshot", "dmesg"]
    assert len(shared.boots.guests) == 2


def test_an_oops_in_a_later_cell_ends_the_boot(shared: Env) -> None:
    shared.boots.fail["fio"] = Fail("oops", after=1)
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["ok", "panic", "ok", "ok"]
    assert [e["kind"] for e in results[1][1].extra["console_events"]] == ["oops"]
    assert len(shared.boots.guests) == 2


def test_a_harness_fault_in_a_later_cell_ends_the_boot(shared: Env) -> None:
    shared.boots.fail["fio_version"] = Fail("harness", after=1)
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["ok", "infra-error", "ok", "ok"]
    out = results[1][1]
    assert out.extra["error"] == "RuntimeError: harness fault during fio_version"
    assert list(out.extra) == ["timings", "qemu_command_line", "shared_boot", "block_device",
                               "error", "traceback", "console_events"]  # fmt: skip
    assert len(shared.boots.guests) == 2
    assert shared.boots.guests[1].log[0] == "device"


def test_a_refused_model_set_up_does_not_end_the_boot(shared: Env) -> None:
    shared.boots.fail["kml_setup"] = Fail("exit", stderr="kmlbench-kml: no kmlctl\n")
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["ok", "failed", "ok", "ok"]
    assert len(shared.boots.guests) == 1
    assert shared.boots.guests[0].log.count("kml_reset") == 3


def test_a_failed_fio_does_not_end_the_boot(shared: Env) -> None:
    shared.boots.fail["fio"] = Fail("exit")
    results = shared.run_shared(ORDER)
    assert [o.status for _, o in results] == ["failed", "ok", "ok", "ok"]
    assert len(shared.boots.guests) == 1


def test_closing_a_shared_boot_early_ends_qemu(shared: Env) -> None:
    cells = [shared.cell(n) for n in ORDER]
    outcomes = run_shared_boot(
        cells, cell_dir=lambda cid: shared.dir(next(c for c in cells if c.id == cid)),
        kernel=shared.root / "k",
        initrd=shared.root / "i", keys=None, matrix=shared.matrix, accel="tcg",
        start_guest=shared.boots,
    )  # fmt: skip
    _cell, out = next(outcomes)
    assert out.status == "ok"
    assert not shared.boots.guests[0].closed
    outcomes.close()  # what an interrupt while a cell is recorded does
    assert shared.boots.guests[0].closed
