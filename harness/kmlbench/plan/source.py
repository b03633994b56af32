"""A matrix file's YAML, with the line of every key, read against :class:`Field` specs.

Everything is checked before anything runs: a typo in a nightly matrix
must fail in a second with ``FILE:LINE: KEY: message``, not after two
hours of kernel builds. Line numbers come from PyYAML's composed node
tree, which keeps a mark for every key and value. This module owns the
error (:class:`MatrixError`), the parsed file with its line index
(:class:`Source`) and the generic readers every section of a matrix uses:
typed values, mappings, unknown keys and list expansion.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kmlbench.plan.schema import REQUIRED, UNSET, Field

_BS_RE = re.compile(r"^([1-9][0-9]*)([km]?)$")


class MatrixError(Exception):
    """A matrix file problem, located as ``FILE:LINE: KEY: message``.

    ``key`` is a dotted path such as ``axes.device[1].completion_nsec`` so
    that the message still says what is wrong when the line is off (e.g. a
    value reached through a YAML alias).
    """

    def __init__(self, path: Path, line: int | None, key: str, message: str) -> None:
        super().__init__(path, line, key, message)
        self.path = Path(path)
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.key}: {self.message}"


# --------------------------------------------------------------------------
# YAML with line numbers.


def _strip_last(key: str) -> str:
    m = re.match(r"^(.*?)(\.[^.\[\]]+|\[\d+\])$", key)
    return m.group(1) if m else ""


class Source:
    """The parsed file plus the line of every key path, for error messages."""

    def __init__(self, path: Path, lines: dict[str, int]) -> None:
        self.path = path
        self.lines = lines

    def line(self, key: str) -> int | None:
        while key:
            if key in self.lines:
                return self.lines[key]
            key = _strip_last(key)
        return self.lines.get("")

    def error(self, key: str, message: str) -> MatrixError:
        return MatrixError(self.path, self.line(key), key or "(top)", message)


def _node_key(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "?"


def _check_duplicates(node: yaml.Node, prefix: str, path: Path, seen: set[int]) -> None:
    """PyYAML silently keeps the last of two equal keys; a matrix must not."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for k, v in node.value:
            name = _node_key(k)
            if k.tag == "tag:yaml.org,2002:merge":
                continue
            key = f"{prefix}.{name}" if prefix else name
            if name in keys:
                raise MatrixError(path, k.start_mark.line + 1, key, "duplicate key")
            keys.add(name)
            _check_duplicates(v, key, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{prefix}[{i}]", path, seen)


def _index_lines(node: yaml.Node, prefix: str, out: dict[str, int], stack: set[int]) -> None:
    if id(node) in stack:  # a recursive alias; nothing more to learn
        return
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            name = _node_key(k)
            key = f"{prefix}.{name}" if prefix else name
            out[key] = k.start_mark.line + 1  # after merge flattening, explicit keys come last
            _index_lines(v, key, out, stack)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix}[{i}]"
            out[key] = item.start_mark.line + 1
            _index_lines(item, key, out, stack)
    stack.discard(id(node))


def load_yaml(path: Path) -> tuple[Any, Source]:
    try:
        text = path.read_text()
    except OSError as e:
        raise MatrixError(path, None, "(file)", f"cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise MatrixError(path, None, "(file)", f"not UTF-8 text (byte {e.start})") from e
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise MatrixError(path, 1, "(top)", "empty matrix file")
        _check_duplicates(node, "", path, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        message = e.problem or "syntax error"
        if e.context:
            message += f" ({e.context})"
        raise MatrixError(path, line, "(yaml)", message) from e
    except yaml.YAMLError as e:
        raise MatrixError(path, None, "(yaml)", str(e)) from e
    finally:
        loader.dispose()
    lines: dict[str, int] = {"": node.start_mark.line + 1}
    _index_lines(node, "", lines, set())
    return data, Source(path, lines)


# --------------------------------------------------------------------------
# Typed values.


def _kind_name(kind: str) -> str:
    return {
        "int": "an integer",
        "number": "a number",
        "str": "a string",
        "bool": "true or false",
        "bs": "a block size such as 4k, 64k, 1m or 4096",
        "strlist": "a list of strings",
    }[kind]


def typed(src: Source, key: str, value: Any, spec: Field) -> Any:
    """Check ``value`` against ``spec`` and return its canonical form."""
    kind = spec.kind
    ok = False
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "strlist":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif kind == "bs":
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        ok = isinstance(value, str) and bool(_BS_RE.match(value.lower()))
        if ok:
            value = value.lower()
            m = _BS_RE.match(value)
            assert m
            size = int(m.group(1)) * {"": 1, "k": 1024, "m": 1 << 20}[m.group(2)]
            if size % 512:
                raise src.error(key, f"block size {value} is not a multiple of 512 (direct I/O)")
    if not ok:
        raise src.error(key, f"must be {_kind_name(kind)}, got {type(value).__name__} {value!r}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise src.error(key, problem)
    return value


def mapping(src: Source, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise src.error(key, f"must be a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise src.error(f"{key}.{k}" if key else str(k), "keys must be strings")
    return value


def resolve_fields(
    src: Source,
    key: str,
    values: dict[str, Any],
    keypaths: dict[str, str],
    schema: dict[str, Field],
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Typed values for every field of ``schema``, defaults filled in."""
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        if name in values:
            fkey = keypaths.get(name, f"{key}.{name}" if key else name)
            out[name] = typed(src, fkey, values[name], spec)
        elif defaults and name in defaults:
            out[name] = copy.deepcopy(defaults[name])
        elif spec.default is REQUIRED:
            raise src.error(key, f"missing required key {name!r}")
        elif spec.default is UNSET:
            continue
        else:
            out[name] = copy.deepcopy(spec.default)
    return out


def reject_unknown(src: Source, key: str, entry: dict[str, Any], allowed: Any, what: str) -> None:
    for k in entry:
        if k not in allowed:
            raise src.error(
                f"{key}.{k}" if key else k,
                f"unknown key {k!r} in {what} (known: {', '.join(sorted(allowed))})",
            )


def expand(
    src: Source, key: str, entry: dict[str, Any], no_expand: set[str]
) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """Yield one (values, key paths) pair per combination of list-valued fields."""
    options: list[list[tuple[str, Any, str]]] = []
    for name, value in entry.items():
        fkey = f"{key}.{name}"
        if isinstance(value, list) and name not in no_expand:
            if not value:
                raise src.error(fkey, "empty list: give at least one value")
            options.append([(name, v, f"{fkey}[{i}]") for i, v in enumerate(value)])
        else:
            options.append([(name, value, fkey)])
    for combo in itertools.product(*options):
        yield {n: v for n, v, _ in combo}, {n: k for n, _, k in combo}
