"""What a profiled run (``guest: {insn_profile: true}``) needs: the plugin and the symbols.

Before the first cell, the instruction counter
(:mod:`kmlbench.build.qemu_plugin`) is built or found, and each kernel
variant's text symbols are written from its build's ``vmlinux`` to
``cache/qemu-plugin/symbols/<build key>.txt``; the marker symbol must be
among them. The manifest records all of it (``insn_profile``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kmlbench.build.kernel import KernelBuild
from kmlbench.build.qemu_plugin import (
    DEFAULT_MARK,
    PluginBuildError,
    build_plugin,
    kernel_symbols,
    symbol_names,
)
from kmlbench.cell.context import ProfileSpec
from kmlbench.hashing import sha256_file
from kmlbench.plan.matrix import Matrix

__all__ = ["PluginBuildError", "ensure_profiles"]


def ensure_profiles(
    matrix: Matrix,
    builds: dict[str, KernelBuild],
    profiles: dict[str, ProfileSpec],
    manifest: dict[str, Any],
    cache: Path,
) -> None:
    """Fill ``profiles`` (by kernel variant) and ``manifest["insn_profile"]`` for ``builds``.

    Nothing when the matrix is not profiled; :class:`PluginBuildError` when
    the plugin cannot be built or a kernel lacks the marker symbol.
    """
    if not matrix.guest.get("insn_profile"):
        return
    missing = [v for v in builds if v not in profiles]
    if not missing:
        return
    plugin = build_plugin(cache)
    record = manifest.setdefault("insn_profile", {})
    record.update(
        {
            "plugin": str(plugin.path),
            "plugin_key": plugin.key,
            "qemu_source_version": plugin.qemu_source_version,
            "mark": DEFAULT_MARK,
        }
    )
    for variant in missing:
        build = builds[variant]
        out = cache / "qemu-plugin" / "symbols" / f"{build.build_key}.txt"
        symbols = kernel_symbols(build.build_dir, out)
        if DEFAULT_MARK not in symbol_names(symbols):
            raise PluginBuildError(
                f"kernel variant {variant!r} has no {DEFAULT_MARK} (the marker `sync` enters) "
                f"in {symbols}"
            )
        profiles[variant] = ProfileSpec(plugin.path, symbols, DEFAULT_MARK)
        record.setdefault("symbols", {})[variant] = {
            "path": str(symbols),
            "sha256": sha256_file(symbols),
        }
