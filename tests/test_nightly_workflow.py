"""The nightly CI workflow parses and only calls commands that exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from kmlbench import cli, paths
from kmlbench.report import compare

WORKFLOW = paths.REPO_ROOT / ".github" / "workflows" / "nightly.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _triggers(workflow: dict) -> dict:
    # YAML 1.1 reads a bare `on:` key as the boolean True
    return workflow.get("on", workflow.get(True))


def _run_steps(workflow: dict) -> list[str]:
    return [s["run"] for job in workflow["jobs"].values() for s in job["steps"] if "run" in s]


def _kmlbench_calls(workflow: dict) -> list[list[str]]:
    calls = []
    for script in _run_steps(workflow):
        script = script.replace("\\\n", " ")
        for line in script.splitlines():
            if "kmlbench " not in line or line.strip().startswith("#"):
                continue
            words = shlex.split(line.split("||")[0])
            i = next(i for i, w in enumerate(words) if w.endswith("kmlbench"))
            calls.append(words[i + 1 :])
    return calls


def test_triggers(workflow: dict) -> None:
    on = _triggers(workflow)
    assert on["schedule"] and all("cron" in s for s in on["schedule"])
    assert "workflow_dispatch" in on


def test_setup_and_matrix_exist(workflow: dict) -> None:
    steps = "\n".join(_run_steps(workflow))
    assert "bash scripts/setup.sh" in steps
    assert (paths.REPO_ROOT / "scripts" / "setup.sh").is_file()
    for matrix in re.findall(r"kmlbench run (\S+)", steps):
        assert (paths.REPO_ROOT / matrix).is_file(), matrix


def test_every_kmlbench_call_is_a_real_command(workflow: dict) -> None:
    calls = _kmlbench_calls(workflow)
    subcommands = {c[0] for c in calls}
    assert {"run", "report", "compare"} <= subcommands
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for call in calls:
        assert call[0] in sub.choices, call
        command, _ = cli.parse(call)  # exits on an unknown option
        assert command.words == tuple(call[: len(command.words)]), call


def test_default_thresholds_parse(workflow: dict) -> None:
    default = workflow["env"]["FAIL_ON"]
    thresholds = re.findall(r"'([^']+)'", default)
    assert thresholds
    for spec in thresholds[-1].split(","):
        compare.parse_threshold(spec)
    dispatch_default = _triggers(workflow)["workflow_dispatch"]["inputs"]["fail_on"]["default"]
    assert dispatch_default == thresholds[-1]


def test_artifacts_uploaded_and_previous_downloaded(workflow: dict) -> None:
    uses = [s.get("uses", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert sum(u.startswith("actions/upload-artifact@") for u in uses) >= 2
    assert any(u.startswith("dawidd6/action-download-artifact@") for u in uses)
    names = [
        s["with"]["name"]
        for job in workflow["jobs"].values()
        for s in job["steps"]
        if s.get("uses", "").startswith(("actions/upload-artifact", "dawidd6/"))
    ]
    # the artifact downloaded is the one a previous night uploaded
    assert names.count("nightly-results") == 2
    assert Path(WORKFLOW).name in str(workflow)


def test_sanitizer_job_runs_the_sanitizer_tests(workflow: dict) -> None:
    """The sanitizer tests run somewhere: the nightly job selects and enables them."""
    job = workflow["jobs"]["sanitizers"]
    steps = [s for s in job["steps"] if "pytest" in s.get("run", "")]
    assert len(steps) == 1
    assert "-m sanitizer" in steps[0]["run"]
    assert steps[0]["env"]["KMLBENCH_SANITIZERS"] == "1"
    assert any("bash scripts/setup.sh" in s.get("run", "") for s in job["steps"])
    tests = paths.REPO_ROOT / "tests"
    marked = [p.name for p in tests.glob("test_*.py") if "sanitizer" in p.read_text()]
    assert {"test_sanitizers.py", "test_kml_faults.py"} <= set(marked)
