"""Classify a guest's serial console: panic, oops, BUG, WARN, hung task, sanitizers.

The console is the only witness that survives a dead kernel, so the harness
decides a cell's fate from it rather than from SSH (which just goes quiet).
Patterns follow the kernel's own printk wording (``panic()``, ``die()``,
``__warn()``, ``check_hung_task()``) so they keep matching across versions;
the optional ``[ 12.345678]`` timestamp and any leading noise are ignored.
The sanitizer kernels (``kernel/configs/debug.config`` and ``kcsan.config``)
add their own report headers: KASAN, KCSAN, UBSAN, lockdep (and RCU
lockdep), sleeping in atomic context, list corruption and debugobjects;
each is a kind of its own, and every one of them fails the cell.

:func:`classify_line` is used incrementally by :mod:`kmlbench.guest.qemu` as lines
arrive; :func:`classify` re-reads a whole saved log the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kmlbench.status import PANIC

# The sanitizers' reports: a kernel built with debug.config or kcsan.config
# prints them, and each means the code under test has a memory, locking,
# concurrency or undefined-behaviour bug, even if it went on running.
SANITIZER_KINDS = (
    "kasan",
    "kcsan",
    "ubsan",
    "lockdep",
    "atomic_sleep",
    "list_corruption",
    "debugobjects",
)
# KCSAN watches the whole kernel, and finds races in lockdep and stack
# walking on any boot: a race report that names no KML or mq-deadline
# function (``kml_*``, ``dd_*``) is recorded as ``kcsan_other``, not fatal.
KINDS = ("panic", "oops", "bug", "warn", "hung_task", *SANITIZER_KINDS, "kcsan_other")
# A cell with any of these did not measure a healthy kernel.
FATAL_KINDS = frozenset({"panic", "oops", "bug", *SANITIZER_KINDS})


@dataclass(frozen=True)
class ConsoleEvent:
    """One classified console line.

    ``line_no`` is 1-based in the console log, so a reader can jump to it;
    ``excerpt`` is the matching line without its printk timestamp.
    """

    kind: str
    line_no: int
    excerpt: str

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "line_no": self.line_no, "excerpt": self.excerpt}


# Order matters: the first match wins. "BUG: unable to handle" is an oops
# (a fault inside the kernel), not a BUG_ON(); the sanitizers' headers come
# before the generic "BUG: " and "WARNING: " they start with. Their wording
# is the kernel's: mm/kasan/report.c, kernel/kcsan/report.c, lib/ubsan.c,
# kernel/locking/lockdep.c and kernel/rcu/ (lockdep_rcu_suspicious),
# __might_resched() and __schedule_bug() in kernel/sched/core.c,
# lib/list_debug.c, lib/debugobjects.c.
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panic", re.compile(r"Kernel panic - not syncing")),
    ("kasan", re.compile(r"(^|\s)BUG: KASAN: ")),
    ("kcsan", re.compile(r"(^|\s)BUG: KCSAN: [\w-]+ in (.*[\s/])?(__)?(kml|dd)_\w")),
    ("kcsan_other", re.compile(r"(^|\s)BUG: KCSAN: ")),
    ("ubsan", re.compile(r"(^|\s)UBSAN: [a-z-]+ in ")),
    (
        "lockdep",
        re.compile(
            r"(^|\s)WARNING: (possible (circular|recursive) locking"
            r"|possible irq lock inversion|inconsistent lock state"
            r"|\S+-safe -> \S+-unsafe lock order|bad unlock balance|held lock freed"
            r"|lock held when returning to user space|lock held at task exit"
            r"|\S+ still has locks held"
            r"|Nested lock was not taken|suspicious RCU usage)"
            r"|(^|\s)BUG: (Invalid wait context|MAX_LOCKDEP_\w+ too low)"
        ),
    ),
    (
        "atomic_sleep",
        re.compile(
            r"(^|\s)BUG: (sleeping function called from invalid context"
            r"|scheduling while atomic|workqueue leaked lock or atomic)"
        ),
    ),
    ("list_corruption", re.compile(r"(^|\s)list_(add|del) corruption|(^|\s)list_add double add")),
    ("debugobjects", re.compile(r"(^|\s)ODEBUG: ")),
    # __die()'s header is "<trap>: <error code> [#<count>]" for every trap
    # that kills a task ("invalid opcode", "divide error", "int3", ...);
    # a page fault prints "Oops" there, after its own "BUG:" line.
    (
        "oops",
        re.compile(
            r"(^|\s)Oops:|BUG: unable to handle|BUG: kernel NULL pointer dereference"
            r"|general protection fault|: [0-9a-f]{4} \[#\d+\]"
        ),
    ),
    ("bug", re.compile(r"kernel BUG at |(^|\s)BUG: ")),
    ("warn", re.compile(r"WARNING: CPU: \d+ PID: \d+ at |(^|\s)WARNING: at ")),
    ("hung_task", re.compile(r"INFO: task .+ blocked for more than \d+ seconds")),
)

_TIMESTAMP = re.compile(r"^\s*(<\d+>)?\s*\[\s*\d+\.\d+\]\s?")
_EXCERPT_MAX = 240


def classify_line(line: str, line_no: int) -> ConsoleEvent | None:
    """Classify one console line, or return None for an ordinary line."""
    text = line.rstrip("\r\n")
    for kind, pattern in _PATTERNS:
        if pattern.search(text):
            excerpt = _TIMESTAMP.sub("", text).strip()[:_EXCERPT_MAX]
            return ConsoleEvent(kind, line_no, excerpt)
    return None


def classify(text: str) -> list[ConsoleEvent]:
    """All events in a console text, in order of appearance."""
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        event = classify_line(line, number)
        if event is not None:
            events.append(event)
    return events


# A frame of KML's or mq-deadline's in a report's stacks ("kml_dd_cost+0x1/0x2").
_OUR_FRAME = re.compile(r"\b(__)?(kml|dd)_\w*\+0x")
_KCSAN_END = "Reported by Kernel Concurrency Sanitizer"
# An access's stack, by interrupt, runs up to the interrupt's entry (x86's
# asm_sysvec_*, asm_common_interrupt, asm_exc_*); the frames below it are
# of whatever the interrupt landed in, not of the access. An access's
# header line starts a stack; whatever the access ("read", "write (marked)",
# "assert no writes", "race at unknown origin, with read"), it ends
# "to 0x... of N bytes by task|interrupt on cpu N:" (kernel/kcsan/report.c).
_IRQ_ENTRY = re.compile(r"\basm_(sysvec_\w+|common_interrupt|exc_\w+)\+0x")
_ACCESS = re.compile(r" to 0x[0-9a-f]+ of \d+ bytes by (task \d+|interrupt) on cpu \d+:")


def kcsan_through_kml(text: str) -> list[ConsoleEvent]:
    """The KCSAN reports whose stacks pass through KML or mq-deadline.

    A ``kcsan_other`` report's header names neither (``classify``), but an
    access inside a function KML or mq-deadline called shows only in the
    stacks below it: such a report is ours to read. An access's stack ends
    at an interrupt's entry: below it are the frames of what the interrupt
    landed in (a KML thread asleep, mq-deadline's insert), which made no
    access. Each is returned as its header's event; a report runs from its
    header to KCSAN's "Reported by" line.
    """
    found: list[ConsoleEvent] = []
    header: ConsoleEvent | None = None
    ours = interrupted = False
    for number, line in enumerate(text.splitlines(), start=1):
        event = classify_line(line, number)
        if event is not None and event.kind in ("kcsan", "kcsan_other"):
            header, ours, interrupted = event, False, False
        elif header is not None:
            if _ACCESS.search(line):
                interrupted = False
            elif _IRQ_ENTRY.search(line):
                interrupted = True
            ours = ours or (not interrupted and bool(_OUR_FRAME.search(line)))
            if _KCSAN_END in line:
                if ours:
                    found.append(header)
                header = None
    return found


def quote(text: str, events: list[ConsoleEvent], before: int = 8, after: int = 60) -> str:
    """The console lines around the first fatal event, for a failure report.

    An oops, BUG or sanitizer report starts at its event and its trace (RIP,
    registers, call trace) follows; a panic alone ends a report whose header
    no pattern knew, so for it the quote reaches back. With no fatal event
    the first event (a WARN's trace) is quoted; with none at all, nothing.
    """
    first = next((e for e in events if e.kind in FATAL_KINDS), events[0] if events else None)
    if first is None:
        return ""
    lines = text.splitlines()
    back = after if first.kind == "panic" else before
    start = max(first.line_no - 1 - back, 0)
    return "\n".join(lines[start : first.line_no + after])


def status_for(events: list[ConsoleEvent]) -> str | None:
    """The cell status the events force, if any.

    A panic, oops, BUG or sanitizer report means the kernel under test
    broke: "panic". WARNs
    and hung-task reports are recorded but do not by themselves fail a cell
    (a slow TCG guest can trip the hung-task detector on a healthy kernel).
    """
    if any(event.kind in FATAL_KINDS for event in events):
        return PANIC
    return None
