"""kmlstats.py: the kernel's statistics text, its invariants and the metrics."""

from __future__ import annotations

import math
import random

import pytest

from kmlbench.data import histogram, kmlstats, skill
from kmlbench.data.kmlstats import Bucket, KmlStatsError, parse_stats

# As /sys/kernel/debug/kml/iosched prints it (docs/kml-iosched.md); the
# confusion matrix is TN=50 FP=10 FN=5 TP=35 (positive = miss).
STATS = """\
abi_version 1
model_loaded 1
model_generation 3
inferences 100
predictions 100
met_pred_met 50
met_pred_miss 10
miss_pred_met 5
miss_pred_miss 35
issue_abs_err_us_sum 12345
samples 130
samples_met 80
untracked 0
ring_produced 100
ring_dropped 20
ring_full_waits 0
ring_filtered 10
ring_consumed 90
updates_applied 3
updates_refused 0
updates_aborted 0
fpu_sections 100
fpu_busy 0
urgent_dispatches 7
ktrainer_samples 0
ktrainer_steps 0
ktrainer_skipped 0
ring_capacity 4096
ring_mode drop
sample_filter all
ktrainer_running 0
inference_ns_hist 100 200 10
inference_ns_hist 200 300 30
inference_ns_hist 300 400 60
"""


def test_parse_keeps_counters_and_histogram() -> None:
    s = parse_stats(STATS)
    assert s.counters["predictions"] == 100
    assert s.counters["urgent_dispatches"] == 7
    assert s.settings == {"ring_mode": "drop", "sample_filter": "all"}
    assert s.histogram == [Bucket(100, 200, 10), Bucket(200, 300, 30), Bucket(300, 400, 60)]
    assert kmlstats.check_invariants(s) == []


@pytest.mark.parametrize(
    ("line", "auc"), [("auc_ppm 845123\n", 0.845123), ("auc_ppm -1\n", None), ("", None)]
)
def test_auc_is_the_kernels_ppm_and_none_without_both_outcomes(
    line: str, auc: float | None
) -> None:
    # -1: an outcome without a prediction; absent: a kernel without the histograms
    assert kmlstats.metrics(parse_stats(STATS + line))["auc"] == auc


def _score_lines(met: dict[int, int], missed: dict[int, int]) -> str:
    return "".join(
        f"{key} {b} {b + 1} {n}\n"
        for key, hist in zip(kmlstats.SCORE_HIST_KEYS, (met, missed), strict=True)
        for b, n in sorted(hist.items())
    )


def _brute_best(met: list[int], missed: list[int]) -> tuple[float, float]:
    """Every threshold "miss from score t on", t from below the lowest score
    to above the highest, counted from the samples one by one."""
    scores = sorted(set(met) | set(missed))
    best = at_baseline = 0.0
    for t in [*scores, scores[-1] + 1]:
        tp = sum(s >= t for s in missed)
        tn = sum(s < t for s in met)
        balanced = (tp / len(missed) + tn / len(met)) / 2
        best = max(best, balanced)
        if tp + tn >= max(len(met), len(missed)):
            at_baseline = max(at_baseline, balanced)
    return best, at_baseline


def test_best_thresholds_read_every_threshold_of_the_score_histograms() -> None:
    rng = random.Random(7)
    for _ in range(200):
        # rare misses ranked a little higher, as on issue 12's cells
        n_met, n_missed = rng.randint(1, 400), rng.randint(1, 40)
        met = [min(127, max(0, int(rng.gauss(60, 8)))) for _ in range(n_met)]
        missed = [min(127, max(0, int(rng.gauss(64, 8)))) for _ in range(n_missed)]
        hist = [{b: s.count(b) for b in set(s)} for s in (met, missed)]
        m = kmlstats.metrics(parse_stats(STATS + _score_lines(*hist)))
        best, at_baseline = _brute_best(met, missed)
        assert m["best_threshold_balanced"] == pytest.approx(best)
        assert m["best_threshold_balanced_at_baseline"] == pytest.approx(at_baseline)
        assert 0.5 <= at_baseline <= best


def test_best_thresholds_where_no_threshold_beats_the_baseline() -> None:
    # 1% miss, ranked well but not well enough: the best threshold finds most
    # misses for some false alarms, which costs more accuracy than the
    # baseline can spare; only answering "met" every time keeps to it
    met, missed = {60: 900, 70: 90}, {60: 2, 70: 8}
    m = kmlstats.metrics(parse_stats(STATS + _score_lines(met, missed)))
    assert m["best_threshold_balanced"] == pytest.approx((8 / 10 + 900 / 990) / 2)
    assert m["best_threshold_balanced_at_baseline"] == 0.5
    # one outcome without a prediction: no ranking to read; an older kernel
    # prints no histograms
    for text in (STATS + _score_lines(met, {}), STATS):
        m = kmlstats.metrics(parse_stats(text))
        assert m["best_threshold_balanced"] is None
        assert m["best_threshold_balanced_at_baseline"] is None


