"""``kmlbench train``: fit a deadline model offline from recorded traces.

The model is trained with the user-space build of the very KML sources the
kernel runs (:mod:`kmlbench.kml.model`), and saved in KML's file format, so the
file is what ``model_file:`` in a matrix uploads and ``kmlctl load``
publishes into the kernel. The conventions are those of the in-guest
trainers (``kmlctl train`` and the kernel trainer), so a model trained here
means the same thing there:

* inputs: ``features[:n_features] / 65536`` as float32 (Q16.16 to real),
  normalised by the model (``KML_NORM_STANDARD``: running mean/variance,
  stored in the file);
* target: ``y = log2(1 + issue_ns / 1000)``, the issue time in log-us;
* a request is predicted to meet its deadline when ``(2**y - 1) us <=
  deadline_ns / 1000 * decision_permille / 1000`` (KML's ``kml_dd_meets``
  on ``kml_dd_lg_us_to_ns``, in integer ns, through
  :func:`kmlbench.kml.deadline.dd_meets`); the permille is
  calibrated on the training samples for balanced accuracy (which class
  imbalance cannot game), and printed (and written to
  ``MODEL.train.json``) for the matrix's ``decision_permille``; the AUC
  of the predictions (threshold-free) is reported beside it.

The target and the calibration are KML's (``kernel/kml/kml_dd_calib.h``,
through :mod:`kmlbench.kml.deadline`): the code the kernel trainer and ``kmlctl
train`` run, so the same samples give the same targets and threshold.

The holdout is the **last** fraction of each trace in insert order, not a
random sample: neighbouring requests share queue state, so a random split
would leak the answer into training and flatter the model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kmlbench.data import skill
from kmlbench.data.trace import FEATURE_NAMES, NR_FEATURES, Q16, TraceError
from kmlbench.kml.deadline import (
    DD_CAL_MAX_LG,
    Calibration,
    dd_calibrate,
    dd_meets,
    dd_permille,
    dd_residuals,
    dd_targets,
)
from kmlbench.kml.ffi import KmlError
from kmlbench.kml.model import Model
from kmlbench.kml.samples import load_checked, load_data

ARCHS = ("mlp", "linear")


def inputs(rows: np.ndarray, n_features: int, columns: Sequence[int] | None = None) -> np.ndarray:
    """Model inputs: the first ``n_features`` features (or those of ``columns``,
    in that order) as real numbers (float32)."""
    feats = rows["features"][:, :n_features]
    if columns is not None:
        feats = feats[:, list(columns)]
    return (feats.astype(np.float64) / Q16).astype(np.float32)


def targets(rows: np.ndarray) -> np.ndarray:
    """Training target: ``log2(1 + issue time in us)``, float32, by ``kml_dd_targets``."""
    return dd_targets(rows)


def predicted_issue_us(y: np.ndarray) -> np.ndarray:
    """Issue time (us) a prediction ``y`` stands for, as the kernel computes it
    (``kml_dd_lg_us_to_ns`` through :func:`dd_meets`); a NaN prediction gives 0."""
    issue_ns, _ = dd_meets(y, 0)
    return np.maximum(issue_ns, 0).astype(np.float64) / 1000.0


def predicted_met(y: np.ndarray, deadline_ns: np.ndarray, permille: int = 1000) -> np.ndarray:
    """Whether the prediction says the request is issued by its deadline.

    As the kernel decides, by its code (``kml_dd_meets`` through
    :func:`dd_meets`): predicted issue time <= deadline * permille / 1000 in
    integer ns (``/sys/module/kml/parameters/decision_permille``); a NaN
    prediction is a predicted miss.
    """
    return dd_meets(y, deadline_ns, permille)[1]


def calibrate(y_pred: np.ndarray, rows: np.ndarray) -> Calibration:
    """KML's calibration of the meet/miss call on ``rows`` (``kml_dd_cal_fit``).

    The issue-time model is fitted for its error, not for the meet/miss
    call; the call gets its own threshold on the residuals r = y_pred -
    lg(deadline us), chosen to maximise balanced accuracy (the mean recall
    of met and missed: always answering "meet" scores 0.5 however rare
    misses are, so a skill-less model cannot look good), within a factor 8
    of the deadline, ties to the threshold closest to it. The kernel
    trainer and ``kmlctl train`` run it on their last 1024 residuals of each
    class (met, missed); here it sees every row. It refuses (``thr`` None,
    ``status`` why) while met or missed has fewer than 32 rows or when no
    split beats 0.5.
    """
    return dd_calibrate(dd_residuals(y_pred, rows))


def calibrate_permille(y_pred: np.ndarray, rows: np.ndarray) -> int:
    """The ``decision_permille`` of :func:`calibrate`; 1000 (the deadline) when it refuses."""
    thr = calibrate(y_pred, rows).thr
    return 1000 if thr is None else dd_permille(thr)


def auc(y_pred: np.ndarray, rows: np.ndarray) -> float | None:
    """AUC of the predictions as a score for "missed" (threshold-free ranking
    quality, ties half), as KML computes it; None unless both classes occur."""
    cal = calibrate(y_pred, rows)
    return cal.auc if cal.n_met and cal.n_missed else None


def evaluate(y_pred: np.ndarray, rows: np.ndarray, permille: int = 1000) -> dict[str, Any]:
    """Holdout metrics with the definitions of the kernel's statistics, and the AUC."""
    actual_met = rows["met"].astype(bool)
    pred_met = predicted_met(y_pred, rows["deadline_ns"], permille)
    cm = skill.confusion_metrics(
        int(np.sum(actual_met & pred_met)),
        int(np.sum(actual_met & ~pred_met)),
        int(np.sum(~actual_met & pred_met)),
        int(np.sum(~actual_met & ~pred_met)),
    )
    err = np.abs(predicted_issue_us(y_pred) - rows["issue_ns"].astype(np.float64) / 1000.0)
    cm["issue_time_mae_us"] = float(err.mean()) if len(err) else None
    cm["issue_time_median_err_us"] = float(np.median(err)) if len(err) else None
    cm["auc"] = auc(y_pred, rows)
    return cm


