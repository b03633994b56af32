"""How well can any model tell, at insert, which requests will miss?

An analysis, not part of kmlbench (it needs scikit-learn, which the harness
does not): it scores independent learners on the same traces and the same
holdout as ``kmlbench train`` (each trace sorted by insert time, its last
20% held out), so that a kernel model's AUC can be read against what the
information it is given allows.  The learners:

* logistic regression and gradient-boosted trees on the 14 features the
  kernel computes (``docs/kml-iosched.md``, "Features and target");
* the trees again with the queue a request joins, rebuilt from the trace
  (every traced request's insert and dispatch times): how many of its
  direction are queued, of the other direction, how long the oldest of its
  direction has waited, and where it lies against the sweep: whether it is
  at or past the end of its direction's last dispatch (mq-deadline sweeps
  each direction upward from there), how many of its direction lie
  between that point and it, and how many lie past that point.  The
  sweep is approximate: mq-deadline also restarts it at the oldest
  request when one expires or the sort list ends, which depends on what
  happens after the insert.  The kernel computes none of these sweep
  counts: counting them means walking mq-deadline's sort tree;
* the trees with only what is O(1) at insert: the side of its direction's
  last dispatch end it lies on and the distance forward from there, with
  wrap-around, as a share of the span the trace's sectors cover (with
  uniform sectors, the share of its direction's queue the sweep reaches
  first), and that share times the queue.

Usage (docs/benchmarks.md, "How predictable a miss is at insert")::

    python3 -m venv /tmp/ceiling && /tmp/ceiling/bin/pip install numpy scikit-learn
    /tmp/ceiling/bin/python tools/miss-ceiling/ceiling.py TRACE... [--test TRACE...]

``--test`` scores other traces, whole, by the learners trained on the
first traces: configurations they never saw ("On configurations they never
saw").

The traces are ``kmlbench trace`` files of mode-off cells (every request
traced); requests the trace lacks would be missing from the rebuilt queue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "harness"))
from kmlbench.data.trace import NR_FEATURES, TraceError
from kmlbench.kml.samples import load_checked, split
from kmlbench.kml.train import inputs

HOLDOUT = 0.2  # kmlbench train's default (--holdout)
SECTOR = 512


def queue_features(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per request, the queue it joined (rebuilt) and its O(1) sweep position.

    Rebuilt by replaying inserts and dispatches in time order.  Each
    direction's sweep point is the end of its last dispatched request.  A
    request dispatched at its insert (issue time 0) never joins the queue.
    """
    insert = rows["insert_ns"].astype(np.int64)
    issue = insert + rows["issue_ns"].astype(np.int64)
    sector = rows["sector"].astype(np.int64)
    end = sector + rows["bytes"].astype(np.int64) // SECTOR
    op = rows["op"].astype(np.int64)
    span = float(end.max())
    by_issue = np.argsort(issue, kind="stable")
    rebuilt = np.zeros((len(rows), 7))
    cheap = np.zeros((len(rows), 3))
    queued: set[int] = set()
    head = {0: 0, 1: 0}
    next_issue = 0
    for i in np.argsort(insert, kind="stable"):
        while next_issue < len(rows) and issue[by_issue[next_issue]] <= insert[i]:
            j = int(by_issue[next_issue])
            queued.discard(j)
            head[int(op[j])] = int(end[j])
            next_issue += 1
        same = [k for k in queued if op[k] == op[i]]
        secs = sector[same] if same else np.zeros(0, dtype=np.int64)
        s, h = int(sector[i]), head[int(op[i])]
        oldest = int(insert[same].min()) if same else int(insert[i])
        rebuilt[i] = [
            len(same),
            len(queued) - len(same),
            (insert[i] - oldest) / 1e3,
            s >= h,
            np.count_nonzero((secs >= h) & (secs < s)),
            np.count_nonzero(secs >= h),
            np.count_nonzero(secs < s),
        ]
        share = ((s - h) % span) / span
        cheap[i] = [s >= h, share, share * len(same)]
        if issue[i] > insert[i]:
            queued.add(int(i))
    return rebuilt, cheap


