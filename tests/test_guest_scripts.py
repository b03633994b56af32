"""The guest shell, byte for byte as before it moved into ``cell/scripts/*.sh``, and the renderer.

The golden file (tests/guest_scripts.py made it from commit 9c3e592's
Python string lists) holds every script and command of every cell of
every shipped matrix; today's renderer must give the same bytes. Then the
renderer's own rules, and the scripts parsing in the guest's shell.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from guest_scripts import GOLDEN, CurrentBackend, render_all
from kmlbench.cell import render
from kmlbench.cell.guest_paths import SCRIPT_PATHS
from kmlbench.cell.render import RenderError

SCRIPTS = Path(render.__file__).parent / "scripts"
BUSYBOX = shutil.which("busybox")


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def current() -> dict:
    return render_all(CurrentBackend())


def test_every_script_of_every_cell_is_byte_identical(golden: dict, current: dict) -> None:
    assert set(current["cells"]) == set(golden["cells"])
    for matrix, cells in golden["cells"].items():
        assert set(current["cells"][matrix]) == set(cells), matrix
        for cell_id, scripts in cells.items():
            now = current["cells"][matrix][cell_id]
            assert set(now) == set(scripts), (matrix, cell_id)
            for name, key in scripts.items():
                # compare texts, so that a failure shows the lines that differ
                want, got = golden["texts"][key], current["texts"][now[name]]
                assert got == want, (matrix, cell_id, name)


def test_every_one_line_command_is_byte_identical(golden: dict, current: dict) -> None:
    want = {name: golden["texts"][key] for name, key in golden["commands"].items()}
    got = {name: current["texts"][key] for name, key in current["commands"].items()}
    assert got == want


def test_every_script_file_renders_part_of_the_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    """No .sh file is dead, none goes untested by the golden comparison."""
    used: set[str] = set()
    original = render.source
    monkeypatch.setattr(render, "source", lambda name: used.add(name) or original(name))
    render_all(CurrentBackend())
    assert used == {p.name for p in SCRIPTS.glob("*.sh")}


def _dummy_values(name: str) -> dict[str, render.Value]:
    """A value for every placeholder ``name`` (and its includes) has of its own."""
    keys: set[str] = set()
    todo = [name]
    while todo:
        text = render.source(todo.pop())
        todo += re.findall(r"(?m)^@include (\S+)$", text)
        keys |= {k for k in re.findall(r"@([A-Z][A-Z0-9_]*)@", text) if k not in SCRIPT_PATHS}
    blocks = {k for k in keys if re.search(rf"(?m)^@{k}@$", render.source(name))}
    return {k: ([] if k in blocks else "x") for k in keys}


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_every_script_file_parses_in_the_guests_shell(name: str) -> None:
    text = render.script(name, _dummy_values(name))
    shells = [["sh", "-n"]] + ([[BUSYBOX, "sh", "-n"]] if BUSYBOX else [])
    for shell in shells:
        proc = subprocess.run(shell, input=text, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (shell, proc.stderr)


def test_notes_are_not_sent_to_the_guest() -> None:
    assert "##" not in render.script("kml-lib.sh")
    assert "## " in render.source("kml-lib.sh")


def test_a_missing_value_is_an_error() -> None:
    with pytest.raises(RenderError, match=r"kml-stop-process\.sh:2: no value for @WHAT@"):
        render.script("kml-stop-process.sh", {"PIDFILE": "/tmp/p"})


def test_an_unused_value_is_an_error() -> None:
    with pytest.raises(RenderError, match="values not used: TYPO"):
        render.script("kml-snapshot.sh", {"TYPO": "x"})


def test_guest_paths_are_not_values() -> None:
    with pytest.raises(RenderError, match="KML_PARAMS is a guest path"):
        render.script("kml-snapshot.sh", {"KML_PARAMS": "/elsewhere"})


def test_blocks_and_inline_values_do_not_mix() -> None:
    values: dict[str, render.Value] = {"STOP_TRAINER": "stop x", "STOP_TRACER": []}
    # a whole-line placeholder with a string is that one line
    assert "stop x\nexit 0\n" in render.script("kml-stop.sh", values)
    with pytest.raises(RenderError, match="is inside a line, but its value is a block"):
        render.script("kml-stop-process.sh", {"PIDFILE": ["a"], "WHAT": "w"})
    with pytest.raises(RenderError, match="holds a newline"):
        render.script("kml-stop-process.sh", {"PIDFILE": "a\nreboot", "WHAT": "w"})
    with pytest.raises(RenderError, match="holds a newline"):
        render.script("kml-stop.sh", {"STOP_TRAINER": ["a\nb"], "STOP_TRACER": []})


def test_a_command_is_one_line() -> None:
    assert render.command("workload-fio.sh", {"FIO": "fio j", "SYNC": ""}).endswith("exit $rc")
    with pytest.raises(RenderError, match="a command is one line"):
        render.command("kml-snapshot.sh")


def test_the_scripts_ship_with_the_package() -> None:
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"cell/scripts/*.sh"' in pyproject
    assert render.source("kml-lib.sh").startswith("## ")
