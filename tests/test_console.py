"""Console classification, on console text from real guests.

The guest tests provoke the real thing in one guest: a WARN, an oops and a
BUG from tiny throw-away modules (built against the guest kernel's build
tree, skipped if there is none), a hung-task report (a slow null_blk), and
finally a panic (sysrq-c). The saved console text is then fed back to
:func:`classify` as plain text, so the patterns are checked against what the
kernel actually prints rather than against our memory of it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmlbench.guest.console import (
    SANITIZER_KINDS,
    ConsoleEvent,
    classify,
    classify_line,
    kcsan_through_kml,
    quote,
    status_for,
)
from kmlbench.guest.qemu import Guest, GuestError
from test_qemu import boot

# blk_io_schedule() deliberately hides slow I/O from the hung-task detector,
# but a mutex does not: while power-on scans the partition table of a device
# whose every request takes 4 s (null_blk times requests out at 5 s), it
# holds the disk's open_mutex, and a second opener waits uninterruptibly.
SLOW_NULL_BLK = """
set -e
echo 1 > /proc/sys/kernel/hung_task_timeout_secs
nb=/sys/kernel/config/nullb/nullb0
mkdir $nb
echo 2 > $nb/irqmode
echo 4000000000 > $nb/completion_nsec
echo 16 > $nb/size
echo 1 > $nb/power &
i=0; while [ ! -b /dev/nullb0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
dd if=/dev/nullb0 of=/dev/null bs=4096 count=1 2>&1 &
wait
"""


CRASH_MODULE = r"""
// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/bug.h>
static int __init crash_init(void)
{
#if defined(DO_WARN)
	WARN(1, "kmlbench: deliberate warning");
#elif defined(DO_OOPS)
	*(volatile int *)NULL = 1;
#elif defined(DO_BUG)
	BUG();
#elif defined(DO_DIVIDE)
	volatile int num = 7, zero = 0;	/* (1 / x needs no division) */

	return num / zero;
#elif defined(DO_UD2)
	asm volatile("ud2");	/* not in the bug table: a bare trap */
#endif
	return -EAGAIN;  /* never stay loaded */
}
module_init(crash_init);
MODULE_LICENSE("GPL");
"""


CRASH_KINDS = ("warn", "oops", "bug", "divide", "ud2")


@pytest.fixture(scope="session")
def crash_modules(guest_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kmlbench_{warn,oops,bug,divide,ud2}.ko, built against the guest kernel's build tree.

    The tree is ``KMLBENCH_TEST_KERNEL_BUILD`` or the one the bzImage sits in.
    One module per kind: a module whose init oopsed stays "coming" forever,
    and loading the same name again would hang.
    """
    import os

    env = os.environ.get("KMLBENCH_TEST_KERNEL_BUILD")
    tree = Path(env) if env else guest_kernel.parents[3]
    if not (tree / ".config").is_file() or not (tree / "scripts/mod/modpost").exists():
        pytest.skip(f"no prepared kernel build tree at {tree}")
    src = tmp_path_factory.mktemp("crashmod")
    proc, modules = build_modules(tree, CRASH_MODULE, CRASH_KINDS, src)
    if proc.returncode != 0:
        pytest.skip(f"cannot build test modules: {proc.stderr[-500:]}")
    return modules


def build_modules(
    tree: Path, source: str, kinds: tuple[str, ...], src: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Path]]:
    """kmlbench_<kind>.ko from ``source`` with ``DO_<KIND>`` defined, one per kind,
    built against the kernel object tree ``tree`` (make's result, the modules)."""
    for kind in kinds:
        (src / f"kmlbench_{kind}.c").write_text(f"#define DO_{kind.upper()}\n" + source)
    (src / "Kbuild").write_text("obj-m := " + " ".join(f"kmlbench_{k}.o" for k in kinds) + "\n")
    make = ["make", "-s", "-C", str(tree)]
    if not (tree / "scripts/module.lds").exists():
        subprocess.run([*make, "modules_prepare"], check=True, capture_output=True)
    # No Module.symvers in a bzImage-only build: symbols resolve at load time.
    proc = subprocess.run(
        [*make, f"M={src}", "KBUILD_MODPOST_WARN=1", "modules"], capture_output=True, text=True
    )
    return proc, {kind: src / f"kmlbench_{kind}.ko" for kind in kinds}