def score(model: Model, rows: np.ndarray, permille: int) -> dict[str, dict[str, Any]]:
    """A model's figures on ``rows``: at ``permille`` and at the deadline (1000)."""
    if model.n_inputs != NR_FEATURES:
        raise ValueError(
            f"the model takes {model.n_inputs} inputs, a trace has {NR_FEATURES} features"
        )
    y = model.predict(inputs(rows, NR_FEATURES))
    return {"calibrated": evaluate(y, rows, permille), "deadline": evaluate(y, rows)}


def fit(
    train_rows: np.ndarray,
    columns: Sequence[int] | None = None,
    *,
    without: Sequence[int] = (),
    arch: str = "mlp",
    hidden: int = 16,
    epochs: int = 20,
    lr: float = 1e-2,
    batch: int = 64,
    seed: int = 1,
    dtype: str = "float32",
) -> tuple[Model, list[float], Calibration]:
    """A model fitted to ``train_rows`` (on the features of ``columns``, all by
    default), its losses, and KML's calibration of its meet/miss call on them.

    A feature in ``without`` stays an input (the kernel feeds every feature)
    that the model ignores: the column is 0 while it trains, so it
    normalises to mean 0 and scale 1 and its first-layer weights, set to 0
    first, get no gradient and stay 0; whatever the kernel feeds there
    then adds nothing.
    """
    n_inputs = NR_FEATURES if columns is None else len(columns)
    if arch == "linear":
        model = Model.linear(n_inputs, normalize=True, seed=seed, dtype=dtype)
    else:
        model = Model.mlp(
            n_inputs, hidden=[hidden], activation="relu", output="linear",
            normalize=True, seed=seed, dtype=dtype,
        )  # fmt: skip
    y = targets(train_rows)
    # Start the output bias at the mean target (the last parameter: per layer
    # W then b): log-us targets sit near 10, far from the zero init, and a
    # linear model would spend most of its epochs just walking there.
    params = model.params
    params[-1] = float(y.mean())
    ignored = [i for i, c in enumerate(columns or range(NR_FEATURES)) if c in without]
    first = params[: model.sizes[1] * n_inputs].reshape(model.sizes[1], n_inputs)
    first[:, ignored] = 0.0
    model.params = params
    x = inputs(train_rows, NR_FEATURES, columns)
    x[:, ignored] = 0.0
    losses = model.fit(x, y, epochs=epochs, lr=lr, batch=batch, loss="mse", seed=seed)
    if ignored and model.layers()[0][0][:, ignored].any():
        raise RuntimeError("a weight of an ignored feature moved in training")  # a KML bug
    return model, losses, calibrate(model.predict(x), train_rows)


