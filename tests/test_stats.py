"""Statistics: known answers on synthetic samples, and histogram percentiles
checked against real fio (the guest's static build, whose buckets the
harness reads) per-I/O latency logs."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kmlbench.build.fio_build import build_static_fio
from kmlbench.data import fio, histogram, stats

# --------------------------------------------------------------------------
# Real fio: json+ histograms vs the raw per-I/O completion latencies.

_JOB = """\
[global]
ioengine=psync
direct={direct}
filename={data}
size=4m
bs=4k
time_based=1
runtime=1s
rate_iops={rate}
write_lat_log={log}
log_avg_msec=0

[r]
rw=randread
"""


def _run_fio(fio_bin: Path, tmp: Path, name: str, rate: int) -> subprocess.Popen:
    job = tmp / f"{name}.fio"
    job.write_text(_JOB.format(direct=0, data=tmp / f"{name}.dat", rate=rate, log=tmp / name))
    return subprocess.Popen(
        [str(fio_bin), "--output-format=json+", f"--output={tmp / name}.json", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture(scope="module")
def fio_repeats(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, np.ndarray]]:
    """Two concurrent ~1 s fio runs: (json+ report, raw clat samples in ns)."""
    fio_bin = build_static_fio().path
    tmp = tmp_path_factory.mktemp("fio")
    procs = [
        (name, _run_fio(fio_bin, tmp, name, rate)) for name, rate in (("a", 1500), ("b", 2500))
    ]
    out = []
    for name, proc in procs:
        log, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, log
        report = fio.parse_fio_output((tmp / f"{name}.json").read_text())
        raw = np.loadtxt(tmp / f"{name}_clat.1.log", delimiter=",", usecols=1, dtype=np.int64)
        out.append((report, raw))
    return out


def _hist(report: dict) -> stats.Histogram:
    clat = report["jobs"][0]["read"]["clat_ns"]
    return stats.Histogram.from_bins(clat["bins"], mean_ns=clat["mean"])


def _fio_rank_percentile(raw: np.ndarray, pct: float) -> int:
    """The same rank rule as fio's on raw samples: smallest x with
    count(<= x) >= pct/100 * N."""
    s = np.sort(raw)
    k = math.ceil(pct / 100 * len(s))
    return int(s[max(k, 1) - 1])


def test_fio_bucket_function_matches_real_bins(fio_repeats) -> None:
    for report, raw in fio_repeats:
        hist = _hist(report)
        assert hist.total == len(raw) == report["jobs"][0]["read"]["clat_ns"]["N"]
        # every bucket fio reported is a fixed point of our bucket function...
        assert all(histogram.fio_bucket_value(int(v)) == int(v) for v in hist.values)
        # ...and bucketing the raw log reproduces fio's histogram exactly
        again = histogram.histogram_from_samples(raw)
        assert again.values.tolist() == hist.values.tolist()
        assert again.counts.tolist() == hist.counts.tolist()


def test_merged_histogram_percentiles_equal_pooled_raw_percentiles(fio_repeats) -> None:
    merged = stats.merge_histograms(_hist(r) for r, _ in fio_repeats)
    pooled = np.concatenate([raw for _, raw in fio_repeats])
    assert merged.total == len(pooled)
    for pct in (1, 10, 50, 90, 99, 99.9):
        from_hist = merged.percentile(pct)
        from_raw = _fio_rank_percentile(pooled, pct)
        # the same sample, seen through fio's bucket: error below one bucket
        width = 2**histogram.FIO_PLAT_BITS
        assert abs(from_hist - from_raw) <= from_raw / width + 1, (pct, from_hist, from_raw)
        assert from_hist == histogram.fio_bucket_value(from_raw)
    # the exact pooled mean is kept
    assert merged.mean() == pytest.approx(pooled.mean(), rel=1e-6)
    # and it agrees with kmlbench.data.fio's own percentile rule
    bins = fio.merge_bins(r["jobs"][0]["read"]["clat_ns"]["bins"] for r, _ in fio_repeats)
    for pct in (50, 99, 99.9):
        assert merged.percentile(pct) == fio.percentile_from_bins(bins, pct)


# --------------------------------------------------------------------------
# Synthetic groups with known answers.


def _group(rng: np.random.Generator, n: int, scale: float = 1.0, iops: float = 1000.0):
    """``n`` repeats: lognormal latencies (ns) through fio's buckets, plus IOPS."""
    out = []
    for _ in range(n):
        lat = rng.lognormal(math.log(50_000 * scale), 0.4, size=3000)
        out.append(
            stats.Sample(
                histogram.histogram_from_samples(lat),
                {"iops": float(rng.normal(iops, iops * 0.01)), "bw_kib_s": 4 * iops},
            )
        )
    return out