@pytest.fixture(scope="module")
def crash_guest(
    guest_kernel: Path,
    base_image: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Guest]:
    workdir = tmp_path_factory.mktemp("crash")
    with boot(workdir, guest_kernel, base_image, append="null_blk.nr_devices=0") as guest:
        yield guest


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Console texts saved by the guest tests, for the plain-text tests."""
    return {}


def insmod(guest: Guest, module: Path) -> None:
    """Load a crash module over the raw SSH session (Guest.run would raise)."""
    assert guest.ssh is not None
    guest.ssh.put(f"/tmp/{module.name}", module.read_bytes(), 0o644)
    guest.ssh.run(f"insmod /tmp/{module.name}", timeout=30)


def wait_for(guest: Guest, kind: str, since: int = 0, starts: str = "") -> list[ConsoleEvent]:
    """The events of ``kind`` from the ``since``-th on whose excerpt starts with
    ``starts``, once there is one (up to 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = [
            e for e in guest.events()[since:] if e.kind == kind and e.excerpt.startswith(starts)
        ]
        if events:
            return events
        time.sleep(0.2)
    raise AssertionError(f"no {kind} event {starts!r} in: {guest.console_text()[-2000:]}")


@pytest.mark.kernel
def test_real_warn(crash_guest: Guest, crash_modules: dict[str, Path]) -> None:
    crash_guest.put("/tmp/warn.ko", crash_modules["warn"].read_bytes())
    result = crash_guest.run("insmod /tmp/warn.ko", timeout=30)  # a WARN is not fatal
    assert result.exit_status != 0  # the module refuses to stay
    event = wait_for(crash_guest, "warn")[0]
    assert event.excerpt.startswith("WARNING: CPU:") and "kmlbench_warn" in event.excerpt
    assert status_for(crash_guest.events()) is None


@pytest.mark.kernel
def test_real_hung_task(crash_guest: Guest, saved: dict[str, Path]) -> None:
    result = crash_guest.run(SLOW_NULL_BLK, timeout=60)
    assert result.exit_status == 0, result.stdout + result.stderr
    events = [e for e in crash_guest.events() if e.kind == "hung_task"]
    assert events, crash_guest.console_text()[-2000:]
    assert "dd" in events[0].excerpt and "blocked for more than" in events[0].excerpt
    assert status_for(crash_guest.events()) is None  # a slow device is not a crash


@pytest.mark.kernel
def test_real_oops_without_panic(crash_guest: Guest, crash_modules: dict[str, Path]) -> None:
    crash_guest.put("/tmp/oops.ko", crash_modules["oops"].read_bytes())
    with pytest.raises(GuestError) as info:
        crash_guest.run("insmod /tmp/oops.ko", timeout=30)
    assert info.value.status == "panic"  # an oops fails the cell...
    kinds = {e.kind for e in info.value.events}
    assert "oops" in kinds and "panic" not in kinds
    # ...but the kernel (panic_on_oops=0) and the guest live on.
    assert crash_guest.ssh is not None
    assert crash_guest.ssh.run("echo alive", timeout=30).stdout.strip() == "alive"


@pytest.mark.kernel
def test_real_bug(crash_guest: Guest, crash_modules: dict[str, Path]) -> None:
    insmod(crash_guest, crash_modules["bug"])
    event = wait_for(crash_guest, "bug")[0]
    assert event.excerpt.startswith("kernel BUG at") and "kmlbench_bug" in event.excerpt


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("kind", "header"),
    [("divide", "divide error: 0000 [#"), ("ud2", "invalid opcode: 0000 [#")],
)
def test_real_traps_are_oopses(
    crash_guest: Guest, crash_modules: dict[str, Path], kind: str, header: str
) -> None:
    """A trap that kills a task in the kernel prints die()'s header, which
    says neither "Oops" nor "BUG": it is an oops all the same, and the quote
    of the console around it holds the trace."""
    seen = len(crash_guest.events())
    insmod(crash_guest, crash_modules[kind])
    new = wait_for(crash_guest, "oops", seen, header)
    quoted = quote(crash_guest.console_text(), new)
    assert header in quoted and "RIP:" in quoted and f"kmlbench_{kind}" in quoted, quoted


@pytest.mark.kernel
def test_real_panic(crash_guest: Guest, saved: dict[str, Path]) -> None:
    with pytest.raises(GuestError) as info:
        crash_guest.run("echo c > /proc/sysrq-trigger; sleep 30", timeout=60)
    assert info.value.status == "panic"
    panics = [e for e in info.value.events if e.kind == "panic"]
    assert panics and "sysrq triggered crash" in panics[0].excerpt
    crash_guest.close()  # flush and close the console log
    assert crash_guest.proc is not None and crash_guest.proc.poll() is not None
    saved["crash"] = crash_guest.cfg.console_log


