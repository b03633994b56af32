"""progress.py: plain lines in logs, a live panel on terminals."""

from __future__ import annotations

import io

from kmlbench.progress import Progress, format_duration


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations() -> None:
    assert format_duration(None) == "?"
    assert format_duration(31.2) == "31s"
    assert format_duration(250) == "4m10s"
    assert format_duration(7500) == "2h05m"


def test_plain_output_is_one_line_per_event() -> None:
    out = io.StringIO()
    with Progress(12, done=2, stream=out) as p:
        assert not p.live_mode
        p.start_cell("randread-nullb-mqdl-3f2a9c1b-r0", "null_blk mq-deadline")
        p.finish_cell("randread-nullb-mqdl-3f2a9c1b-r0", "ok", 25.0)
        p.note("building kernel default")
        p.start_cell("randrw-nullb-none-0badcafe-r0")
        p.finish_cell("randrw-nullb-none-0badcafe-r0", "failed", 35.0)
    assert out.getvalue().splitlines() == [
        "[3/12] randread-nullb-mqdl-3f2a9c1b-r0 start null_blk mq-deadline",
        "[3/12] randread-nullb-mqdl-3f2a9c1b-r0 ok 25.0s eta 3m45s",  # 9 left x 25 s
        "building kernel default",
        "[4/12] randrw-nullb-none-0badcafe-r0 start",
        "[4/12] randrw-nullb-none-0badcafe-r0 failed 35.0s eta 4m00s",  # 8 left x 30 s
    ]
    assert "\x1b" not in out.getvalue()


def test_live_panel_on_a_terminal() -> None:
    out = FakeTty()
    with Progress(2, stream=out) as p:
        assert p.live_mode
        p.start_cell("seqread-virtio-bfq-12345678-r1", "virtio bfq")
        p.finish_cell("seqread-virtio-bfq-12345678-r1", "panic", 3.0)
    text = out.getvalue()
    assert "\x1b[" in text  # drawn with escape codes
    assert "[1/2] seqread-virtio-bfq-12345678-r1" in text
    assert "running seqread-virtio-bfq-12345678-r1" in text
    assert "1/2 cells" in text
