"""The kernel's configuration: fragments merged over ``tinyconfig``, then checked.

:func:`configure` runs ``make tinyconfig``, ``merge_config.sh`` with
``base.config``, ``kml.config`` and the request's fragments, and ``make
olddefconfig`` in an object dir, then checks that every requested option
survived (Kconfig silently drops options whose dependencies are missing,
which would otherwise show up much later as a guest that does not boot or
a scheduler that is not there). :func:`config_hash` names a final
``.config`` by its settings; :func:`reuse_config` puts a memoized one back
when nothing Kconfig reads has changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kmlbench import paths
from kmlbench.build.kernel.common import KernelBuildError, Log, run
from kmlbench.plan.kernel import UNSET_RE, merge_order, parse_config_lines


@dataclass(frozen=True)
class ConfigMiss:
    """One requested option that is not in the final .config as asked."""

    symbol: str
    requested: str  # the fragment line, e.g. "CONFIG_VIRTIO_BLK=y"
    actual: str  # the final .config line, or "" if the symbol is absent
    fragment: Path
    line: int


class ConfigError(KernelBuildError):
    """Options requested by fragments did not survive olddefconfig."""

    def __init__(self, message: str, misses: list[ConfigMiss]) -> None:
        super().__init__(message)
        self.misses = misses


def check_config(
    final_config: str, fragments: Sequence[Path], texts: Sequence[str] | None = None
) -> list[ConfigMiss]:
    """Requested options that the final .config does not have as asked.

    Each symbol is checked against the last fragment that mentions it (the
    one merge_config.sh let win). ``# CONFIG_X is not set`` is satisfied
    by the symbol being absent too: a symbol hidden by an unmet dependency
    is, in effect, not set. ``texts``, if given, are the fragments'
    contents (a snapshot); otherwise the files are read.
    """
    if texts is None:
        texts = [f.read_text() for f in fragments]
    requested: dict[str, tuple[str, Path, int]] = {}
    for frag, text in zip(fragments, texts, strict=True):
        for sym, (line, n) in parse_config_lines(text).items():
            requested[sym] = (line, frag, n)
    final = {sym: line for sym, (line, _) in parse_config_lines(final_config).items()}
    misses = []
    for sym, (want, frag, n) in requested.items():
        have = final.get(sym, "")
        # "is not set" is also met by an absent (hidden) symbol.
        ok = have in ("", want) if want.startswith("#") else have == want
        if not ok:
            misses.append(ConfigMiss(sym, want, have, frag, n))
    return misses


def _kconfig_hints(tree: Path, symbols: set[str]) -> dict[str, str]:
    """Where each symbol is defined and what it depends on, for error messages.

    Only a hint (enclosing ``if``/``menu`` dependencies are not followed),
    but it turns "CONFIG_X was dropped" into "CONFIG_X depends on Y".
    """
    names = {s.removeprefix("CONFIG_") for s in symbols}
    hints: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith("Kconfig"):
                continue
            path = Path(dirpath) / fn
            current: str | None = None
            for line in path.read_text(errors="replace").splitlines():
                m = re.match(r"^\s*(?:menu)?config\s+(\w+)\s*$", line)
                if m:
                    current = m.group(1) if m.group(1) in names else None
                    if current:
                        hints.setdefault(current, []).append(f"defined in {path.relative_to(tree)}")
                    continue
                if re.match(r"^\s*(choice|endchoice|menu|endmenu|if|endif|source|comment)\b", line):
                    current = None
                    continue
                dep = re.match(r"^\s*depends on\s+(.*)$", line)
                if current and dep:
                    hints[current].append(f"depends on {dep.group(1).strip()}")
    return {f"CONFIG_{name}": "; ".join(h) for name, h in hints.items()}


def format_config_misses(misses: Sequence[ConfigMiss], tree: Path | None = None) -> str:
    """One line per dropped option: what was asked, where, what came out."""
    hints = _kconfig_hints(tree, {m.symbol for m in misses}) if tree else {}
    lines = [f"{len(misses)} requested config option(s) did not survive olddefconfig:"]
    for m in misses:
        got = f"final .config has '{m.actual}'" if m.actual else "absent from the final .config"
        hint = hints.get(m.symbol)
        if tree is not None and hint is None:
            hint = "no such symbol in this kernel's Kconfig"
        lines.append(
            f"  {m.requested}  ({m.fragment}:{m.line}): {got}" + (f" [{hint}]" if hint else "")
        )
    lines.append("Enable the missing dependencies in the same fragment, or drop the option.")
    return "\n".join(lines)


def config_hash(config_text: str) -> str:
    """sha256 of a .config without its comments and blank lines.

    ``# CONFIG_X is not set`` lines are kept (they are settings); the header
    comments carry the kernel version and sometimes a timestamp, which
    must not make identical configs hash differently.
    """
    keep = [
        line.strip()
        for line in config_text.splitlines()
        if line.strip() and (not line.startswith("#") or UNSET_RE.match(line.strip()))
    ]
    return hashlib.sha256(("\n".join(keep) + "\n").encode()).hexdigest()


def config_fragments(
    req_fragments: Sequence[Path], configs_dir: Path = paths.CONFIGS_DIR
) -> list[Path]:
    """:func:`~kmlbench.plan.kernel.merge_order`'s fragments, each an existing file."""
    result = merge_order(req_fragments, configs_dir)
    for frag in result:
        if not frag.is_file():
            raise KernelBuildError(f"config fragment {frag} does not exist")
    return result


