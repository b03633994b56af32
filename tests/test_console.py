"""Console classification, on console text from real guests.

The guest tests crash a real kernel (sysrq-c) and provoke a real hung-task
report (a null_blk whose requests take 8 s); the saved console text is then
fed back to :func:`classify` as plain text, so the patterns are checked
against what the kernel actually prints rather than against our memory of it.
An oops or WARN cannot be provoked from user space on a healthy kernel
without a test module, so those patterns are checked on the kernel's own
format strings only (see ``test_format_strings``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kmlbench.console import ConsoleEvent, classify, classify_line, status_for
from kmlbench.qemu import Guest, GuestError
from test_qemu import base_image, boot, guest_kernel  # noqa: F401  (fixtures)

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


@pytest.fixture(scope="module")
def crash_guest(
    guest_kernel: Path,  # noqa: F811
    base_image: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Guest]:
    workdir = tmp_path_factory.mktemp("crash")
    with boot(workdir, guest_kernel, base_image, append="null_blk.nr_devices=0") as guest:
        yield guest


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Console texts saved by the guest tests, for the plain-text tests."""
    return {}


@pytest.mark.kernel
def test_real_hung_task(crash_guest: Guest, saved: dict[str, Path]) -> None:
    result = crash_guest.run(SLOW_NULL_BLK, timeout=60)
    assert result.exit_status == 0, result.stdout + result.stderr
    events = [e for e in crash_guest.events() if e.kind == "hung_task"]
    assert events, crash_guest.console_text()[-2000:]
    assert "dd" in events[0].excerpt and "blocked for more than" in events[0].excerpt
    assert status_for(crash_guest.events()) is None  # a slow device is not a crash


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
    kinds = [e.kind for e in events]
    assert "panic" in kinds and "hung_task" in kinds
    assert status_for(events) == "panic"
    lines = text.splitlines()
    for event in events:
        assert event.excerpt in lines[event.line_no - 1]
    # The ready marker, heartbeats and dropbear chatter are not events.
    assert not any("kmlbench" in e.excerpt for e in events)
    panic = next(e for e in events if e.kind == "panic")
    assert panic.excerpt.startswith("Kernel panic - not syncing: sysrq triggered crash")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        # Format strings from the kernel: die()/__die(), page_fault_oops(),
        # BUG(), __warn(), check_hung_task().
        ("[   12.345678] Oops: 0002 [#1] PREEMPT SMP NOPTI", "oops"),
        ("[    1.000000] BUG: kernel NULL pointer dereference, address: 0000000000000000", "oops"),
        ("BUG: unable to handle page fault for address: ffffffffc0000000", "oops"),
        ("general protection fault, probably for non-canonical address 0xdead: 0000 [#1]", "oops"),
        ("[    3.1] kernel BUG at mm/slub.c:321!", "bug"),
        ("[    3.1] BUG: scheduling while atomic: swapper/0/1/0x00000002", "bug"),
        ("[    2.0] WARNING: CPU: 1 PID: 42 at block/mq-deadline.c:100 dd_insert+0x1/0x2", "warn"),
        ("INFO: task fio:77 blocked for more than 120 seconds.", "hung_task"),
        ("Kernel panic - not syncing: Fatal exception", "panic"),
        ("kmlbench-heartbeat 3 uptime=15.02", None),
        ("fio: BUGs are everywhere (not a kernel line)", None),
    ],
)
def test_format_strings(line: str, kind: str | None) -> None:
    event = classify_line(line, 7)
    assert (event.kind if event else None) == kind
    if event:
        assert event.line_no == 7 and not event.excerpt.startswith("[")


def test_status_for() -> None:
    def ev(kind: str) -> ConsoleEvent:
        return ConsoleEvent(kind, 1, "x")

    assert status_for([]) is None
    assert status_for([ev("warn"), ev("hung_task")]) is None
    for kind in ("panic", "oops", "bug"):
        assert status_for([ev("warn"), ev(kind)]) == "panic"
