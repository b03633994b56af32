"""Errors of input that any command may meet, for :func:`kmlbench.cli.main`
to report in one line without importing what raises them."""

from __future__ import annotations


class NotADatabase(ValueError):
    """The path given as the results database cannot be opened as one."""
