"""``kmlbench train ablate``: what each feature adds to a deadline model.

For every feature of ``enum kml_dd_feature`` (the names are the kernel's,
:data:`kmlbench.data.trace.FEATURE_NAMES`), a model is trained without it
(its column dropped from the inputs; the same architecture, epochs and
seeds as the model with every feature) and scored on the same rows. What a
model loses without a feature is what that feature adds *given the
others*: two features that carry the same signal each show little.

The training, target and calibration are ``kmlbench train``'s
(:func:`kmlbench.kml.train.fit`): each model is scored at its own
calibrated threshold (balanced accuracy, MCC, accuracy beside the majority
baseline) and by its AUC (threshold-free). Every variant is trained with
``--seeds`` seeds and the figures are their means; the model with every
feature also shows its seeds' spread, the noise a difference has to exceed
before it says anything.

Where the models are scored decides what the table says. On the holdout
(the last part of each trace) or ``--test`` traces of the same
configurations, it is what a feature adds there. With ``--loco`` each trace
(one configuration each) is scored in turn by models trained on the
others: what a feature adds on a configuration the model never saw, which
is how a feature set that generalises is chosen without looking at the
configurations it will be judged on. ``--without`` leaves features out of
every variant, for the next step of a backward selection.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kmlbench.data.trace import FEATURE_NAMES, NR_FEATURES, TraceError
from kmlbench.kml.deadline import dd_permille
from kmlbench.kml.ffi import KmlError
from kmlbench.kml.samples import MIN_SAMPLES, load_checked, load_data
from kmlbench.kml.train import (
    bad_fit_args,
    check_options,
    evaluate,
    feature_columns,
    fit,
    inputs,
)

# the figures a variant is scored by: mean over the seeds, and the drop
METRICS = ("auc", "balanced_accuracy", "mcc", "accuracy")
MAX_SEEDS = 20


@dataclass
class Variant:
    """One set of inputs: all features (``without`` None) or all but one."""

    without: str | None
    n_inputs: int
    figures: dict[str, float | None]  # mean over the seeds
    spread: dict[str, tuple[float, float] | None]  # (min, max) over the seeds
    drop: dict[str, float | None]  # all features' mean less this one's
    refused: int  # seeds whose calibration refused (threshold left at the deadline)


@dataclass
class Ablation:
    scored_on: str  # "holdout", "test" or "loco" (each trace by the others' models)
    n_train: int  # training rows (of the first fold under loco)
    n_scored: int
    missed_frac: float
    baseline_accuracy: float | None
    seeds: int
    variants: list[Variant]
    warnings: list[str]
    without: list[str]  # left out of every variant (--without)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if len(kept) == len(values) and kept else None


def _less(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _variant(
    folds: list[tuple[np.ndarray, np.ndarray]],
    columns: list[int],
    seeds: int,
    fit_options: dict[str, Any],
) -> tuple[dict[str, list[float | None]], int]:
    """Each metric per seed (its mean over the folds), and how many fits'
    calibrations refused."""
    per_seed: dict[str, list[float | None]] = {m: [] for m in METRICS}
    refused = 0
    for seed in range(1, seeds + 1):
        per_fold: dict[str, list[float | None]] = {m: [] for m in METRICS}
        for train_rows, rows in folds:
            model, _, cal = fit(train_rows, columns, seed=seed, **fit_options)
            refused += cal.thr is None
            permille = 1000 if cal.thr is None else dd_permille(cal.thr)
            y = model.predict(inputs(rows, NR_FEATURES, columns))
            figures = evaluate(y, rows, permille)
            for m in METRICS:
                per_fold[m].append(figures.get(m))
        for m in METRICS:
            per_seed[m].append(_mean(per_fold[m]))
    return per_seed, refused


def _folds(
    traces: list[Path], test: list[Path] | None, holdout: float, loco: bool
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str, int, list[str]]:
    """(training rows, rows to score) per fold, what is scored, how many
    training rows (the first fold's), the traces' warnings."""
    if not loco:
        data = load_data(traces, holdout, test)
        rows = data.test if data.test is not None else data.holdout
        if not len(rows):
            raise ValueError("nothing to score on: give --test traces or a --holdout above 0")
        where = "test" if data.test is not None else "holdout"
        return [(data.train, rows)], where, len(data.train), data.warnings
    if test:
        raise ValueError("--loco scores each --trace with models trained on the others: no --test")
    if len(traces) < 2:
        raise ValueError("--loco needs two --trace files at least, one per configuration")
    warnings: list[str] = []
    parts = [load_checked(path, warnings) for path in traces]
    for path, part in zip(traces, parts, strict=True):
        if len(part) < MIN_SAMPLES:
            raise ValueError(f"{path}: {len(part)} samples; --loco needs {MIN_SAMPLES} per trace")
    folds = [
        (np.concatenate([p for j, p in enumerate(parts) if j != i]), part)
        for i, part in enumerate(parts)
    ]
    return folds, "loco", len(folds[0][0]), warnings


def ablate(
    traces: list[Path],
    *,
    test: list[Path] | None = None,
    holdout: float = 0.2,
    seeds: int = 3,
    loco: bool = False,
    without: Sequence[int] = (),
    **fit_options: Any,
) -> Ablation:
    """The model with every feature (but ``without``'s) and one without each
    more, scored on the ``test`` traces (else the holdout), or with ``loco``
    on each trace by models trained on the others; TraceError/ValueError on
    bad input."""
    check_options(fit_options.get("arch", "mlp"), holdout, fit_options.get("lr", 1e-2))
    if not 1 <= seeds <= MAX_SEEDS:
        raise ValueError(f"--seeds must be in 1..{MAX_SEEDS}, got {seeds}")
    folds, where, n_train, warnings = _folds(traces, test, holdout, loco)
    rows = np.concatenate([scored for _, scored in folds])
    met = rows["issue_ns"].astype(np.uint64) <= rows["deadline_ns"].astype(np.uint64)
    kept = [c for c in range(NR_FEATURES) if c not in without]
    variants: list[Variant] = []
    base: dict[str, float | None] = {}
    for dropped in [None, *kept] if len(kept) > 1 else [None]:
        columns = [c for c in kept if c != dropped]
        per_seed, refused = _variant(folds, columns, seeds, fit_options)
        figures = {m: _mean(per_seed[m]) for m in METRICS}
        if dropped is None:
            base = figures
        spread: dict[str, tuple[float, float] | None] = {}
        for m in METRICS:
            known = [v for v in per_seed[m] if v is not None]
            spread[m] = (min(known), max(known)) if known else None
        drop = {m: _less(base[m], figures[m]) for m in METRICS}
        name = None if dropped is None else FEATURE_NAMES[dropped]
        variants.append(Variant(name, len(columns), figures, spread, drop, refused))
    n_met = int(met.sum())
    return Ablation(
        where,
        n_train,
        len(rows),
        1.0 - n_met / len(rows),
        max(n_met, len(rows) - n_met) / len(rows),
        seeds,
        variants,
        warnings,
        [FEATURE_NAMES[c] for c in without],
    )


def _f(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def table(result: Ablation) -> list[str]:
    """The ablation as a Markdown table: every variant's mean figures and the
    drop against all features (positive: the model is worse without it)."""
    lines = [
        "| inputs | AUC | drop | balanced accuracy | drop | MCC | drop | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in result.variants:
        if v.without is None:
            what = f"{'all' if not result.without else 'these'} {v.n_inputs} (seed spread)"
            cells = []
            for m in METRICS[:3]:
                lo_hi = v.spread[m]
                rng = f" ({lo_hi[0]:.3f}-{lo_hi[1]:.3f})" if lo_hi else ""
                cells += [_f(v.figures[m]) + rng, ""]
        else:
            what = f"without `{v.without}`"
            cells = []
            for m in METRICS[:3]:
                cells += [_f(v.figures[m]), _f(v.drop[m], signed=True)]
        refused = f" ({v.refused} refused)" if v.refused else ""
        lines.append(
            f"| {what}{refused} | " + " | ".join(cells) + f" | {_f(v.figures['accuracy'])} |"
        )
    return lines


def command(args: argparse.Namespace) -> int:
    """``kmlbench train ablate``: print the table (and ``--json``); one line on
    stderr for any bad input."""
    if not args.trace:
        print("kmlbench train ablate: give --trace FILE (and --test FILE to score on)",
              file=sys.stderr)  # fmt: skip
        return 2
    bad = bad_fit_args(args)
    if bad is None and not 1 <= args.seeds <= MAX_SEEDS:
        bad = f"--seeds must be in 1..{MAX_SEEDS}"
    if bad is None and args.loco and args.test:
        bad = "--loco scores each --trace with models trained on the others: no --test"
    if bad:
        print(f"kmlbench train ablate: {bad}", file=sys.stderr)
        return 2
    try:
        result = ablate(
            args.trace, test=args.test, holdout=args.holdout, seeds=args.seeds,
            loco=args.loco, without=feature_columns(args.without), arch=args.arch,
            hidden=args.hidden, epochs=args.epochs, lr=args.lr, batch=args.batch,
            dtype=args.dtype,
        )  # fmt: skip
    except (TraceError, ValueError) as exc:
        print(f"kmlbench train ablate: {exc}", file=sys.stderr)
        return 1
    except KmlError as exc:
        print(f"kmlbench train ablate: the KML library refused the model: {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    for warning in result.warnings:
        print(f"kmlbench train ablate: warning: {warning}", file=sys.stderr)
    arch = f"mlp ({args.hidden} ReLU units)" if args.arch == "mlp" else args.arch
    where = {
        "test": "the --test traces",
        "holdout": "the holdout",
        "loco": "each trace in turn, by models trained on the others",
    }[result.scored_on]
    without = f"; without {', '.join(result.without)} throughout" if result.without else ""
    trained = (
        "trained on the other traces"
        if result.scored_on == "loco"
        else f"trained on {result.n_train} samples"
    )
    print(
        f"{arch}, {args.dtype}, {args.epochs} epochs, seeds 1-{result.seeds}{without}; "
        f"{trained}; scored on {where}: {result.n_scored} samples, "
        f"{100 * result.missed_frac:.1f}% missed (majority baseline "
        f"{_f(result.baseline_accuracy)}); each model at its own calibrated threshold"
    )
    print("\n".join(table(result)))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(asdict(result), indent=1) + "\n")
        except OSError as exc:
            print(f"kmlbench train ablate: --json {args.json}: {exc.strerror or exc}",
                  file=sys.stderr)  # fmt: skip
            return 1
    return 0
