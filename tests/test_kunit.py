"""kunit.py: the KTAP parser on real 6.1 output, and the guest flow with fakes.

(The real flow was also run end to end: ``kmlbench kunit --kernel-build
<6.1 build with kml.config> --accel tcg`` -> "kunit: PASS: 10 passed".)

``CAPTURED`` is the dmesg of a Linux 6.1.192 guest (TCG) built with
kernel/configs/kml.config after ``insmod kml_test.ko`` and then an
out-of-tree demo suite with a failing case, a skipped case and a
parameterised case with one failing parameter (``insmod kml_fail_demo.ko``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest

from kmlbench import cli, paths
from kmlbench.run import kunit

CAPTURED = """\
KTAP version 1
1..0
Freeing unused kernel image (initmem) memory: 748K
Write protecting the kernel read-only data: 10240k
Freeing unused kernel image (text/rodata gap) memory: 2044K
Freeing unused kernel image (rodata/data gap) memory: 640K
Run /init as init process
  with arguments:
    /init
  with environment:
    HOME=/
    TERM=linux
input: AT Translated Set 2 keyboard as /devices/platform/i8042/serio0/input/input1
    KTAP version 1
    # Subtest: kml
    1..10
    # kml_test_math_accuracy: fn 0: max error 0 ulp
    # kml_test_math_accuracy: fn 1: max error 1 ulp
    # kml_test_math_accuracy: fn 3: max error 1 ulp
    # kml_test_math_accuracy: fn 4: max error 0 ulp
    # kml_test_math_accuracy: fn 2: max error 1 ulp
    ok 1 kml_test_math_accuracy
    ok 2 kml_test_math_special
    ok 3 kml_test_q16_math
    ok 4 kml_test_linear_forward
    ok 5 kml_test_fixed_vs_float
    ok 6 kml_test_q16_training
    ok 7 kml_test_model_load
    ok 8 kml_test_user_model
    ok 9 kml_test_crc32
    ok 10 kml_test_ring_counts
# kml: pass:10 fail:0 skip:0 total:10
# Totals: pass:10 fail:0 skip:0 total:10
ok 1 kml
kml_fail_demo: loading out-of-tree module taints kernel.
    KTAP version 1
    # Subtest: kml_fail_demo
    1..4
    ok 1 demo_pass
    # demo_fail: EXPECTATION FAILED at /tmp/kmlwork/failmod/kml_fail_demo.c:4
    Expected 1 == 2, but
    not ok 2 demo_fail
    ok 3 demo_skip # SKIP not on this machine
        KTAP version 1
        # Subtest: demo_param
        ok 1 param-0
    # demo_param: EXPECTATION FAILED at /tmp/kmlwork/failmod/kml_fail_demo.c:11
    Expected *p != 2, but
        *p == 2
        not ok 2 param-1
        ok 3 param-2
    # demo_param: pass:2 fail:1 skip:0 total:3
    not ok 4 demo_param