def test_identical_groups_show_no_difference() -> None:
    group = _group(np.random.default_rng(1), 6)
    for c in stats.compare_groups(group, group, n_boot=500):
        assert c.change == pytest.approx(0.0)
        assert not c.significant
        assert c.verdict == stats.NO_DIFFERENCE
        assert c.ci_low <= 0 <= c.ci_high


def test_same_distribution_shows_no_difference() -> None:
    rng = np.random.default_rng(7)
    a, b = _group(rng, 8), _group(rng, 8)
    comps = {c.metric: c for c in stats.compare_groups(a, b, n_boot=1000)}
    assert set(comps) == {"mean", "p50", "p99", "p999", "iops"}
    for c in comps.values():
        assert c.verdict == stats.NO_DIFFERENCE, c
        assert abs(c.change) < 0.05


def test_shifted_group_is_detected_with_sign_and_verdict() -> None:
    rng = np.random.default_rng(3)
    a = _group(rng, 6)
    slower = _group(rng, 6, scale=1.5, iops=800.0)
    comps = {c.metric: c for c in stats.compare_groups(a, slower, n_boot=1000)}
    for name in ("mean", "p50", "p99", "p999"):
        c = comps[name]
        assert c.significant and c.verdict == stats.WORSE, c
        assert c.change == pytest.approx(0.5, abs=0.1)
        assert c.ci_low > 0.3 and c.ci_high < 0.7
        assert c.p_value < 0.01
    assert comps["iops"].verdict == stats.WORSE and comps["iops"].change == pytest.approx(
        -0.2, abs=0.02
    )
    # the other way round the same change is an improvement
    back = {c.metric: c for c in stats.compare_groups(slower, a, n_boot=1000)}
    assert back["p99"].verdict == stats.BETTER and back["p99"].change < 0
    assert back["iops"].verdict == stats.BETTER and back["iops"].change > 0


def test_group_percentile_comes_from_the_merged_histogram() -> None:
    rng = np.random.default_rng(5)
    group = _group(rng, 3)
    merged = stats.merge_histograms(s.histogram for s in group)
    p99 = stats.group_estimate(stats.metric("p99"), group)
    assert p99 == merged.percentile(99) / 1000
    lo, hi = stats.bootstrap_ci(stats.metric("p99"), group, n_boot=500)
    assert lo <= p99 <= hi


def test_too_few_repeats_are_reported_as_underpowered() -> None:
    rng = np.random.default_rng(11)
    c = stats.compare_metric("p50", _group(rng, 3), _group(rng, 3, scale=2.0), n_boot=500)
    assert c.change > 0.8
    assert c.underpowered and not c.significant and c.verdict == stats.NO_DIFFERENCE
    assert stats.min_attainable_p(3, 3) == pytest.approx(0.1)
    assert stats.min_attainable_p(4, 4) < 0.05
    single = stats.compare_metric("p50", _group(rng, 1), _group(rng, 1), n_boot=100)
    assert math.isnan(single.ci_low) and not single.significant