def feature_columns(names: str | None) -> list[int]:
    """The columns of a comma-separated list of feature names (``--without``);
    ValueError naming an unknown one, or when nothing would be left."""
    if not names:
        return []
    columns = []
    for name in (n.strip() for n in names.split(",")):
        if name not in FEATURE_NAMES:
            raise ValueError(
                f"--without: no feature {name!r}; the features are {', '.join(FEATURE_NAMES)}"
            )
        columns.append(FEATURE_NAMES.index(name))
    if len(set(columns)) == NR_FEATURES:
        raise ValueError("--without: every feature left out; a model needs one at least")
    return sorted(set(columns))


def check_output(output: Path, what: str = "model file") -> None:
    """ValueError unless ``output`` (a ``what``) can be written: a file in an existing folder."""
    if output.is_dir():
        raise ValueError(f"-o {output}: is a directory; give a {what} name")
    parent = output.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"-o {output}: {parent} is not a folder")
    if not parent.exists():
        raise ValueError(f"-o {output}: folder {parent} does not exist")


@dataclass
class TrainResult:
    n_train: int
    n_holdout: int
    n_features: int
    losses: list[float]
    holdout: dict[str, Any]  # at decision_permille
    holdout_at_deadline: dict[str, Any]  # at 1000: the model's own call
    decision_permille: int
    model_bytes: int
    warnings: list[str]
    calibration: str = "ok"  # Calibration.status on the training set
    test: dict[str, dict[str, Any]] | None = None  # on --test traces: calibrated, deadline
    n_test: int = 0
    ignored: list[str] = field(default_factory=list)  # --without: inputs weighted 0

    def report(self) -> dict[str, Any]:
        """What ``<model>.train.json`` holds next to the model file."""
        return {
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "n_features": self.n_features,
            "ignored_features": self.ignored,
            "losses": self.losses,
            "decision_permille": self.decision_permille,
            "calibration": self.calibration,
            "holdout": self.holdout,
            "holdout_at_deadline": self.holdout_at_deadline,
            "n_test": self.n_test,
            "test": self.test,
        }


