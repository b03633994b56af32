"""KML's statistics from inside mq-deadline: parse, check, turn into metrics.

The kernel exposes one text file, ``/sys/kernel/debug/kml/iosched``
(``docs/kml-iosched.md``): ``key value`` counter lines, then the
inference-time histogram as ``inference_ns_hist <lo> <hi> <count>`` lines
and the histogram of the predictions' absolute errors (us) as
``issue_abs_err_us_hist`` lines, from which the median error is read: a few
absurd predictions make the mean mean little.
The runner copies it into the cell folder (``kml_stats.txt``); this module
is the only place that interprets it, so the cell's ``metrics``, its
``kml_stats`` record (what the model figures draw) and ``kmlbench train``'s
holdout report all use one definition of every number.

The prediction is binary: will the request be issued after its deadline?
The **positive class is "miss"**: precision and recall are about catching
misses, which is what ``active`` mode acts on. Every metric whose
denominator is zero is ``None`` (JSON ``null``), never 0 and never a crash:
"no prediction was made" and "every prediction was wrong" must not look
alike in a figure.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kmlbench.data import skill

HIST_KEY = "inference_ns_hist"
ERR_HIST_KEY = "issue_abs_err_us_hist"
# The predictions by score and outcome: bucket b of the kernel's score
# histograms (docs/kml-iosched.md, ``auc_ppm``) printed as ``b b+1 count``.
SCORE_HIST_KEYS = ("score_met_hist", "score_missed_hist")
HIST_KEYS = (HIST_KEY, ERR_HIST_KEY, *SCORE_HIST_KEYS)
CONFUSION_KEYS = ("met_pred_met", "met_pred_miss", "miss_pred_met", "miss_pred_miss")
LABELS = ("met", "miss")  # confusion-matrix rows (actual) and columns (predicted)
# The order of the metrics a cell records (summary.json, the database).
METRIC_NAMES = (
    "accuracy",
    "balanced_accuracy",
    "baseline_accuracy",
    "miss_precision",
    "miss_recall",
    "mcc",
    "auc",
    "best_threshold_balanced",
    "best_threshold_balanced_at_baseline",
    "issue_time_mae_us",
    "issue_time_median_err_us",
    "issue_time_p90_err_us",
    "pred_clamped",
    "below_baseline",
    "skill_windows",
    "skill_windows_unskilled",
    "step_asides",
    "steer_suppressed",
    "skill_holdouts",
    "stepped_aside",
    "judged_accuracy",
    "judged_balanced_accuracy",
    "judged_baseline_accuracy",
    "judged_mcc",
    "inference_ns_p50",
    "inference_ns_p99",
    "ring_dropped",
    "predictions",
)


class KmlStatsError(ValueError):
    """Statistics text that does not follow the format of docs/kml-iosched.md."""


# The kernel's last histogram bucket holds everything from its ``lo`` on:
# its ``hi`` is U64_MAX (kml_dd_hist_bounds(), docs/kml-iosched.md).
OPEN_HI = 2**64 - 1


@dataclass(frozen=True)
class Bucket:
    """``lo <= t < hi`` nanoseconds, ``count`` inferences."""

    lo: int
    hi: int
    count: int

    @property
    def top(self) -> int:
        """``hi``, or for the open last bucket ``lo``: what is known of its
        values is that they are at least that."""
        return self.lo if self.hi == OPEN_HI else self.hi


@dataclass
class KmlStats:
    """The parsed statistics file: counters by name, histogram buckets ascending.

    ``settings`` holds the lines whose value is a word, not a number (the
    kernel prints ``ring_mode block``, ``sample_filter all``). ``histogram``
    is the inference-time one, ``histograms`` every one by key (``HIST_KEYS``).
    """

    counters: dict[str, int] = field(default_factory=dict)
    histogram: list[Bucket] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    histograms: dict[str, list[Bucket]] = field(default_factory=dict)

    def get(self, key: str) -> int:
        """A counter, 0 when the kernel did not print it (an older kernel)."""
        return self.counters.get(key, 0)


def parse_svc(text: str, *, source: str = "kml_svc") -> list[dict[str, int]]:
    """mq-deadline's ``kml_svc``: policy cost's learned service time per seek length.

    One line per learned bucket, ``lo hi ns``: seeks of ``lo`` to ``hi``
    sectors took ``ns`` on average (kernel/kml/kml_dd_cost.c; empty on a
    kernel without policy cost). Ascending
    and disjoint; KmlStatsError names a bad line.
    """
    out: list[dict[str, int]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            lo, hi, ns = (int(w) for w in raw.split())
        except ValueError as exc:
            raise KmlStatsError(f"{source}: line {n}: expected 'lo hi ns': {raw!r}") from exc
        if not 0 <= lo <= hi or ns <= 0 or (out and lo <= out[-1]["hi"]):
            raise KmlStatsError(
                f"{source}: line {n}: needs 0 <= lo <= hi above the last line, ns > 0: {raw!r}"
            )
        out.append({"lo": lo, "hi": hi, "ns": ns})
    return out


def parse_stats(text: str, *, source: str = "kml statistics") -> KmlStats:
    """Parse the statistics file; KmlStatsError names the line of a bad entry.

    Unknown keys are kept (a newer kernel may add counters); a value that
    is a word goes to ``settings``; a malformed line is an error rather
    than skipped, because silently missing a
    counter would make the invariants below lie.
    """
    stats = KmlStats()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        words = line.split()
        try:
            if words[0] in HIST_KEYS:
                if len(words) != 4:
                    raise ValueError(f"expected '{words[0]} lo hi count'")
                lo, hi, count = (int(w) for w in words[1:])
                if not 0 <= lo < hi or count < 0:
                    raise ValueError("bucket needs 0 <= lo < hi and count >= 0")
                stats.histograms.setdefault(words[0], []).append(Bucket(lo, hi, count))
            else:
                if len(words) != 2:
                    raise ValueError("expected 'key value'")
                key, value = words
                if key in stats.counters or key in stats.settings:
                    raise ValueError(f"duplicate key {key!r}")
                if value.lstrip("-").isdigit():
                    stats.counters[key] = int(value)
                elif value[:1].isalpha():
                    stats.settings[key] = value
                else:
                    raise ValueError(f"{key}: {value!r} is neither an integer nor a word")
        except ValueError as exc:
            raise KmlStatsError(f"{source}: line {n}: {exc}: {raw!r}") from exc
    for key, buckets in stats.histograms.items():
        buckets.sort(key=lambda b: b.lo)
        for a, b in itertools.pairwise(buckets):
            if b.lo < a.hi:
                raise KmlStatsError(f"{source}: {key} buckets overlap: {a} and {b}")
    stats.histogram = stats.histograms.get(HIST_KEY, [])
    return stats


def check_invariants(stats: KmlStats) -> list[str]:
    """The problems with the counters; empty when they are consistent.

    These are the invariants of docs/kml-iosched.md, read after the workload
    and the trainer have stopped: then every counter is final and they must
    hold exactly. A counter the kernel did not print is not checked.
    """
    c = stats.counters
    problems = []
    if all(k in c for k in (*CONFUSION_KEYS, "predictions")):
        total = sum(c[k] for k in CONFUSION_KEYS)
        if total != c["predictions"]:
            problems.append(
                f"confusion matrix sums to {total}, but predictions = {c['predictions']}"
            )
    if "ring_consumed" in c and "ring_produced" in c and c["ring_consumed"] > c["ring_produced"]:
        problems.append(f"ring_consumed {c['ring_consumed']} > ring_produced {c['ring_produced']}")
    # every sample is counted once by what became of it (ring_unclaimed:
    # kernels from issue 11's sample_unclaimed on)
    parts: tuple[str, ...] = ("ring_produced", "ring_dropped", "ring_full_waits", "ring_filtered")
    if "samples" in c and all(k in c for k in parts):
        parts += ("ring_unclaimed",) if "ring_unclaimed" in c else ()
        total = sum(c[k] for k in parts)
        if total != c["samples"]:
            problems.append(f"samples = {c['samples']}, but {' + '.join(parts)} = {total}")
    return problems


# --------------------------------------------------------------------------
# Metrics.


def judged_confusion(stats: KmlStats) -> tuple[int, int, int, int] | None:
    """The confusion matrix of active mode's predictions, judged as the
    kernel's skill window judges them (``docs/kml-iosched.md``, "Stepping
    aside"): a predicted miss active mode acted on (``steered_met``,
    ``steered_missed``) may have had its outcome changed by the act, so it
    is left out, and each one held out (``holdout_met``,
    ``holdout_missed``, not acted on) counts ``skill_holdout_weight``
    times, for itself and those acted on. ``None`` when predicted misses
    were acted on and none held out (the step-aside rule off: nothing to
    judge them by), or from a kernel without these counters; the plain
    matrix when nothing was acted on (observe mode, a shadow)."""
    c = stats.counters
    keys = ("steered_met", "steered_missed", "holdout_met", "holdout_missed")
    if not all(k in c for k in (*keys, "skill_holdout_weight")):
        return None
    tn, fp, fn, tp = (stats.get(k) for k in CONFUSION_KEYS)
    s_met, s_missed, h_met, h_missed = (c[k] for k in keys)
    if s_met + s_missed and not h_met + h_missed:
        return None
    extra = c["skill_holdout_weight"] - 1
    # the acted-on are among the predicted misses; a snapshot taken under
    # load may read a count before its part, hence the floor at 0
    return (
        tn,
        max(fp - s_met + extra * h_met, 0),
        fn,
        max(tp - s_missed + extra * h_missed, 0),
    )


def hist_percentile(buckets: Iterable[Bucket], pct: float) -> float | None:
    """The ``pct`` percentile, linearly interpolated inside its bucket.

    With rank ``r = pct/100 * total``, the bucket where the running count
    reaches ``r`` holds the value, at ``lo + (hi - lo) * (r - before) /
    count``: samples are taken as spread evenly over the bucket, the usual
    assumption for a histogram with no finer information; in the open last
    bucket, ``lo`` (:attr:`Bucket.top`). ``None`` for an empty histogram.
    """
    items = [b for b in buckets if b.count > 0]
    total = sum(b.count for b in items)
    if total == 0:
        return None
    rank = pct / 100.0 * total
    before = 0
    for b in items:
        if before + b.count >= rank:
            return b.lo + (b.top - b.lo) * max(0.0, rank - before) / b.count
        before += b.count
    return float(items[-1].top)


def metrics(stats: KmlStats) -> dict[str, float | int | None]:
    """The per-cell metrics (``METRIC_NAMES``) from the statistics.

    Beside the confusion matrix's: the mean absolute error of the predicted
    issue time and, robust to a few absurd predictions, its median and p90
    (from the error histogram; None from a kernel without one);
    ``pred_clamped`` predictions recorded at the clamp (8 x their
    deadline); ``below_baseline`` 1 when :func:`skill.baseline_flags` flags the
    model (accuracy below the majority baseline, or balanced accuracy at
    most 0.5), 0 when not, None without predictions; and the step-aside
    rule's counters (``skill_windows`` judged, ``skill_windows_unskilled``
    of them no better than the baseline, ``step_asides`` times the model
    stopped steering, ``steer_suppressed`` predicted misses active mode did
    not act on, ``skill_holdouts`` predicted misses it left alone while
    steering to measure the model, ``stepped_aside`` the state at the end;
    None from a kernel
    without the rule); ``auc``, the kernel's AUC of the residuals
    lg(predicted / deadline) as a score for "miss", from histograms of an
    eighth of a lg unit (a pair within one bucket counts half), None while
    either outcome has no prediction; ``best_threshold_balanced`` and
    ``best_threshold_balanced_at_baseline``, :func:`skill.best_thresholds` of
    the kernel's score histograms (one threshold for the whole cell: where the
    model or load changed during it, a calibration that moved with them
    could do better; in ``active`` mode they hold the predictions acted
    on, as ``auc`` does);
    ``judged_accuracy``,
    ``judged_balanced_accuracy``, ``judged_baseline_accuracy`` and
    ``judged_mcc``, the same of :func:`judged_confusion`: what active mode's
    predictions were worth, not counting the outcomes its acts changed
    (the plain figures count a predicted miss that was moved ahead and then
    met as a false alarm).
    """
    c = stats
    out = skill.confusion_metrics(*(c.get(k) for k in CONFUSION_KEYS))
    predictions = c.get("predictions")
    result: dict[str, float | int | None] = {name: out.get(name) for name in METRIC_NAMES}
    result["predictions"] = predictions
    result["issue_time_mae_us"] = skill.ratio(c.get("issue_abs_err_us_sum"), predictions)
    err = c.histograms.get(ERR_HIST_KEY, [])
    result["issue_time_median_err_us"] = hist_percentile(err, 50)
    result["issue_time_p90_err_us"] = hist_percentile(err, 90)
    result["below_baseline"] = int(skill.below_baseline(out)) if predictions else None
    # ranking quality, threshold-free: the kernel's own AUC of its score
    # histograms (-1 while an outcome has no prediction; absent: older kernel)
    auc_ppm = c.counters.get("auc_ppm", -1)
    result["auc"] = auc_ppm / 1e6 if auc_ppm >= 0 else None
    best = skill.best_thresholds(
        *({b.lo: b.count for b in c.histograms.get(k, [])} for k in SCORE_HIST_KEYS)
    )
    result["best_threshold_balanced"] = best[0] if best else None
    result["best_threshold_balanced_at_baseline"] = best[1] if best else None
    for key in (
        "pred_clamped", "skill_windows", "skill_windows_unskilled", "step_asides",
        "steer_suppressed", "skill_holdouts", "stepped_aside",
    ):  # fmt: skip
        result[key] = c.counters.get(key)
    judged = judged_confusion(c)
    jm = skill.confusion_metrics(*judged) if judged else {}
    for key in ("accuracy", "balanced_accuracy", "baseline_accuracy", "mcc"):
        result[f"judged_{key}"] = jm.get(key)
    result["inference_ns_p50"] = hist_percentile(c.histogram, 50)
    result["inference_ns_p99"] = hist_percentile(c.histogram, 99)
    result["ring_dropped"] = c.get("ring_dropped")
    return result


# --------------------------------------------------------------------------
# The cell's kml_stats record (docs/reporting.md).


CURVE_STEP_KEYS = ("step", "samples_seen", "samples")
CURVE_VALUE_KEYS = ("loss", "accuracy", "balanced_accuracy", "mae_us")


def parse_curve(text: str) -> dict[str, Any]:
    """A trainer's ``--curve`` JSON lines as lists: ``step`` plus each value key.

    Each line is one evaluation window (``kmlctl train`` writes
    ``samples_seen``, ``accuracy``, ``balanced_accuracy``, ``mae_us``, the
    model scored on the window before training on it). The step is the
    line's ``step``, else ``samples_seen``, else ``samples``, else its
    index (``step_name`` says which key, when not ``step``); a value key is
    kept when every line has it. Lines that are not
    JSON objects (a trainer killed while writing) are skipped: the curve is
    a picture, not a measurement.
    """
    points = []
    for i, line in enumerate(text.splitlines()):
        try:
            point = json.loads(line)
        except ValueError:
            continue
        if isinstance(point, dict):
            points.append((i, point))
    curve: dict[str, Any] = {"step": []}
    for i, p in points:
        step = next((p[k] for k in CURVE_STEP_KEYS if skill.is_number(p.get(k))), i)
        curve["step"].append(float(step))
    for key in CURVE_VALUE_KEYS:
        if points and all(skill.is_number(p.get(key)) for _, p in points):
            curve[key] = [float(p[key]) for _, p in points]
    named = [
        k for k in CURVE_STEP_KEYS if points and all(skill.is_number(p.get(k)) for _, p in points)
    ]
    if named and named[0] != "step":
        curve["step_name"] = named[0]  # what the steps count (figures label the axis)
    return {k: v for k, v in curve.items() if v}


def parse_summary(text: str) -> dict[str, float | str]:
    """``key value`` lines (a trainer's summary) as a dict; numbers as numbers."""
    out: dict[str, float | str] = {}
    for line in text.splitlines():
        words = line.split(None, 1)
        if len(words) != 2:
            continue
        try:
            value: float | str = float(words[1])
        except ValueError:
            value = words[1].strip()
        out[words[0]] = int(value) if isinstance(value, float) and value.is_integer() else value
    return out


def kml_stats_record(
    stats: KmlStats,
    *,
    curve: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``kml_stats`` of a cell, in the shape the model figures read.

    Top-level numbers are the metrics (``kml.<key>`` in comparisons), with
    ``majority_baseline`` and ``n_predictions`` as the figures name them;
    the raw counters stay under ``counters`` so that they do not all become
    comparable metrics. The inference histogram is stored as fio-style
    bins keyed by each bucket's midpoint, which is what
    ``histogram.Histogram`` merges across cells. ``trainer`` (the user
    trainer's summary) is kept under ``trainer``.
    """
    m = metrics(stats)
    record: dict[str, Any] = {k: v for k, v in m.items() if k != "predictions"}
    record["majority_baseline"] = m["baseline_accuracy"]
    record["n_predictions"] = m["predictions"]
    record["labels"] = list(LABELS)
    c = stats
    record["confusion_matrix"] = [
        [c.get("met_pred_met"), c.get("met_pred_miss")],
        [c.get("miss_pred_met"), c.get("miss_pred_miss")],
    ]
    bins: dict[str, int] = {}
    for b in stats.histogram:
        if b.count:
            mid = str((b.lo + b.top) // 2)
            bins[mid] = bins.get(mid, 0) + b.count
    if bins:
        record["inference_ns"] = {"bins": bins}
    if curve and curve.get("step"):
        record["learning_curve"] = dict(curve)
    if trainer:
        record["trainer"] = dict(trainer)
    record["counters"] = dict(stats.counters)
    record["settings"] = dict(stats.settings)
    record["histogram"] = [[b.lo, b.hi, b.count] for b in stats.histogram]
    err = stats.histograms.get(ERR_HIST_KEY)
    if err:
        record["issue_abs_err_us_histogram"] = [[b.lo, b.hi, b.count] for b in err]
    record["baseline_flags"] = skill.baseline_flags(m) if m["predictions"] else []
    return record
