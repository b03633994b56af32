"""KML's footprint in the kernel, read from a build: the allocated
sections of ``lib/kml/built-in.a`` (or ``kml.ko``) by readelf, sorted into
what the kernel keeps resident, frees after boot, never loads, and keeps
for each CPU; in all and per object (``kmlbench bench lib``'s footprint).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from pathlib import Path

from kmlbench import paths, procs

# What becomes of an object's allocated sections in the kernel (x86,
# arch/x86/kernel/vmlinux.lds.S and include/asm-generic/vmlinux.lds.h):
# the link of vmlinux discards .modinfo, .discard.* and .exitcall.exit
# (and the module loader a module's .modinfo); what lies between
# __init_begin and __init_end is freed after boot: the init sections, the
# initcall tables, .exit.* (RUNTIME_DISCARD_EXIT) and the alternatives'
# and retpolines' patch sites. The rest (text, read-only data, data, the
# export tables), bss apart, stays resident. In a module only the init
# sections are freed: with module unloading, .exit.* and the patch sites
# stay. Per-CPU data (.data..percpu) is a template, copied for each
# possible CPU: on x86-64 SMP vmlinux links it among the init sections and
# frees it, and the module loader does not keep it either; it is counted
# apart, as bytes per CPU.
_DISCARDED = (".modinfo", ".discard", ".exitcall.exit")
_PER_CPU = ".data..percpu"
_FREED_ALWAYS = (".init.", ".initcall", ".con_initcall.init", ".x86_")
_FREED_BUILT_IN = (
    ".exit.",
    ".altinstr_aux",
    ".altinstructions",
    ".altinstr_replacement",
    ".parainstructions",
    ".retpoline_sites",
    ".return_sites",
    ".ibt_endbr_seal",
    ".apicdrivers",
)
_SECTION_RE = re.compile(
    r"^\s*\[\s*\d+\]\s+(?P<name>\S+)\s+(?P<type>\S+)\s+[0-9a-f]+\s+[0-9a-f]+\s+"
    r"(?P<size>[0-9a-f]+)\s+[0-9a-f]+\s+(?P<rest>.*)$"
)


def _section_kind(name: str, module: bool) -> str:
    if name.startswith(_DISCARDED):
        return "discarded"
    if name.startswith(_PER_CPU):
        return "per_cpu"
    if name.startswith(_FREED_ALWAYS) or (not module and name.startswith(_FREED_BUILT_IN)):
        return "init"
    return "resident"


# readelf names an archive's member in parentheses, a thin archive's (the
# kernel's built-in.a) in brackets
_MEMBER_RE = re.compile(r"^File: .*(?:\((?P<member>[^()]+)\)|\[(?P<thin>[^][]+)\])$")


def allocated_sections(path: Path) -> list[tuple[str, str, int]] | None:
    """(object, kind, bytes) of every allocated section, bss apart, of every
    object in an archive or .ko (readelf): the object is the archive's
    member, or the file's name; the kind ``resident``, ``init``,
    ``discarded`` or ``per_cpu`` (:func:`_section_kind`). None if readelf
    cannot read it."""
    try:
        proc = procs.run(
            ["readelf", "-S", "-W", str(path)],
            # its headers ("File:") are translated in other locales
            env={**os.environ, "LC_ALL": "C"},
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    member = path.name
    out = []
    for line in proc.stdout.splitlines():
        if mm := _MEMBER_RE.match(line):
            # a thin archive's members are paths
            member = Path(mm["member"] or mm["thin"]).name
            continue
        m = _SECTION_RE.match(line)
        if not m or m["type"] == "NOBITS":
            continue
        # the flags, if any, come first after the entry size: A is allocated
        flags = m["rest"].split()[0]
        if "A" not in flags or flags.isdigit():
            continue
        kind = _section_kind(m["name"], path.suffix == ".ko")
        out.append((member, kind, int(m["size"], 16)))
    return out


def sum_sections(sections: list[tuple[str, str, int]]) -> dict[str, int]:
    """:func:`allocated_sections`' bytes by kind."""
    out = {"resident": 0, "init": 0, "discarded": 0, "per_cpu": 0}
    for _, kind, size in sections:
        out[kind] += size
    return out


def text_and_data(sections: list[tuple[str, str, int]]) -> int:
    """What size(1) counts as text plus data in the objects: every allocated
    section but bss, whatever the link and the kernel then do with it (the
    measure of issue 11's "29 KB of text+data")."""
    return sum(size for _, _, size in sections)


def resident_by_object(sections: list[tuple[str, str, int]]) -> dict[str, int]:
    """:func:`allocated_sections`' resident bytes per object, largest first."""
    out: dict[str, int] = {}
    for member, kind, size in sections:
        out[member] = out.get(member, 0) + (size if kind == "resident" else 0)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def kernel_sections(path: Path) -> dict[str, int] | None:
    """Bytes of the allocated sections of every object in an archive or
    .ko (readelf), bss apart: ``resident`` (kept while the kernel runs),
    ``init`` (freed after boot), ``discarded`` (never loaded) and
    ``per_cpu`` (bytes for each CPU); None if readelf cannot read it."""
    sections = allocated_sections(path)
    return None if sections is None else sum_sections(sections)


def find_kernel_kml(explicit: Path | None = None) -> Path | None:
    """lib/kml/built-in.a (or kml.ko) of the newest kernel build we can find."""
    roots = []
    if explicit:
        roots.append(explicit)
    if os.environ.get("KMLBENCH_KERNEL_BUILD"):
        roots.append(Path(os.environ["KMLBENCH_KERNEL_BUILD"]))
    candidates: list[Path] = []
    for root in roots:
        for name in ("lib/kml/kml.ko", "lib/kml/built-in.a"):
            if (root / name).exists():
                candidates.append(root / name)
    if not candidates:
        # Published builds only: a work tree's objects may be mid-build
        # (Kbuild removes built-in.a before writing it again).
        builds = paths.cache_dir() / "builds"
        for pattern in ("*/lib/kml/kml.ko", "*/lib/kml/built-in.a"):
            candidates += [Path(p) for p in glob.glob(str(builds / pattern))]
    sized: dict[Path, float] = {}
    for c in candidates:
        try:
            st = c.stat()
        except OSError:  # removed since the glob (a scratch dir cleaned up)
            continue
        if st.st_size > 8:
            sized[c] = st.st_mtime
    if not sized:
        return None
    return max(sized, key=lambda p: sized[p])