def check_options(arch: str, holdout: float, lr: float) -> None:
    """ValueError naming a training option out of its range."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a positive number, got {lr}")


def train_model(
    traces: list[Path],
    output: Path,
    *,
    arch: str = "mlp",
    epochs: int = 20,
    holdout: float = 0.2,
    hidden: int = 16,
    lr: float = 1e-2,
    batch: int = 64,
    seed: int = 1,
    dtype: str = "float32",
    test: list[Path] | None = None,
    without: Sequence[int] = (),
) -> TrainResult:
    """Train on ``traces``, write the model to ``output``, score it on ``test``
    traces if any; TraceError/ValueError on bad input."""
    check_options(arch, holdout, lr)
    check_output(output)
    data_set = load_data(traces, holdout, test)
    warnings = data_set.warnings
    train_rows, hold_rows = data_set.train, data_set.holdout
    n_features = NR_FEATURES
    model, losses, cal = fit(
        train_rows, without=without, arch=arch, hidden=hidden, epochs=epochs, lr=lr,
        batch=batch, seed=seed, dtype=dtype,
    )  # fmt: skip
    permille = 1000 if cal.thr is None else dd_permille(cal.thr)
    if cal.thr is None:
        warnings.append(
            f"calibration refused ({cal.status}: {cal.n_met} met, {cal.n_missed} missed, "
            f"best balanced accuracy {cal.balanced:.3f}): decision_permille stays 1000"
        )
    if permille in (dd_permille(-DD_CAL_MAX_LG), dd_permille(DD_CAL_MAX_LG)):
        warnings.append(
            f"decision_permille {permille} is at the calibration's bound (a factor 8 from the "
            "deadline): the model's predictions and the deadlines disagree; check the traces"
        )
    evaluated = hold_rows if len(hold_rows) else train_rows
    y_eval = model.predict(inputs(evaluated, n_features))
    data = model.to_bytes()
    output.write_bytes(data)
    result = TrainResult(
        len(train_rows),
        len(hold_rows),
        n_features,
        losses,
        evaluate(y_eval, evaluated, permille),
        evaluate(y_eval, evaluated),
        permille,
        len(data),
        warnings,
        cal.status,
        ignored=[FEATURE_NAMES[c] for c in without],
    )
    if data_set.test is not None:
        result.test = score(model, data_set.test, permille)
        result.n_test = len(data_set.test)
    report_path = output.with_name(output.name + ".train.json")
    report_path.write_text(json.dumps(result.report(), indent=1) + "\n")
    return result


def _fmt(v: Any, pct: bool = True) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if pct else f"{v:.1f}"


def figures_line(what: str, n: int, label: str, h: dict[str, Any]) -> str:
    """One line of a model's figures: accuracy beside the majority-class baseline,
    balanced accuracy, AUC and MCC (never accuracy alone), a flag when accuracy
    is below the baseline, MAE and median error, miss precision/recall."""
    below = skill.below_baseline(h)
    return (
        f"{what} ({n} samples) at {label}: "
        f"accuracy {_fmt(h['accuracy'])} (majority baseline {_fmt(h['baseline_accuracy'])}"
        f"{', BELOW BASELINE' if below else ''}), "
        f"balanced accuracy {_fmt(h['balanced_accuracy'])}, AUC {_fmt(h.get('auc'))}, "
        f"MCC {_fmt(h['mcc'])}, "
        f"MAE {_fmt(h['issue_time_mae_us'], pct=False)} us "
        f"(median {_fmt(h.get('issue_time_median_err_us'), pct=False)}), "
        f"miss precision {_fmt(h['miss_precision'])}, recall {_fmt(h['miss_recall'])}"
    )


def _labels(permille: int, how: str) -> list[tuple[str, str]]:
    return [
        ("calibrated", f"decision_permille {permille} ({how})"),
        ("deadline", "decision_permille 1000 (the deadline)"),
    ]


def score_model(
    model_path: Path, tests: list[Path], permille: int | None
) -> tuple[dict[str, dict[str, Any]], int, int, list[str]]:
    """Score a saved model on ``tests``: (figures, n, permille, warnings); the
    permille defaults to the one ``MODEL.train.json`` recorded, else 1000."""
    if permille is None:
        permille = 1000
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            report = json.loads(model_path.with_name(model_path.name + ".train.json").read_text())
            permille = int(report["decision_permille"])
    try:
        model = Model.load(model_path)
    except KmlError as exc:
        raise ValueError(f"--model {model_path}: not a model KML can load ({exc})") from None
    except OSError as exc:
        raise ValueError(f"--model {model_path}: {exc.strerror or exc}") from None
    warnings: list[str] = []
    rows = np.concatenate([load_checked(path, warnings) for path in tests])
    return score(model, rows, permille), len(rows), permille, warnings


def _command_score(args: argparse.Namespace) -> int:
    """``kmlbench train --model M --test FILE...``: a saved model's figures."""
    figures, n, permille, warnings = score_model(args.model, args.test, args.decision_permille)
    for warning in warnings:
        print(f"kmlbench train: warning: {warning}", file=sys.stderr)
    how = "given" if args.decision_permille is not None else "the model's"
    for key, label in _labels(permille, how):
        print(figures_line("test", n, label, figures[key]))
    return 0