# kml_fail_demo: pass:1 fail:2 skip:1 total:4
# Totals: pass:3 fail:2 skip:1 total:6
not ok 2 kml_fail_demo
"""


def by_name(suites):
    return {s.name: s for s in suites}


def test_parse_real_output():
    suites = by_name(kunit.parse_ktap(CAPTURED))
    assert set(suites) == {"kml", "kml_fail_demo"}
    kml = suites["kml"]
    assert kml.ok is True and kml.planned == 10 and kml.complete
    assert [c.name for c in kml.cases][:2] == ["kml_test_math_accuracy", "kml_test_math_special"]
    assert all(c.ok for c in kml.cases) and len(kml.cases) == 10
    assert "kml_test_math_accuracy: fn 0: max error 0 ulp" in kml.cases[0].log

    demo = suites["kml_fail_demo"]
    assert demo.ok is False and demo.planned == 4
    cases = {c.name: c for c in demo.cases}
    assert set(cases) == {"demo_pass", "demo_fail", "demo_skip", "demo_param"}
    assert cases["demo_pass"].ok and not cases["demo_pass"].skipped
    assert not cases["demo_fail"].ok
    assert any("EXPECTATION FAILED" in line for line in cases["demo_fail"].log)
    assert "Expected 1 == 2, but" in cases["demo_fail"].log
    assert cases["demo_skip"].ok and cases["demo_skip"].skipped
    assert cases["demo_skip"].directive == "SKIP not on this machine"
    assert not cases["demo_param"].ok  # one failing parameter fails the case
    assert "not ok 2 param-1" in cases["demo_param"].log


def test_verdicts_and_summary():
    suites = kunit.parse_ktap(CAPTURED)
    assert kunit.verdict(suites, "kml") == (True, "10 passed, 0 skipped")
    ok, reason = kunit.verdict(suites, "kml_fail_demo")
    assert not ok and "demo_fail" in reason and "demo_param" in reason
    assert kunit.summarize(suites) == {
        "suites": 2,
        "cases": 14,
        "passed": 11,
        "failed": 2,
        "skipped": 1,
        "incomplete_suites": 0,
    }


def test_timestamps_and_loglevels_are_stripped():
    stamped = "\n".join(
        f"<6>[  {i}.{i:06d}] {line}" for i, line in enumerate(CAPTURED.splitlines())
    )
    plain = kunit.parse_ktap(CAPTURED)
    assert [(s.name, s.ok, len(s.cases)) for s in kunit.parse_ktap(stamped)] == [
        (s.name, s.ok, len(s.cases)) for s in plain
    ]
    crlf = CAPTURED.replace("\n", "\r\n")
    assert len(kunit.parse_ktap(crlf)[0].cases) == 10


def test_crash_mid_suite_is_a_failure():
    cut = CAPTURED.split("    ok 5 kml_test_fixed_vs_float")[0]
    suites = kunit.parse_ktap(cut + "BUG: kernel NULL pointer dereference\n")
    assert len(suites) == 1 and suites[0].ok is None and not suites[0].complete
    ok, reason = kunit.verdict(suites, "kml")
    assert not ok and "incomplete" in reason


def test_no_output_is_a_failure():
    assert kunit.verdict(kunit.parse_ktap("KTAP version 1\n1..0\n"), "kml")[0] is False
    assert kunit.verdict([], "kml") == (False, "no KTAP results for suite kml")


def test_parse_only_cli(tmp_path, capsys):
    f = tmp_path / "dmesg.txt"
    f.write_text(CAPTURED)
    assert cli.main(["kunit", "--parse", str(f)]) == 0
    assert "kunit: PASS" in capsys.readouterr().out
    f.write_text(CAPTURED.split("# kml: pass:10")[0].replace("ok 3 kml_test_q16", "not ok 3 x"))
    assert cli.main(["kunit", "--parse", str(f)]) == 1


class FakeGuest:
    """Stands in for kmlbench.guest.qemu.Guest: records what kunit.py does."""

    instances: ClassVar[list] = []

    def __init__(self, cfg, keys, dmesg=CAPTURED, insmod_status=0):
        self.cfg, self.keys, self.put_calls, self.commands = cfg, keys, [], []
        self.dmesg, self.insmod_status = dmesg, insmod_status
        FakeGuest.instances.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def put(self, remote_path, data, mode=0o644):
        self.put_calls.append((remote_path, data))

    def run(self, cmd, timeout):
        self.commands.append(cmd)
        if cmd.startswith("insmod"):
            status = self.insmod_status
            if isinstance(status, dict):  # per module: {remote path: (status, stderr)}
                status, stderr = status.get(cmd.split()[-1], (0, ""))
                return SimpleNamespace(exit_status=status, stdout="", stderr=stderr)
            return SimpleNamespace(exit_status=status, stdout="", stderr="")
        return SimpleNamespace(exit_status=0, stdout=self.dmesg, stderr="")

    def events(self):
        return []


@pytest.fixture
def fake_env(monkeypatch, tmp_path):
    from kmlbench.build import image, kernel
    from kmlbench.guest import qemu, ssh

    ko = tmp_path / "kml_test.ko"
    ko.write_bytes(b"\x7fELF fake module")
    requests = []

    def build_kernel(req, cache, log_dir):
        requests.append(req)
        return SimpleNamespace(bzimage=tmp_path / "bzImage", modules={"kml_test": ko})

    monkeypatch.setattr(kernel, "build_kernel", build_kernel)
    monkeypatch.setattr(image, "build_base_image", lambda cache: tmp_path / "base.cpio")
    monkeypatch.setattr(
        image, "make_guest_initrd", lambda base, d, key, host: tmp_path / "initrd.cpio"
    )
    monkeypatch.setattr(
        ssh.SSHKeys,
        "generate",
        classmethod(lambda cls, d: SimpleNamespace(authorized_key="k", host_key=Path(d) / "h")),
    )
    FakeGuest.instances = []
    monkeypatch.setattr(qemu, "Guest", FakeGuest)
    monkeypatch.setenv("KMLBENCH_CACHE", str(tmp_path / "cache"))
    return SimpleNamespace(ko=ko, requests=requests, out=tmp_path / "out")


def test_main_flow_passes(fake_env):
    assert cli.main(["kunit", "--accel", "tcg", "--out", str(fake_env.out)]) == 0
    guest = FakeGuest.instances[0]
    assert guest.put_calls == [(kunit.REMOTE_KO, fake_env.ko.read_bytes())]
    assert guest.commands[0] == f"insmod {kunit.REMOTE_KO}"
    assert guest.commands[1] == "dmesg"
    assert guest.cfg.accel == "tcg" and guest.cfg.kernel.name == "bzImage"
    assert (fake_env.out / "dmesg.txt").read_text() == CAPTURED
    assert '"ok": true' in (fake_env.out / "kunit.json").read_text()


def test_main_flow_fails_on_failed_case(fake_env, monkeypatch):
    bad = CAPTURED.replace("    ok 7 kml_test_model_load", "    not ok 7 kml_test_model_load")
    monkeypatch.setattr(kunit_qemu(), "Guest", lambda cfg, keys: FakeGuest(cfg, keys, dmesg=bad))
    assert cli.main(["kunit", "--accel", "tcg", "--out", str(fake_env.out)]) == 1


def test_main_flow_fails_on_insmod_error(fake_env, monkeypatch):
    monkeypatch.setattr(
        kunit_qemu(), "Guest", lambda cfg, keys: FakeGuest(cfg, keys, insmod_status=1)
    )
    assert cli.main(["kunit", "--accel", "tcg", "--out", str(fake_env.out)]) == 1


def test_main_needs_the_module(fake_env, monkeypatch, tmp_path):
    from kmlbench.build import kernel

    monkeypatch.setattr(
        kernel,
        "build_kernel",
        lambda req, cache, log_dir: SimpleNamespace(bzimage=tmp_path / "bzImage", modules={}),
    )
    assert cli.main(["kunit", "--accel", "tcg", "--out", str(fake_env.out)]) == 2


def test_main_with_existing_kernel_build(fake_env, monkeypatch, tmp_path):
    from kmlbench.build import kernel

    def no_build(*a, **k):
        raise AssertionError("must not build")

    monkeypatch.setattr(kernel, "build_kernel", no_build)
    build = tmp_path / "linux"
    (build / "arch/x86/boot").mkdir(parents=True)
    (build / "arch/x86/boot/bzImage").write_bytes(b"bz")
    (build / "lib/kml").mkdir(parents=True)
    (build / "lib/kml/kml_test.ko").write_bytes(b"ko")
    argv = ["--kernel-build", str(build), "--accel", "tcg", "--out", str(fake_env.out)]
    assert cli.main(["kunit", *argv]) == 0
    guest = FakeGuest.instances[-1]
    assert guest.put_calls == [(kunit.REMOTE_KO, b"ko")]
    assert guest.cfg.kernel == build / "arch/x86/boot/bzImage"


def kunit_qemu():
    from kmlbench.guest import qemu

    return qemu


def test_library_module_is_loaded_first(fake_env, tmp_path):
    build = tmp_path / "linux-m"
    (build / "arch/x86/boot").mkdir(parents=True)
    (build / "arch/x86/boot/bzImage").write_bytes(b"bz")
    (build / "lib/kml").mkdir(parents=True)
    (build / "lib/kml/kml_test.ko").write_bytes(b"test")
    (build / "lib/kml/kml.ko").write_bytes(b"lib")  # CONFIG_KML=m
    argv = ["--kernel-build", str(build), "--accel", "tcg", "--out", str(fake_env.out)]
    assert cli.main(["kunit", *argv]) == 0
    guest = FakeGuest.instances[-1]
    assert [p for p, _ in guest.put_calls] == [kunit.REMOTE_LIB_KO, kunit.REMOTE_KO]
    assert guest.commands[:2] == [f"insmod {kunit.REMOTE_LIB_KO}", f"insmod {kunit.REMOTE_KO}"]


def test_failed_library_insmod_is_the_reported_failure(fake_env, monkeypatch, tmp_path, capsys):
    build = tmp_path / "linux-m"
    (build / "arch/x86/boot").mkdir(parents=True)
    (build / "arch/x86/boot/bzImage").write_bytes(b"bz")
    (build / "lib/kml").mkdir(parents=True)
    (build / "lib/kml/kml_test.ko").write_bytes(b"test")
    (build / "lib/kml/kml.ko").write_bytes(b"lib")
    statuses = {
        kunit.REMOTE_LIB_KO: (1, "insmod: can't insert 'kml.ko': Invalid module format"),
        kunit.REMOTE_KO: (1, "insmod: can't insert 'kml_test.ko': Unknown symbol in module"),
    }
    monkeypatch.setattr(
        kunit_qemu(), "Guest", lambda cfg, keys: FakeGuest(cfg, keys, insmod_status=statuses)
    )
    argv = ["--kernel-build", str(build), "--accel", "tcg", "--out", str(fake_env.out), "--json"]
    assert cli.main(["kunit", *argv]) == 1
    guest = FakeGuest.instances[-1]
    # The test module is not even tried once the library failed to load.
    assert [p for p, _ in guest.put_calls] == [kunit.REMOTE_LIB_KO]
    assert f"insmod {kunit.REMOTE_KO}" not in guest.commands
    reason = json.loads((fake_env.out / "kunit.json").read_text())["reason"]
    assert reason.startswith("insmod kml.ko failed (exit 1)")
    assert "Invalid module format" in reason and "Unknown symbol" not in reason


# The case only a kernel built without float models or training runs: what
# it refuses (kernel/configs/kml-lean.config).
PARTS_LEFT_OUT = "kml_test_parts_left_out"


def _real_kunit(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    """``kmlbench kunit`` as a user runs it, in a TCG guest: the kml suite's cases by name."""
    status = cli.main(["kunit", "--accel", "tcg", "--out", str(tmp_path), "--json", *args])
    result = json.loads(capsys.readouterr().out)
    assert status == 0, result["reason"]
    assert result["ok"]
    kml = [s for s in result["suites"] if s["name"] == "kml"]
    assert kml, result["suites"]
    assert "# kml: pass:" in (tmp_path / "dmesg.txt").read_text()
    cases = {c["name"]: c for c in kml[0]["cases"]}
    assert all(c["ok"] for c in cases.values()), cases
    return cases


