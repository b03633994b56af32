"""Model cells in results: metrics into the database, kml_stats into the figures,
model on/off into comparisons. Cells are recorded the way the runner records
a model cell (fio metrics plus kmlstats' metrics, the kml_stats record); the
fio part is real host fio output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kmlbench import cli
from kmlbench.data import db, kmlstats
from kmlbench.data.db import exports
from kmlbench.plan.matrix import load_matrix
from kmlbench.report import figures, sample
from kmlbench.run.results import RunDir

CURVE = "".join(
    json.dumps({"samples_seen": 256 * (i + 1), "accuracy": 0.6 + 0.03 * i,
                "balanced_accuracy": 0.55 + 0.03 * i, "mae_us": 900 - 50 * i, "n": 256}) + "\n"
    for i in range(8)
)  # fmt: skip


def stats_text(seed: int, mode: str) -> str:
    """Statistics as the kernel prints them, consistent, varying with the seed."""
    rng = np.random.default_rng(seed)
    tn, fp, fn, tp = (int(x) for x in rng.integers([400, 20, 20, 150], [500, 60, 60, 250]))
    n = tn + fp + fn + tp
    produced = n + 30
    lines = {
        "abi_version": 1, "model_loaded": 1, "inferences": n, "predictions": n,
        "met_pred_met": tn, "met_pred_miss": fp, "miss_pred_met": fn, "miss_pred_miss": tp,
        "issue_abs_err_us_sum": n * 300, "samples": produced + 5, "samples_met": tn + fp,
        "ring_produced": produced, "ring_dropped": 5, "ring_full_waits": 0, "ring_filtered": 0,
        "ring_consumed": produced, "urgent_dispatches": tp + fp if mode == "active" else 0,
        "pred_clamped": 1, "skill_windows": 1, "skill_windows_unskilled": 0,
        "skill_windows_inconclusive": 0, "step_asides": 0, "step_resumes": 0,
        "steer_suppressed": 0, "skill_balanced_ppm": 700000, "stepped_aside": 0,
        "skill_holdouts": 0, "auc_ppm": 812_345 + seed, "skill_holdout_weight": 8,
        # active mode acted on about half its predicted misses, held one in 16 out
        "steered_met": fp // 2 if mode == "active" else 0,
        "steered_missed": tp // 2 if mode == "active" else 0,
        "holdout_met": fp // 16 if mode == "active" else 0,
        "holdout_missed": tp // 16 if mode == "active" else 0,
    }  # fmt: skip
    hist = [
        f"inference_ns_hist 512 640 {n // 2}",
        f"inference_ns_hist 640 768 {n - n // 2}",
        f"issue_abs_err_us_hist 256 320 {n - 1}",
        "issue_abs_err_us_hist 8388608 10485760 1",
        # the scores: "miss" from bucket 66 on is the confusion matrix above
        f"score_met_hist 60 61 {tn}",
        f"score_met_hist 66 67 {fp}",
        f"score_missed_hist 60 61 {fn}",
        f"score_missed_hist 66 67 {tp}",
    ]
    return "".join(f"{k} {v}\n" for k, v in lines.items()) + "\n".join(hist) + "\n"


def model_record(params: dict, repeat: int) -> dict | None:
    mode = params["model"]["mode"]
    if mode == "off":
        return None
    curve = kmlstats.parse_curve(CURVE) if params["model"].get("trainer") == "user" else None
    rec = kmlstats.kml_stats_record(kmlstats.parse_stats(stats_text(repeat, mode)), curve=curve)
    rec["mode"] = mode
    return rec


@pytest.fixture(scope="module")
def model_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, database): mq-deadline with the model off, observing, active."""
    root = tmp_path_factory.mktemp("results")
    models = [
        {"mode": "off"},
        {"mode": "observe", "trainer": "none", "ring_mode": "drop", "sample_filter": "all"},
        {"mode": "active", "trainer": "user", "ring_mode": "drop", "sample_filter": "all",
         "rate": 0, "cpu_pct": 100, "publish_every": 256},
    ]  # fmt: skip
    configs = [sample.host_params("mq-deadline", "randread", model=m) for m in models]
    run_dir = sample.make_host_run(
        root, configs, repeats=2, run_id="model", runtime_s=0.3, kml_stats=model_record
    )
    # the runner's cells also carry the model metrics among their metrics
    run = RunDir.open(root, "model")
    for record in run.read_cells().values():
        ks = record.get("kml_stats")
        if ks is None:
            continue
        text = stats_text(record["repeat"], ks["mode"])
        metrics = {**record["metrics"], **kmlstats.metrics(kmlstats.parse_stats(text))}
        extra = {k: v for k, v in record.items() if k not in _RECORD_FIELDS}
        cell = _cell(record)
        run.record_cell(cell, record["status"], metrics, extra)
    db_path = root / "kmlbench.db"
    db.ingest_run(db_path, run_dir)
    return run_dir, db_path