def _command_train(args: argparse.Namespace) -> int:
    """Train, calibrate, save; print the holdout's and the test traces' figures."""
    result = train_model(
        args.trace,
        args.output,
        arch=args.arch,
        epochs=args.epochs,
        holdout=args.holdout,
        hidden=args.hidden,
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        dtype=args.dtype,
        test=args.test,
        without=feature_columns(args.without),
    )
    for warning in result.warnings:
        print(f"kmlbench train: warning: {warning}", file=sys.stderr)
    first, last = result.losses[0], result.losses[-1]
    where = "holdout" if result.n_holdout else "training set (no holdout)"
    ignored = f" ({', '.join(result.ignored)} weighted 0)" if result.ignored else ""
    print(
        f"trained {args.arch} on {result.n_train} samples, {result.n_features} features{ignored}, "
        f"{args.epochs} epochs: loss {first:.4f} -> {last:.4f}"
    )
    holdout = {"calibrated": result.holdout, "deadline": result.holdout_at_deadline}
    for key, label in _labels(result.decision_permille, "calibrated"):
        print(figures_line(where, result.n_holdout or result.n_train, label, holdout[key]))
    for key, label in _labels(result.decision_permille, "calibrated") if result.test else []:
        assert result.test is not None
        print(figures_line("test", result.n_test, label, result.test[key]))
    print(f"use it with decision_permille: {result.decision_permille} in the matrix's model entry")
    print(f"wrote {args.output} ({result.model_bytes} bytes) and {args.output}.train.json")
    return 0


def bad_fit_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the training options every ``train`` command takes, or None."""
    if args.arch not in ARCHS:
        return f"--arch must be one of {', '.join(ARCHS)}"
    if args.epochs < 1 or args.batch < 1 or args.hidden < 1:
        return "--epochs, --batch and --hidden must be >= 1"
    return None


def command(args: argparse.Namespace) -> int:
    """``kmlbench train``: train a model (``--trace -o [--test]``) or score one
    (``--model --test``); one line on stderr for any bad input."""
    if args.model is not None:
        if args.trace or args.output is not None or not args.test or args.without:
            print("kmlbench train: --model scores a saved model: give --test FILE and "
                  "neither --trace, -o nor --without", file=sys.stderr)  # fmt: skip
            return 2
    elif not args.trace or args.output is None:
        print("kmlbench train: give --trace FILE and -o MODEL (or --model M --test FILE)",
              file=sys.stderr)  # fmt: skip
        return 2
    bad = bad_fit_args(args)
    if bad:
        print(f"kmlbench train: {bad}", file=sys.stderr)
        return 2
    if args.decision_permille is not None and not 1 <= args.decision_permille <= 64000:
        print("kmlbench train: --decision-permille must be in 1..64000", file=sys.stderr)
        return 2
    try:
        return _command_score(args) if args.model is not None else _command_train(args)
    except (TraceError, ValueError) as exc:
        print(f"kmlbench train: {exc}", file=sys.stderr)
        return 1
    except KmlError as exc:  # e.g. a layer larger than KML takes, a file not a model
        print(f"kmlbench train: the KML library refused the model: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # writing the model
        print(f"kmlbench train: {exc}", file=sys.stderr)
        return 1
