"""``kmlbench rivals`` on real host fio runs: KML's configurations against the others.

The cells are real fio runs on the host (:mod:`kmlbench.report.sample`), labelled
as a matrix labels its cells: none, bfq and stock mq-deadline are the
alternatives; mq-deadline with the model on is KML. What tells them apart in
the measurements is the block size each ran with, a real difference (a 4 KiB
read copies a 256th of a 1 MiB one), which ``--ignore workload.bs`` leaves out
of the load, so that all of them share one.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from kmlbench import cli
from kmlbench.data import db
from kmlbench.report import rivals, sample
from kmlbench.report.report import build_report

RUN_ID = "rivals-sample"
ACTIVE = {"mode": "active", "policy": "cost"}


@pytest.fixture(scope="module")
def run_dir() -> Path:
    """4 repeats of: none, bfq and mq-deadline (no model key: off) reading 1 MiB;
    KML active reading 4 KiB (faster), KML observe reading 8 MiB (slower). Two fio
    at a time, one per core: more would queue for the CPU, and the wait for it
    would blur what the block size does."""
    if shutil.which("fio") is None:
        pytest.skip("fio is not installed")
    root = Path(tempfile.mkdtemp(prefix="kmlbench-test-rivals-"))
    atexit.register(shutil.rmtree, root, True)
    big = {"bs": "1m", "size_mib": 32}
    configs = [
        sample.host_params("none", "randread", **big),
        sample.host_params("bfq", "randread", **big),
        sample.host_params("mq-deadline", "randread", **big),
        sample.host_params("mq-deadline", "randread", model=ACTIVE, bs="4k", size_mib=32),
        sample.host_params("mq-deadline", "randread", model={"mode": "observe"}, bs="8m",
                           size_mib=32),
    ]  # fmt: skip
    return sample.make_host_run(
        root / "results", configs, repeats=4, run_id=RUN_ID, runtime_s=1.0, parallel=2
    )


@pytest.fixture(scope="module")
def cells(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[db.CellRow]:
    path = tmp_path_factory.mktemp("rivalsdb") / "kmlbench.db"
    db.ingest_run(path, run_dir)
    conn = db.connect(path)
    try:
        return db.load_cells(conn, RUN_ID)
    finally:
        conn.close()


def test_a_faster_configuration_beats_every_alternative(cells: list[db.CellRow]) -> None:
    result = rivals.judge(cells, ["mean", "iops"], ignore=["workload.bs"], n_boot=500)
    assert not result.incomplete
    (load,) = result.loads
    assert sorted(load.rivals) == ["bfq", "mq-deadline (KML off)", "none"]
    assert set(load.repeats.values()) == {4}
    by = {c.label.split()[1]: c for c in load.contenders}
    assert set(by) == {"active", "observe"}
    fast, slow = by["active"], by["observe"]
    assert [a.metric for a in fast.results] == ["mean", "iops"]
    for a, pick in zip(fast.results, (min, max), strict=True):
        assert a.beats and not a.worse_than, a
        # shown against the alternative best at it: the lowest mean, the most IOPS
        assert a.vs_best.a == pick(load.rivals[r][a.metric] for r in load.rivals)
        assert load.rivals[a.best][a.metric] == a.vs_best.a and a.value == a.vs_best.b
        assert (a.vs_best.change < 0) == (a.metric == "mean")
    assert fast.beats_all and fast.short_of == []
    for a in slow.results:
        assert not a.beats and set(a.worse_than) == set(load.rivals), a
    assert not slow.beats_all
    assert slow.short_of[0].startswith("mean latency (")


def test_too_few_repeats_judge_nothing_and_say_so(cells: list[db.CellRow]) -> None:
    """Two repeats a side: the rank test cannot reach 0.05, so nothing is better
    or worse than anything, the table says so, and names whom it is level with."""
    two = [c for c in cells if (c.repeat or 0) < 2]
    result = rivals.judge(two, ["mean"], ignore=["workload.bs"], n_boot=200)
    (load,) = result.loads
    assert rivals.underpowered(result)
    for c in load.contenders:
        (a,) = c.results
        assert a.underpowered and not a.beats and not a.worse_than
        assert set(a.level_with) == set(load.rivals)
        assert c.short_of == [f"mean latency (level with {', '.join(a.level_with)})"]


def test_a_cell_without_a_model_is_one_with_the_model_off(run_dir: Path, tmp_path: Path) -> None:
    """Stock mq-deadline recorded with ``model: {mode: off}`` and without a model
    key is one configuration, not two of the same label."""
    copy = tmp_path / RUN_ID
    shutil.copytree(run_dir, copy)
    for cell in (copy / "cells").glob("*/cell.json"):
        record = json.loads(cell.read_text())
        params = record["params"]
        stock = params["scheduler"]["name"] == "mq-deadline" and "model" not in params
        if stock and record["repeat"] % 2:
            params["model"] = {"mode": "off"}
            cell.write_text(json.dumps(record))
    path = tmp_path / "k.db"
    db.ingest_run(path, copy)
    conn = db.connect(path)
    try:
        cells = db.load_cells(conn, RUN_ID)
    finally:
        conn.close()
    stock = [c for c in cells if c.param("scheduler.name") == "mq-deadline"]
    assert {c.param("model.mode") for c in stock} == {None, "off", "active", "observe"}
    (load,) = rivals.judge(cells, ["mean"], ignore=["workload.bs"], n_boot=100).loads
    assert load.repeats == {"none": 4, "bfq": 4, "mq-deadline (KML off)": 4}


def test_loads_apart_are_judged_apart(cells: list[db.CellRow]) -> None:
    """Without --ignore the block size tells loads apart: each 128 KiB load has
    only alternatives, the others only KML, so none is judged."""
    result = rivals.judge(cells, ["mean"], n_boot=100)
    assert result.loads == ()
    assert len(result.incomplete) == 3


def test_the_command(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbp = tmp_path / "k.db"
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    base = [str(run_dir), "--db", str(dbp), "--ignore", "workload.bs", "--boot", "200"]
    base += ["--metrics", "mean", "iops"]
    rc = cli.main(["rivals", *base, "--json", str(out_json), "--html", str(out_html)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "beats every alternative" in out and "clock: realtime" in out
    doc = json.loads(out_json.read_text())
    (load,) = doc["loads"]
    verdicts = {k["configuration"].split()[1]: k["beats_all"] for k in load["kml"]}
    assert verdicts == {"active": True, "observe": False}
    assert set(load["alternatives"]) == {"none", "bfq", "mq-deadline (KML off)"}
    assert "against the kernel's alternatives" in out_html.read_text()
    # a metric no cell has is left out, and said to be; one that does not exist
    # is a usage error
    assert cli.main(["rivals", *base[:-2], "mean", "accuracy"]) == 0
    out = capsys.readouterr().out
    assert "judged without accuracy" in out
    assert "accuracy" not in out.split("judged without")[0]
    assert cli.main(["rivals", *base[:-2], "accuracy"]) == 2
    assert "no cell of the run has" in capsys.readouterr().err
    for bad, says in (
        (["--ignore", "scheduler.name"], "cannot be left out"),
        (["--ignore", "model."], "model.mode tells KML"),
        (["--metrics", "nonsense"], "unknown metric"),
        (["--boot", "0"], "--boot"),
        (["--alpha", "2"], "--alpha"),
    ):
        assert cli.main(["rivals", *base, *bad]) == 2
        assert says in capsys.readouterr().err
    # nothing to judge, or no such run: a clear error, no traceback
    assert cli.main(["rivals", str(run_dir), "--db", str(dbp)]) == 2
    assert "no load with both" in capsys.readouterr().err
    assert cli.main(["rivals", "no-such-run", "--db", str(dbp)]) == 2
    assert "no-such-run" in capsys.readouterr().err


def test_the_report_says_it(run_dir: Path, tmp_path: Path) -> None:
    """A run whose loads hold both kinds gets the section; the sample run's cells,
    copied with KML's block size made the others', share a load."""
    copy = tmp_path / RUN_ID
    shutil.copytree(run_dir, copy)
    for cell in (copy / "cells").glob("*/cell.json"):
        record = json.loads(cell.read_text())
        record["params"]["workload"]["bs"] = "1m"
        cell.write_text(json.dumps(record))
    index = build_report(copy, db_path=tmp_path / "k.db", fioplot=False)
    page = index.read_text()
    assert "<h2>Against the kernel's alternatives</h2>" in page
    assert "mq-deadline (KML off)" in page and "KML active" in page