def test_metrics_of_a_hand_computed_confusion_matrix() -> None:
    m = kmlstats.metrics(parse_stats(STATS))
    assert m["predictions"] == 100
    assert m["accuracy"] == pytest.approx(0.85)
    # recall(met) = 50/60, recall(miss) = 35/40
    assert m["balanced_accuracy"] == pytest.approx((50 / 60 + 35 / 40) / 2)
    assert m["baseline_accuracy"] == pytest.approx(0.60)
    assert m["miss_precision"] == pytest.approx(35 / 45)
    assert m["miss_recall"] == pytest.approx(35 / 40)
    assert m["mcc"] == pytest.approx((35 * 50 - 10 * 5) / math.sqrt(45 * 40 * 60 * 55))
    assert m["issue_time_mae_us"] == pytest.approx(123.45)
    # p50: rank 50 falls 10 of 60 into [300, 400); p99: 59 of 60 into it
    assert m["inference_ns_p50"] == pytest.approx(300 + 100 * 10 / 60)
    assert m["inference_ns_p99"] == pytest.approx(300 + 100 * 59 / 60)
    assert m["ring_dropped"] == 20
    assert list(m) == list(kmlstats.METRIC_NAMES)


def test_empty_denominators_are_none_not_zero() -> None:
    nothing = kmlstats.metrics(parse_stats("predictions 0\n"))
    assert nothing["predictions"] == 0
    for key in kmlstats.METRIC_NAMES:
        if key not in ("predictions", "ring_dropped"):
            assert nothing[key] is None, key
    # only met requests, all predicted met: perfect, but nothing about misses
    only_met = skill.confusion_metrics(10, 0, 0, 0)
    assert only_met["accuracy"] == 1.0
    assert only_met["balanced_accuracy"] == 1.0  # the one class present
    assert only_met["baseline_accuracy"] == 1.0
    assert only_met["miss_precision"] is None
    assert only_met["miss_recall"] is None
    assert only_met["mcc"] is None
    # every request a miss, all predicted met: recall 0, precision undefined
    blind = skill.confusion_metrics(0, 0, 8, 0)
    assert blind["accuracy"] == 0.0
    assert blind["miss_recall"] == 0.0
    assert blind["miss_precision"] is None
    # a perfect classifier of both classes
    assert skill.confusion_metrics(3, 0, 0, 2)["mcc"] == pytest.approx(1.0)
    assert skill.confusion_metrics(0, 3, 2, 0)["mcc"] == pytest.approx(-1.0)


def test_percentile_interpolation_edges() -> None:
    one = [Bucket(1000, 2000, 4)]
    assert kmlstats.hist_percentile(one, 50) == pytest.approx(1500)
    assert kmlstats.hist_percentile(one, 100) == pytest.approx(2000)
    assert kmlstats.hist_percentile(one, 0) == pytest.approx(1000)
    assert kmlstats.hist_percentile([], 50) is None
    assert kmlstats.hist_percentile([Bucket(1, 2, 0)], 50) is None
    # empty buckets in between are skipped
    gap = [Bucket(100, 200, 5), Bucket(200, 300, 0), Bucket(400, 500, 5)]
    assert kmlstats.hist_percentile(gap, 60) == pytest.approx(400 + 100 * 1 / 5)


def test_the_open_last_bucket_reads_as_its_lower_bound() -> None:
    """The kernel's last bucket runs to U64_MAX (an inference of 17 ms or
    more, under a preempted vCPU): its values read as at least its lo, and
    the record's bins stay within int64 (the figures' histograms)."""
    open_text = STATS + "inference_ns_hist 16777216 18446744073709551615 2\n"
    stats = parse_stats(open_text)
    assert stats.histogram[-1].hi == kmlstats.OPEN_HI
    assert kmlstats.hist_percentile(stats.histogram, 100) == pytest.approx(16777216)
    tail = [Bucket(100, 200, 1), Bucket(400, kmlstats.OPEN_HI, 3)]
    assert kmlstats.hist_percentile(tail, 90) == pytest.approx(400)
    bins = kmlstats.kml_stats_record(stats)["inference_ns"]["bins"]
    assert bins["16777216"] == 2 and max(map(int, bins)) < 2**63, bins
    hist = histogram.Histogram.from_bins(bins)
    assert hist.percentile(100) == 16777216


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("predictions\n", "line 1: expected 'key value'"),
        ("predictions 1.5\n", "line 1: predictions: '1.5' is neither an integer nor a word"),
        ("a 1\na 2\n", "line 2: duplicate key 'a'"),
        ("inference_ns_hist 1 2\n", "line 1: expected 'inference_ns_hist lo hi count'"),
        ("inference_ns_hist 5 2 1\n", "0 <= lo < hi"),
        ("inference_ns_hist 1 10 1\ninference_ns_hist 5 20 1\n", "overlap"),
    ],
)
def test_malformed_text_names_the_line(text: str, message: str) -> None:
    with pytest.raises(KmlStatsError, match=r"kml_stats\.txt") as info:
        parse_stats(text, source="kml_stats.txt")
    assert message in str(info.value)


