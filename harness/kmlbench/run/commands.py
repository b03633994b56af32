"""The run commands' handlers: ``kmlbench run``, ``build`` and ``trace``.

:mod:`kmlbench.cli` parses the options; these turn them into calls of the
runner, which knows nothing of argparse.
"""

from __future__ import annotations

import argparse

from kmlbench.run import runner, trace


def command_run(args: argparse.Namespace) -> int:
    """``kmlbench run MATRIX`` (or ``--resume RUN_ID``)."""
    return runner.main_run(
        matrix_path=args.matrix,
        resume=args.resume,
        dry_run=args.dry_run,
        accel=args.accel,
        results_root=args.results,
        retry=tuple(x for x in args.retry.split(",") if x),
    )


def command_build(args: argparse.Namespace) -> int:
    """``kmlbench build MATRIX``."""
    return runner.main_build(args.matrix)


def command_trace(args: argparse.Namespace) -> int:
    """``kmlbench trace MATRIX --cell ID -o FILE``: record one cell's samples."""
    return trace.main_trace(
        matrix_path=args.matrix,
        cell=args.cell,
        output=args.output,
        csv_path=args.csv,
        accel=args.accel,
        results_root=args.results,
    )
