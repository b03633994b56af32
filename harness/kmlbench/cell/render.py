"""Render the guest shell scripts of ``cell/scripts/`` with a cell's values.

A script is a real ``.sh`` file. The renderer knows four things and no more:

* ``@NAME@`` anywhere in a line is replaced by the value ``NAME``;
* a line that is only ``@NAME@`` is replaced by a block of lines (a list;
  an empty one removes the line): what a script does only sometimes (a
  trainer, a tracer, one line per tunable) is a fragment file that Python
  renders into it;
* ``@include FILE`` on a line of its own inserts that script, rendered
  with the same values (the helpers a family of scripts shares);
* a line whose first non-blank characters are ``##`` is a note for the
  reader of the file and is not sent to the guest.

Every guest path of :mod:`kmlbench.cell.guest_paths` is a value of every
script (``@KML_PARAMS@``). A placeholder without a value, or a value the
script does not use, is an error: a renamed placeholder fails in the tests
instead of reaching a guest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources

from kmlbench.cell.guest_paths import SCRIPT_PATHS

Value = str | Sequence[str]

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_INCLUDE = re.compile(r"^@include ([A-Za-z0-9_.-]+\.sh)$")
_NOTE = re.compile(r"^\s*##")


class RenderError(ValueError):
    """A script and its values do not fit (a missing or unused value, a bad include)."""


@cache
def source(name: str) -> str:
    """The text of ``cell/scripts/<name>`` as shipped."""
    return resources.files("kmlbench.cell").joinpath("scripts", name).read_text()


def lines(name: str, values: Mapping[str, Value] | None = None) -> list[str]:
    """The lines of script ``name`` with ``values`` (and every guest path) filled in."""
    given = dict(values or {})
    clash = sorted(set(given) & set(SCRIPT_PATHS))
    if clash:
        raise RenderError(f"{name}: {', '.join(clash)} is a guest path, not a value")
    used: set[str] = set()
    out = _render(name, {**SCRIPT_PATHS, **given}, used, ())
    unused = sorted(set(given) - used)
    if unused:
        raise RenderError(f"{name}: values not used: {', '.join(unused)}")
    return out


def script(name: str, values: Mapping[str, Value] | None = None) -> str:
    """Script ``name`` rendered, as the guest's shell runs it (newline-terminated)."""
    return "".join(f"{line}\n" for line in lines(name, values))


def command(name: str, values: Mapping[str, Value] | None = None) -> str:
    """A one-line script rendered as a command (no newline)."""
    out = lines(name, values)
    if len(out) != 1:
        raise RenderError(f"{name}: a command is one line, not {len(out)}")
    return out[0]


def _render(
    name: str, values: Mapping[str, Value], used: set[str], including: tuple[str, ...]
) -> list[str]:
    if name in including:
        raise RenderError(f"{name}: includes itself ({' -> '.join((*including, name))})")
    out: list[str] = []
    for number, line in enumerate(source(name).splitlines(), start=1):
        where = f"{name}:{number}"
        if _NOTE.match(line):
            continue
        include = _INCLUDE.match(line)
        if include:
            out += _render(include.group(1), values, used, (*including, name))
            continue
        whole = _PLACEHOLDER.fullmatch(line)
        if whole and not isinstance(values.get(whole.group(1)), str):
            out += _block(where, whole.group(1), values, used)
            continue
        out.append(_substitute(where, line, values, used))
    return out


def _substitute(where: str, line: str, values: Mapping[str, Value], used: set[str]) -> str:
    return _PLACEHOLDER.sub(lambda m: _inline(where, m.group(1), values, used), line)


def _block(where: str, key: str, values: Mapping[str, Value], used: set[str]) -> list[str]:
    if key not in values:
        raise RenderError(f"{where}: no value for @{key}@")
    used.add(key)
    block = values[key]
    assert not isinstance(block, str)
    for line in block:
        if "\n" in line:
            raise RenderError(f"{where}: a line of block @{key}@ holds a newline")
    return list(block)


def _inline(where: str, key: str, values: Mapping[str, Value], used: set[str]) -> str:
    if key not in values:
        raise RenderError(f"{where}: no value for @{key}@")
    value = values[key]
    if not isinstance(value, str):
        raise RenderError(f"{where}: @{key}@ is inside a line, but its value is a block")
    if "\n" in value:
        raise RenderError(f"{where}: the value of @{key}@ holds a newline")
    used.add(key)
    return value
