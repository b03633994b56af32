"""The type checker in the loop: mypy over the whole package, as configured.

The configuration (``[tool.mypy]`` in pyproject.toml) holds every module to
``--strict``'s rules; ``tox -e types`` runs the same check.
"""

from __future__ import annotations

import sys

from kmlbench import paths, procs


def test_mypy_passes() -> None:
    result = procs.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"],
        cwd=paths.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