@pytest.mark.kernel
def test_kunit_in_a_real_guest(kernel_build, tmp_path, capsys):
    """The repo's kernel: every case runs but the one of a kernel without parts."""
    cases = _real_kunit(tmp_path, capsys)
    assert len(cases) >= 12
    skipped = [name for name, c in cases.items() if "SKIP" in c["directive"]]
    assert skipped == [PARTS_LEFT_OUT], skipped


@pytest.mark.kernel
def test_kunit_on_a_kernel_that_only_predicts(variant_kernel, tmp_path, capsys):
    """Without float models, training and policy cost: what they need is
    skipped and says why, what they refuse is checked, and the rest
    (Q16.16, the ring, mq-deadline's hooks) runs."""
    variant_kernel("stock")  # first: the lean build starts from its objects
    variant_kernel("lean")
    cases = _real_kunit(tmp_path, capsys, "--config", str(paths.CONFIGS_DIR / "kml-lean.config"))
    skipped = {name: c["directive"] for name, c in cases.items() if "SKIP" in c["directive"]}
    assert all(d.startswith("SKIP built without ") for d in skipped.values()), skipped
    assert {"kml_test_math_accuracy", "kml_test_q16_training", "kml_test_cal_contract"} <= set(
        skipped
    ), skipped
    assert skipped["kml_test_dd_cost_window"] == "SKIP built without CONFIG_KML_IOSCHED_COST"
    ran = set(cases) - set(skipped)
    assert {PARTS_LEFT_OUT, "kml_test_q16_math", "kml_test_q16_model_load"} <= ran, skipped
    assert {"kml_test_dd_fast_compile", "kml_test_dd_decide_q16_contract"} <= ran, skipped
    assert {"kml_test_ring_mp_drop", "kml_test_dd_observe_cycle"} <= ran, skipped
