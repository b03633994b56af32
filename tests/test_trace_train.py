"""trace.py and train.py: read KML traces, export them, train a model offline."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kmlbench import cli
from kmlbench.data.trace import (
    ABI_VERSION,
    FEATURE_NAMES,
    HEADER_SIZE,
    NR_FEATURES,
    SAMPLE_DTYPE,
    TraceError,
    load_trace,
    read_trace,
    write_csv,
    write_trace,
)
from kmlbench.kml import train
from kmlbench.kml.deadline import DD_CAL_MAX_LG, dd_lg_us, dd_permille
from kmlbench.kml.model import Model

DATA = Path(__file__).parent / "data"
# 1500 consecutive samples recorded from a real guest by ``kmlbench trace``
# (workloads/deadline.yaml, randrw on the 500 us / one-slot null_blk, mode
# off traced in observe); see tests/data/README.md.
FIXTURE = DATA / "deadline.kmltrc"


def fixture_part(path: Path, n: int) -> np.ndarray:
    """The fixture's first ``n`` rows, written to ``path`` as a trace."""
    rows = read_trace(FIXTURE)[:n]
    write_trace(path, rows)
    return rows


def test_the_fixture_is_a_real_trace_and_round_trips(tmp_path: Path) -> None:
    data = FIXTURE.read_bytes()
    assert len(data) < 200 * 1024
    assert data[:8] == b"KMLTRC01"
    assert int.from_bytes(data[8:12], "little") == ABI_VERSION
    assert int.from_bytes(data[12:16], "little") == 128
    assert int.from_bytes(data[16:20], "little") == NR_FEATURES
    assert data[20:64] == bytes(44)
    header, rows = load_trace(FIXTURE)
    assert (header.n_features, header.partial_bytes, len(rows)) == (NR_FEATURES, 0, 1500)
    # field offsets of struct kml_dd_sample, checked on the raw bytes
    first = data[HEADER_SIZE : HEADER_SIZE + 128]
    assert int.from_bytes(first[16:24], "little") == int(rows["issue_ns"][0])
    assert int.from_bytes(first[24:32], "little") == int(rows["deadline_ns"][0])
    assert first[52] == rows["op"][0] and first[53] == rows["met"][0]
    assert int.from_bytes(first[64 + 12 : 64 + 16], "little", signed=True) == int(
        rows["features"][0][3]
    )
    # what the kernel recorded is self-consistent
    assert np.array_equal(rows["met"].astype(bool), rows["issue_ns"] <= rows["deadline_ns"])
    assert set(np.unique(rows["op"])) == {0, 1}
    assert set(np.unique(rows["deadline_ns"] // 1_000_000)) == {8, 20}  # read/write_expire
    assert (rows["completion_ns"] >= rows["issue_ns"]).all()
    assert (rows["features"][:, NR_FEATURES:] == 0).all()
    assert np.all(np.diff(rows["insert_ns"].astype(np.int64)) > -(10**9))  # ring order, ~time
    assert 0.2 < 1 - rows["met"].mean() < 0.5  # deadline stress: a third missed
    # writing it back gives the same bytes
    write_trace(tmp_path / "copy.kmltrc", rows)
    assert (tmp_path / "copy.kmltrc").read_bytes() == data
    assert np.array_equal(read_trace(tmp_path / "copy.kmltrc"), rows)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:10], "shorter than the 64-byte header"),
        (lambda d: b"NOTATRACE" + d[9:], "not a KML trace"),
        (lambda d: d[:8] + (99).to_bytes(4, "little") + d[12:], "trace ABI version 99"),
        (lambda d: d[:8] + (0).to_bytes(4, "little") + d[12:], "trace ABI version 0"),
        (lambda d: d[:12] + (96).to_bytes(4, "little") + d[16:], "record size 96, smaller"),
        (lambda d: d[:16] + (17).to_bytes(4, "little") + d[20:], "n_features 17"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, mangle, message: str) -> None:
    good = tmp_path / "good.kmltrc"
    fixture_part(good, 3)
    bad = tmp_path / "bad.kmltrc"
    bad.write_bytes(mangle(good.read_bytes()))
    with pytest.raises(TraceError) as info:
        read_trace(bad)
    assert str(info.value).startswith(f"{bad}: ")
    assert message in str(info.value)
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "missing.kmltrc")