def test_invariant_violations_are_reported() -> None:
    bad = STATS.replace("miss_pred_miss 35", "miss_pred_miss 36")
    bad = bad.replace("ring_consumed 90", "ring_consumed 101")
    bad = bad.replace("ring_filtered 10", "ring_filtered 11")
    problems = kmlstats.check_invariants(parse_stats(bad))
    assert problems == [
        "confusion matrix sums to 101, but predictions = 100",
        "ring_consumed 101 > ring_produced 100",
        "samples = 130, but ring_produced + ring_dropped + ring_full_waits + ring_filtered = 131",
    ]


def test_unclaimed_samples_count_towards_the_samples() -> None:
    # a kernel with sample_unclaimed: what nobody held the ring for is a part
    unclaimed = STATS.replace("ring_filtered 10", "ring_filtered 10\nring_unclaimed 7")
    problems = kmlstats.check_invariants(parse_stats(unclaimed))
    assert problems == [
        "samples = 130, but ring_produced + ring_dropped + ring_full_waits + ring_filtered"
        " + ring_unclaimed = 137"
    ]
    fixed = unclaimed.replace("ring_dropped 20", "ring_dropped 13")
    assert kmlstats.check_invariants(parse_stats(fixed)) == []


def test_kml_stats_record_has_the_shape_the_figures_read() -> None:
    curve = kmlstats.parse_curve(
        '{"step": 256, "loss": 1.5, "accuracy": 0.7}\n'
        '{"step": 512, "loss": 0.9, "accuracy": 0.8}\n'
        '{"step": 768, "lo'  # a trainer killed mid-line
    )
    assert curve == {"step": [256.0, 512.0], "loss": [1.5, 0.9], "accuracy": [0.7, 0.8]}
    rec = kmlstats.kml_stats_record(parse_stats(STATS), curve=curve)
    assert rec["accuracy"] == pytest.approx(0.85)
    assert rec["majority_baseline"] == pytest.approx(0.6)
    assert rec["n_predictions"] == 100
    assert rec["labels"] == ["met", "miss"]
    assert rec["confusion_matrix"] == [[50, 10], [5, 35]]
    assert rec["inference_ns"] == {"bins": {"150": 10, "250": 30, "350": 60}}
    assert rec["learning_curve"] == curve
    assert rec["counters"]["urgent_dispatches"] == 7
    # only metrics are top-level numbers (they become kml.<key> in comparisons)
    numeric = {k for k, v in rec.items() if isinstance(v, int | float)}
    assert numeric <= set(kmlstats.METRIC_NAMES) | {"majority_baseline", "n_predictions"}


def test_curve_of_kmlctl_train() -> None:
    curve = kmlstats.parse_curve(
        '{"samples_seen": 256, "samples_consumed": 300, "accuracy": 0.5, '
        '"balanced_accuracy": 0.5, "mae_us": 900.5, "n": 256}\n'
        '{"samples_seen": 512, "samples_consumed": 600, "accuracy": 0.75, '
        '"balanced_accuracy": 0.7, "mae_us": 400.0, "n": 256}\n'
    )
    assert curve == {
        "step": [256.0, 512.0],
        "step_name": "samples_seen",
        "accuracy": [0.5, 0.75],
        "balanced_accuracy": [0.5, 0.7],
        "mae_us": [900.5, 400.0],
    }
    # no step key: the line number
    assert kmlstats.parse_curve('{"loss": 2}\n{"loss": 1}\n') == {
        "step": [0.0, 1.0],
        "loss": [2.0, 1.0],
    }


def test_trainer_summary() -> None:
    text = "samples 100\naccuracy 0.910000\nstopped_by signal\nbroken\n"
    assert kmlstats.parse_summary(text) == {
        "samples": 100,
        "accuracy": 0.91,
        "stopped_by": "signal",
    }


# A kernel with the step-aside rule and the error histogram (issue 12): a model
# that answers "miss" for everything (TN=0 FP=90 FN=0 TP=10), stepped aside.
ASIDE = """\
predictions 100
met_pred_met 0
met_pred_miss 90
miss_pred_met 0
miss_pred_miss 10
issue_abs_err_us_sum 600000000000
pred_clamped 4
skill_windows 3
skill_windows_unskilled 3
skill_windows_inconclusive 1
step_asides 1
step_resumes 0
steer_suppressed 42
skill_balanced_ppm 500000
stepped_aside 1
issue_abs_err_us_hist 8 10 50
issue_abs_err_us_hist 10 12 46
issue_abs_err_us_hist 1048576 1310720 4
"""


