"""The command line: every command is reachable and errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmlbench import cli, paths


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in (
        "run", "build", "doctor", "kunit", "report", "figures", "compare", "import", "trace",
        "train",
    ):  # fmt: skip
        assert command in out


def test_passthrough_keeps_leading_options(capsys: pytest.CaptureFixture[str]) -> None:
    # argparse.REMAINDER would drop "--list" here; the module must see it.
    assert cli.main(["figures", "--list"]) == 0
    assert "latency" in capsys.readouterr().out.lower()


def test_dry_run_lists_cells(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", str(paths.WORKLOADS_DIR / "smoke.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out
    assert "randread" in out and "randrw" in out


def test_bad_matrix_names_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"
        "axes:\n"
        "  device:\n"
        "    - {type: null_blk}\n"
        "  scheduler:\n"
        "    - {name: mq-deadline, read_expir: 100}\n"
        "  workload:\n"
        "    - {template: randread}\n"
    )
    assert cli.main(["run", str(bad)]) == 2
    out = capsys.readouterr().out
    assert f"{bad}:6:" in out
    assert "read_expir" in out
    # Nothing ran: no run folder was made.
    assert not any(paths.results_dir().glob("*-bad"))


def test_dry_run_into_a_closed_pipe_is_quiet() -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m kmlbench.cli run {paths.WORKLOADS_DIR / 'nightly.yaml'} "
        "--dry-run | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "96 cells" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_missing_runs_and_files_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KMLBENCH_RESULTS", str(tmp_path))
    assert cli.main(["run", "--resume", "nosuch", "--results", str(tmp_path)]) == 2
    assert cli.main(["bench", "harness", "--run", "nosuch"]) == 2
    assert cli.main(["kunit", "--parse", str(tmp_path / "missing.log")]) == 2
    assert cli.main(["train", "--trace", "t", "-o", str(tmp_path / "m"), "--arch", "cnn"]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert "nosuch" in out.out and "missing.log" in out.err and "mlp, linear" in out.err
