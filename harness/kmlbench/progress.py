"""Progress of a run: a live panel on a terminal, plain lines otherwise.

A matrix can take hours under TCG, so the one question a person at the
terminal has is "which cell, how far, how long". On a tty a rich ``Live``
display answers it; in CI logs and pipes (no tty) every event is one
self-contained line instead, because redraw escape codes turn a log into
noise::

    [3/12] randread-nullb-mqdl-3f2a9c1b-r0 ok 31.2s eta 4m10s

The ETA is (mean time of cells finished in this session) x (cells left):
cells kept from an earlier session (``--resume``) count as done but not
towards the mean, since their time is unknown here. With several cells at
once (``slots`` > 1: ``kmlbench run --jobs`` or ``--scheduler``) it is the
session's rate instead (cells finished per wall second so far) into the
cells left, and the panel lists the cells running on each worker.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kmlbench.status import FAILED, OK, PANIC, TIMEOUT

STATUS_STYLES = {OK: "green", FAILED: "red", PANIC: "bold red", TIMEOUT: "yellow"}


def format_duration(seconds: float | None) -> str:
    """``42s``, ``4m10s``, ``2h05m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """``with Progress(total, done) as p: p.start_cell(...); p.finish_cell(...)``."""

    def __init__(
        self, total: int, done: int = 0, stream: TextIO | None = None, slots: int = 1
    ) -> None:
        self.total = total
        self.done = done
        self.slots = slots
        self.stream = stream if stream is not None else sys.stdout
        self.durations: list[float] = []
        self.current: tuple[str, str, float] | None = None  # id, desc, monotonic start
        self.running: dict[str, tuple[str, str, float]] = {}  # id -> worker, desc, start
        self.started_at = time.monotonic()
        self.live_mode = bool(getattr(self.stream, "isatty", lambda: False)())
        self._console: Console | None = None
        self._live: Live | None = None

    # -- context manager -------------------------------------------------

    def __enter__(self) -> Progress:
        if self.live_mode:
            self._console = Console(file=self.stream, force_terminal=True)
            self._live = Live(
                get_renderable=self._render,
                console=self._console,
                refresh_per_second=2,
                transient=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self.current = None
            self._live.stop()
            self._live = None

    # -- events ------------------------------------------------------------

    def eta_seconds(self) -> float | None:
        if not self.durations:
            return None
        left = max(0, self.total - self.done)
        if self.slots > 1:  # cells overlap: the session's rate, not a cell's time
            return (time.monotonic() - self.started_at) / len(self.durations) * left
        return sum(self.durations) / len(self.durations) * left

    def start_cell(self, cell_id: str, desc: str = "", worker: str = "") -> None:
        self.current = (cell_id, desc, time.monotonic())
        self.running[cell_id] = (worker, desc, time.monotonic())
        if not self.live_mode:
            tail = f" {desc}" if desc else ""
            where = f" on {worker}" if self.slots > 1 and worker else ""
            number = self.done + len(self.running)
            self._line(f"[{number}/{self.total}] {cell_id} start{where}{tail}")
        self._refresh()

    def finish_cell(self, cell_id: str, status: str, seconds: float) -> None:
        self.done += 1
        self.durations.append(seconds)
        self.current = None
        self.running.pop(cell_id, None)
        line = (
            f"[{self.done}/{self.total}] {cell_id} {status} {seconds:.1f}s "
            f"eta {format_duration(self.eta_seconds())}"
        )
        if self._console is not None:
            self._refresh()  # so the panel drawn under the line is already current
            text = Text(line)
            text.highlight_words([f" {status} "], style=STATUS_STYLES.get(status, "yellow"))
            self._console.print(text)
        else:
            self._line(line)

    def note(self, message: str) -> None:
        """A free-form line (kernel build, KVM probe), above the live panel."""
        if self._console is not None:
            self._console.print(Text(message))
        else:
            self._line(message)

    # -- output ------------------------------------------------------------

    def _refresh(self) -> None:
        # Live redraws from its own thread; without this, a line printed
        # above the panel would be followed by the panel's stale state.
        if self._live is not None:
            self._live.refresh()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _render(self) -> Group:
        bar = ProgressBar(total=max(self.total, 1), completed=self.done, width=40)
        head = Text(f"{self.done}/{self.total} cells  eta {format_duration(self.eta_seconds())}")
        grid = Table.grid(padding=(0, 2))
        grid.add_row(bar, head)
        parts: list[Any] = [grid]
        if self.slots > 1:
            by_worker: dict[str, list[str]] = {}
            for cid, (worker, _, started) in sorted(self.running.items()):
                running = format_duration(time.monotonic() - started)
                by_worker.setdefault(worker, []).append(f"{cid} ({running})")
            for worker, cells in sorted(by_worker.items()):
                parts.append(Text(f"{worker}: {', '.join(cells)}", style="bold"))
        elif self.current is not None:
            cid, desc, started = self.current
            running = format_duration(time.monotonic() - started)
            parts.append(Text(f"running {cid} ({running}) {desc}".rstrip(), style="bold"))
        return Group(*parts)
