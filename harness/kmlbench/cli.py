"""Command-line entry point: ``kmlbench <command> ...``; every parser lives here.

This is the only module that uses argparse: each command is one entry of
:data:`COMMANDS` (its words, help, the options it takes and the function
that does the work). The work is done by ``command(args)`` functions in the
modules, named as ``"package.module:function"`` and imported only when
their command runs, so that ``kmlbench --help`` stays fast and needs
neither QEMU nor paramiko, matplotlib or scipy (``run --dry-run`` imports
the runner, and with it paramiko, but starts nothing). That by-name
dispatch is the one deliberate late import in the package; every module
imports what it uses at its top.

Kept as one module (over 500 lines): it is the one place argparse may be
used (tests/test_architecture.py), so every command's options live here;
they are data, one small function per command, and split by command they
would only scatter the vocabulary of the command line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kmlbench import __version__
from kmlbench.errors import NotADatabase
from kmlbench.plan.schema import MODEL_DTYPE_DEFAULT, MODEL_DTYPES

ACCELS = ("auto", "kvm", "tcg")
Adder = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Command:
    """One command: ``kmlbench WORDS... [options]`` -> ``handler(args) -> int``."""

    words: tuple[str, ...]
    help: str
    handler: str  # "package.module:function" under kmlbench
    add_arguments: Adder
    description: str | None = None
    epilog: str | None = None


# ------------------------------------------------------------------ options


def _run_args(p: argparse.ArgumentParser) -> None:
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
        choices=ACCELS,
        default="auto",
        help="auto probes KVM by booting a guest and falls back to TCG (default)",
    )
    p.add_argument("--results", type=Path, default=None, help="results folder (default results/)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="N guests at once (Dask)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on this Dask cluster")


def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("matrix", type=Path)


def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-kvm-probe", action="store_true", help="skip booting a KVM guest")
    p.add_argument("--kvm-timeout", type=float, default=20.0, metavar="S")
    p.add_argument("--kernel", type=Path, help="probe KVM by booting this bzImage")


def _kunit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="debian", help="kernel source: debian or a tree path")
    p.add_argument("--config", action="append", type=Path, default=[], help="extra config fragment")
    p.add_argument("--accel", choices=ACCELS, default="auto")
    p.add_argument("--timeout", type=float, default=300, help="insmod/dmesg timeout (s)")
    p.add_argument("--out", type=Path, help="folder for console.log, dmesg.txt, kunit.json")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--parse", type=Path, help="only parse a saved dmesg/console file")
    p.add_argument(
        "--kernel-build",
        type=Path,
        help="use an existing build dir (arch/x86/boot/bzImage, lib/kml/kml_test.ko) "
        "instead of building",
    )


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run folder, or run id (or 'latest') under results/")
    p.add_argument("--db", type=Path, default=None, help="results database")
    p.add_argument("--out", type=Path, default=None, help="report folder (default RUN/report)")
    p.add_argument("--no-fioplot", action="store_true", help="skip fio-plot's graphs")
    p.add_argument(
        "--benchmark",
        type=int,
        metavar="N",
        help="measure: build an N-cell run from host fio, time ingest and report, print sizes",
    )
    p.add_argument("--workdir", type=Path, help="with --benchmark: where to build (default tmp)")


def _figures_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--paper", type=Path, metavar="OUTDIR", help="folder to write PNG + PDF into")
    p.add_argument("--run", metavar="RUN_ID", help="run id (default: the newest in the database)")
    p.add_argument("--db", type=Path, default=None, help="results database")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these figures")
    p.add_argument("--format", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"])
    p.add_argument("--list", action="store_true", help="list the registered figures")


def _judging_args(
    p: argparse.ArgumentParser, *, metrics_help: str, ignore_help: str, html_help: str
) -> None:
    """The options ``compare`` and ``rivals`` share: the database, what to
    compare and how, and where to write it."""
    p.add_argument("--db", type=Path, default=None, help="results database")
    p.add_argument("--metrics", nargs="+", default=None, help=metrics_help)
    p.add_argument("--ignore", action="append", default=[], metavar="KEY", help=ignore_help)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--html", type=Path, metavar="FILE", help=html_help)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the result as JSON")


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="RUN_A RUN_B: run ids or run folders")
    without = "KEY= : the cells without KEY"
    p.add_argument("--a", dest="filter_a", metavar="KEY=VALUE[,...]", help=f"side A ({without})")
    p.add_argument("--b", dest="filter_b", metavar="KEY=VALUE[,...]", help=f"side B ({without})")
    p.add_argument("--run", metavar="RUN", help="with --a/--b: restrict both sides to this run")
    _judging_args(
        p,
        metrics_help="metrics to compare (default: the latency percentiles, mean and IOPS, "
        "plus accuracy metrics when present)",
        ignore_help="a parameter not to match cells on (repeatable; KEY. ignores a prefix)",
        html_help="also write an HTML table",
    )
    p.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC:±N%",
        help="exit 1 on a significant change beyond N%% (repeatable)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="compare even when the sides ran under different clocks or icount shifts",
    )


def _rivals_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run id in the database or a run folder")
    _judging_args(
        p,
        metrics_help="metrics to judge by (default: total mean and p99 latency, IOPS, "
        "late completions)",
        ignore_help="a parameter not to tell loads apart by (repeatable; KEY. ignores a prefix)",
        html_help="also write an HTML page",
    )


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folder or run id under results/")
    p.add_argument("--all", action="store_true", help="every run folder under results/")
    p.add_argument(
        "--db",
        type=Path,
        default=None,
        help="database file (default $KMLBENCH_DB or results/kmlbench.db)",
    )
    p.add_argument("--fresh", action="store_true", help="delete the database file first")
    p.add_argument(
        "--export",
        nargs=2,
        metavar=("FORMAT", "DIR"),
        help="after importing, write every table as FORMAT (csv or parquet) into DIR",
    )


def _trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("matrix", type=Path, help="matrix YAML file")
    p.add_argument(
        "--cell",
        required=True,
        help="cell id (as in 'kmlbench run --dry-run'), its 1-based number in that list, "
        "or a unique prefix of an id",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="trace file to write")
    p.add_argument("--csv", type=Path, default=None, help="also write the samples as CSV")
    p.add_argument("--accel", choices=ACCELS, default="auto", help="as for 'kmlbench run'")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results folder for the cell's run (default results/)",
    )


def _trace_csv_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", type=Path)
    p.add_argument("-o", "--output", type=Path, default=None, help="default stdout")


def _trace_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", type=Path)


def _trace_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("csv", type=Path, help="CSV of requests (columns in docs/trace.md)")
    p.add_argument("-o", "--output", type=Path, required=True, help="trace file to write")
    p.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="the disk's size in 512-byte sectors (default: the end of the furthest request)",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, help="model file to write")
    p.add_argument(
        "--model", type=Path, help="score this saved model on --test instead of training one"
    )
    p.add_argument(
        "--decision-permille",
        type=int,
        default=None,
        help="with --model: the meet/miss threshold (default: MODEL.train.json's, else 1000)",
    )
    p.add_argument("--seed", type=int, default=1)
    _fit_args(p)


def _train_ablate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--loco",
        action="store_true",
        help="leave one configuration out: each --trace in turn is scored by models "
        "trained on the others, all of their rows (no --test; --holdout does not apply)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="train every variant with seeds 1..N; the figures are their means (3)",
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    _fit_args(p)


def _fit_args(p: argparse.ArgumentParser) -> None:
    """The options of every command that trains a deadline model from traces."""
    p.add_argument("--trace", type=Path, action="append", help="trace file (repeatable)")
    p.add_argument(
        "--without",
        metavar="NAME[,NAME...]",
        help="features left out (enum kml_dd_feature's names, as the trace CSV's "
        "feature_ columns): train keeps them as inputs weighted 0, so the kernel loads "
        "the model; ablate drops them from every variant",
    )
    p.add_argument(
        "--test",
        type=Path,
        action="append",
        help="a separate trace to score the model on (repeatable): accuracy beside the "
        "majority baseline, balanced accuracy, MCC",
    )
    # the choices are kml/train.py's ARCHS, checked there (importing it here would
    # load NumPy and libkml for every --help)
    p.add_argument(
        "--arch", default="mlp", help="mlp (the features, --hidden relu units, 1) or linear"
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="fraction of each trace, its last samples in time, kept out of training (0.2)",
    )
    p.add_argument("--hidden", type=int, default=16, help="hidden units of the mlp (16)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (0.01)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--dtype",
        choices=MODEL_DTYPES,
        default=MODEL_DTYPE_DEFAULT,
        help="float32, or fixed: a Q16.16 model the kernel runs without the FPU",
    )


def _bench_lib_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    p.add_argument(
        "--kernel-build",
        type=Path,
        help="kernel build dir for the kernel footprint (default: newest in the cache)",
    )


def _ssh_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("hosts", nargs="+", metavar="HOST", help="machines to reach over SSH")
    p.add_argument("--user", help="SSH user (default: ~/.ssh/config's, or yours)")
    p.add_argument("--ssh-port", type=int, help="SSH port (default 22)")
    p.add_argument("--identity", type=Path, help="SSH private key file")
    p.add_argument("--connect-timeout", type=float, default=30, metavar="S")
    p.add_argument("--dir", default="kmlbench", help="checkout on the hosts (~/kmlbench)")


def _workers_up_args(p: argparse.ArgumentParser) -> None:
    _ssh_args(p)
    p.add_argument("--scheduler", required=True, metavar="tcp://HOST:PORT")
    p.add_argument("--no-setup", action="store_true", help="set up already: start workers only")
    p.add_argument("--nworkers", type=int, default=1, help="worker processes (guests) per host")
    p.add_argument("--worker-host", help="address the workers listen on")
    p.add_argument("--python", help="Python on the hosts (default DIR/.venv/bin/python)")
    p.add_argument("--cache", help="KMLBENCH_CACHE for the workers")
    p.add_argument("--verbose", action="store_true", help="show the setup's output")


def _bench_harness_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="summarise this run id instead of running the benchmark")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _bench_hooks_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "matrix", nargs="?", type=Path, help="a profiled matrix (default workloads/hooks.yaml)"
    )
    p.add_argument("--run", metavar="RUN_ID", help="break down this run instead of running one")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _bench_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--keep", action="store_true", help="keep the temporary cache")


# ------------------------------------------------------------------ commands

COMMANDS: tuple[Command, ...] = (
    Command(
        ("run",),
        "run a matrix file: build, boot, run fio, record results",
        "run.commands:command_run",
        _run_args,
        "Build the kernel(s), boot one QEMU guest per cell, run fio, and write results/<run-id>/.",
    ),
    Command(
        ("build",),
        "build (or find in the cache) the kernel and guest image of a matrix",
        "run.commands:command_build",
        _build_args,
    ),
    Command(
        ("doctor",),
        "check host tools and whether KVM is usable",
        "run.doctor:command",
        _doctor_args,
        "Can this host run the benchmark, and how fast?",
    ),
    Command(
        ("kunit",),
        "run KML's KUnit tests inside a QEMU guest",
        "run.kunit:command",
        _kunit_args,
        "Run KML's KUnit tests inside a QEMU guest.",
    ),
    Command(
        ("report",),
        "write the HTML report and figures of a run",
        "report.report:command",
        _report_args,
        "Write results/<run-id>/report/: index.html, figures (PNG+PDF), fio-plot.",
    ),
    Command(
        ("figures",),
        "regenerate figures from the results database",
        "report.figures:command",
        _figures_args,
        "Draw the registered figures of a run from the results database.",
    ),
    Command(
        ("compare",),
        "compare two runs (or two filters) with statistics",
        "report.compare:command",
        _compare_args,
        "Compare two runs, or two parameter filters, with bootstrap intervals and "
        "Mann-Whitney U tests. A is the baseline.",
        "--fail-on METRIC:+N%% / METRIC:-N%%: exit 1 when METRIC changed significantly "
        "by more than N%% in that direction in any matched configuration.",
    ),
    Command(
        ("rivals",),
        "each KML configuration against the kernel's alternatives",
        "report.rivals:command",
        _rivals_args,
        "Each mq-deadline configuration with KML on against the kernel's alternatives "
        "(stock mq-deadline, none, kyber, bfq) on the same load of a run: bootstrap "
        "intervals and rank tests, and whether it beats every one at every metric.",
    ),
    Command(
        ("import",),
        "rebuild the results database from result folders",
        "data.db.commands:command",
        _import_args,
        "Rebuild the results database from run folders, or export it.",
    ),
    Command(
        ("trace",),
        "record KML's per-request samples from one cell; csv/info",
        "run.commands:command_trace",
        _trace_args,
        "Record KML's per-request samples from a guest running one cell of a matrix "
        "(kml_mode=observe, kmlctl trace during fio), or convert/inspect a trace.",
        "kmlbench trace MATRIX --cell ID_OR_INDEX -o FILE | "
        "kmlbench trace csv FILE [-o OUT.csv] | kmlbench trace info FILE | "
        "kmlbench trace import CSV -o FILE [--capacity SECTORS]",
    ),
    Command(
        ("trace", "csv"),
        "write a trace's samples as CSV",
        "data.trace:command_csv",
        _trace_csv_args,
    ),
    Command(
        ("trace", "info"),
        "summarise a trace",
        "data.trace:command_info",
        _trace_info_args,
    ),
    Command(
        ("trace", "import"),
        "turn a CSV of requests into a trace, features computed by KML's code",
        "kml.trace_import:command",
        _trace_import_args,
    ),
    Command(
        ("train",),
        "train a deadline model offline from traces",
        "kml.train:command",
        _train_args,
        "Train a deadline model offline from kmlbench traces with the user-space KML "
        "library; the file loads into the kernel (model_file: in a matrix). "
        "--test scores it on separate traces; --model M --test FILE scores a saved model.",
        "kmlbench train --trace FILE... -o MODEL [--test FILE...] | "
        "kmlbench train --model MODEL --test FILE... [--decision-permille N] | "
        "kmlbench train ablate --trace FILE... [--test FILE...]",
    ),
    Command(
        ("train", "ablate"),
        "what each feature adds: a model without each, against one with all",
        "kml.ablate:command",
        _train_ablate_args,
        "Train a deadline model with every feature and one without each (the same "
        "architecture, epochs and seeds) and print what each loses: AUC, and balanced "
        "accuracy and MCC at its own calibrated threshold, on the --test traces (else "
        "the holdout).",
        "kmlbench train ablate --trace FILE... [--test FILE... | --loco] [--without NAMES] "
        "[--seeds N] [--json FILE]",
    ),
    Command(
        ("workers", "up"),
        "start Dask workers on hosts over SSH (setup, then dask worker)",
        "execution.workers:command_up",
        _workers_up_args,
        "Copy this checkout to each host, run scripts/setup.sh there, and start a Dask "
        "worker for --scheduler (docs/distributed.md).",
    ),
    Command(
        ("workers", "down"),
        "stop the Dask workers 'workers up' started",
        "execution.workers:command_down",
        _ssh_args,
    ),
    Command(
        ("bench", "lib"),
        "KML library: inference latency, training, footprint",
        "bench.lib:command",
        _bench_lib_args,
        "KML against NumPy and PyTorch: inference latency, training, footprint.",
    ),
    Command(
        ("bench", "harness"),
        "boot time and harness time outside fio per cell",
        "bench.harness:command",
        _bench_harness_args,
        "Where a cell's time goes: boot to SSH-ready, fio's wall time and the "
        "harness's time outside fio.",
    ),
    Command(
        ("bench", "hooks"),
        "kernel instructions per I/O by KML part, off / observe / active",
        "bench.hooks:command",
        _bench_hooks_args,
        "Where KML's kernel instructions go: run a profiled matrix (guest.insn_profile; "
        "default workloads/hooks.yaml) or read --run RUN_ID, and print per mode the "
        "kernel instructions per I/O, the difference against off by part (hooks, "
        "features, clock, prediction, ring, statistics, mq-deadline, rest), the "
        "symbols that moved most, and KML's cost per I/O against off and, with an "
        "off cell on the kernel variant nokml, against that stock path.",
    ),
    Command(
        ("bench", "build"),
        "cold and warm kernel build times",
        "bench.build:command",
        _bench_build_args,
        "Cold and warm kernel build times.",
    ),
)

# Commands with words of their own after a first word that is also a command
# on its own (``trace csv FILE`` beside ``trace MATRIX``): chosen before
# argparse sees the line, because a subparser cannot have both.
_GROUP_HELP = {
    "bench": "micro-benchmarks",
    "workers": "Dask workers on other machines, over SSH",
}
_SINGLE = {c.words for c in COMMANDS if len(c.words) == 1}
_NESTED: dict[tuple[str, ...], Command] = {
    c.words: c for c in COMMANDS if len(c.words) == 2 and c.words[:1] in _SINGLE
}


def _new_parser(command: Command) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kmlbench " + " ".join(command.words),
        description=command.description,
        epilog=command.epilog,
    )
    command.add_arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The full ``kmlbench`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kmlbench",
        description="Benchmark harness for KML, the in-kernel machine-learning engine.",
    )
    parser.add_argument("--version", action="version", version=f"kmlbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        if command.words in _NESTED:
            continue
        first, *rest = command.words
        if not rest:
            p = sub.add_parser(
                first,
                help=command.help,
                description=command.description,
                epilog=command.epilog,
            )
        else:
            if first not in groups:
                group = sub.add_parser(first, help=_GROUP_HELP[first])
                groups[first] = group.add_subparsers(
                    dest=f"{first}_command", required=True, metavar="WHAT"
                )
            p = groups[first].add_parser(
                rest[0], help=command.help, description=command.description
            )
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def parse(argv: Sequence[str]) -> tuple[Command, argparse.Namespace]:
    """The command ``argv`` names and its parsed options (argparse exits on bad input)."""
    nested = _NESTED.get(tuple(argv[:2]))
    if nested is not None:
        return nested, _new_parser(nested).parse_args(list(argv[2:]))
    args = build_parser().parse_args(list(argv))
    return args._command, args


def handler(command: Command) -> Callable[[argparse.Namespace], int]:
    """The function that does ``command``'s work, imported now."""
    module, _, function = command.handler.partition(":")
    found: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(f"kmlbench.{module}"), function
    )
    return found


