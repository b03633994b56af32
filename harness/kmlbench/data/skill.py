"""How good a met/miss classifier is: the figures of its confusion matrix
beside the majority-class baseline, the flags for a model no better than
that baseline, and the best thresholds its scores allowed.

The **positive class is "miss"**. Every figure whose denominator is zero
is ``None`` (JSON ``null``), never 0: "no prediction was made" and "every
prediction was wrong" must not look alike. The kernel's statistics
(:mod:`kmlbench.data.kmlstats`) and ``kmlbench train``'s holdout both
take their figures from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def confusion_metrics(
    met_pred_met: int, met_pred_miss: int, miss_pred_met: int, miss_pred_miss: int
) -> dict[str, float | int | None]:
    """Classification metrics of a met/miss confusion matrix (positive = miss).

    * ``accuracy``: (TP + TN) / n.
    * ``balanced_accuracy``: mean recall over the classes that occur (so one
      class alone gives that class's recall; not the 0.5 an absent class
      would add).
    * ``baseline_accuracy``: always predicting the more frequent actual class.
    * ``miss_precision`` TP / (TP + FP), ``miss_recall`` TP / (TP + FN).
    * ``mcc``: Matthews correlation, ``None`` when a row or column is empty
      (it is 0/0 there, and 0 would claim "no better than chance").
    """
    tn, fp, fn, tp = met_pred_met, met_pred_miss, miss_pred_met, miss_pred_miss
    n = tn + fp + fn + tp
    actual_met, actual_miss = tn + fp, fn + tp
    recalls = [r for r in (ratio(tn, actual_met), ratio(tp, actual_miss)) if r is not None]
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return {
        "accuracy": ratio(tp + tn, n),
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else None,
        "baseline_accuracy": ratio(max(actual_met, actual_miss), n),
        "miss_precision": ratio(tp, tp + fp),
        "miss_recall": ratio(tp, actual_miss),
        "mcc": (tp * tn - fp * fn) / math.sqrt(den) if den else None,
        "predictions": n,
    }


def baseline_flags(m: Mapping[str, Any]) -> list[str]:
    """Why a model's figures ``m`` (``confusion_metrics``) are no better than the
    baseline of always answering "meet": ``"below-baseline"`` when its accuracy is
    below the majority-class baseline, ``"no-skill"`` when its balanced accuracy is
    at most 0.5 (chance). Empty when neither holds or the figures are missing."""

    def num(key: str) -> float | None:
        v = m.get(key)
        return float(v) if isinstance(v, int | float) and is_number(v) else None

    flags = []
    acc, base, bal = num("accuracy"), num("baseline_accuracy"), num("balanced_accuracy")
    if acc is not None and base is not None and acc < base:
        flags.append("below-baseline")
    if bal is not None and bal <= 0.5:
        flags.append("no-skill")
    return flags


def below_baseline(m: Mapping[str, Any]) -> bool:
    """Whether :func:`baseline_flags` has anything to say about ``m``."""
    return bool(baseline_flags(m))


def best_thresholds(
    met: Mapping[int, int], missed: Mapping[int, int]
) -> tuple[float, float] | None:
    """The best thresholds on a score, from its histograms by outcome
    (count by bucket, a higher bucket more likely "miss"): the highest
    balanced accuracy of any threshold between two buckets ("miss" from a
    bucket on), and the highest among the thresholds whose accuracy is at
    least the majority baseline's (at least 0.5: answering the majority
    class every time is one of them). ``None`` while either outcome has
    none.
    """
    n_met, n_missed = sum(met.values()), sum(missed.values())
    if not n_met or not n_missed:
        return None
    edges = sorted(set(met) | set(missed))
    # "miss" from the bucket at edges[i] on; i == len(edges): never "miss"
    fp, tp = n_met, n_missed
    best = best_at_baseline = 0.0
    majority = max(n_met, n_missed)
    for i in range(len(edges) + 1):
        if i:
            fp -= met.get(edges[i - 1], 0)
            tp -= missed.get(edges[i - 1], 0)
        balanced = (tp / n_missed + (n_met - fp) / n_met) / 2
        best = max(best, balanced)
        if tp + n_met - fp >= majority:
            best_at_baseline = max(best_at_baseline, balanced)
    return best, best_at_baseline