def test_cut_rows_and_longer_records(tmp_path: Path) -> None:
    """docs/trace.md: drop a cut last row; rows are record_size bytes, not 128."""
    path = tmp_path / "t.kmltrc"
    rows = fixture_part(path, 4)
    data = path.read_bytes()
    cut = tmp_path / "cut.kmltrc"
    cut.write_bytes(data[:-5])
    header, back = load_trace(cut)
    assert header.partial_bytes == 123
    assert np.array_equal(back, rows[:3])
    # a newer kernel appending 32 bytes per row: the known 128 are read
    wide = bytearray(data[:HEADER_SIZE])
    wide[12:16] = (160).to_bytes(4, "little")
    body = data[HEADER_SIZE:]
    for i in range(4):
        wide += body[i * 128 : (i + 1) * 128] + b"\xee" * 32
    (tmp_path / "wide.kmltrc").write_bytes(bytes(wide))
    header, back = load_trace(tmp_path / "wide.kmltrc")
    assert header.record_size == 160 and np.array_equal(back, rows)


def test_csv_export() -> None:
    rows = read_trace(FIXTURE)[:5]
    out = io.StringIO()
    write_csv(rows, NR_FEATURES, out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6
    head = lines[0].split(",")
    assert head[:3] == ["insert_ns", "sector", "issue_ns"]
    assert head[-NR_FEATURES:] == [f"feature_{name}" for name in FEATURE_NAMES]
    assert len(set(head)) == len(head)  # op and sector are scalars and features
    first = dict(zip(head, lines[1].split(","), strict=True))
    assert int(first["issue_ns"]) == int(rows["issue_ns"][0])
    assert int(first["sector"]) == int(rows["sector"][0])
    feature = float(first["feature_lg_queued_same"])
    assert feature == pytest.approx(rows["features"][0][3] / 65536, 1e-5)


def test_training_conventions() -> None:
    rows = np.zeros(3, SAMPLE_DTYPE)
    rows["issue_ns"] = [0, 1000, 7000]
    assert train.targets(rows).tolist() == [0.0, 1.0, 3.0]
    # y = 3 stands for 7 us: meets a 7 us deadline, misses a 6.999 us one
    assert train.predicted_met(np.array([3.0, 3.0]), np.array([7000, 6999])).tolist() == [
        True,
        False,
    ]
    rows["features"][:, 0] = 65536 * 2
    assert train.inputs(rows, NR_FEATURES).dtype == np.float32
    assert train.inputs(rows, NR_FEATURES)[0, 0] == 2.0


def test_decision_threshold_calibration() -> None:
    """Known answer: met requests at residuals r = y - lg(deadline us) in {-1,
    -0.5, 0.5}, misses at {1, 2}: the best split is between 0.5 and 1, at 0.75.
    The threshold is KML's (kml_dd_calib.h); the contract across the kernel,
    kmlctl and this binding is tests/test_calibration_contract.py."""
    r = np.repeat([-1.0, -0.5, 0.5, 1.0, 2.0], 40)
    rows = np.zeros(len(r), SAMPLE_DTYPE)
    rows["deadline_ns"] = 8_000_000
    met = r < 0.75
    rows["issue_ns"] = np.where(met, 7_000_000, 9_000_000)
    rows["met"] = met
    y = (r + dd_lg_us(8_000_000)).astype(np.float32)
    assert train.calibrate_permille(y, rows) == round(1000 * 2**0.75)
    perfect = train.evaluate(y, rows, permille=round(1000 * 2**0.75))
    assert perfect["accuracy"] == 1.0 and perfect["balanced_accuracy"] == 1.0
    at_deadline = train.evaluate(y, rows)  # r = 0.5 is called a miss at 1000
    assert at_deadline["accuracy"] == pytest.approx(0.8)
    assert at_deadline["miss_precision"] == pytest.approx(2 / 3)
    # too few of a class (under 32): nothing to calibrate, the deadline itself
    few = np.concatenate([np.flatnonzero(met), np.flatnonzero(~met)[:31]])
    assert train.calibrate_permille(y[few], rows[few]) == 1000
    rows["issue_ns"] = 0  # the label is issue_ns <= deadline_ns: all met
    assert train.calibrate_permille(y, rows) == 1000
    assert train.calibrate(y, rows).status == "few-missed"


def test_a_model_with_no_skill_keeps_the_deadline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backwards model (misses ranked below the met requests) is refused:
    no threshold, the deadline kept, and kmlbench train says so."""
    r = np.repeat([-1.0, 1.0], 100)
    rows = np.zeros(len(r), SAMPLE_DTYPE)
    rows["deadline_ns"] = 8_000_000
    met = r > 0
    rows["issue_ns"] = np.where(met, 7_000_000, 9_000_000)
    rows["met"] = met
    y = (r + dd_lg_us(8_000_000)).astype(np.float32)
    cal = train.calibrate(y, rows)
    assert (cal.thr, cal.status, cal.auc) == (None, "no-skill", 0.0)
    assert train.calibrate_permille(y, rows) == 1000
    assert train.evaluate(y, rows)["auc"] == 0.0
    real = train.calibrate
    monkeypatch.setattr(
        train, "calibrate", lambda y, rows: dataclasses.replace(real(y, rows), thr=None,
                                                                status="no-skill")
    )  # fmt: skip
    rc, err = _train(capsys, "--trace", str(FIXTURE), "-o", str(tmp_path / "m.kmlm"))
    assert rc == 0, err
    assert "calibration refused (no-skill" in err, err


@pytest.mark.parametrize("arch", ["mlp", "linear"])
def test_offline_training_on_a_real_trace_beats_the_majority_baseline(
    tmp_path: Path, arch: str
) -> None:
    out = tmp_path / "m.kmlm"
    result = train.train_model([FIXTURE], out, arch=arch, epochs=30, holdout=0.2)
    assert (result.n_train, result.n_holdout) == (1200, 300)
    for h in (result.holdout, result.holdout_at_deadline):
        assert h["predictions"] == 300
        assert h["accuracy"] > h["baseline_accuracy"] + 0.05, h
        assert h["balanced_accuracy"] > 0.65, h
        assert h["mcc"] > 0.3, h
    assert result.losses[-1] < result.losses[0]
    assert 1 <= result.decision_permille <= 64000
    report = json.loads(out.with_name("m.kmlm.train.json").read_text())
    assert report["decision_permille"] == result.decision_permille
    assert report["holdout"]["accuracy"] == pytest.approx(result.holdout["accuracy"])
    # the file is a KML model with the kernel's shape: NR_FEATURES inputs, 1 output
    model = Model.load(out)
    assert (model.n_inputs, model.n_outputs) == (NR_FEATURES, 1)
    assert model.sizes == ([NR_FEATURES, 16, 1] if arch == "mlp" else [NR_FEATURES, 1])
    rows = read_trace(FIXTURE)
    holdout = np.sort(rows, order="insert_ns", kind="stable")[-300:]
    again = train.evaluate(
        model.predict(train.inputs(holdout, NR_FEATURES)), holdout, result.decision_permille
    )
    assert again["accuracy"] == pytest.approx(result.holdout["accuracy"])


def test_cli_train_reports_and_writes(tmp_path: Path) -> None:
    trace = FIXTURE
    out = tmp_path / "m.kmlm"
    proc = subprocess.run(
        [sys.executable, "-m", "kmlbench.cli", "train", "--trace", str(trace),
         "--trace", str(trace), "-o", str(out), "--epochs", "3", "--arch", "linear"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "trained linear on 2400 samples" in proc.stdout
    assert "holdout (600 samples) at decision_permille" in proc.stdout
    assert "baseline" in proc.stdout and "use it with decision_permille: " in proc.stdout
    assert out.is_file()
    bad = tmp_path / "bad.kmltrc"
    bad.write_bytes(b"x" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "kmlbench.cli", "train", "--trace", str(bad), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"{bad}: not a KML trace" in proc.stderr
    old = tmp_path / "old.kmltrc"
    write_trace(old, read_trace(trace), n_features=12)
    proc = subprocess.run(
        [sys.executable, "-m", "kmlbench.cli", "train", "--trace", str(old), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "12 features" in proc.stderr and "record a new trace" in proc.stderr


def test_cli_trace_csv_and_info(tmp_path: Path) -> None:
    trace = tmp_path / "t.kmltrc"
    fixture_part(trace, 20)
    csv_path = tmp_path / "t.csv"
    run = [sys.executable, "-m", "kmlbench.cli", "trace"]
    proc = subprocess.run([*run, "csv", str(trace), "-o", str(csv_path)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(csv_path.read_text().splitlines()) == 21
    proc = subprocess.run([*run, "info", str(trace)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert f"20 samples, abi {ABI_VERSION}, {NR_FEATURES} features" in proc.stdout


def _train(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``kmlbench train`` in-process: (exit status, stderr); never a traceback."""
    rc = cli.main(["train", "--epochs", "2", "--arch", "linear", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("", "is a directory"),
        ("missing/m.kmlm", "does not exist"),
        ("file/m.kmlm", "is not a folder"),
    ],
)
def test_train_refuses_an_output_it_cannot_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str, message: str
) -> None:
    (tmp_path / "file").write_text("")
    rc, err = _train(capsys, "--trace", str(FIXTURE), "-o", str(tmp_path / output))
    assert rc == 1 and message in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--lr", "nan"), "--lr must be a positive number"),
        (("--lr", "-1"), "--lr must be a positive number"),
        (("--lr", "1e6"), "the KML library refused the model"),
        (("--arch", "mlp", "--hidden", "100000"), "the KML library refused the model"),
    ],
)
def test_train_refuses_settings_kml_cannot_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    rc, err = _train(capsys, "--trace", str(FIXTURE), "-o", str(tmp_path / "m.kmlm"), *args)
    assert rc == 1 and message in err, err
    assert not (tmp_path / "m.kmlm").exists()