def _load(path: Path, warnings: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A trace's rows in insert order (kmlbench train's checks), its labels
    (1: missed), and each learner's inputs."""
    rows = load_checked(path, warnings)
    rows = rows[np.argsort(rows["insert_ns"], kind="stable")]
    x = inputs(rows, NR_FEATURES)
    rebuilt, cheap = queue_features(rows)
    return (
        rows,
        (rows["met"] == 0).astype(int),
        {
            "features": x,
            "features + queue, rebuilt": np.hstack([x, rebuilt]),
            "features + sweep position, O(1)": np.hstack([x, cheap]),
        },
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument(
        "--test",
        nargs="+",
        type=Path,
        default=[],
        help="also score each of these traces, whole, by the learners trained on"
        " the training part of TRACE...: configurations they never saw",
    )
    args = ap.parse_args(argv)
    warnings: list[str] = []
    try:
        # kmlbench train's checks and inputs
        trained = [(path, *_load(path, warnings)) for path in args.traces]
        scored = [(path, *_load(path, warnings)) for path in args.test]
    except (OSError, TraceError) as exc:
        print(f"ceiling: {exc}", file=sys.stderr)
        return 2
    sets: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    labels: list[tuple[np.ndarray, np.ndarray]] = []
    for path, rows, y, data in trained:
        # in insert order, the last HOLDOUT held out (its split)
        cut = len(split(rows, HOLDOUT)[0])
        print(f"{path.name}: {len(rows)} requests, {y.mean():.1%} missed", flush=True)
        for name, x in data.items():
            sets.setdefault(name, []).append((x[:cut], x[cut:]))
        labels.append((y[:cut], y[cut:]))
    tests: list[tuple[str, dict[str, np.ndarray], np.ndarray]] = []
    for path, rows, y, data in scored:
        both = 0 < y.sum() < len(y)
        print(
            f"{path.name}: {len(rows)} requests, {y.mean():.1%} missed, scored whole"
            + ("" if both else ": one class only, not scored"),
            flush=True,
        )
        if both:
            tests.append((path.name, data, y))
    for warning in warnings:
        print(f"ceiling: {warning}", file=sys.stderr)
    y_train = np.concatenate([a for a, _ in labels])
    y_test = np.concatenate([b for _, b in labels])
    print(
        f"holdout: {len(y_test)} requests, {y_test.mean():.1%} missed; AUC, and the"
        " best balanced accuracy of any threshold chosen on the holdout itself"
        " (an upper bound, not a result):"
    )
    for name, parts in sets.items():
        x_train = np.vstack([a for a, _ in parts])
        x_test = np.vstack([b for _, b in parts])
        learners = {"gradient-boosted trees": HistGradientBoostingClassifier(random_state=0)}
        if name == "features":
            learners["logistic regression"] = make_pipeline(
                StandardScaler(), LogisticRegression(max_iter=2000)
            )
        for learner, model in learners.items():
            model.fit(x_train, y_train)
            auc, best = _scores(y_test, model.predict_proba(x_test)[:, 1])
            print(f"  {learner:24} {name:34} {auc:.3f}  {best:.3f}", flush=True)
            for test, data, y in tests:
                auc, best = _scores(y, model.predict_proba(data[name])[:, 1])
                print(f"    {test:30} {y.mean():6.1%} missed  {auc:.3f}  {best:.3f}")
    return 0


def _scores(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """AUC, and the best balanced accuracy of any threshold (an upper bound)."""
    fpr, tpr, _ = roc_curve(y, score)
    return float(roc_auc_score(y, score)), (1 + float(np.max(tpr - fpr))) / 2


if __name__ == "__main__":
    raise SystemExit(main())
