"""The package's shape: no import cycles, imports at the top, small modules with one job.

These read the source with :mod:`ast` (nothing is imported), so a cycle
hidden behind an import inside a function is found as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmlbench import paths

PACKAGE = paths.REPO_ROOT / "harness" / "kmlbench"
MAX_LINES = 500
# A module over MAX_LINES says why in its docstring, with this phrase.
ONE_MODULE = "Kept as one module"
LATE = "# late:"
# The packages from the bottom up: a module imports only from its own layer or
# those below it (docs/architecture.md draws the same picture).
LAYERS = (
    ("base", {"paths", "procs", "files", "hashing", "clock", "progress", "status", "errors"}),
    ("plan", {"plan"}),
    ("data", {"data"}),
    ("build", {"build"}),
    ("guest", {"guest"}),
    ("kml", {"kml"}),
    ("cell", {"cell"}),
    ("execution", {"execution"}),
    ("run", {"run"}),
    ("report", {"report"}),
    ("bench", {"bench"}),
    ("cli", {"cli"}),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[ast.stmt, str]]:
    """Every import statement and the kmlbench module(s) it names."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from kmlbench.run import runner`` depends on the module
            # runner; ``from kmlbench.run.runner import main_run`` on runner
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            yield from ((node, m) for m in submodules)
            if len(submodules) < len(node.names):
                yield node, base


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        graph[name] = {
            target
            for _, target in _imports(tree, name, is_package)
            if target in MODULES and target != name
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_is_found() -> None:
    # guards the tests below against walking an empty or wrong folder
    assert {"kmlbench.cli", "kmlbench.run.runner", "kmlbench.cell.lifecycle"} <= set(MODULES)
    graph = _graph()
    assert "kmlbench.cell.lifecycle" in graph["kmlbench.run.runner"]
    assert sum(len(targets) for targets in graph.values()) > 100


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself: only __version__
        return 0
    for i, (_, names) in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module}: in no layer of tests/test_architecture.py's LAYERS")


def test_packages_import_only_downwards() -> None:
    upward = [
        f"{module} ({LAYERS[_layer(module)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def _late_imports(path: Path) -> list[str]:
    """Imports inside functions or classes that do not say why they are late."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source, str(path))
    late = []
    top: set[int] = set()

    def module_level(body: list[ast.stmt]) -> None:
        # statements run at import: the module's, and those of its top-level
        # ``if TYPE_CHECKING:`` / ``try:`` blocks, but not of functions in them
        for node in body:
            top.add(id(node))
            if isinstance(node, ast.If):
                module_level(node.body)
                module_level(node.orelse)
            elif isinstance(node, ast.Try):
                module_level(node.body)
                module_level(node.orelse)
                module_level(node.finalbody)
                for handler in node.handlers:
                    module_level(handler.body)

    module_level(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top:
            around = " ".join(lines[max(node.lineno - 3, 0) : node.lineno])
            if LATE not in around:
                late.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {lines[node.lineno - 1]}")
    return late


def test_imports_are_at_the_top() -> None:
    late = [line for path in MODULES.values() for line in _late_imports(path)]
    assert not late, f"imports inside functions (mark a needed one '{LATE} why'):\n" + "\n".join(
        late
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_its_job(name: str) -> None:
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    doc = ast.get_docstring(tree)
    assert doc and len(doc.split()) >= 4, f"{path}: a docstring that says the module's one job"
    n_lines = len(path.read_text().splitlines())
    if n_lines > MAX_LINES:
        assert ONE_MODULE in doc, (
            f"{path}: {n_lines} lines (> {MAX_LINES}); split it by job, or say in its "
            f"docstring why it must be one ('{ONE_MODULE} ...')"
        )


def test_only_cli_builds_parsers() -> None:
    users = sorted(
        name
        for name, path in MODULES.items()
        if "ArgumentParser(" in path.read_text() and name != "kmlbench.cli"
    )
    assert not users, f"argparse parsers outside kmlbench.cli: {users}"
