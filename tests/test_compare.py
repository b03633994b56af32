"""``kmlbench compare`` on real host fio runs: filters, run vs run, exit status."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kmlbench import cli
from kmlbench.data import db, stats
from kmlbench.report import compare
from test_db import REPEATS, RUN_ID, sample_run


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cmpdb") / "kmlbench.db"
    db.ingest_run(path, sample_run())
    return path


def test_parse_threshold() -> None:
    assert compare.parse_threshold("p99:+10%") == compare.Threshold("p99", 1, 0.10)
    assert compare.parse_threshold("iops:-5%") == compare.Threshold("iops", -1, 0.05)
    assert compare.parse_threshold("p99.9:+2.5") == compare.Threshold("p999", 1, 0.025)
    # the cell-metric names README uses
    assert compare.parse_threshold("clat_p99_us:+10%") == compare.Threshold("p99", 1, 0.10)
    assert compare.parse_threshold("bw_kib_s:-5%") == compare.Threshold("bw", -1, 0.05)
    # no sign: the metric's worse direction
    assert compare.parse_threshold("iops:5%").sign == -1
    assert compare.parse_threshold("mean:5%").sign == 1
    for bad in ("p99", "p99:+x%", "nonsense:+5%"):
        with pytest.raises((ValueError, KeyError)):
            compare.parse_threshold(bad)


def test_threshold_needs_significance() -> None:
    t = compare.Threshold("p99", 1, 0.10)
    base = dict(
        label="p99",
        unit="µs",
        higher_is_better=False,
        n_a=5,
        n_b=5,
        a=1.0,
        b=1.5,
        ci_low=0.3,
        ci_high=0.7,
        p_value=0.01,
        underpowered=False,
    )
    worse = stats.Comparison(metric="p99", change=0.5, significant=True, verdict="worse", **base)
    unsure = stats.Comparison(
        metric="p99", change=0.5, significant=False, verdict=stats.NO_DIFFERENCE, **base
    )
    small = stats.Comparison(metric="p99", change=0.05, significant=True, verdict="worse", **base)
    assert t.tripped(worse) and not t.tripped(unsure) and not t.tripped(small)


def test_filters_detect_a_real_regression(database: Path, tmp_path: Path, capsys) -> None:
    """4k vs 128k reads: 32 times the bytes per read, so latency is significantly worse."""
    out_json = tmp_path / "cmp.json"
    out_html = tmp_path / "cmp.html"
    args = [
        "--a",
        "workload.bs=4k",
        "--b",
        "workload.bs=128k,workload.size_mib=8",
        "--run",
        RUN_ID,
        "--db",
        str(database),
        "--json",
        str(out_json),
        "--html",
        str(out_html),
    ]
    rc = cli.main(["compare", *args, "--fail-on", "p50:+10%"])
    printed = capsys.readouterr().out
    assert rc == compare.EXIT_REGRESSION
    assert "REGRESSION" in printed and "worse" in printed
    result = json.loads(out_json.read_text())
    # only the configuration that exists on both sides is compared
    (row,) = result["rows"]
    assert len(row["a_cells"]) == len(row["b_cells"]) == REPEATS
    by_metric = {c["metric"]: c for c in row["comparisons"]}
    assert by_metric["p50"]["verdict"] == "worse" and by_metric["p50"]["change"] > 0.10
    assert result["only_a"]  # the other 4k configurations have no 128k twin
    assert "worse" in out_html.read_text()
    # thresholds beyond the change, or in the other direction, pass
    beyond = f"p50:+{(by_metric['p50']['change'] + 0.5) * 100:.0f}%"
    assert cli.main(["compare", *args, "--fail-on", beyond]) == compare.EXIT_OK
    assert cli.main(["compare", *args, "--fail-on", "p50:-10%"]) == compare.EXIT_OK


def test_a_gate_compares_its_metric_even_when_the_table_leaves_it_out(
    database: Path, capsys
) -> None:
    """``--fail-on bw:...`` with the default metrics (no bandwidth among
    them), or with ``--metrics mean``: the gate's metric is compared and
    can trip; one no matched cell carries is a usage error, never a pass."""
    args = ["--a", "workload.bs=4k", "--b", "workload.bs=128k,workload.size_mib=8",
            "--run", RUN_ID, "--db", str(database), "--boot", "200"]  # fmt: skip
    # 128k reads move 32 times the bytes: bandwidth far up, latency up
    assert cli.main(["compare", *args, "--fail-on", "bw:+10%"]) == compare.EXIT_REGRESSION
    assert "bandwidth" in capsys.readouterr().out
    assert (
        cli.main(["compare", *args, "--metrics", "iops", "--fail-on", "p50:+10%"])
        == compare.EXIT_REGRESSION
    )
    capsys.readouterr()
    assert cli.main(["compare", *args, "--fail-on", "accuracy:-1%"]) == compare.EXIT_USAGE
    assert "cannot be checked" in capsys.readouterr().err
    # a gate that tripped is a regression, whatever another could not check
    assert (
        cli.main(["compare", *args, "--fail-on", "p50:+10%,accuracy:-1%"])
        == compare.EXIT_REGRESSION
    )


def test_bad_alpha_and_boot_are_usage_errors(database: Path, capsys) -> None:
    args = ["compare", "--a", "workload.bs=4k", "--b", "workload.bs=128k", "--run", RUN_ID,
            "--db", str(database)]  # fmt: skip
    for bad in (["--boot", "-5"], ["--boot", "0"], ["--alpha", "2"], ["--alpha", "0"]):
        assert cli.main([*args, *bad]) == compare.EXIT_USAGE, bad
        assert bad[0] in capsys.readouterr().err


def test_two_runs_of_the_same_data_pass(database: Path, tmp_path: Path) -> None:
    """Run vs run: the same folder under another run id (a copied artifact) is no regression."""
    copy = tmp_path / "previous-run"
    shutil.copytree(sample_run(), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["run_id"] = "20261120-000000-sample"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    html = tmp_path / "runs.html"
    rc = cli.main(
        [
            "compare",
            str(copy),
            RUN_ID,
            "--db",
            str(database),
            "--fail-on",
            "p99:+10%,mean:+10%,iops:-10%",
            "--html",
            str(html),
            "--boot",
            "500",
        ]
    )
    assert rc == compare.EXIT_OK
    text = html.read_text()
    assert text.count("<tr>") >= 4 * len(stats.DEFAULT_METRICS)
    assert "total mean latency" in text and "total p99 latency" in text
    # the same through the kmlbench command line
    argv = ["compare", str(copy), RUN_ID, "--db", str(database), "--boot", "200"]
    assert cli.main([*argv, "--fail-on", "p99:+10%"]) == compare.EXIT_OK


def test_usage_errors(database: Path) -> None:
    assert cli.main(["compare", "--db", str(database)]) == compare.EXIT_USAGE
    assert cli.main(["compare", "only-one", "--db", str(database)]) == compare.EXIT_USAGE
    assert (
        cli.main(
            [
                "compare",
                "--a",
                "scheduler.name=none",
                "--b",
                "scheduler.name=bfq",
                "--db",
                str(database),
            ]
        )
        == compare.EXIT_USAGE
    )  # no bfq cells
    assert (
        cli.main(["compare", "--a", "x=1", "--b", "y=2", "--fail-on", "p99", "--db", str(database)])
        == compare.EXIT_USAGE
    )
    assert cli.main(["compare", "no-such-run", RUN_ID, "--db", str(database)]) == compare.EXIT_USAGE


def test_scheduler_comparison_ignores_tunables(database: Path, tmp_path: Path) -> None:
    """none vs mq-deadline, documented in docs/reporting.md: mq-deadline's cells carry
    the five tunables matrix.py fills in, which must not stop them matching none's."""
    conn = db.connect(database)
    try:
        mq = db.load_cells(conn, where={"scheduler.name": "mq-deadline"})
    finally:
        conn.close()
    # tunables as the matrix resolves them
    assert mq and all(c.param("scheduler.read_expire") == "500" for c in mq)
    out = tmp_path / "sched.json"
    argv = ["--a", "scheduler.name=none", "--b", "scheduler.name=mq-deadline", "--run", RUN_ID]
    rc = cli.main(["compare", *argv, "--db", str(database), "--json", str(out), "--boot", "200"])
    assert rc == compare.EXIT_OK
    result = json.loads(out.read_text())
    (row,) = result["rows"]  # randread 4k is the one configuration on both sides
    assert len(row["a_cells"]) == len(row["b_cells"]) == REPEATS
    assert all("-mqdl-" in c for c in row["b_cells"])