@pytest.mark.kernel
def test_saved_console_text(saved: dict[str, Path]) -> None:
    """Re-classify the saved log as text: same events, right line numbers."""
    if "crash" not in saved:
        pytest.skip("needs test_real_panic")
    text = saved["crash"].read_text()
    events = classify(text)
    kinds = {e.kind for e in events}
    assert {"panic", "hung_task"} <= kinds
    if "kmlbench_warn" in text:  # the crash modules were built
        assert {"warn", "oops", "bug"} <= kinds
        assert "RIP:" in quote(text, events)
    assert status_for(events) == "panic"
    lines = text.splitlines()
    for event in events:
        assert event.excerpt in lines[event.line_no - 1]
    # The ready marker, heartbeats and dropbear chatter are not events.
    noise = ("kmlbench-heartbeat", "KMLBENCH-GUEST-READY", "kmlbench-init", "Pubkey auth")
    assert not any(word in e.excerpt for e in events for word in noise)
    panic = next(e for e in events if e.kind == "panic")
    assert panic.excerpt.startswith("Kernel panic - not syncing: sysrq triggered crash")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        # Format strings from the kernel: die()/__die(), page_fault_oops(),
        # BUG(), __warn(), check_hung_task().
        ("[   12.345678] Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops"),
        ("[  351.2] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
        ("divide error: 0000 [#2] PREEMPT SMP", "oops"),
        ("int3: 0000 [#1] SMP", "oops"),
        ("[    1.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000", "oops"),
        ("BUG: unable to handle page fault for address: ffffffffc0000000", "oops"),
        ("general protection fault, probably for non-canonical address 0xdead: 0000 [#1]", "oops"),
        ("[    3.1] kernel BUG at mm/slub.c:321!", "bug"),
        ("[    3.1] BUG: scheduling while atomic: swapper/0/1/0x00000002", "atomic_sleep"),
        ("[    2.0] WARNING: CPU: 1 PID: 42 at block/mq-deadline.c:100 dd_insert+0x1/0x2", "warn"),
        ("INFO: task fio:77 blocked for more than 120 seconds.", "hung_task"),
        ("Kernel panic - not syncing: Fatal exception", "panic"),
        # The sanitizers' headers (debug.config, kcsan.config): kasan_report(),
        # kcsan's print_report(), ubsan_prologue(), lockdep's print_*_bug(),
        # lockdep_rcu_suspicious(), __might_resched(), __list_*_valid(),
        # debug_print_object().
        ("[    9.1] BUG: KASAN: slab-use-after-free in kml_dd_swap+0x1/0x2", "kasan"),
        ("BUG: KASAN: slab-out-of-bounds in kml_ring_push+0x4d/0x90", "kasan"),
        ("[    9.2] BUG: KCSAN: data-race in kml_dd_insert / kml_dd_complete", "kcsan"),
        ("BUG: KCSAN: data-race in dd_dispatch_request / blk_mq_run_hw_queue", "kcsan"),
        ("BUG: KCSAN: data-race in __kml_dd_insert+0x1/0x2 / kml_dd_finish", "kcsan"),
        # races KCSAN finds all over the kernel: recorded, not ours, not fatal
        ("BUG: KCSAN: data-race in mark_lock+0x86/0x35b / mark_lock+0x86/0x35b", "kcsan_other"),
        ("BUG: KCSAN: data-race in arch_stack_walk+0x9c/0xad", "kcsan_other"),
        ("UBSAN: shift-out-of-bounds in kernel/kml/kml_dd_calib.c:88:20", "ubsan"),
        ("UBSAN: array-index-out-of-bounds in block/mq-deadline.c:120:5", "ubsan"),
        ("WARNING: possible circular locking dependency detected", "lockdep"),
        ("WARNING: possible recursive locking detected", "lockdep"),
        ("WARNING: inconsistent lock state", "lockdep"),
        ("WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", "lockdep"),
        ("WARNING: suspicious RCU usage", "lockdep"),
        ("BUG: Invalid wait context", "lockdep"),
        ("WARNING: kworker/0:1/33 still has locks held!", "lockdep"),
        (
            "list_add double add: new=ffff888004f2a000, prev=ffff888004f2a000, next=ffff8880",
            "list_corruption",
        ),
        ("BUG: sleeping function called from invalid context at mm/slab.h:723", "atomic_sleep"),
        (
            "list_add corruption. next->prev should be prev (ffff8880), but was 0000",
            "list_corruption",
        ),
        (
            "list_del corruption, ffff888004f2a000->next is LIST_POISON1 (dead000000000100)",
            "list_corruption",
        ),
        (
            "ODEBUG: activate active (active state 1) object: 0000 object type: rcu_head",
            "debugobjects",
        ),
        ("kcsan: selftest: 3/3 tests passed", None),
        ("kmlbench-heartbeat 3 uptime=15.02", None),
        ("fio: BUGs are everywhere (not a kernel line)", None),
    ],
)
def test_format_strings(line: str, kind: str | None) -> None:
    event = classify_line(line, 7)
    assert (event.kind if event else None) == kind
    if event:
        assert event.line_no == 7 and not event.excerpt.startswith("[")


