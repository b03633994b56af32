"""kmlbench.procs: host children in their own session, stopped as a group.

Real processes throughout: a shell whose background child ignores SIGTERM
and holds the stdout pipe is exactly the shape of fio's orphaned job process
(issue 16), and plain ``subprocess.run(timeout=...)`` hangs on it until the
child exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmlbench import procs

pytestmark = pytest.mark.timeout(60)

# A parent that forks a child holding stdout and ignoring SIGTERM, says so,
# then waits for it: killing the parent alone leaves the pipe open for 120 s.
STUBBORN = 'trap "" TERM; (trap "" TERM; exec sleep 120) & echo "child $!"; wait'


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_run_timeout_stops_the_whole_group_and_returns() -> None:
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as info:
        procs.run(["sh", "-c", STUBBORN], timeout=1, capture_output=True, text=True, grace_s=0.5)
    took = time.monotonic() - started
    assert took < 1 + 0.5 + 2 * procs.READ_AFTER_STOP_S, took
    out = info.value.output or ""
    assert out.startswith("child "), out  # what was printed before the stop is kept
    child = int(out.split()[1])
    assert not _alive(child)


def test_stop_reaches_children_after_the_leader_is_gone() -> None:
    """The exact issue-16 sequence: the leader is SIGKILLed first, its child lives on."""
    proc = procs.popen(["sh", "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline().split()[1])
    proc.kill()  # what report.make_host_run used to do (now kmlbench.report.sample)
    proc.wait(timeout=10)
    assert _alive(child)
    assert procs.group_members(proc.pid) == [child]
    procs.stop(proc, grace_s=0.5)
    assert not _alive(child)
    assert procs.group_members(proc.pid) == []
    started = time.monotonic()
    assert procs.drain(proc) == ("", None)  # end of file at once: nothing holds the pipe
    assert time.monotonic() - started < 2


def test_sigterm_first_then_sigkill(tmp_path: Path) -> None:
    """A child that exits on SIGTERM gets to run its handler; one that ignores it is killed."""
    marker = tmp_path / "terminated"
    script = f'trap "echo term > {marker}; exit 0" TERM; echo up; while :; do sleep 0.05; done'
    proc = procs.popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "up\n"
    procs.stop(proc, grace_s=5)
    assert marker.read_text() == "term\n"
    assert proc.returncode == 0
    proc.stdout.close()

    proc = procs.popen(["sh", "-c", 'trap "" TERM; echo up; exec sleep 60'], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    started = time.monotonic()
    procs.stop(proc, grace_s=0.5)
    assert proc.returncode == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 5
    proc.stdout.close()


def test_run_matches_subprocess_run() -> None:
    ok = procs.run([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
                   input="abc", capture_output=True, text=True, check=True)  # fmt: skip
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "ABC\n", "")
    with pytest.raises(subprocess.CalledProcessError):
        procs.run(["sh", "-c", "exit 3"], check=True)
    assert procs.run(["sh", "-c", "exit 3"]).returncode == 3
    with pytest.raises(FileNotFoundError):
        procs.run(["/nonexistent/tool"])


def test_children_run_in_a_session_of_their_own() -> None:
    out = procs.run(["sh", "-c", "exec cat /proc/self/stat"], capture_output=True, text=True).stdout
    fields = out.rsplit(")", 1)[1].split()
    pid, pgrp, session = int(out.split()[0]), int(fields[2]), int(fields[3])
    assert pgrp == session == pid  # its own group and session, not ours
    assert pgrp != os.getpgrp()


def test_popen_refuses_to_be_told_another_session() -> None:
    with pytest.raises(TypeError):
        procs.popen(["true"], start_new_session=False)


def test_run_without_timeout_does_not_wait_for_a_lingering_descendant() -> None:
    """The child is done; a grandchild it left behind holds stdout for 120 s."""
    started = time.monotonic()
    done = procs.run(["sh", "-c", "(exec sleep 120) & echo done"], capture_output=True, text=True)
    took = time.monotonic() - started
    assert (done.returncode, done.stdout) == (0, "done\n")
    assert took < procs.READ_AFTER_STOP_S + procs.GRACE_S + 3, took
    assert procs.group_members(_PGIDS[-1]) == []  # the sleeper was stopped with its group


_PGIDS: list[int] = []


@pytest.fixture(autouse=True)
def _record_pgids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember every group procs starts, to check it is empty afterwards."""
    real = procs.subprocess.Popen

    def recording(*args: object, **kwargs: object) -> subprocess.Popen:
        proc = real(*args, **kwargs)  # type: ignore[call-overload]
        _PGIDS.append(proc.pid)
        return proc

    monkeypatch.setattr(procs.subprocess, "Popen", recording)


def test_stop_kills_a_child_not_started_by_popen() -> None:
    proc = subprocess.Popen(["sleep", "60"])  # in our own process group
    procs.stop(proc, grace_s=0.2)
    assert proc.returncode == -signal.SIGKILL
    assert os.getpgrp() > 0  # and we are still here: our own group was not signalled


def test_a_stopped_group_is_never_signalled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its id may belong to someone else by then."""
    proc = procs.popen(["sleep", "60"])
    procs.stop(proc, grace_s=0)
    assert getattr(proc, "_kmlbench_group_gone", False)
    assert proc not in procs._LIVE
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(procs, "signal_group", lambda pgid, sig: bool(calls.append((pgid, sig))))
    procs.stop(proc)
    assert calls == []


def test_children_still_running_at_exit_are_stopped(tmp_path: Path) -> None:
    """A harness that exits (normally, or by SystemExit from a signal) leaves no child."""
    pid_file = tmp_path / "pid"
    script = (
        "import sys; from kmlbench import procs\n"
        "p = procs.popen(['sleep', '120'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], timeout=60, check=False)
    assert out.returncode == 3
    assert not _alive(int(pid_file.read_text()))


def test_input_larger_than_a_pipe_is_written_in_full() -> None:
    """The child reads only after a second: the input must not stall on the full pipe."""
    data = b"x" * 300_000
    done = procs.run(
        ["sh", "-c", "sleep 1; wc -c"], input=data, capture_output=True, timeout=30, check=True
    )
    assert done.stdout.strip() == b"300000"


def test_output_read_before_a_stray_holder_is_kept() -> None:
    """A process outside the group (setsid) keeps stdout open: what came before is kept."""
    started = time.monotonic()
    done = procs.run(
        ["sh", "-c", "echo before; setsid sleep 12 & echo done"], capture_output=True, text=True
    )
    assert done.stdout == "before\ndone\n"
    assert time.monotonic() - started < 3 * procs.READ_AFTER_STOP_S