def test_excluded_keys() -> None:
    ex = compare.excluded_keys(["run", "scheduler.name"], ["workload.rate_iops"])
    assert compare._is_excluded("scheduler.fifo_batch", ex)
    assert compare._is_excluded("workload.rate_iops", ex)
    assert not compare._is_excluded("workload.bs", ex)
    assert "run" not in ex
    ex = compare.excluded_keys(["scheduler.fifo_batch"])
    assert not compare._is_excluded("scheduler.name", ex)


def test_accuracy_sits_beside_its_baseline_and_a_model_below_it_is_flagged() -> None:
    """compare: accuracy, the majority baseline and balanced accuracy together;
    the side whose model is below its baseline (or at chance) named in the note."""
    from kmlbench.data import stats as kstats
    from kmlbench.report import compare as kcompare

    def side(acc: float, base: float, bal: float) -> list[kstats.Sample]:
        keys = ("kml.accuracy", "kml.baseline_accuracy", "kml.balanced_accuracy")
        return [
            kstats.Sample(None, dict(zip(keys, (acc + d, base, bal + d), strict=True)))
            for d in (0.0, 0.001, 0.002)
        ]

    comps = kcompare.flag_baseline(
        kstats.compare_groups(side(0.95, 0.9, 0.8), side(0.85, 0.99, 0.497), n_boot=200)
    )
    assert [c.metric for c in comps] == list(kstats.ACCURACY_METRICS)
    for c in comps:
        assert "B below-baseline" in c.note and "B no-skill" in c.note, c.note
        assert "A below" not in c.note
    clean = kcompare.flag_baseline(
        kstats.compare_groups(side(0.95, 0.9, 0.8), side(0.96, 0.9, 0.8), n_boot=200)
    )
    assert all("baseline" not in c.note for c in clean)