def test_the_rank_test_is_exact_when_repeats_tie() -> None:
    """Repeats' percentiles are fio bucket values and often tie. The rank
    test then counts every split of the pooled values (scipy's permutation
    method agrees), never the normal approximation that put 3 against 3
    below the 0.1 no split can go under, and called a change significant."""
    from scipy.stats import PermutationMethod, mannwhitneyu

    tied = ([20.0, 20.0, 20.0], [20.128] * 3)
    assert stats.mann_whitney(*tied) == pytest.approx(0.1)
    assert mannwhitneyu(*tied).pvalue < 0.05  # what scipy's default said
    a, b = [_sample_with_p50(20.0)] * 3, [_sample_with_p50(20.128)] * 3
    c = stats.compare_metric("p50", a, b, n_boot=200)
    assert c.p_value == pytest.approx(0.1) and not c.significant and c.underpowered
    rng = np.random.default_rng(3)
    for _ in range(40):
        n_a, n_b = (int(n) for n in rng.integers(2, 7, 2))
        xa = rng.integers(0, 4, n_a).astype(float)  # few values: many ties
        xb = rng.integers(0, 5, n_b).astype(float)
        if np.all(np.concatenate([xa, xb]) == xa[0]):
            continue
        p = stats.mann_whitney(xa, xb)
        permuted = mannwhitneyu(xa, xb, method=PermutationMethod(n_resamples=10**6)).pvalue
        assert p == pytest.approx(permuted, abs=1e-12), (xa, xb)
        assert p >= stats.min_attainable_p(n_a, n_b) - 1e-12
    # no order to rank a NaN in: NaN, as scipy; a group of one against a
    # large one lists the splits by the smaller (n, not n^2 memory)
    assert math.isnan(stats.mann_whitney([1.0, math.nan], [2.0, 3.0]))
    big = np.arange(5000.0)
    assert stats.mann_whitney(big, [-1.0]) == pytest.approx(2 / 5001)
    # without ties it is the exact test; large groups keep the approximation
    xa, xb = rng.normal(size=5), rng.normal(size=6) + 1
    assert stats.mann_whitney(xa, xb) == pytest.approx(mannwhitneyu(xa, xb).pvalue)
    xa, xb = rng.normal(size=30), rng.normal(size=30) + 1
    assert stats.mann_whitney(xa, xb) == pytest.approx(mannwhitneyu(xa, xb).pvalue)


def _sample_with_p50(value: float) -> stats.Sample:
    return stats.Sample(None, {"clat_p50_us": value})


def test_accuracy_metrics_compare_when_present() -> None:
    def with_acc(values):
        return [
            stats.Sample(None, {"kml.accuracy": v, "kml.balanced_accuracy": v - 0.05})
            for v in values
        ]

    a = with_acc([0.70, 0.71, 0.69, 0.70, 0.72])
    b = with_acc([0.80, 0.81, 0.79, 0.82, 0.80])
    comps = {c.metric: c for c in stats.compare_groups(a, b, n_boot=500)}
    assert set(comps) == {"accuracy", "balanced_accuracy"}  # no latency data: skipped
    assert comps["accuracy"].verdict == stats.BETTER


def test_wilson_interval_known_value() -> None:
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3)
    assert hi == pytest.approx(0.9433, abs=1e-3)
    assert stats.wilson_interval(0, 10)[0] == 0.0
    assert all(math.isnan(x) for x in stats.wilson_interval(0, 0))


def test_needs_more_repeats() -> None:
    assert stats.needs_more_repeats([], 0.05, cap=10)
    assert stats.needs_more_repeats([100.0, 101.0], 0.05, cap=10)  # fewer than 3
    assert not stats.needs_more_repeats([100.0, 100.5, 99.8], 0.05, cap=10)  # narrow
    noisy = [100.0, 150.0, 70.0, 130.0]
    assert stats.needs_more_repeats(noisy, 0.05, cap=10)
    assert not stats.needs_more_repeats(noisy, 0.05, cap=4)  # cap reached
    assert not stats.needs_more_repeats(noisy, 0.60, cap=10)  # loose target
    assert not stats.needs_more_repeats([5.0, 5.0, 5.0], 0.01, cap=10)


