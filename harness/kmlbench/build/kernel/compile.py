"""Compiling a configured kernel and keeping the result: make, the build dirs, their records.

:func:`compile_kernel` runs ``make bzImage [modules]`` in an object dir,
its output streamed into the logs (with the lines that say what broke when
it fails). :func:`publish` copies a finished object dir to the
content-keyed ``cache/builds/<build_key>/`` with its record, the
``.kmlbench-complete`` stamp (inputs, modules, object dir, compile time),
which :func:`read_stamp` reads back: a build dir with a stamp and a
``bzImage`` is a finished build, a cache hit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kmlbench import procs
from kmlbench.build.kernel.common import KernelBuildError, Log, make_env, run
from kmlbench.files import atomic_write
from kmlbench.plan.kernel import parse_config_lines

BUILD_STAMP = ".kmlbench-complete"
BZIMAGE = Path("arch/x86/boot/bzImage")  # in an object or build dir
BUILD_LOG = "kmlbench-build.log"


def default_jobs() -> int:
    """``-j`` for make: KMLBENCH_JOBS if set, else the CPUs we may run on."""
    env = os.environ.get("KMLBENCH_JOBS")
    if env:
        return max(1, int(env))
    return max(1, len(os.sched_getaffinity(0)))


_ERROR_RE = re.compile(r"error:|Error:|undefined reference|fatal error|No rule to make target")


def error_summary(log_text: str, limit: int = 20) -> str:
    """The last ``limit`` lines around compiler/linker errors in a build log.

    With ``-j`` make keeps going after the first error and buries it under
    other output; the ``error:`` lines and their neighbours are what tell
    the user what broke. Falls back to make's ``***`` lines, then the tail.
    """
    lines = log_text.splitlines()
    hits = [i for i, line in enumerate(lines) if _ERROR_RE.search(line)]
    if not hits:
        hits = [i for i, line in enumerate(lines) if "***" in line]
    if not hits:
        return "\n".join(lines[-limit:])
    chosen: list[int] = []
    for i in hits:
        for j in range(max(0, i - 2), min(len(lines), i + 3)):
            if not chosen or j > chosen[-1]:
                chosen.append(j)
    return "\n".join(lines[j] for j in chosen[-limit:])


def wants_modules(config_text: str) -> bool:
    """``make modules`` only makes sense with CONFIG_MODULES=y and some =m."""
    cfg = parse_config_lines(config_text)
    if cfg.get("CONFIG_MODULES", ("",))[0] != "CONFIG_MODULES=y":
        return False
    return any(line.endswith("=m") for line, _ in cfg.values())


def collect_modules(build_dir: Path) -> dict[str, Path]:
    """``{module name: path}`` of every ``.ko`` in the build dir."""
    return {p.stem: p for p in sorted(build_dir.rglob("*.ko"))}


def built_modules(obj: Path) -> dict[str, Path]:
    """The modules of the last build in ``obj``: those ``modules.order`` lists.

    An object dir is reused across KML versions, so a ``.ko`` of a module
    that no longer exists may still lie around; modules.order does not
    list it.
    """
    order = obj / "modules.order"
    if not order.is_file():
        return collect_modules(obj)
    result = {}
    for line in order.read_text().splitlines():
        rel = line.strip()
        if rel.endswith(".o"):
            rel = rel[:-2] + ".ko"
        if rel and (obj / rel).is_file():
            result[Path(rel).stem] = obj / rel
    return result


# make's short lines for an object it compiles: "  CC      lib/kml/kml_nn.o",
# "  AS [M]  arch/x86/crypto/aes.o" (kbuild's quiet_cmd_cc_o_c and friends).
_OBJECT_RE = re.compile(r"^\s+(CC|AS)(\s+\[M\])?\s+\S+\.o\s*$")
OBJECT_COUNT = ".kmlbench-objects"  # beside the object dirs: the most objects a build holds
# Before any build on this machine, how many objects a cold build of the
# stock guest kernel (base.config + kml.config) makes: its object dir held
# 1,280 (measured 2026-12-02). Progress then says "about".
TYPICAL_OBJECTS = 1280


class CompileProgress:
    """Objects compiled out of the number expected, from make's output, as a
    line each ``step_pct`` percent (or every ``step_pct * 50`` objects when no
    earlier build says how many to expect)."""

    def __init__(
        self,
        expected: int | None,
        log: Log,
        step_pct: int = 10,
        running: bool = True,
        about: bool = False,
    ) -> None:
        self.expected = expected if expected and expected > 0 else None
        self.about = "~" if about else ""  # an estimate, not this machine's count
        self.log = log
        self.step = step_pct
        self.running = running  # False: only count (an incremental build)
        self.count = 0
        self._next = step_pct if self.expected else step_pct * 50

    def feed(self, line: str) -> None:
        """Count ``line`` if it is one object compiled; log when a step is passed."""
        if not _OBJECT_RE.match(line):
            return
        self.count += 1
        if not self.running:
            return
        if self.expected is None:
            if self.count >= self._next:
                self.log(f"compiled {self.count} objects (no earlier build to count against)")
                self._next += self.step * 50
            return
        if self.count > self.expected:  # this config compiles more than the last
            if self.count % (self.step * 50) == 0:
                self.log(
                    f"compiled {self.count} objects (more than the {self.about}"
                    f"{self.expected} expected)"
                )
            return
        pct = self.count * 100 // self.expected
        if pct >= self._next:
            self.log(f"compiled {self.count}/{self.about}{self.expected} objects ({pct}%)")
            self._next = (pct // self.step + 1) * self.step


def read_object_count(build_dir: Path) -> int | None:
    """How many objects the biggest earlier cold build beside ``build_dir`` compiled."""
    try:
        return int((build_dir.parent / OBJECT_COUNT).read_text().strip())
    except (OSError, ValueError):
        return None


def count_objects(build_dir: Path) -> int:
    """Objects a finished build dir holds: what a cold build of its config compiles
    (about: composite objects are linked, not compiled), even if this build was
    incremental or resumed."""
    return sum(
        1
        for path in build_dir.rglob("*.o")
        if path.relative_to(build_dir).parts[0] not in ("scripts", "tools")
    )


def write_object_count(build_dir: Path, count: int) -> None:
    """Remember a build's object ``count`` for the next cold build, if the largest yet."""
    if count > (read_object_count(build_dir) or 0):
        with contextlib.suppress(OSError):
            atomic_write(build_dir.parent / OBJECT_COUNT, f"{count}\n")