def _mangled(path: Path, field: str, row: int, value: int) -> Path:
    rows = read_trace(FIXTURE).copy()
    rows[field][row] = value
    write_trace(path, rows)
    return path


def test_train_refuses_rows_no_queue_produces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zero = _mangled(tmp_path / "zero.kmltrc", "deadline_ns", 7, 0)
    rc, err = _train(capsys, "--trace", str(zero), "-o", str(tmp_path / "m.kmlm"))
    assert rc == 1 and f"{zero}: row 7: deadline_ns 0 is 0" in err, err
    huge = _mangled(tmp_path / "huge.kmltrc", "issue_ns", 11, 2**64 - 1)
    rc, err = _train(capsys, "--trace", str(huge), "-o", str(tmp_path / "m.kmlm"))
    assert rc == 1 and f"{huge}: row 11: issue_ns {2**64 - 1} is more than a day" in err, err
    one = tmp_path / "one.kmltrc"
    write_trace(one, read_trace(FIXTURE)[:1])
    rc, err = _train(capsys, "--trace", str(one), "-o", str(tmp_path / "m.kmlm"))
    assert rc == 1 and "1 samples in the traces; training needs at least 64" in err, err


def test_train_warns_about_doubtful_traces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = read_trace(FIXTURE)
    flipped = rows.copy()
    flipped["met"][[3, 5]] = 1 - flipped["met"][[3, 5]]
    doubtful = tmp_path / "doubtful.kmltrc"
    write_trace(doubtful, flipped)
    with doubtful.open("ab") as handle:  # a writer cut off half way through a row
        handle.write(b"\0" * 40)
    rc, err = _train(capsys, "--trace", str(doubtful), "-o", str(tmp_path / "m.kmlm"))
    assert rc == 0, err
    assert f"warning: {doubtful}: a cut last row (40 bytes) was dropped" in err
    assert f"warning: {doubtful}: 2 rows have a met label that contradicts" in err
    assert "(first: row 3)" in err
    clean = _train(capsys, "--trace", str(FIXTURE), "-o", str(tmp_path / "n.kmlm"))
    assert clean == (0, "")


