"""trace import and train --test: requests from a CSV, features by KML's own code.

The round trip takes the trace the real kernel recorded (tests/data, a
256 MiB null_blk), exports it with ``kmlbench trace csv``, imports the CSV
with ``kmlbench trace import`` (which replays the requests through
``kml_dd_feat.c`` in libkml.so) and compares every feature to the kernel's.
What may differ, and why, is in docs/trace.md ("Importing requests").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kmlbench import cli
from kmlbench.data.trace import FEATURE_NAMES, NR_FEATURES, load_trace, read_trace
from kmlbench.kml.ffi import lib
from kmlbench.kml.trace_import import COLUMNS, import_csv, replay

FIXTURE = Path(__file__).parent / "data" / "deadline.kmltrc"
CAPACITY = 256 * 2048  # the fixture's null_blk: size_mib 256, in 512-byte sectors
# The fixture is rows 1500-2999 of a longer trace: the requests before it are
# not in it, so the running averages and counts start from zero here and
# the kernel's did not. Past this many requests (in insert order) they agree.
WARM_UP = 256
EXACT_EVERYWHERE = ("op", "sector", "lg_bytes", "lg_expire_us")


def _by_insert(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows["sector"], rows["insert_ns"]))]


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, Path]:
    d = tmp_path_factory.mktemp("import")
    assert cli.main(["trace", "csv", str(FIXTURE), "-o", str(d / "kernel.csv")]) == 0
    out = d / "imported.kmltrc"
    argv = ["trace", "import", str(d / "kernel.csv"), "-o", str(out), "--capacity", str(CAPACITY)]
    assert cli.main(argv) == 0
    return read_trace(FIXTURE), read_trace(out), d


def test_imported_fields_and_order_are_the_kernels(round_trip) -> None:
    kernel, imported, _ = round_trip
    assert load_trace(FIXTURE)[0].n_features == NR_FEATURES
    for field in ("insert_ns", "sector", "issue_ns", "deadline_ns", "completion_ns", "bytes",
                  "op", "met"):  # fmt: skip
        assert np.array_equal(kernel[field], imported[field]), field
    done = imported["insert_ns"] + imported["completion_ns"]
    assert np.all(np.diff(done.astype(np.int64)) >= 0)  # the ring's order: completions


def test_imported_features_match_the_kernels_per_feature(round_trip) -> None:
    kernel, imported, _ = round_trip
    k = _by_insert(kernel)["features"][:, :NR_FEATURES].astype(np.int64)
    m = _by_insert(imported)["features"][:, :NR_FEATURES].astype(np.int64)
    assert m[:, 2:].any(axis=0).all(), "every feature is computed, none left at zero"
    for j, name in enumerate(FEATURE_NAMES):
        if name in EXACT_EVERYWHERE:
            assert np.array_equal(k[:, j], m[:, j]), name
            continue
        after, k_after = m[WARM_UP:, j], k[WARM_UP:, j]
        if name == "lg_inflight":
            # completions run on another CPU, whose local_clock() may be a
            # little off: a request may count as in flight one event early
            # or late. lg(n + 1) - lg(n) <= lg(1) - lg(0) = 1.0.
            differ = after != k_after
            assert differ.mean() <= 0.01, (name, int(differ.sum()))
            assert np.abs(after - k_after).max() <= 65536, name
        else:
            assert np.array_equal(after, k_after), (name, np.flatnonzero(after != k_after)[:5])
    # and the warm-up is real: the averages did differ before it
    assert not np.array_equal(k[:WARM_UP, 9], m[:WARM_UP, 9])


def test_train_on_the_import_and_test_on_the_kernels_trace(round_trip, capsys) -> None:
    _, _, d = round_trip
    model = d / "m.kmlm"
    argv = ["train", "--trace", str(d / "imported.kmltrc"), "-o", str(model), "--epochs", "4",
            "--test", str(FIXTURE)]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    test_lines = [line for line in out.splitlines() if line.startswith("test (1500 samples)")]
    assert len(test_lines) == 2, out
    for line in test_lines:
        for figure in ("accuracy", "majority baseline", "balanced accuracy", "MCC"):
            assert figure in line
    report = json.loads((d / "m.kmlm.train.json").read_text())
    assert report["n_test"] == 1500
    cal = report["test"]["calibrated"]
    met = read_trace(FIXTURE)["met"]
    assert cal["baseline_accuracy"] == pytest.approx(max(met.mean(), 1 - met.mean()))
    assert -1 <= cal["mcc"] <= 1 and 0 <= cal["balanced_accuracy"] <= 1
    # a saved model scores the same trace at the permille its report recorded
    assert cli.main(["train", "--model", str(model), "--test", str(FIXTURE)]) == 0
    scored = capsys.readouterr().out
    assert f"decision_permille {report['decision_permille']} (the model's)" in scored
    assert "MCC" in scored and "majority baseline" in scored


def test_default_capacity_is_the_end_of_the_furthest_request(tmp_path: Path) -> None:
    rows = read_trace(FIXTURE)[:200]
    csv = tmp_path / "r.csv"
    csv.write_text(
        ",".join(COLUMNS) + "\n"
        + "".join(",".join(str(int(r[c])) for c in COLUMNS) + "\n" for r in rows)
    )  # fmt: skip
    imported = import_csv(csv)
    end = int((rows["sector"] + rows["bytes"] // 512).max())
    furthest = int(np.argmax(imported["sector"]))
    assert imported["sector"][furthest] < end
    want = (int(imported["sector"][furthest]) << 16) // end
    assert imported["features"][furthest, 1] == want
    assert np.array_equal(imported["features"][:, 1], replay(imported, end)[:, 1])


def test_each_dev_is_a_queue_of_its_own(tmp_path: Path) -> None:
    rows = read_trace(FIXTURE)[:300]
    alone = replay(_by_insert(rows), CAPACITY)
    csv = tmp_path / "two.csv"
    lines = [",".join((*COLUMNS, "dev"))]
    for dev, shift in ((8, 0), (9, 3)):  # the same requests on two disks, 3 ns apart
        lines += [
            ",".join(str(int(r[c]) + (shift if c == "insert_ns" else 0)) for c in COLUMNS)
            + f",{dev}"
            for r in rows
        ]
    csv.write_text("\n".join(lines) + "\n")
    both = import_csv(csv, CAPACITY)
    for dev in (8, 9):
        mine = _by_insert(both[both["dev"] == dev])
        assert np.array_equal(mine["features"][:, :NR_FEATURES], alone), dev


def test_the_shared_lg_is_within_its_documented_error() -> None:
    for x in [0, 1, 2, 3, 7, 100, 4095, 123_456, 2**40 + 12345, 2**63]:
        got = lib().kml_dd_lg(x) / 65536
        assert 0 <= math.log2(1 + x) - got < 0.09, x
    assert lib().kml_dd_lg(2**64 - 1) == 64 << 16