def test_quote_holds_the_trace_of_the_first_fatal_event() -> None:
    lines = [f"[ {i}.0] line {i}" for i in range(1, 201)]
    lines[99] = "[ 100.0] invalid opcode: 0000 [#1] PREEMPT SMP"
    lines[100] = "[ 100.0] RIP: 0010:dd_finish_request+0x12/0x80"
    lines[149] = "[ 150.0] Kernel panic - not syncing: Fatal exception in interrupt"
    text = "\n".join(lines)
    events = classify(text)
    assert [e.kind for e in events] == ["oops", "panic"]
    quoted = quote(text, events, before=2, after=3).splitlines()
    assert quoted[0].endswith("line 98") and "RIP:" in quoted[3] and len(quoted) == 6
    # a panic alone: its header was not known, so the quote reaches back
    alone = quote(text, events[1:], after=55).splitlines()
    assert alone[0].endswith("line 95") and alone[5].startswith("[ 100.0] invalid opcode")
    assert alone[-1].endswith("line 200")
    # a WARN is quoted when nothing is fatal; nothing, when there is no event
    assert quote(text, [ConsoleEvent("warn", 10, "x")], before=0, after=0) == lines[9]
    assert quote(text, []) == ""


def test_status_for() -> None:
    def ev(kind: str) -> ConsoleEvent:
        return ConsoleEvent(kind, 1, "x")

    assert status_for([]) is None
    assert status_for([ev("warn"), ev("hung_task")]) is None
    for kind in ("panic", "oops", "bug", *SANITIZER_KINDS):
        assert status_for([ev("warn"), ev(kind)]) == "panic"


KCSAN_KERNEL_RACE = Path(__file__).parent / "data" / "kcsan-kernel-race.console"


def test_a_kcsan_report_through_kml_is_found_below_its_header() -> None:
    """A real report from the KCSAN kernel under fio and kmlctl fuzz
    (tests/test_kml_faults.py): aio's completion against blk-mq's submit,
    no KML or mq-deadline frame in either stack, so not ours. The same
    report with one frame of mq-deadline in a stack is: its header still
    names neither function, and only the stacks say so."""
    text = KCSAN_KERNEL_RACE.read_text()
    [event] = [e for e in classify(text) if e.kind.startswith("kcsan")]
    assert event.kind == "kcsan_other"
    assert kcsan_through_kml(text) == []
    ours = text.replace(" blk_update_request+", " dd_finish_request+", 1)
    assert ours != text
    assert kcsan_through_kml(ours) == [event]
    assert kcsan_through_kml(text.replace(" end_cmd+", " __kml_dd_finish+", 1)) == [event]
    # only inside a report: the same frame after KCSAN's "Reported by" is not
    tail = text + "[  300.0]  dd_dispatch_request+0x1/0x2\n"
    assert kcsan_through_kml(tail) == []


KCSAN_INTERRUPTED = Path(__file__).parent / "data" / "kcsan-interrupted-kml.console"


def test_frames_an_interrupt_landed_in_are_not_the_access() -> None:
    """Two real reports from the KCSAN kernel under fio and kmlctl fuzz
    (tests/test_kml_faults.py, 2026-12-06): blk-mq's tag bitmap, cleared by
    null_blk's completion in a timer interrupt and read by a submit. The
    interrupt landed once in mq-deadline's insert and once in the kernel
    trainer's sleep: those frames lie below the interrupt's entry, and
    neither made an access, so neither report is ours. The same frame above
    the entry (in the interrupt's own path) is."""
    text = KCSAN_INTERRUPTED.read_text()
    events = [e for e in classify(text) if e.kind.startswith("kcsan")]
    assert [e.kind for e in events] == ["kcsan_other", "kcsan_other"]
    assert " dd_insert_requests+" in text and " kml_kt_thread+" in text
    assert kcsan_through_kml(text) == []
    # in the interrupt's own stack, above its entry, a frame is ours
    ours = text.replace(" end_cmd+", " __kml_dd_finish+", 1)
    assert kcsan_through_kml(ours) == events[:1]
    # and in the other access's stack (no interrupt there)
    other = text.replace(" blk_mq_dispatch_rq_list+", " dd_dispatch_request+", 1)
    assert kcsan_through_kml(other) == events[:1]
    # the interrupted frames are skipped only up to the next access's header,
    # whatever its access (KCSAN's asserts too)
    second = text.replace(" __blk_mq_alloc_requests+", " dd_limit_depth+", 1)
    assert kcsan_through_kml(second) == events[1:]
    address = "to 0xff1100003fa1b9c0"
    asserted = second.replace(f"read {address}", f"assert no writes {address}")
    assert asserted != second
    assert kcsan_through_kml(asserted) == events[1:]
