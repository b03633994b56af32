"""HTML building blocks of the report and of ``kmlbench compare``: the stylesheet,
escaping, number formatting, key-value tables and tables of comparisons."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 78em;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em;
     border-bottom: 1px solid #ddd; }
.banner { padding: .6em 1em; border-radius: 4px; margin: 1em 0; }
.emulated { background: #fff4e5; border: 1px solid #f0a040; }
.virtual { background: #e8f4ff; border: 1px solid #4a90d9; }
.hardware { background: #eef7ee; border: 1px solid #7a7; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fde8e8; }
.better { color: #1a7f37; font-weight: 600; } .worse { color: #c62828; font-weight: 600; }
figure { display: inline-block; margin: 1em 1em 1em 0; vertical-align: top;
         max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; max-width: 60em; }
pre { background: #f6f8fa; padding: 1em; overflow: auto; font-size: 11px; }
.note { color: #555; font-style: italic; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML text (None: empty)."""
    return html.escape("" if value is None else str(value))


def fmt_value(value: Any, digits: int = 4) -> str:
    """A table cell's number: ``digits`` significant digits, empty for None and NaN."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}g}"
    return str(value)


def kv_table(rows: Sequence[tuple[str, Any]]) -> str:
    """A two-column HTML table: one row per (key, value)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def comparisons_table(rows: Sequence[tuple[str, Any]]) -> str:
    """HTML table of (group label, stats.Comparison) rows (also used by compare)."""
    head = (
        "<tr><th>group</th><th>metric</th><th>n A</th><th>n B</th><th>A</th><th>B</th>"
        "<th>change</th><th>95% CI</th><th>p (U test)</th><th>verdict</th><th>note</th></tr>"
    )
    body = []
    for label, c in rows:
        ci = "" if math.isnan(c.ci_low) else f"[{c.ci_low:+.1%}, {c.ci_high:+.1%}]"
        cls = {"better": "better", "worse": "worse"}.get(c.verdict, "")
        body.append(
            f"<tr><td>{esc(label)}</td><td>{esc(c.label)}</td><td class=num>{c.n_a}</td>"
            f"<td class=num>{c.n_b}</td><td class=num>{fmt_value(c.a)} {esc(c.unit)}</td>"
            f"<td class=num>{fmt_value(c.b)} {esc(c.unit)}</td>"
            f"<td class=num>{'' if math.isnan(c.change) else f'{c.change:+.1%}'}</td>"
            f"<td class=num>{ci}</td><td class=num>{c.p_value:.3g}</td>"
            f"<td class='{cls}'>{esc(c.verdict)}</td><td>{esc(c.note)}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"
