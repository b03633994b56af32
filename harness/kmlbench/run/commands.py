"""The run commands' handlers: ``kmlbench run``, ``build`` and ``trace``.

:mod:`kmlbench.cli` parses the options; these turn them into calls of the
runner, which knows nothing of argparse; ``build`` is whole here.
"""

from __future__ import annotations

import argparse
import sys

from kmlbench import paths
from kmlbench.build import image, kernel
from kmlbench.plan.matrix import load_matrix
from kmlbench.plan.source import MatrixError
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
        jobs=args.jobs,
        scheduler=args.scheduler,
    )


def command_build(args: argparse.Namespace) -> int:
    """``kmlbench build MATRIX``: build every kernel variant and the guest image."""
    try:
        matrix = load_matrix(args.matrix)
    except MatrixError as exc:
        print(f"kmlbench: {exc}")
        return 2
    cache = paths.cache_dir()
    print(f"guest image: {image.build_base_image(cache)}")
    log_dir = cache / "logs"
    for variant in matrix.kernel_variants:
        request = runner.kernel_request(matrix, variant)
        try:
            build = kernel.build_kernel(request, cache, log_dir=log_dir)
        except kernel.KernelBuildError as exc:
            print(f"kmlbench build: kernel {variant}: {exc}", file=sys.stderr)
            return 1
        state = "built" if build.compiled else "cached"
        print(f"kernel {variant}: {state} {build.bzimage} (config {build.config_hash[:12]})")
    return 0


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