def test_a_model_below_baseline_is_flagged_and_its_error_median_is_robust() -> None:
    s = parse_stats(ASIDE)
    m = kmlstats.metrics(s)
    assert m["accuracy"] == pytest.approx(0.10) and m["baseline_accuracy"] == pytest.approx(0.9)
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["below_baseline"] == 1
    assert skill.baseline_flags(m) == ["below-baseline", "no-skill"]
    # four absurd predictions make the mean 6e9 us; the median stays at 10 us
    assert m["issue_time_mae_us"] == pytest.approx(6e9)
    assert m["issue_time_median_err_us"] == pytest.approx(10.0)
    assert m["issue_time_p90_err_us"] == pytest.approx(10 + 2 * 40 / 46)
    assert (m["step_asides"], m["steer_suppressed"], m["stepped_aside"]) == (1, 42, 1)
    assert (m["skill_windows"], m["skill_windows_unskilled"], m["pred_clamped"]) == (3, 3, 4)
    assert s.histogram == []  # the inference histogram is its own
    rec = kmlstats.kml_stats_record(s)
    assert rec["baseline_flags"] == ["below-baseline", "no-skill"]
    assert rec["issue_abs_err_us_histogram"][0] == [8, 10, 50]


def test_a_kernel_without_the_rule_gives_none_and_a_good_model_is_not_flagged() -> None:
    m = kmlstats.metrics(parse_stats(STATS))
    assert m["below_baseline"] == 0
    assert m["stepped_aside"] is None and m["issue_time_median_err_us"] is None
    assert kmlstats.metrics(parse_stats("predictions 0\n"))["below_baseline"] is None


def test_learned_service_times_parse_and_refuse() -> None:
    text = "0 0 1712000\n1024 2047 9100000\n65536 131071 17350000\n"
    assert kmlstats.parse_svc(text) == [
        {"lo": 0, "hi": 0, "ns": 1712000},
        {"lo": 1024, "hi": 2047, "ns": 9100000},
        {"lo": 65536, "hi": 131071, "ns": 17350000},
    ]
    assert kmlstats.parse_svc("") == []
    for bad, why in (
        ("1 2\n", "expected 'lo hi ns'"),
        ("4 7 0\n", "ns > 0"),
        ("8 15 5\n4 7 5\n", "above the last line"),
    ):
        with pytest.raises(kmlstats.KmlStatsError, match=why):
            kmlstats.parse_svc(bad, source="kml_svc.txt")


def _acted(steered_met: int, steered_missed: int, holdout_met: int, holdout_missed: int) -> str:
    return STATS + (
        f"steered_met {steered_met}\nsteered_missed {steered_missed}\n"
        f"holdout_met {holdout_met}\nholdout_missed {holdout_missed}\nskill_holdout_weight 8\n"
    )


def test_judged_figures_leave_out_what_active_mode_acted_on() -> None:
    # nothing acted on (observe, a shadow): the plain matrix
    plain = kmlstats.metrics(parse_stats(_acted(0, 0, 0, 0)))
    assert plain["judged_accuracy"] == plain["accuracy"] == 0.85
    assert plain["judged_balanced_accuracy"] == plain["balanced_accuracy"]
    # of the 45 predicted misses, 7 met and 21 missed after being acted on;
    # 1 met and 3 missed held out: FP 10 - 7 + 7 x 1 = 10, TP 35 - 21 + 7 x 3 = 35
    judged = kmlstats.judged_confusion(parse_stats(_acted(7, 21, 1, 3)))
    assert judged == (50, 10, 5, 35)
    # acted on, the holdouts all missed: the acts' false alarms were the acts'
    m = kmlstats.metrics(parse_stats(_acted(9, 12, 0, 4)))
    tn, fp, fn, tp = 50, 10 - 9, 5, 35 - 12 + 7 * 4
    assert m["judged_accuracy"] == pytest.approx((tn + tp) / (tn + fp + fn + tp))
    assert m["judged_balanced_accuracy"] == pytest.approx((tn / (tn + fp) + tp / (tp + fn)) / 2)
    assert m["judged_balanced_accuracy"] > m["balanced_accuracy"]
    # acted on with no holdout (the step-aside rule off), or an older kernel: no figure
    assert kmlstats.judged_confusion(parse_stats(_acted(7, 21, 0, 0))) is None
    assert kmlstats.metrics(parse_stats(STATS))["judged_accuracy"] is None
