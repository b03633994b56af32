"""Command-line entry point: ``kmlbench <command> ...``.

Only argument parsing lives here. Each command's work is done by its own
module, imported lazily so that ``kmlbench --help`` stays fast and needs
neither QEMU, a compiler nor paramiko (``run --dry-run`` imports the
runner, and with it paramiko, but starts nothing).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kmlbench import __version__


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a matrix file: build, boot, run fio, record results",
        description="Build the kernel(s), boot one QEMU guest per cell, run fio, "
        "and write results/<run-id>/.",
    )
    p.add_argument("matrix", nargs="?", type=Path, help="matrix YAML file")
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue an interrupted run: only cells without a record are run",
    )
    p.add_argument(
        "--retry",
        metavar="STATUS[,STATUS]",
        default="",
        help="with --resume: also re-run cells that ended so (e.g. infra-error,timeout); "
        "their earlier attempt is kept in the cell's attempt-N/ folder",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="validate and list the cells, run nothing"
    )
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="auto probes KVM by booting a guest and falls back to TCG (default)",
    )
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/)")


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="build (or find in the cache) the kernel and guest image of a matrix",
    )
    p.add_argument("matrix", type=Path)


def _passthrough(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    # Commands whose modules own their own argument parsing.
    p = sub.add_parser(name, help=help_text, add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)


def build_parser() -> argparse.ArgumentParser:
    """The full ``kmlbench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kmlbench",
        description="Benchmark harness for KML, the in-kernel machine-learning engine.",
    )
    parser.add_argument("--version", action="version", version=f"kmlbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_build(sub)
    _passthrough(sub, "doctor", "check host tools and whether KVM is usable")
    _passthrough(sub, "kunit", "run KML's KUnit tests inside a QEMU guest")
    _passthrough(sub, "report", "write the HTML report and figures of a run")
    _passthrough(sub, "figures", "regenerate figures from the results database")
    _passthrough(sub, "compare", "compare two runs (or two filters) with statistics")
    _passthrough(sub, "import", "rebuild the results database from result folders")
    _passthrough(sub, "trace", "record KML's per-request samples from one cell; csv/info")
    _passthrough(sub, "train", "train a deadline model offline from traces")
    bench = sub.add_parser("bench", help="micro-benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    _passthrough(bench_sub, "lib", "KML library: inference latency, training, footprint")
    _passthrough(bench_sub, "harness", "boot time and harness time outside fio per cell")
    _passthrough(bench_sub, "build", "cold and warm kernel build times")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    target = _passthrough_target(argv)
    try:
        if target is not None:
            import importlib

            module, rest = target
            return int(importlib.import_module(f"kmlbench.{module}").main(rest))
        return _dispatch(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("kmlbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``kmlbench run ... --dry-run | head``): stop
        # quietly, and keep Python from failing again on flushing stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# Commands whose module parses its own arguments: ``main(argv) -> int``.
# They are dispatched before argparse sees them, because REMAINDER would
# not pass on options that come before the first positional argument.
_PASSTHROUGH_MODULES = {
    ("doctor",): "run.doctor",
    ("kunit",): "run.kunit",
    ("report",): "report.report",
    ("figures",): "report.figures",
    ("compare",): "report.compare",
    ("import",): "data.db",
    ("trace",): "data.trace",
    ("train",): "kml.train",
    ("bench", "lib"): "bench.lib",
    ("bench", "harness"): "bench.harness",
    ("bench", "build"): "bench.build",
}


def _passthrough_target(argv: list[str]) -> tuple[str, list[str]] | None:
    for words, module in _PASSTHROUGH_MODULES.items():
        if tuple(argv[: len(words)]) == words:
            return module, argv[len(words) :]
    return None


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from kmlbench.run import runner

        return runner.main_run(
            matrix_path=args.matrix,
            resume=args.resume,
            dry_run=args.dry_run,
            accel=args.accel,
            results_root=args.results,
            retry=tuple(x for x in args.retry.split(",") if x),
        )
    if args.command == "build":
        from kmlbench.run import runner

        return runner.main_build(args.matrix)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
