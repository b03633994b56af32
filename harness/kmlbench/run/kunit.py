"""``kmlbench kunit``: run KML's KUnit tests inside a QEMU guest.

Builds (or reuses) the KML kernel with ``kernel/configs/kml.config`` (which
makes the tests a module, ``kml_test.ko``), boots it, uploads the module,
``insmod``s it, reads ``dmesg`` and parses the KTAP output.  The exit status
is 0 only if every test case passed (skips are not failures), at least one
case ran, and the guest's console shows no oops/BUG/panic.

The KTAP parser (:func:`parse_ktap`) is independent of the guest and
unit-tested on real output captured from a 6.1 guest (tests/test_kunit.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kmlbench import paths
from kmlbench.build import image, kernel
from kmlbench.guest import console, kvm, qemu
from kmlbench.guest.command import GuestConfig
from kmlbench.guest.ssh import SSHKeys

__all__ = ["KtapCase", "KtapSuite", "command", "parse_ktap", "summarize"]

MODULE = "kml_test"
REMOTE_KO = "/tmp/kml_test.ko"
REMOTE_LIB_KO = "/tmp/kml.ko"

# dmesg / console prefixes: "[   12.345678] ", "<6>[ 1.2] ", "<6>"
_PREFIX = re.compile(r"^(?:<\d+>)?(?:\[\s*\d+\.\d+\]\s?)?")
_RESULT = re.compile(
    r"^(?P<ok>ok|not ok)\s+(?P<num>\d+)\s*(?:-\s*)?(?P<name>[^#]*?)\s*(?:#\s*(?P<directive>.*))?$"
)
_SUBTEST = re.compile(r"^#\s*Subtest:\s*(?P<name>\S+)")
_PLAN = re.compile(r"^1\.\.(?P<n>\d+)")


@dataclass
class KtapCase:
    name: str
    ok: bool
    number: int
    directive: str = ""  # e.g. "SKIP reason"
    log: list[str] = field(default_factory=list)  # diagnostic lines before the result

    @property
    def skipped(self) -> bool:
        return self.directive.upper().startswith("SKIP")


@dataclass
class KtapSuite:
    name: str
    ok: bool | None = None  # None: the suite never reported its own result
    planned: int | None = None
    cases: list[KtapCase] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.ok is not None and (self.planned is None or len(self.cases) >= self.planned)


def _indent(line: str) -> int:
    """Nesting level: 4 spaces (or one tab) per level, as KUnit prints."""
    spaces = len(line) - len(line.lstrip(" \t"))
    tabs = line[:spaces].count("\t")
    return tabs + (spaces - tabs) // 4


def parse_ktap(text: str) -> list[KtapSuite]:
    """Parse KUnit's KTAP output (dmesg or console text, with or without
    timestamps) into suites of test cases.

    Level 0 result lines close suites, level 1 lines are test cases of the
    current suite; deeper levels (parameterised subtests) are folded into
    their test case's log.  Unrelated kernel messages are ignored.
    """
    suites: list[KtapSuite] = []
    current: KtapSuite | None = None
    pending_log: list[str] = []
    for raw in text.splitlines():
        line = _PREFIX.sub("", raw.rstrip("\r\n"))
        body = line.strip()
        if not body:
            continue
        level = _indent(line)
        m = _SUBTEST.match(body)
        if m and level <= 1:
            if level == 0 or current is None or current.ok is not None:
                current = KtapSuite(name=m.group("name"))
                suites.append(current)
                pending_log = []
            continue
        m = _PLAN.match(body)
        if m:
            if current is not None and level == 1 and current.planned is None:
                current.planned = int(m.group("n"))
            continue
        m = _RESULT.match(body)
        if m:
            ok = m.group("ok") == "ok"
            name = m.group("name").strip()
            directive = (m.group("directive") or "").strip()
            if level == 0:
                suite = current
                if suite is None or suite.ok is not None or (suite.name != name and name):
                    # a suite result without a Subtest header we saw
                    suite = next((s for s in suites if s.name == name and s.ok is None), None)
                    if suite is None:
                        suite = KtapSuite(name=name)
                        suites.append(suite)
                suite.ok = ok
                current = None
                pending_log = []
            elif level == 1 and current is not None:
                current.cases.append(
                    KtapCase(name, ok, int(m.group("num")), directive, pending_log)
                )
                pending_log = []
            else:
                pending_log.append(body)
            continue
        if current is not None and level >= 1 and not body.startswith("KTAP version"):
            # diagnostics ("# case: EXPECTATION FAILED at ...") and their
            # continuation lines belong to the next result line
            pending_log.append(body.lstrip("# ").rstrip() if body.startswith("#") else body)
    return suites


def summarize(suites: list[KtapSuite]) -> dict[str, int]:
    cases = [c for s in suites for c in s.cases]
    return {
        "suites": len(suites),
        "cases": len(cases),
        "passed": sum(1 for c in cases if c.ok and not c.skipped),
        "failed": sum(1 for c in cases if not c.ok),
        "skipped": sum(1 for c in cases if c.skipped),
        "incomplete_suites": sum(1 for s in suites if not s.complete),
    }


def verdict(suites: list[KtapSuite], suite_name: str | None = None) -> tuple[bool, str]:
    """(passed, reason): every case ok, every suite complete and ok, >= 1 case."""
    chosen = [s for s in suites if suite_name is None or s.name == suite_name]
    if not chosen:
        return False, f"no KTAP results for suite {suite_name or '(any)'}"
    s = summarize(chosen)
    if s["cases"] == 0:
        return False, "no test cases ran"
    if s["failed"]:
        names = [f"{x.name}.{c.name}" for x in chosen for c in x.cases if not c.ok]
        return False, f"{s['failed']} test case(s) failed: {', '.join(names)}"
    bad = [x.name for x in chosen if not x.complete or not x.ok]
    if bad:
        return False, f"suite(s) incomplete or not ok: {', '.join(bad)}"
    return True, f"{s['passed']} passed, {s['skipped']} skipped"


def _report(suites: list[KtapSuite]) -> str:
    out = []
    for s in suites:
        status = {True: "ok", False: "FAILED", None: "INCOMPLETE"}[s.ok]
        out.append(f"{s.name}: {status}")
        for c in s.cases:
            mark = "SKIP" if c.skipped else ("ok" if c.ok else "FAIL")
            out.append(f"  [{mark:4}] {c.name}")
            if not c.ok:
                out.extend(f"         {line}" for line in c.log)
    return "\n".join(out)


# ---------------------------------------------------------------------------


def _accel(choice: str, kernel: Path, initrd: Path) -> str:
    """``auto`` trusts KVM only if it boots this very kernel (it can hang)."""
    if choice != "auto":
        return choice

    probe = kvm.probe_kvm(kernel=kernel, initrd=initrd, cache=paths.cache_dir())
    return "kvm" if probe.usable else "tcg"


def _finish(
    suites: list[KtapSuite], extra_failure: str | None, as_json: bool, out: Path | None
) -> int:
    ok, reason = verdict(suites, "kml")
    if extra_failure:
        ok, reason = False, f"{extra_failure}; {reason}"
    result = {
        "ok": ok,
        "reason": reason,
        "summary": summarize(suites),
        "suites": [asdict(s) for s in suites],
    }
    if out is not None:
        (out / "kunit.json").write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(_report(suites))
        print(f"kunit: {'PASS' if ok else 'FAIL'}: {reason}")
    return 0 if ok else 1


def command(args: argparse.Namespace) -> int:
    """``kmlbench kunit``: build, boot, load the tests, print the verdict."""
    if args.parse:
        try:
            text = args.parse.read_text(errors="replace")
        except OSError as exc:
            print(f"kunit: cannot read {args.parse}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        return _finish(parse_ktap(text), None, args.json, None)

    out = args.out or (paths.results_dir() / "kunit" / time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    cache = paths.cache_dir()
    if args.kernel_build:
        bzimage = args.kernel_build / "arch/x86/boot/bzImage"
        ko = args.kernel_build / "lib/kml" / f"{MODULE}.ko"
        if not bzimage.exists():
            print(f"kunit: {bzimage} does not exist", file=sys.stderr)
            return 2
        ko = ko if ko.exists() else None
        lib_ko = args.kernel_build / "lib/kml/kml.ko"
        lib_ko = lib_ko if lib_ko.exists() else None
    else:
        try:
            build = kernel.build_kernel(
                kernel.KernelRequest(source=args.source, fragments=tuple(args.config)),
                cache,
                log_dir=out,
            )
        except kernel.KernelBuildError as exc:
            print(f"kunit: kernel build failed: {exc}", file=sys.stderr)
            return 2
        bzimage = build.bzimage
        ko = build.modules.get(MODULE)
        lib_ko = build.modules.get("kml")  # CONFIG_KML=m: load the library first
    if ko is None:
        print(
            f"kunit: the build has no {MODULE}.ko; kernel/configs/kml.config must set "
            "CONFIG_KML_KUNIT_TEST=m",
            file=sys.stderr,
        )
        return 2

    base = image.build_base_image(cache)
    keydir = Path(tempfile.mkdtemp(prefix="kmlbench-kunit-keys-"))
    dmesg = ""
    failure = None
    try:
        keys = SSHKeys.generate(keydir)
        initrd = image.make_guest_initrd(base, keydir, keys.authorized_key, keys.host_key)
        cfg = GuestConfig(
            kernel=bzimage,
            initrd=initrd,
            console_log=out / "console.log",
            accel=_accel(args.accel, bzimage, initrd),
        )
        with qemu.Guest(cfg, keys) as guest:
            if lib_ko is not None:
                guest.put(REMOTE_LIB_KO, lib_ko.read_bytes())
                res = guest.run(f"insmod {REMOTE_LIB_KO}", timeout=args.timeout)
                if res.exit_status != 0:
                    failure = f"insmod kml.ko failed (exit {res.exit_status}): {res.stderr.strip()}"
            # Without the library the test module can only fail with "Unknown
            # symbol", which would hide the real cause: keep the first failure.
            if failure is None:
                guest.put(REMOTE_KO, ko.read_bytes())
                res = guest.run(f"insmod {REMOTE_KO}", timeout=args.timeout)
                if res.exit_status != 0:
                    failure = f"insmod failed (exit {res.exit_status}): {res.stderr.strip()}"
            dmesg = guest.run("dmesg", timeout=60).stdout
            events = [e for e in guest.events() if e.kind in console.FATAL_KINDS]
            if events:
                crash = f"kernel {events[0].kind} during the tests"
                failure = crash if failure is None else f"{failure}; {crash}"
    except qemu.GuestError as exc:
        failure = f"guest failed: {exc}"
        if (out / "console.log").exists():
            dmesg = (out / "console.log").read_text(errors="replace")
    finally:
        shutil.rmtree(keydir, ignore_errors=True)
    (out / "dmesg.txt").write_text(dmesg)
    # The serial console has every line; dmesg's ring buffer loses the
    # start of the output when failing cases print a lot (the suite header
    # and plan with it, and then no case can be placed). Read both and keep
    # the one that places more cases.
    suites = parse_ktap(dmesg)
    console_log = out / "console.log"
    if console_log.exists():
        from_console = parse_ktap(console_log.read_text(errors="replace"))
        if summarize(from_console)["cases"] > summarize(suites)["cases"]:
            suites = from_console
    return _finish(suites, failure, args.json, out)
