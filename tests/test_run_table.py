"""run/table.py: the table ``kmlbench run`` ends with, from recorded cells."""

from __future__ import annotations

from pathlib import Path

from kmlbench import paths
from kmlbench.plan.matrix import load_matrix
from kmlbench.run.results import RunDir
from kmlbench.run.table import configuration, summary_table
from kmlbench.status import FAILED, OK


def test_one_row_per_configuration_with_medians_and_the_next_commands(tmp_path: Path) -> None:
    matrix = load_matrix(paths.WORKLOADS_DIR / "deadline.yaml")
    run = RunDir.create(tmp_path, "r1")
    model_cell = next(c for c in matrix.cells if c.params.get("model", {}).get("mode") == "active")
    plain_cell = next(c for c in matrix.cells if "model" not in c.params or
                      c.params["model"]["mode"] == "off")  # fmt: skip
    model_cells = [c for c in matrix.cells if configuration(c.id) == configuration(model_cell.id)]
    plain_cells = [c for c in matrix.cells if configuration(c.id) == configuration(plain_cell.id)]
    assert len(model_cells) >= 3 and len(plain_cells) >= 2
    for i, cell in enumerate(model_cells[:3]):
        metrics = {"iops": 1000.0 + 100 * i, "lat_mean_us": 50.0 + i, "lat_p99_us": 90.0 + i,
                   "clat_mean_us": 40.0, "clat_p99_us": 80.0,
                   "deadline_miss_frac": 0.1 - i / 100, "late_frac": 0.2 + i / 100}  # fmt: skip
        stats = {"accuracy": 0.8 + i / 100, "baseline_accuracy": 0.7, "balanced_accuracy": 0.6,
                 "auc": 0.75 + i / 100}  # fmt: skip
        run.record_cell(cell, OK, metrics, {"kml_stats": stats})
    run.record_cell(plain_cells[0], OK, {"iops": 5000.0, "lat_mean_us": 20.0,
                                         "lat_p99_us": 40.0}, {})  # fmt: skip
    run.record_cell(plain_cells[1], FAILED, {"iops": 1.0}, {})  # not in the medians
    text = summary_table("r1", run.read_cells())
    lines = text.splitlines()
    assert lines[0].startswith("results of r1")
    model_row = next(line for line in lines if configuration(model_cell.id) in line)
    row = model_row.split()[1:10]
    assert row == ["3/3", "1,100", "51.0", "91.0", "9.0%", "21.0%", "0.760", "0.810", "(0.700,"]
    assert model_row.endswith("0.600)")
    plain_row = next(line for line in lines if configuration(plain_cell.id) in line)
    # no miss count (a scheduler without deadlines), no latency target and no model
    assert plain_row.split()[1:] == ["1/2", "5,000", "20.0", "40.0", "-", "-", "-", "-"]
    assert sum(1 for line in lines if line.startswith("  ") and "-" in line) >= 2
    assert "kmlbench report r1" in text and "kmlbench compare OTHER_RUN r1" in text
    assert "\x1b" not in text  # plain text, for logs as for terminals


def test_configuration_drops_only_the_repeat() -> None:
    assert (
        configuration("randrw-nullb-mqdl-kmloff-df56bf7e-r12")
        == "randrw-nullb-mqdl-kmloff-df56bf7e"
    )
    assert configuration("a-r1b-12345678-r0") == "a-r1b-12345678"