_RECORD_FIELDS = {"schema_version", "id", "repeat", "kernel_variant", "params", "status",
                  "metrics", "recorded_at"}  # fmt: skip


def _cell(record: dict):
    from kmlbench.plan.cells import Cell

    return Cell(record["id"], record["repeat"], record["params"], record["kernel_variant"])


def test_model_metrics_are_in_the_database(model_run: tuple[Path, Path]) -> None:
    _, db_path = model_run
    conn = db.connect(db_path)
    try:
        names = {r[0] for r in conn.execute("SELECT DISTINCT name FROM metrics")}
        n_stats = conn.execute("SELECT COUNT(*) FROM kml_stats").fetchone()[0]
        cells = db.load_cells(conn, "model", where={"model.mode": "active"})
        off = db.load_cells(conn, "model", where={"model.mode": "off"})
    finally:
        conn.close()
    assert set(kmlstats.METRIC_NAMES) <= names
    assert {"iops", "clat_p99_us"} <= names
    assert n_stats == 4  # observe and active, two repeats each
    assert len(cells) == 2 and all(c.kml_stats for c in cells)
    assert all(c.kml_stats is None and "accuracy" not in c.metrics for c in off)
    c = cells[0]
    assert c.metrics["accuracy"] == pytest.approx(c.kml_stats["accuracy"])
    assert c.flat_params["model.trainer"] == "user"
    out = exports.export(db_path, db_path.parent / "export", "csv")
    wide = next(p for p in out if p.name.startswith("cells"))
    header = wide.read_text().splitlines()[0].split(",")
    assert {"accuracy", "mcc", "inference_ns_p99", "model.mode"} <= set(header)