# Exit status of an error no command caught (a usage error, as compare's 2)
EXIT_UNFORESEEN = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        command, args = parse(argv)
        return int(handler(command)(args))
    except KeyboardInterrupt:
        print("kmlbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``kmlbench run ... --dry-run | head``): stop
        # quietly, and keep Python from failing again on flushing stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except NotADatabase as e:  # --db (or KMLBENCH_DB) names something else
        print(f"kmlbench {argv[0] if argv else ''}: {e}", file=sys.stderr)
        return EXIT_UNFORESEEN
    except (OSError, sqlite3.Error, ValueError, TypeError, KeyError, AttributeError) as e:
        # What a command did not foresee in its input (a file it cannot
        # read or write, a database that is not one, a result file of the
        # wrong shape) is still the input's fault: one line and exit 2.
        # It may be a bug of ours as well: the traceback is kept in a file.
        if os.environ.get("KMLBENCH_DEBUG", "0") not in ("", "0"):
            raise
        name = argv[0] if argv else "kmlbench"
        kept = _keep_traceback()
        print(
            f"kmlbench {name}: error: {type(e).__name__}: {e} "
            f"(where: {kept or 'KMLBENCH_DEBUG=1 shows it'})",
            file=sys.stderr,
        )
        return EXIT_UNFORESEEN


def _keep_traceback() -> str | None:
    """The traceback being handled, in the cache's ``last-error.txt``; its
    path, or None if it cannot be written."""
    import traceback  # late: only on the way out of an error

    from kmlbench.files import atomic_write  # late: as above
    from kmlbench.paths import cache_dir  # late: as above

    path = cache_dir() / "last-error.txt"
    try:
        atomic_write(path, traceback.format_exc())
    except OSError:
        return None
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
