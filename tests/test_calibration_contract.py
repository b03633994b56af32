"""One deadline target and one meet/miss calibration for the three trainers.

The kernel trainer, ``kmlctl train`` and ``kmlbench train`` all call KML's
``kernel/kml/kml_dd_calib.[ch]`` (the kernel built in, kmlctl linked
statically, kmlbench through ``libkml.so``). This pins the result on a fixed
sample, the same one ``kml_test_cal_contract`` and
``kml_test_dd_target_contract`` in ``kernel/kml/kml_test.c`` check inside
the kernel (``kmlbench kunit``; tests/test_kunit.py boots it): the values
below must equal the KUnit file's, which the first test checks.

* (a) libkml through the binding (:mod:`kmlbench.kml.deadline`) and through
  ``kmlbench train``'s own entry point (``train.calibrate_permille``);
* (b) ``kmlctl calibrate MODEL TRACE``, the static guest binary run on the
  host, on a trace and a model built so that its residuals are the sample
  bit for bit;
* (c) the kernel: the KUnit cases, same sample, same expected values.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kmlbench import paths
from kmlbench.build.image import build_kmlctl
from kmlbench.data.trace import NR_FEATURES, SAMPLE_DTYPE, read_trace, write_trace
from kmlbench.kml import deadline as kml_deadline
from kmlbench.kml import train
from kmlbench.kml.deadline import (
    DD_CAL_MIN_CLASS,
    DD_RESID,
    dd_cal_fit,
    dd_permille,
    dd_residuals,
)
from kmlbench.kml.ffi import u32_count
from kmlbench.kml.model import Model
from kmlbench.paths import KML_SRC_DIR, cache_dir

Q = 65536
# The fixed sample and its expected threshold: KML_CAL_CONTRACT_* in kml_test.c.
N, SEED = 600, 0x6B6D6C31
# Balanced accuracy since issue 12 (before: the mean of accuracy and balanced
# accuracy, 65024 / 1989).
THR, PERMILLE = -65280, 501
TARGET_NS = [0, 1, 999, 1000, 7000, 123456, 8_000_000, 20_000_000, 10**9, 3 * 10**12]
TARGET_BITS = [
    0x00000000, 0x3ABD02E3, 0x3F7FD0B8, 0x3F800000, 0x40400000,
    0x40DEB428, 0x414F7497, 0x41649AC4, 0x419F73DB, 0x41FBDBC8,
]  # fmt: skip
# (prediction as float bits, deadline_ns, issue_ns) -> (r, met)
RESID_CASES = [
    (0x41200000, 8_000_000, 7_000_000, -194377, 1),
    (0x41200000, 20_000_000, 30_000_000, -281004, 0),
    (0x00000000, 0, 0, 0, 1),
    (0x7FC00000, 500_000, 1, 64 << 16, 1),
    (0xC2C80000, 500_000, 600_000, -64 << 16, 0),
    (0x42C80000, 500_000, 0, 64 << 16, 1),
    (0x40400000, 7000, 7000, 0, 1),
]


def contract_sample() -> np.ndarray:
    """kml_cal_contract_sample() of kml_test.c, in Python."""
    state = SEED
    out = np.zeros(N, DD_RESID)
    for i in range(N):
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        met = state % 10 < 7
        r = (-Q // 2 if met else Q // 2) + (((state >> 8) % (3 * Q)) & ~255) - 3 * Q // 2
        if i % 50 == 0:
            r = -5 * Q if met else 4 * Q
        out[i] = (r, met)
    return out


def c_define(text: str, name: str) -> int:
    value = re.search(rf"#define {name}\s+(\S+)", text).group(1)
    return int(value.rstrip("U"), 0)


def c_array(text: str, name: str) -> list[int]:
    body = re.search(rf"{name}\[\] = \{{(.*?)\}};", text, re.S).group(1)
    return [int(v, 0) for v in re.findall(r"0x[0-9a-fA-F]+|\d+", body)]


def c_int(expr: str) -> int:
    """An integer constant of the KUnit file: 123, -5, 0x7fc00000, 64 << 16."""
    value, _, shift = expr.partition("<<")
    return int(value.strip(), 0) << int(shift or 0)


def test_the_kunit_cases_pin_the_same_values() -> None:
    text = (KML_SRC_DIR / "kml_test.c").read_text()
    assert c_define(text, "KML_CAL_CONTRACT_N") == N
    assert c_define(text, "KML_CAL_CONTRACT_SEED") == SEED
    assert c_define(text, "KML_CAL_CONTRACT_THR") == THR
    assert c_define(text, "KML_CAL_CONTRACT_PERMILLE") == PERMILLE
    assert c_array(text, "kml_target_ns") == TARGET_NS
    assert c_array(text, "kml_target_bits") == TARGET_BITS
    cases = re.search(r"kml_resid_cases\[\] = \{(.*?)\n\};", text, re.S).group(1)
    rows = []
    for line in re.findall(r"\{([^}]*)\}", cases):
        fields = [f.strip() for f in line.split(",")]
        rows.append(tuple(c_int(f) for f in fields))
    assert rows == RESID_CASES
    for case in ("kml_test_cal_contract", "kml_test_dd_target_contract"):
        assert f"KUNIT_CASE({case})" in text


def test_the_sample_is_not_trivial() -> None:
    """Both classes, ties, residuals outside the factor-8 range, a best split
    that no other threshold beats (scored as kml_dd_cal_fit does)."""
    s = contract_sample()
    met = s["met"].astype(bool)
    assert 300 < met.sum() < 500
    assert len(np.unique(s["r"])) < N - 100  # many ties
    assert (np.abs(s["r"]) > 3 * Q).sum() == N // 50

    def score(thr: int) -> int:
        pm = s["r"] <= thr
        n_met, n_miss = int(met.sum()), int((~met).sum())
        mb, ma = int((pm & met).sum()), int((~pm & ~met).sum())
        return (mb << 20) // n_met + (ma << 20) // n_miss

    every = [score(int(r)) for r in s["r"]] + [score(int(r) - 1) for r in s["r"]]
    assert score(THR) == max(every)


def test_libkml_binding_and_kmlbench_train() -> None:
    """(a) the binding, and the function kmlbench train calls."""
    s = contract_sample()
    assert dd_cal_fit(s) == THR
    assert dd_permille(THR) == PERMILLE
    assert dd_cal_fit(s[::-1].copy()) == THR  # only the multiset counts
    rows = np.zeros(len(TARGET_NS), SAMPLE_DTYPE)
    rows["issue_ns"] = TARGET_NS
    assert train.targets(rows).view(np.uint32).tolist() == TARGET_BITS
    rows = np.zeros(len(RESID_CASES), SAMPLE_DTYPE)
    rows["deadline_ns"] = [c[1] for c in RESID_CASES]
    rows["issue_ns"] = [c[2] for c in RESID_CASES]
    y_hat = np.array([c[0] for c in RESID_CASES], np.uint32).view(np.float32)
    resid = dd_residuals(y_hat, rows)
    assert list(zip(resid["r"].tolist(), resid["met"].tolist(), strict=True)) == [
        (c[3], c[4]) for c in RESID_CASES
    ]


def sample_as_trace(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A trace and a model whose residuals are exactly the contract sample.

    Deadline 0 (lg = 0); met rows are issued at 0 ns, missed ones at 1 ns;
    feature 0 holds r (Q16.16, so the model's input is r / 65536 exactly);
    the model is linear, weight 1 on feature 0, no normalisation: its
    prediction is r / 65536, the residual r.
    """
    s = contract_sample()
    rows = np.zeros(N, SAMPLE_DTYPE)
    rows["insert_ns"] = np.arange(N) * 1000
    rows["issue_ns"] = np.where(s["met"] == 1, 0, 1)
    rows["met"] = s["met"]
    rows["features"][:, 0] = s["r"]
    trace = tmp_path / "contract.kmltrc"
    write_trace(trace, rows)
    model = Model.linear(NR_FEATURES, normalize=False)
    params = np.zeros(model.n_params)
    params[0] = 1.0
    model.params = params
    path = tmp_path / "contract.kml"
    model.save(path)
    return trace, path, rows


