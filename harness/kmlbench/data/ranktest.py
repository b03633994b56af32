"""The rank test of two groups of repeats: two-sided Mann-Whitney U, exact
for small groups whether or not their values tie (:mod:`kmlbench.data.stats`
uses it beside the bootstrap interval)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


def min_attainable_p(n_a: int, n_b: int) -> float:
    """Smallest two-sided p of an exact Mann-Whitney U test with these sizes."""
    if n_a == 0 or n_b == 0:
        return 1.0
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


# Up to this many ways of splitting the pooled values, the rank test's p is
# counted exactly (8 repeats a side: 12,870); past it, scipy's normal
# approximation, which is close there.
EXACT_SPLITS = 20_000


def mann_whitney(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value, 1.0 when undefined.

    Exact for small groups, ties or not: the share of all splits of the
    pooled values into groups of these sizes whose rank sum is as extreme
    (:func:`exact_rank_p`). scipy's default turns to a normal approximation
    whenever values tie, as repeats' percentiles do (they are fio bucket
    values), and that gave p below what any split of 3 against 3 can reach.
    """
    if len(a) == 0 or len(b) == 0:
        return 1.0
    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    if np.isnan(xa).any() or np.isnan(xb).any():
        return math.nan  # as scipy: no order to rank
    if np.all(xa == xa[0]) and np.all(xb == xa[0]):
        return 1.0
    if math.comb(len(xa) + len(xb), len(xa)) <= EXACT_SPLITS:
        return exact_rank_p(xa, xb)
    from scipy.stats import mannwhitneyu  # late: run/runner imports stats: no scipy in run

    return float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue)


def exact_rank_p(xa: np.ndarray, xb: np.ndarray) -> float:
    """The permutation p of the rank sum of ``xa`` among all splits of the
    pooled values (mid-ranks for ties, kept exact as doubled integers):
    twice the smaller tail, at most 1."""
    from scipy.stats import rankdata  # late: run/runner imports stats: no scipy in run

    if len(xa) > len(xb):  # the same two-sided p; splits listed by the smaller group
        xa, xb = xb, xa
    pooled = np.concatenate([xa, xb])
    twice = np.rint(2 * rankdata(pooled)).astype(np.int64)
    splits = np.array(list(itertools.combinations(range(len(pooled)), len(xa))))
    sums = twice[splits].sum(axis=1)
    observed = twice[: len(xa)].sum()
    tail = min(np.count_nonzero(sums <= observed), np.count_nonzero(sums >= observed))
    return min(1.0, 2 * tail / len(sums))