def configure(
    tree: Path,
    build_dir: Path,
    fragments: Sequence[Path],
    log: Log = print,
    texts: Sequence[str] | None = None,
) -> str:
    """Write the final .config into ``build_dir``; return its text.

    tinyconfig first (so that only what the fragments ask for is built:
    a small kernel compiles in minutes), then the fragments merged in
    order, then olddefconfig to resolve dependencies, then the survival
    check, since olddefconfig silently drops what it cannot satisfy.

    With ``texts`` (the fragments' contents, snapshotted by the caller),
    those are merged instead of re-reading the files, so that an edit in
    the middle cannot make the config disagree with its cache key; errors
    still name the original fragment files.
    """
    build_dir.mkdir(parents=True, exist_ok=True)
    if texts is None:
        texts = [f.read_text() for f in fragments]
    snap_dir = build_dir / ".kmlbench-fragments"
    snap_dir.mkdir(exist_ok=True)
    merged = []
    for i, (frag, text) in enumerate(zip(fragments, texts, strict=True)):
        merged.append(snap_dir / f"{i:02d}-{frag.name}")
        merged[-1].write_text(text)
    run(["make", f"O={build_dir}", "tinyconfig"], tree, log, "make tinyconfig")
    merge = tree / "scripts" / "kconfig" / "merge_config.sh"
    # cwd=build_dir: merge_config.sh puts its temp files in the current dir.
    cmd: list[str | Path] = [merge, "-m", "-O", build_dir, build_dir / ".config", *merged]
    run(cmd, build_dir, log, "merge_config.sh")
    run(["make", f"O={build_dir}", "olddefconfig"], tree, log, "make olddefconfig")
    text = (build_dir / ".config").read_text()
    misses = check_config(text, fragments, texts)
    if misses:
        raise ConfigError(format_config_misses(misses, tree), misses)
    return text


def reuse_config(tree: Path, obj: Path, memo: Path, log: Log, note: Log) -> str | None:
    """The memoized final .config for these Kconfig inputs, put in ``obj``; or None.

    Configuring takes three make runs (about 5-9 s); nothing Kconfig reads
    has changed since the memo was written (its key says so), so its text
    is the result. Already in ``obj/.config``: nothing to do (the file keeps
    its mtime); otherwise it is written and ``olddefconfig`` run, which must
    leave it as it is.
    """
    try:
        text = memo.read_text()
    except OSError:
        return None
    cfg = obj / ".config"
    with contextlib.suppress(OSError):
        if cfg.read_text() == text:
            note(f"configuration unchanged (no Kconfig input changed): {cfg}")
            return text
    obj.mkdir(parents=True, exist_ok=True)
    cfg.write_text(text)
    run(["make", f"O={obj}", "olddefconfig"], tree, log, "make olddefconfig")
    if config_hash(cfg.read_text()) != config_hash(text):
        log(f"{memo} does not survive olddefconfig; configuring from scratch")
        return None
    note(f"configuration reused (no Kconfig input changed): {cfg}")
    return text