def test_cell_metric_names_are_aliases() -> None:
    """README's ``--fail-on clat_p99_us:+10%``: summary.json's metric names work too."""
    for cell_name, short in (
        ("clat_mean_us", "mean"),
        ("clat_p50_us", "p50"),
        ("clat_p99_us", "p99"),
        ("clat_p999_us", "p999"),
        ("iops", "iops"),
        ("bw_kib_s", "bw"),
        ("CLAT_P99_US", "p99"),
    ):
        assert stats.metric(cell_name).name == short
    assert stats.metric("p99.9").name == "p999"


# --------------------------------------------------------------------------
# Exact numbers: the virtual clock repeats a cell to about 0.1%, often to the
# digit, so intervals collapse and ranks tie. Nothing may divide by zero or
# hand a NaN to a report.


def _exact(n: int, iops: float, lat_ns: float = 40_000.0) -> list[stats.Sample]:
    """``n`` repeats that are identical to the last digit (a deterministic guest)."""
    hist = histogram.histogram_from_samples(np.full(2000, lat_ns))
    return [stats.Sample(hist, {"iops": iops, "kernel_insn_per_io": 15_800.0}) for _ in range(n)]


def _finite_or_none(c: stats.Comparison) -> None:
    for key, value in c.as_dict().items():
        assert not (isinstance(value, float) and not math.isfinite(value)), (key, value)


def test_identical_exact_repeats_compare_as_equal() -> None:
    a = _exact(4, 60_000.0)
    for c in stats.compare_groups(a, _exact(4, 60_000.0), [*stats.DEFAULT_METRICS, "kinsn"]):
        assert (c.change, c.ci_low, c.ci_high, c.p_value) == (0.0, 0.0, 0.0, 1.0)
        assert c.verdict == stats.NO_DIFFERENCE
        _finite_or_none(c)


def test_exact_repeats_that_differ_are_a_significant_difference() -> None:
    """Zero spread on both sides and a real 1% difference: ties within groups only."""
    (c,) = stats.compare_groups(_exact(4, 60_000.0), _exact(4, 59_400.0), ["iops"])
    assert c.change == pytest.approx(-0.01)
    assert c.ci_low == pytest.approx(-0.01) and c.ci_high == pytest.approx(-0.01)
    assert 0 < c.p_value < 0.05
    assert c.verdict == stats.WORSE
    _finite_or_none(c)
    (lat,) = stats.compare_groups(_exact(4, 1.0, 40_000), _exact(4, 1.0, 30_000), ["p99"])
    assert lat.verdict == stats.BETTER and lat.change < 0


def test_ties_across_groups_and_one_repeat_stay_finite() -> None:
    a = _exact(3, 60_000.0) + _exact(1, 60_100.0)
    b = _exact(2, 60_000.0) + _exact(2, 60_100.0)
    for c in stats.compare_groups(a, b, ["iops", "mean", "p99"]):
        _finite_or_none(c)
        assert 0.0 <= c.p_value <= 1.0
    (one,) = stats.compare_groups(_exact(1, 60_000.0), _exact(1, 60_000.0), ["iops"])
    assert one.as_dict()["ci_low"] is None and "at least 2 repeats" in one.note
    assert one.p_value == 1.0 and one.verdict == stats.NO_DIFFERENCE
    (zero,) = stats.compare_groups(_exact(2, 0.0), _exact(2, 0.0), ["iops"])
    assert zero.as_dict()["change"] is None and zero.verdict == stats.NO_DIFFERENCE


def test_adaptive_repeat_stops_at_its_minimum_on_exact_samples() -> None:
    assert stats.needs_more_repeats([60_000.0] * 2, 0.001, cap=10)
    assert not stats.needs_more_repeats([60_000.0] * stats.MIN_REPEATS, 0.001, cap=10)
    assert not stats.needs_more_repeats([0.0] * stats.MIN_REPEATS, 0.001, cap=10)