def test_model_figures_draw_from_model_cells(model_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, db_path = model_run
    data = figures.load_run_data(db_path, "model")
    names = ["accuracy", "confusion", "learning_curve", "inference_time", "throughput"]
    rendered, skipped = figures.render(data, tmp_path, names=names, formats=("png",))
    assert skipped == []
    assert {r.name for r in rendered} == set(names)
    (panel,) = data.panels
    labels = sorted(s.label for s in panel.series.values())
    # the mode is the state; the model's other keys that vary are spelled out
    assert labels == [
        "mq-deadline no trainer, model observe",
        "mq-deadline user trainer, model active",
        "mq-deadline, model off",
    ]
    colours = {s.model: figures.series_style(data, s)["color"] for s in panel.series.values()}
    assert colours == figures.MODE_COLOURS


def test_compare_model_off_against_active(
    model_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, db_path = model_run
    rc = cli.main(
        ["compare", "--a", "model.mode=off", "--b", "model.mode=active", "--run", "model",
         "--db", str(db_path), "--metrics", "p99", "iops", "--boot", "200"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "p99" in out.out and "IOPS" in out.out


def test_a_matrix_model_cell_params_ingest(tmp_path: Path) -> None:
    """Params straight from the matrix loader flatten into model.* keys."""
    m = tmp_path / "m.yaml"
    m.write_text(
        "name: t\naxes:\n  workload: [{template: randread}]\n"
        "  model: [{mode: active, trainer: kernel, rate: 100}]\n"
    )
    (cell,) = load_matrix(m).cells
    flat = db.flatten_params(cell.params)
    assert flat["model.mode"] == "active"
    assert flat["model.rate"] == "100"
    assert flat["model.model_file"] == "null"


def _row(cid: str, params: dict, kml: dict | None = None) -> db.CellRow:
    return db.CellRow("r", cid, "ok", 0, "default", "h", params, db.flatten_params(params), {},
                      kml_stats=kml)  # fmt: skip


def test_panel_labels_are_short_and_file_names_ascii() -> None:
    """Keys that only follow the template are left out of labels; device times get units."""
    rows = []
    for template, think in (("randrw", 0), ("bursty", 20000)):
        for nsec, depth in ((1000000, 2), (500000, 1)):
            params = {
                "device": {"type": "null_blk", "completion_nsec": nsec, "hw_queue_depth": depth},
                "scheduler": {"name": "mq-deadline"},
                "workload": {"template": template, "thinktime_us": think},
            }
            rows.append(_row(f"{template}{nsec}", params))
    data = figures.group_cells(db.RunRow("r", None, None, None, None, None, {}), rows)
    labels = sorted(p.label for p in data.panels)
    assert labels == [
        "bursty / completion 1ms depth 2",
        "bursty / completion 500µs depth 1",
        "randrw / completion 1ms depth 2",
        "randrw / completion 500µs depth 1",
    ]
    assert figures.slug(labels[1]) == "bursty-completion-500us-depth-1"
    assert figures.wrap("bursty / completion 500µs depth 1", 14) == (
        "bursty /\ncompletion\n500µs depth 1"
    )


def test_a_model_key_recorded_only_when_set_makes_its_own_series() -> None:
    """``lazy`` is recorded only when true: active cells without it predict
    every request, and are a series of their own, not repeats of the lazy
    ones (nor is off, which has no such key, split by it)."""
    rows = []
    for cid, model in (
        ("off", {"mode": "off"}),
        ("every", {"mode": "active", "model_file": "m.kmlm"}),
        ("lazy", {"mode": "active", "model_file": "m.kmlm", "lazy": True}),
    ):
        params = {
            "device": {"type": "null_blk"},
            "scheduler": {"name": "mq-deadline"},
            "workload": {"template": "randrw"},
            "model": model,
        }
        rows.append(_row(cid, params))
    data = figures.group_cells(db.RunRow("r", None, None, None, None, None, {}), rows)
    assert "model.lazy" in data.series_keys
    (panel,) = data.panels
    series = panel.series
    assert sorted(sorted(c.cell_id for c in s.cells) for s in series.values()) == [
        ["every"],
        ["lazy"],
        ["off"],
    ]
    labels = [s.label for s in series.values()]
    assert len(set(labels)) == 3, labels


def test_accuracy_figures_prefer_observe_cells() -> None:
    """Active mode changes what it predicts: accuracy comes from observe cells."""
    rows = []
    for mode, acc in (("observe", 0.8), ("active", 0.3), ("off", None)):
        params = {
            "device": {"type": "null_blk"},
            "scheduler": {"name": "mq-deadline"},
            "workload": {"template": "randrw"},
            "model": {"mode": mode},
        }
        kml = None if acc is None else {"accuracy": acc, "confusion_matrix": [[1, 0], [0, 1]]}
        rows.append(_row(mode, params, kml))
    data = figures.group_cells(db.RunRow("r", None, None, None, None, None, {}), rows)
    ((_, chosen),) = figures.kml_panels(data, prefer_observe=True)
    assert [c.cell_id for c in chosen] == ["observe"]
    ((_, every),) = figures.kml_panels(data)
    assert sorted(c.cell_id for c in every) == ["active", "observe"]
