"""cell/model.py: which cells do KML work, model files checked by content; trace --cell."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kmlbench import cli, paths
from kmlbench.cell import model as cell_model
from kmlbench.plan.matrix import load_matrix
from kmlbench.run import trace

MATRIX = """\
name: t
axes:
  scheduler: [{name: mq-deadline}, {name: none}]
  workload: [{template: randread, runtime_s: 2, size_mib: 64}]
  model: [{mode: [off, observe]}, {mode: active, model_file: m.kmlm}]
"""


@pytest.fixture
def matrix(tmp_path: Path):
    (tmp_path / "m.kmlm").write_bytes(b"model bytes")
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    return load_matrix(path)


def test_only_mq_deadline_cells_with_a_mode_do_kml_work(matrix) -> None:
    work = {
        (c.params["scheduler"]["name"], c.params["model"]["mode"]): cell_model.kml_model(c.params)
        for c in matrix.cells
    }
    assert work[("mq-deadline", "off")] is None
    assert work[("none", "off")] is None
    assert work[("mq-deadline", "observe")]["mode"] == "observe"
    assert work[("mq-deadline", "active")]["model_file"].endswith("m.kmlm")
    assert cell_model.kml_model({"scheduler": {"name": "mq-deadline"}}) is None  # no axis


def test_model_file_is_checked_against_the_recorded_hash(matrix, tmp_path: Path) -> None:
    (cell,) = [c for c in matrix.cells if c.params["model"]["mode"] == "active"]
    model = cell.params["model"]
    assert cell_model.model_file(model, "model_file") == b"model bytes"
    (tmp_path / "m.kmlm").write_bytes(b"retrained")
    with pytest.raises(cell_model.KmlCellError, match="changed since the matrix was loaded"):
        cell_model.model_file(model, "model_file")
    (tmp_path / "m.kmlm").unlink()
    with pytest.raises(cell_model.KmlCellError, match=r"model_file .*m\.kmlm: cannot read"):
        cell_model.model_file(model, "model_file")


def test_pick_cell_by_id_number_or_prefix(matrix) -> None:
    cells = matrix.cells
    assert trace.pick_cell(matrix, cells[2].id) is cells[2]
    assert trace.pick_cell(matrix, "1") is cells[0]
    active = next(c for c in cells if "kmlact" in c.id)
    assert trace.pick_cell(matrix, active.id[:24]) is active
    with pytest.raises(ValueError, match=r"not in 1\.\.4"):
        trace.pick_cell(matrix, "9")
    with pytest.raises(ValueError, match="matches 3 cells"):
        trace.pick_cell(matrix, "randread-nullb-mqdl")
    with pytest.raises(ValueError, match="no cell id starts with"):
        trace.pick_cell(matrix, "seqwrite")


def test_trace_refuses_before_a_guest_a_cell_with_nothing_to_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cell of another scheduler, or of a kernel variant without KML in
    mq-deadline, is refused by ``kmlbench trace`` with the reason and exit
    2, before any build or boot (the results folder is never made); a cell
    with the user trainer passes (a trace runs it without its trainer)."""
    nokml = paths.CONFIGS_DIR / "no-kml-iosched.config"
    path = tmp_path / "t.yaml"
    path.write_text(
        "name: t\n"
        "axes:\n"
        f"  kernel: [{{name: default}}, {{name: nokml, fragments: [{nokml}]}}]\n"
        "  scheduler: [{name: mq-deadline}, {name: kyber}]\n"
        "  workload: [{template: randread, runtime_s: 2, size_mib: 64}]\n"
        "  model: [{mode: off}, {mode: observe, trainer: user}]\n"
        "exclude: [{kernel.name: nokml, model.mode: observe}]\n"
    )
    matrix = load_matrix(path)

    def cell(variant: str, scheduler: str, mode: str) -> str:
        (hit,) = [
            c.id
            for c in matrix.cells
            if c.kernel_variant == variant
            and c.params["scheduler"]["name"] == scheduler
            and c.params["model"]["mode"] == mode
        ]
        return hit

    results = tmp_path / "results"
    cases = {
        cell("nokml", "mq-deadline", "off"): (
            r"kernel variant 'nokml' leaves out CONFIG_KML_IOSCHED \(no-kml-iosched\.config:\d+\)"
        ),
        cell("default", "kyber", "off"): "runs kyber; KML samples come from mq-deadline",
    }
    for cell_id, why in cases.items():
        argv = ["trace", str(path), "--cell", cell_id, "-o", str(tmp_path / "x.kmltrc")]
        assert cli.main([*argv, "--results", str(results)]) == 2
        out = capsys.readouterr().out
        assert re.search(why, out) and cell_id in out, out
        assert not results.exists()
    # what it can record passes the check: off and, without its trainer, observe
    for mode in ("off", "observe"):
        ok = next(c for c in matrix.cells if c.id == cell("default", "mq-deadline", mode))
        assert trace.untraceable(matrix, ok) is None