def test_train_warns_when_the_threshold_is_at_its_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real trace whose best threshold lies beyond a factor 8 is hard to make;
    # the calibration's own bound (from libkml) stands in for its answer.
    bound = dd_permille(DD_CAL_MAX_LG)
    assert bound == 8000
    real = train.calibrate
    monkeypatch.setattr(
        train, "calibrate", lambda y, rows: dataclasses.replace(real(y, rows), thr=DD_CAL_MAX_LG)
    )
    rc, err = _train(capsys, "--trace", str(FIXTURE), "-o", str(tmp_path / "m.kmlm"))
    assert rc == 0, err
    assert "decision_permille 8000 is at the calibration's bound" in err, err


def test_without_trains_a_kernel_model_that_ignores_those_features(tmp_path: Path) -> None:
    out = tmp_path / "m.kmlm"
    rc = cli.main(
        ["train", "--trace", str(FIXTURE), "-o", str(out), "--arch", "mlp", "--hidden", "4",
         "--dtype", "fixed", "--epochs", "5", "--without", "lg_inflight,lg_gap_us"]
    )  # fmt: skip
    assert rc == 0
    model = Model.load(out)
    assert model.n_inputs == NR_FEATURES  # the kernel feeds every feature
    ignored = [FEATURE_NAMES.index("lg_inflight"), FEATURE_NAMES.index("lg_gap_us")]
    weights = model.layers()[0][0]
    assert not weights[:, ignored].any() and weights.all(axis=0).sum() >= NR_FEATURES - 4
    rows = read_trace(FIXTURE)
    x = train.inputs(rows, NR_FEATURES)
    moved = x.copy()
    moved[:, ignored] = np.random.default_rng(3).uniform(0, 40, (len(x), 2)).astype(np.float32)
    assert np.array_equal(model.predict(x), model.predict(moved))
    assert not np.array_equal(model.predict(x[:, ::-1].copy()), model.predict(x))
    report = json.loads(out.with_name("m.kmlm.train.json").read_text())
    assert report["ignored_features"] == ["lg_inflight", "lg_gap_us"]


def test_without_is_refused_when_scoring_a_saved_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = Path(__file__).parents[1] / "workloads" / "models" / "deadline-select-q16.kmlm"
    rc = cli.main(["train", "--model", str(model), "--test", str(FIXTURE), "--without", "op"])
    err = capsys.readouterr().err
    assert rc == 2 and "neither --trace, -o nor --without" in err and "Traceback" not in err