def test_total_latency_metrics_read_the_total_latency_histogram() -> None:
    """lat_* from the total-latency histogram, the others from clat's; a
    sample without the former falls back to its scalar, and without either
    the metric is not available (never read from the wrong histogram)."""
    clat = histogram.histogram_from_samples([1_000_000.0] * 99 + [2_000_000.0])
    lat = histogram.histogram_from_samples([3_000_000.0] * 99 + [9_000_000.0])
    both = stats.Sample(clat, {}, lat)
    assert stats.per_sample(stats.metric("p50"), [both])[0] == pytest.approx(1000, rel=0.02)
    assert stats.per_sample(stats.metric("lat_p50"), [both])[0] == pytest.approx(3000, rel=0.02)
    assert stats.per_sample(stats.metric("lat_mean"), [both])[0] == pytest.approx(3060)
    assert stats.group_estimate(stats.metric("lat_p99"), [both, both]) == pytest.approx(
        3000, rel=0.02
    )
    old = stats.Sample(clat, {"lat_mean_us": 1234.0})
    assert stats.available(stats.metric("lat_mean"), [old])
    assert stats.per_sample(stats.metric("lat_mean"), [old])[0] == 1234.0
    assert not stats.available(stats.metric("lat_p99"), [old])
    assert not stats.available(stats.metric("lat_p99"), [both, old])


def test_a_side_without_histograms_makes_both_use_the_repeats_values() -> None:
    """Cells recorded before fio kept the total latency's histogram have its
    per-repeat values only: against cells with histograms, both sides are
    estimated from their repeats' values, never one pooled and one averaged."""
    lat = histogram.histogram_from_samples([3_000_000.0] * 99 + [9_000_000.0])
    new = [stats.Sample(None, {"lat_p99_us": 9000.0 + i}, lat) for i in range(4)]
    old = [stats.Sample(None, {"lat_p99_us": 4000.0 + i}) for i in range(4)]
    (c,) = stats.compare_groups(old, new, ["lat_p99"], n_boot=200)
    assert "repeats' own values" in c.note
    assert c.a == pytest.approx(4001.5) and c.b == pytest.approx(9001.5)
    # a side with histograms and no values cannot be matched: left out
    bare = [stats.Sample(None, {}, lat) for _ in range(4)]
    assert stats.compare_groups(old, bare, ["lat_p99"], n_boot=200) == []


def test_histograms_of_two_fio_bucket_widths_are_told_apart_and_noted(fio_repeats) -> None:
    """Runs before the guest's finer fio have Debian's 64 buckets per power
    of two: a histogram's values say which width it has (the guest's fio's
    own reports are of ``FIO_PLAT_BITS``), and a comparison whose sides mix
    the two says so beside the percentiles, not beside the mean."""
    for report, _ in fio_repeats:
        assert histogram.bucket_bits(_hist(report)) == histogram.FIO_PLAT_BITS
    lat = np.random.default_rng(3).lognormal(math.log(50_000), 0.4, size=3000)

    def bucketed(bits: int) -> histogram.Histogram:
        values = [histogram.fio_bucket_value(int(x), bits) for x in lat]
        return histogram.Histogram.from_pairs((v, 1) for v in values)

    fine, coarse = bucketed(histogram.FIO_PLAT_BITS), bucketed(6)
    assert histogram.bucket_bits(fine) == histogram.FIO_PLAT_BITS
    assert histogram.bucket_bits(coarse) == 6
    assert histogram.bucket_bits(histogram.merge_histograms([fine, coarse])) is None
    assert histogram.bucket_bits(histogram.histogram_from_samples([900.0, 1500.0])) is None
    new = [stats.Sample(fine, {}) for _ in range(3)]
    old = [stats.Sample(coarse, {}) for _ in range(3)]
    p99, mean = stats.compare_groups(old, new, ["p99", "mean"], n_boot=200)
    assert "fio bucket widths differ (1/64 to 1/256" in p99.note, p99.note
    assert "within 1.0%" in p99.note and "bucket widths" not in mean.note
    (same,) = stats.compare_groups(new, new, ["p99"], n_boot=200)
    assert "bucket widths" not in same.note
