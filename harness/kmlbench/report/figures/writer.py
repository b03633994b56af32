"""Drawing the registered figures into PNG/PDF/SVG files, and ``kmlbench figures``.

Command line::

    kmlbench figures --paper OUTDIR [--run RUN_ID] [--db FILE] [--only NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kmlbench.data import db as kdb
from kmlbench.report.figures.grouping import RunData, load_run_data
from kmlbench.report.figures.registry import FIGURES
from kmlbench.report.figures.style import PNG_DPI, setup_matplotlib


@dataclass
class Rendered:
    """A figure written to files: registry name, title, stem, caption, files by format."""

    name: str  # registry name
    title: str
    stem: str
    caption: str
    files: dict[str, Path]


def render(
    data: RunData,
    out_dir: Path,
    *,
    names: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> tuple[list[Rendered], list[str]]:
    """Draw the registered figures into ``out_dir``; returns (rendered, skipped names)."""
    plt = setup_matplotlib()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered: list[Rendered] = []
    skipped: list[str] = []
    for name, spec in FIGURES.items():
        if names and name not in names:
            continue
        drawn = spec.draw(data)
        if not drawn:
            skipped.append(name)
        for d in drawn:
            files: dict[str, Path] = {}
            # raster first; the vector copies then reuse its layout instead of
            # solving the constrained layout again
            for fmt in sorted(formats, key=lambda f: f != "png"):
                path = out_dir / f"{d.stem}.{fmt}"
                if fmt == "pdf":
                    d.figure.savefig(path, format="pdf", metadata={"CreationDate": None})
                else:
                    d.figure.savefig(path, format=fmt, dpi=PNG_DPI)
                files[fmt] = path
                d.figure.set_layout_engine("none")
            plt.close(d.figure)
            rendered.append(Rendered(name, spec.title, d.stem, d.caption, files))
    return rendered, skipped


def command(args: argparse.Namespace) -> int:
    """``kmlbench figures``: draw a run's figures into --paper (or --list them)."""
    if args.list:
        for spec in FIGURES.values():
            print(f"{spec.name:22} {spec.description}")
        return 0
    if args.paper is None:
        print("kmlbench figures: --paper OUTDIR is required (or --list)", file=sys.stderr)
        return 2
    unknown = sorted(set(args.only or []) - set(FIGURES))
    if unknown:
        print(f"kmlbench figures: unknown figure(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    db_path = args.db or kdb.default_db_path()
    try:
        data = load_run_data(db_path, args.run)
    except (LookupError, FileNotFoundError) as e:
        print(f"kmlbench figures: {e}", file=sys.stderr)
        return 2
    try:
        rendered, skipped = render(data, args.paper, names=args.only, formats=args.format)
    except OSError as e:  # --paper under a file, not writable, ...
        print(f"kmlbench figures: --paper {args.paper}: {e.strerror or e}", file=sys.stderr)
        return 2
    for r in rendered:
        print(f"kmlbench figures: {r.stem}: " + ", ".join(str(p) for p in r.files.values()))
    for name in skipped:
        print(f"kmlbench figures: {name}: skipped (no data for it in run {data.run.run_id})")
    return 0
