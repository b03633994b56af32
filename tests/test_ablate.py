"""``kmlbench train ablate``: what each feature adds, on the real fixture trace.

The fixture's rows are real (a guest's randrw on the 500 us one-slot
null_blk); the tests plant what they check: one feature column rewritten to
carry the answer (so the model loses most without it), one made constant
(so it carries nothing), and see that the ablation reports each under its
own name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kmlbench import cli
from kmlbench.data.trace import FEATURE_NAMES, NR_FEATURES, Q16, read_trace, write_trace
from kmlbench.kml import ablate, train

FIXTURE = Path(__file__).parent / "data" / "deadline.kmltrc"
PLANTED = FEATURE_NAMES.index("lg_gap_us")
DEAD = FEATURE_NAMES.index("lg_bytes")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture with ``lg_gap_us`` replaced by a noisy copy of the answer
    (log2 of the issue time over the deadline) and ``lg_bytes`` held constant."""
    rows = read_trace(FIXTURE).copy()
    rng = np.random.default_rng(7)
    margin = np.log2(rows["issue_ns"] / rows["deadline_ns"])
    signal = 8.0 + margin + rng.normal(0.0, 0.25, len(rows))
    rows["features"][:, PLANTED] = np.round(np.clip(signal, 0.0, 64.0) * Q16).astype(np.int32)
    rows["features"][:, DEAD] = 12 * Q16
    path = tmp_path_factory.mktemp("ablate") / "planted.kmltrc"
    write_trace(path, rows)
    return path


def test_the_planted_feature_is_what_the_model_loses_most_without(planted: Path) -> None:
    result = ablate.ablate([planted], seeds=1, arch="mlp", hidden=4, epochs=10)
    assert result.scored_on == "holdout" and result.n_scored == 300
    assert 0.1 < result.missed_frac < 0.6
    assert [v.without for v in result.variants] == [None, *FEATURE_NAMES]
    assert all(v.n_inputs == NR_FEATURES - (v.without is not None) for v in result.variants)
    everything = result.variants[0]
    assert everything.figures["auc"] is not None and everything.figures["auc"] > 0.97
    by_name = {v.without: v for v in result.variants[1:]}
    drops = {name: v.drop["auc"] for name, v in by_name.items()}
    assert max(drops, key=lambda n: drops[n] or 0.0) == "lg_gap_us"
    assert drops["lg_gap_us"] is not None and drops["lg_gap_us"] > 0.05
    # a constant column carries nothing: without it the model is as good
    assert drops["lg_bytes"] is not None and abs(drops["lg_bytes"]) < 0.02
    # the balanced accuracy at each model's own threshold says the same
    balanced = by_name["lg_gap_us"].drop["balanced_accuracy"]
    assert balanced is not None and balanced > 0.05


def test_cli_prints_the_table_and_writes_json(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ablation.json"
    argv = ["train", "ablate", "--trace", str(planted), "--test", str(FIXTURE)]
    rc = cli.main([*argv, "--seeds", "2", "--epochs", "3", "--hidden", "4", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    assert "seeds 1-2" in lines[0] and "scored on the --test traces: 1500 samples" in lines[0]
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 1 + 1 + NR_FEATURES  # header, all features, one per feature
    assert table[1].startswith(f"| all {NR_FEATURES} (seed spread) |")
    assert table[2 + PLANTED].startswith("| without `lg_gap_us` |")
    data = json.loads(out.read_text())
    assert data["scored_on"] == "test" and data["n_scored"] == 1500 and data["seeds"] == 2
    assert [v["without"] for v in data["variants"]] == [None, *FEATURE_NAMES]


@pytest.mark.parametrize(
    ("args", "rc", "message"),
    [
        ((), 2, "give --trace FILE"),
        (("--trace", str(FIXTURE), "--seeds", "0"), 2, "--seeds must be in 1..20"),
        (("--loco", "--trace", str(FIXTURE), "--test", str(FIXTURE)), 2, "no --test"),
        (("--trace", str(FIXTURE), "--arch", "cnn"), 2, "--arch must be one of"),
        (("--trace", str(FIXTURE), "--holdout", "0"), 1, "nothing to score on"),
        (("--trace", "/nonexistent.kmltrc"), 1, "/nonexistent.kmltrc: cannot read"),
        (("--trace", str(FIXTURE), "--json", "/nonexistent/a.json"), 1, "--json"),
    ],
)
def test_bad_input_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], rc: int, message: str
) -> None:
    assert cli.main(["train", "ablate", "--epochs", "1", "--seeds", "1", *args]) == rc
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err, captured.err


def test_loco_scores_each_trace_with_models_trained_on_the_others(
    planted: Path, tmp_path: Path
) -> None:
    rows = read_trace(planted)
    halves = [tmp_path / "first.kmltrc", tmp_path / "second.kmltrc"]
    write_trace(halves[0], rows[:600])
    write_trace(halves[1], rows[600:])
    result = ablate.ablate(halves, loco=True, seeds=1, arch="mlp", hidden=4, epochs=10)
    # every row scored once; the first fold trains on all of the other trace
    assert result.scored_on == "loco" and result.n_scored == 1500 and result.n_train == 900
    drops = {v.without: v.drop["auc"] or 0.0 for v in result.variants[1:]}
    assert max(drops, key=lambda n: drops[n]) == "lg_gap_us" and drops["lg_gap_us"] > 0.05
    # --without leaves features out of every variant: one row fewer each
    result = ablate.ablate(
        halves, loco=True, seeds=1, without=[DEAD, PLANTED], arch="linear", epochs=3
    )
    assert result.without == ["lg_bytes", "lg_gap_us"]
    assert [v.without for v in result.variants] == [
        None, *(n for n in FEATURE_NAMES if n not in ("lg_bytes", "lg_gap_us"))
    ]  # fmt: skip
    assert result.variants[0].n_inputs == NR_FEATURES - 2
    # without the planted answer the model has far less to go on
    assert (result.variants[0].figures["auc"] or 1.0) < 0.9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--loco", "--trace", str(FIXTURE)), "--loco needs two --trace files"),
        (("--trace", str(FIXTURE), "--without", "lg_gap_us,queue"), "no feature 'queue'"),
        (("--trace", str(FIXTURE), "--without", ",".join(FEATURE_NAMES)), "every feature"),
    ],
)
def test_loco_and_without_refuse_what_they_cannot_do(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    assert cli.main(["train", "ablate", "--epochs", "1", "--seeds", "1", *args]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err, captured.err


def test_fit_zeroes_a_left_out_feature_among_chosen_columns() -> None:
    """``columns`` and ``without`` together: the weight of the left-out
    feature at its place among the chosen columns is 0, the others not."""
    rows = read_trace(FIXTURE)
    columns = [c for c in range(NR_FEATURES) if c != DEAD]
    model, _, _ = train.fit(rows, columns, without=[PLANTED], arch="mlp", hidden=4, epochs=3)
    first = model.layers()[0][0]
    assert first.shape == (4, NR_FEATURES - 1)
    at = columns.index(PLANTED)
    assert not first[:, at].any()
    assert all(first[:, i].any() for i in range(len(columns)) if i != at)