def compile_kernel(
    tree: Path, build_dir: Path, build_log: Path, log_files: Sequence[Path], jobs: int, log: Log
) -> None:
    """``make bzImage [modules]``, output streamed into ``build_log`` and ``log_files``.

    ``build_log`` starts empty on every attempt (so the error summary read
    from it is about this attempt); the ``log_files`` are appended to.
    """
    targets = ["bzImage"]
    if wants_modules((build_dir / ".config").read_text()):
        targets.append("modules")
    argv = ["make", f"O={build_dir}", f"-j{jobs}", *targets]
    log("$ " + " ".join(argv) + f"  (output: {build_log})")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(build_log.open("w", buffering=1))]
        outs += [stack.enter_context(p.open("a", buffering=1)) for p in log_files if p != build_log]
        for out in outs:
            out.write("$ " + " ".join(argv) + "\n")
        proc = procs.popen(  # dies with us even when we are SIGKILLed mid-build
            argv,
            die_with_parent=True,
            cwd=tree,
            env=make_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        # Only a cold build (an empty object dir) is measured against, and
        # remembered for, other cold builds: an incremental one compiles a
        # handful of objects and just says how many at the end.
        cold = not (build_dir / "vmlinux").exists()
        known = read_object_count(build_dir)
        progress = CompileProgress(
            (known or TYPICAL_OBJECTS) if cold else None,
            log,
            running=cold,
            about=known is None,
        )
        try:
            for line in proc.stdout:
                progress.feed(line)
                for out in outs:
                    out.write(line)
        except BaseException:  # e.g. KeyboardInterrupt: don't leave make or its compilers running
            procs.stop(proc)
            raise
        rc = proc.wait()
        procs.stop(proc, grace_s=0)  # anything make left behind; forgets the group
    elapsed = time.monotonic() - started
    if rc != 0:
        summary = error_summary(build_log.read_text(errors="replace"))
        raise KernelBuildError(
            f"kernel build failed (make exit {rc} after {elapsed:.0f}s):\n{summary}", build_log
        )
    write_object_count(build_dir, count_objects(build_dir))
    log(f"kernel built in {elapsed:.0f}s ({progress.count} objects compiled)")


def _retarget_tools(copy: Path, source: Path, obj: Path) -> None:
    """Point the dependency records of ``copy/tools/`` at ``obj``, not ``source``.

    Kbuild's own records name objects relative to the object dir, but the
    host tools' (objtool, built by tools/build) name them by absolute path:
    left as copied, make rebuilds objtool, and every object that objtool
    checked is then older than it and rebuilt too, which is a cold build.
    """
    # the object dir as given to make, and with symlinks resolved (either may
    # be what a tool's build recorded)
    pairs = {(str(source).encode(), str(obj).encode())}
    pairs.add((str(source.resolve()).encode(), str(obj.resolve()).encode()))
    tools = copy / "tools"
    if not tools.is_dir():
        return
    for path in tools.rglob("*"):
        if path.is_symlink() or not path.is_file() or not path.name.endswith((".cmd", ".d")):
            continue
        data = edited = path.read_bytes()
        for old, new in pairs:
            edited = edited.replace(old, new)
        if edited != data:
            stat = path.stat()
            path.write_bytes(edited)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# An object dir's copy in progress, beside the object dirs (never "obj-*").
SEED_SCRATCH_PREFIX = ".seed-"


def seed_object_dir(obj: Path, log: Log) -> Path | None:
    """Start the new object dir ``obj`` as a copy of the newest finished one beside it.

    Returns the dir copied, or None (``obj`` exists, or no sibling has a
    finished build). A kernel variant's first build (another config: no
    KML hooks, a sanitizer) in an empty dir compiles every object, 5-10
    minutes here; kbuild records which config options each object reads
    (``include/config/``, fixdep), so in a copy of a sibling's dir ``make``
    recompiles only what the changed options reach: for a kernel without
    ``CONFIG_KML_IOSCHED``, mq-deadline and lib/kml, then the link. The copy
    keeps every timestamp (``cp -a``), so kbuild's rules (an object older
    than its sources or its command line is rebuilt) hold as in the
    sibling's own incremental builds. Made in a scratch dir and renamed,
    so an interrupted copy leaves no half object dir. The caller holds the
    work tree's lock: no sibling is being built meanwhile.
    """
    if obj.exists():
        return None
    finished = [d for d in obj.parent.glob("obj-*") if d.is_dir() and (d / BZIMAGE).is_file()]
    if not finished:
        return None
    source = max(finished, key=lambda d: (d / BZIMAGE).stat().st_mtime)
    for stale in obj.parent.glob(SEED_SCRATCH_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    scratch = obj.parent / f"{SEED_SCRATCH_PREFIX}{obj.name}"
    if scratch.exists():  # not removable: never copy into it
        log(f"could not remove {scratch}; building {obj.name} cold")
        return None
    started = time.monotonic()
    try:
        subprocess.run(
            ["cp", "-aT", "--reflink=auto", str(source), str(scratch)],
            check=True,
            capture_output=True,
            text=True,
        )
        _retarget_tools(scratch, source, obj)
        scratch.rename(obj)
    except (OSError, subprocess.CalledProcessError) as e:
        shutil.rmtree(scratch, ignore_errors=True)
        detail = getattr(e, "stderr", "") or str(e)
        log(f"could not seed {obj.name} from {source.name} ({detail.strip()}); building cold")
        return None
    log(f"seeded {obj.name} from {source.name} in {time.monotonic() - started:.1f}s")
    return source


def read_stamp(build_dir: Path) -> dict[str, object] | None:
    """The completed-build stamp, if the build dir holds a finished build."""
    try:
        stamp = json.loads((build_dir / BUILD_STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not (build_dir / BZIMAGE).is_file():
        return None
    return stamp if isinstance(stamp, dict) else None


def remove_stale_scratch(builds: Path, max_age_s: float = 86400) -> None:
    """Remove scratch dirs of killed processes (older than a day).

    Config scratch dirs (``.config-*``, from before the work tree) and
    half-copied builds (``.publish-*``): a live one is seconds old.
    """
    now = time.time()
    for d in [*builds.glob(".config-*"), *builds.glob(".publish-*")]:
        with contextlib.suppress(OSError):
            if now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)


def publish(obj: Path, builds: Path, key: str, stamp: Mapping[str, object], log: Log) -> Path:
    """Copy a finished object dir to ``builds/<key>/`` with its stamp, atomically.

    A full copy (about 230 MB, a second or two): the object dir is rebuilt
    in place by the next build, so hard links would be modified under the
    published copy. The caller holds the build key's lock.
    """
    final = builds / key
    for stale in builds.glob(f".publish-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=builds, prefix=f".publish-{key}-"))
    try:
        run(["cp", "-a", f"{obj}/.", str(tmp)], builds, log, "cp -a (publish the build)")
        atomic_write(tmp / BUILD_STAMP, json.dumps(stamp, indent=1) + "\n")
        if final.exists():  # without a stamp: an interrupted build of the old layout
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
