"""How well can any model tell, at insert, which requests will miss?

An analysis, not part of kmlbench (it needs scikit-learn, which the harness
does not): it scores independent learners on the same traces and the same
holdout as ``kmlbench train`` (each trace's last 20% in time), so that a
kernel model's AUC can be read against what the information it is given
allows.  The learners:

* logistic regression and gradient-boosted trees on the 14 features the
  kernel computes (``docs/kml-iosched.md``, "Features and target");
* the trees again with the queue a request joins, rebuilt from the trace
  (every traced request's insert and dispatch times): how many requests
  of its direction are queued between the head and it in sector order
  (the sorted sweep reaches them first), how many above the head, how many
  of each direction, how long the oldest has waited, and which side of the
  head it lies on.  The kernel does not compute these: counting the sweep
  means walking mq-deadline's sort tree;
* the trees with only what is O(1) at insert: the side of the head and
  the distance from it, forward with wrap-around, as a share of the
  device (with uniform sectors, the share of the queue the sweep serves
  first), and that share times the queue.

Usage (docs/benchmarks.md, "How predictable a miss is at insert")::

    python3 -m venv /tmp/ceiling && /tmp/ceiling/bin/pip install numpy scikit-learn
    /tmp/ceiling/bin/python tools/miss-ceiling/ceiling.py TRACE...

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
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "harness"))
from kmlbench.data.trace import NR_FEATURES, Q16, read_trace

HOLDOUT = 0.2  # kmlbench train's default: each trace's last samples in time
SECTOR = 512


def queue_features(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per request, the queue it joined (exact) and its O(1) sweep position.

    Rebuilt by replaying inserts and dispatches in time order; the head is
    the sector after the last dispatched request, as the kernel's feature 6.
    """
    insert = rows["insert_ns"].astype(np.int64)
    issue = insert + rows["issue_ns"].astype(np.int64)
    sector = rows["sector"].astype(np.int64)
    end = sector + rows["bytes"].astype(np.int64) // SECTOR
    op = rows["op"].astype(np.int64)
    capacity = float(end.max())
    by_issue = np.argsort(issue, kind="stable")
    exact = np.zeros((len(rows), 6))
    cheap = np.zeros((len(rows), 3))
    queued: dict[int, None] = {}
    head, next_issue = 0, 0
    for i in np.argsort(insert, kind="stable"):
        while next_issue < len(rows) and issue[by_issue[next_issue]] <= insert[i]:
            j = int(by_issue[next_issue])
            queued.pop(j, None)
            head = int(end[j])
            next_issue += 1
        same = [k for k in queued if op[k] == op[i]]
        secs = sector[same] if same else np.zeros(0, dtype=np.int64)
        s = int(sector[i])
        if s >= head:
            ahead = int(np.count_nonzero((secs >= head) & (secs < s)))
        else:
            ahead = int(np.count_nonzero((secs >= head) | (secs < s)))
        oldest = int(insert[same].min()) if same else int(insert[i])
        exact[i] = [
            ahead,
            np.count_nonzero(secs >= head),
            len(same),
            len(queued) - len(same),
            (insert[i] - oldest) / 1e3,
            s >= head,
        ]
        share = ((s - head) % capacity) / capacity
        cheap[i] = [s >= head, share, share * len(same)]
        queued[int(i)] = None
    return exact, cheap


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+", type=Path)
    args = ap.parse_args(argv)
    sets: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {
        "features": [],
        "features + queue, exact": [],
        "features + sweep position, O(1)": [],
    }
    labels: list[tuple[np.ndarray, np.ndarray]] = []
    for path in args.traces:
        rows = read_trace(path)
        x = rows["features"][:, :NR_FEATURES].astype(float) / Q16
        exact, cheap = queue_features(rows)
        y = (rows["met"] == 0).astype(int)
        cut = int(len(rows) * (1 - HOLDOUT))
        print(f"{path.name}: {len(rows)} requests, {y.mean():.1%} missed", flush=True)
        for name, data in (
            ("features", x),
            ("features + queue, exact", np.hstack([x, exact])),
            ("features + sweep position, O(1)", np.hstack([x, cheap])),
        ):
            sets[name].append((data[:cut], data[cut:]))
        labels.append((y[:cut], y[cut:]))
    y_train = np.concatenate([a for a, _ in labels])
    y_test = np.concatenate([b for _, b in labels])
    print(f"holdout: {len(y_test)} requests, {y_test.mean():.1%} missed; AUC:")
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
            auc = roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])
            print(f"  {learner:24} {name:34} {auc:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