def test_kmlbench_train_on_the_sample_as_a_trace(tmp_path: Path) -> None:
    """(a) through the model and train.calibrate_permille, as kmlbench train runs."""
    trace, path, _ = sample_as_trace(tmp_path)
    rows = read_trace(trace)
    model = Model.load(path)
    y_hat = model.predict(train.inputs(rows, NR_FEATURES))
    assert np.array_equal(dd_residuals(y_hat, rows), contract_sample())
    assert train.calibrate_permille(y_hat, rows) == PERMILLE


@pytest.fixture(scope="module")
def kmlctl() -> Path:
    return build_kmlctl(cache_dir())


def test_kmlctl_calibrate(kmlctl: Path, tmp_path: Path) -> None:
    """(b) the static guest binary on the host."""
    trace, path, _ = sample_as_trace(tmp_path)
    proc = subprocess.run(
        [str(kmlctl), "calibrate", str(path), str(trace)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    cal = kml_deadline.dd_calibrate(contract_sample())
    assert out == {
        "samples": str(N),
        "met": str(int(contract_sample()["met"].sum())),
        "calibrated": "1",
        "status": "ok",
        "threshold_q16": str(THR),
        "decision_permille": str(PERMILLE),
        "balanced_accuracy": f"{cal.balanced:.6f}",
        "auc": f"{cal.auc:.6f}",
    }


def test_kmlctl_calibrate_with_a_rare_class_keeps_the_deadline(
    kmlctl: Path, tmp_path: Path
) -> None:
    trace, path, rows = sample_as_trace(tmp_path)
    met = rows["met"].astype(bool)
    keep = np.concatenate([np.flatnonzero(met), np.flatnonzero(~met)[:31]])
    write_trace(trace, rows[keep])
    proc = subprocess.run(
        [str(kmlctl), "calibrate", str(path), str(trace)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "calibrated 0\n" in proc.stdout and "decision_permille 1000\n" in proc.stdout
    assert "status few-missed\n" in proc.stdout
    # a model of the wrong shape is refused by name
    Model.linear(NR_FEATURES - 1).save(path)
    proc = subprocess.run(
        [str(kmlctl), "calibrate", str(path), str(trace)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "EPROTO" in proc.stderr


# The inverse and the call, KML_DD_DECIDE*: kml_decide_cases and
# kml_decide_q16_cases of kml_test.c (kml_test_dd_decide_contract).
# (prediction as float bits, deadline_ns, permille) -> (issue_ns, met)
DECIDE_CASES = [
    (0x41200000, 1023000, 1000, 1023000, 1),
    (0x41200000, 1022999, 1000, 1023000, 0),
    (0x41200000, 2045999, 500, 1023000, 0),
    (0x41200000, 1000000, 1023, 1023000, 1),
    (0x41200000, 1000000, 1022, 1023000, 0),
    (0x40600000, 10313, 1000, 10313, 1),
    (0x41A00000, 1048575000, 1000, 1048574976, 1),
    (0x41A00000, 1048576000, 1000, 1048574976, 1),
    (0x7FC00000, 10**12, 64000, -1, 0),
    (0x00000000, 0, 1000, 0, 1),
    (0xC2C80000, 0, 1, 0, 1),
    (0x42C80000, 3 * 10**12, 64000, 1099511761993728, 0),
]  # fmt: skip
# (Q16.16 prediction, deadline_ns, permille) -> (issue_ns, met)
DECIDE_Q16_CASES = [
    (655360, 1023000, 1000, 1023000, 1),
    (655360, 1022999, 1000, 1023000, 0),
    (229376, 10313, 1000, 11000, 0),
    (229376, 11000, 1000, 11000, 1),
    (0, 0, 1000, 0, 1),
    (-5, 0, 1000, 0, 1),
    (0x7FFFFFFF, 3 * 10**12, 64000, 2199006478335000, 0),
    (1, 0, 1000, 0, 1),
]  # fmt: skip


def _kunit_decide(text: str, name: str) -> list[tuple[int, ...]]:
    body = re.search(rf"{name}\[\] = \{{(.*?)\n\}};", text, re.S).group(1)
    rows = []
    for line in re.findall(r"\{([^}]*)\}", body):
        fields = [int(f.strip().rstrip("LU"), 0) for f in line.split(",")]
        rows.append(tuple(fields))
    return rows


def test_the_kunit_decide_cases_pin_the_same_values() -> None:
    text = (KML_SRC_DIR / "kml_test.c").read_text()
    assert _kunit_decide(text, "kml_decide_cases") == DECIDE_CASES
    q16 = [((y - 2**32) if y >= 2**31 else y, *rest) for y, *rest in
           _kunit_decide(text, "kml_decide_q16_cases")]  # fmt: skip
    assert q16 == DECIDE_Q16_CASES
    assert "KUNIT_CASE(kml_test_dd_decide_contract)" in text


def test_dd_meets_binding_and_kmlbench_train() -> None:
    from kmlbench.kml.deadline import dd_meets, dd_meets_q16

    for bits, deadline, permille, issue_ns, met in DECIDE_CASES:
        y = np.array([bits], np.uint32).view(np.float32)
        got_ns, got_met = dd_meets(y, deadline, permille)
        assert (int(got_ns[0]), int(got_met[0])) == (issue_ns, met), hex(bits)
        assert bool(train.predicted_met(y, np.array([deadline]), permille)[0]) == bool(met)
        assert train.predicted_issue_us(y)[0] == max(issue_ns, 0) / 1000.0
    for yq, deadline, permille, issue_ns, met in DECIDE_Q16_CASES:
        got_ns, got_met = dd_meets_q16([yq], deadline, permille)
        assert (int(got_ns[0]), int(got_met[0])) == (issue_ns, met), yq
    # vectorised: the same answers in one call per permille
    for permille in {c[2] for c in DECIDE_CASES}:
        rows = [c for c in DECIDE_CASES if c[2] == permille]
        y = np.array([c[0] for c in rows], np.uint32).view(np.float32)
        got_ns, got_met = dd_meets(y, [c[1] for c in rows], permille)
        assert got_ns.tolist() == [c[3] for c in rows]
        assert got_met.tolist() == [bool(c[4]) for c in rows]


def imbalanced(n: int, n_miss: int, skill: float, seed: int) -> np.ndarray:
    """Residuals of ``n`` requests of which ``n_miss`` missed (the rest met): a
    model whose residual for a miss is shifted up by ``skill`` (lg units) over
    noise 1.5 wide; 0 is no skill, negative a backwards model."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n, DD_RESID)
    out["met"] = 1
    out["met"][rng.choice(n, n_miss, replace=False)] = 0
    noise = rng.uniform(-0.75, 0.75, n) + np.where(out["met"] == 1, 0.0, skill)
    out["r"] = np.round(noise * Q).astype(np.int32)
    return out


def balanced_at(resid: np.ndarray, thr: int) -> float:
    """Balanced accuracy of "meet iff r <= thr" on ``resid``."""
    met = resid["met"] == 1
    meet = resid["r"] <= thr
    return ((meet & met).sum() / met.sum() + (~meet & ~met).sum() / (~met).sum()) / 2


@pytest.mark.parametrize("skill", [-1.0, -0.2, 0.0, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("seed", range(8))
def test_one_percent_misses_never_below_chance(skill: float, seed: int) -> None:
    """Synthetic imbalanced samples (1% positives): the calibration never picks a
    threshold whose balanced accuracy is below 0.5; it refuses instead."""
    resid = imbalanced(10_000, 100, skill, seed)
    cal = kml_deadline.dd_calibrate(resid)
    assert (cal.n_met, cal.n_missed) == (9_900, 100)
    if cal.thr is None:
        assert cal.status == "no-skill"
        assert skill <= 0.05  # a model with real skill is calibrated
    else:
        assert cal.status == "ok"
        assert balanced_at(resid, cal.thr) > 0.5
        assert cal.balanced == pytest.approx(balanced_at(resid, cal.thr), abs=1e-5)
    if skill >= 0.3:
        assert cal.thr is not None and cal.auc > 0.6
    if skill <= -0.2:
        assert cal.thr is None and cal.auc < 0.5


def test_too_few_positives_are_refused_and_the_threshold_kept(tmp_path: Path) -> None:
    """31 misses among 3,100 requests: refused (few-missed), whatever the skill;
    kmlbench train keeps the deadline (1000)."""
    resid = imbalanced(3_100, DD_CAL_MIN_CLASS - 1, 1.0, 3)
    cal = kml_deadline.dd_calibrate(resid)
    assert cal.thr is None and cal.status == "few-missed" and cal.auc > 0.9
    assert dd_cal_fit(resid) is None
    resid = imbalanced(3_200, DD_CAL_MIN_CLASS, 1.0, 3)
    assert kml_deadline.dd_calibrate(resid).status == "ok"


def test_auc_is_the_mann_whitney_statistic() -> None:
    """The AUC KML reports is P(r_miss > r_met) + P(tie) / 2."""
    resid = imbalanced(2_000, 200, 0.2, 5)
    resid["r"] &= ~0xFFF  # ties
    miss = resid["r"][resid["met"] == 0].astype(np.int64)
    met = resid["r"][resid["met"] == 1].astype(np.int64)
    gt = (miss[:, None] > met[None, :]).sum() + 0.5 * (miss[:, None] == met[None, :]).sum()
    expect = gt / (len(miss) * len(met))
    assert kml_deadline.dd_calibrate(resid).auc == pytest.approx(expect, abs=1e-5)


def test_the_bindings_constants_are_the_headers() -> None:
    """The binding's copies of KML_DD_CAL_MIN_CLASS and KML_DD_CAL_MAX_LG match the C."""
    header = (paths.KML_SRC_DIR / "kml_dd_calib.h").read_text()
    min_class = re.search(r"^#define\s+KML_DD_CAL_MIN_CLASS\s+(\d+)", header, re.M)
    max_lg = re.search(r"^#define\s+KML_DD_CAL_MAX_LG\s+\((\d+) << (\d+)\)", header, re.M)
    assert min_class and max_lg, "kml_dd_calib.h: the defines moved or changed form"
    assert int(min_class.group(1)) == kml_deadline.DD_CAL_MIN_CLASS
    assert int(max_lg.group(1)) << int(max_lg.group(2)) == kml_deadline.DD_CAL_MAX_LG


def test_counts_past_u32_are_refused_not_cut_short():
    """KML's calls take a u32 count, and ctypes would pass 2^32 + 5 rows as 5:
    a count past U32_MAX is refused before anything is allocated for it."""
    assert u32_count(0xFFFFFFFF) == 0xFFFFFFFF
    with pytest.raises(ValueError, match="at most 4294967295"):
        u32_count(0x100000005)
