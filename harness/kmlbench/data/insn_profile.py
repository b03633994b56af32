"""Instruction profiles from the symcount QEMU plugin: snapshots, a cell's profile, parts.

The plugin (``tools/qemu-plugin/symcount.c``) appends a snapshot of its
cumulative per-symbol instruction counts to a JSON-lines file each time
the guest enters the marker symbol (``sync`` in the guest before and
after fio), and once more when QEMU exits. A cell's profile
(``insn-profile.json``) is the difference of its two marks: per symbol,
instructions between them and per I/O, plus totals for the kernel (every
address in the upper half, in a symbol or not) and user space.

:data:`PARTS` sorts symbols into the parts of KML's cost (hooks,
features, clock, prediction, ring, statistics) and mq-deadline's own, by
a table of name patterns; :func:`compare` sets one profile against
another (``kmlbench bench hooks``).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

USER = "[user]"
KERNEL_OTHER = "[kernel other]"
PROFILE_FILE = "insn-profile.json"
SNAPSHOTS_FILE = "insn-snapshots.jsonl"

# Part -> name patterns (fnmatch, on the name without a compiler suffix
# such as ``.isra.0``), in display order. A name takes the part of its most
# specific matching pattern (the longest before its first ``*``, then the
# longest), so ``kml_dd_lg_q16_to_ns`` is prediction, not features, and
# ``kml_dd_*`` is hooks only for what no other part names. Prediction also
# holds the KML library's layers and math that a forward pass runs
# (``kml_linear_forward_q16``, ``kml_act_*``, ``kml_sat32``, ...): the
# first profile put 3,000 instructions per I/O of them in ``rest``.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # the lock-free list that returns a request's context to its queue's
    # pool is KML's alone on the block path
    (
        "hooks",
        (
            "__kml_dd_insert",
            "__kml_dd_dispatch",
            "__kml_dd_finish",
            "kml_dd_*",
            "llist_add_batch",
        ),
    ),
    ("features", ("kml_dd_feat_*", "kml_dd_lg*", "__kml_dd_lg*")),
    (
        "clock",
        (
            "local_clock",
            "sched_clock*",
            "native_sched_clock",
            "ktime_get*",
            "timekeeping_get_ns",
            "read_tsc",
            "tk_clock_read",
            "clocksource_delta",
            "kml_dd_clock",
            "kml_now_ns",
        ),
    ),
    (
        "prediction",
        (
            "kml_dd_model_predict*",
            "kml_dd_predict*",
            "__kml_dd_predict*",
            "kml_model_*",
            "kml_q16_*",
            "kml_f32_*",
            "kml_nn_*",
            "kml_fpu_*",
            "kernel_fpu_*",
            "kml_dd_lg_*_to_ns",
            "kml_dd_meets",
            "kml_dd_decide*",
            "kml_linear_*",
            "kml_act_*",
            "kml_sat*",
            "kml_math_*",
            "kml_tensor_*",
            "kml_div_*",
            "kml_exp*",
            "kml_log*",
            "kml_sigmoid*",
            "kml_tanh*",
            "kml_sqrt*",
            "kml_isqrt*",
        ),
    ),
    ("ring", ("kml_ring_*", "kml_dd_push_sample")),
    (
        "statistics",
        (
            "kml_dd_account",
            "kml_dd_count_sample",
            "kml_dd_skill_*",
            "kml_dd_hist_*",
            "kml_dd_note_*",
            "kml_dd_stat*",
        ),
    ),
    ("mq-deadline", ("dd_*", "__dd_*", "deadline_*", "__deadline_*")),
)
REST = "rest"
PART_NAMES: tuple[str, ...] = (*(name for name, _ in PARTS), REST)
# The parts KML's code runs in, and mq-deadline's and the clock's, which
# the other cell runs too: KML's cost is their difference against another
# cell. The rest of the kernel (the allocator, the block layer) moves by a
# few hundred per I/O from boot to boot and from kernel to kernel, both
# ways, and is left out.
KML_PARTS: tuple[str, ...] = tuple(name for name, _ in PARTS)


def kml_per_io(parts: dict[str, float]) -> float:
    """KML's instructions per I/O in ``parts`` (a difference of parts_per_io)."""
    return sum(parts[name] for name in KML_PARTS)


class ProfileError(ValueError):
    """A snapshot file or profile that cannot be read as one (the message says why)."""


def read_snapshots(path: Path) -> list[dict[str, Any]]:
    """Every complete snapshot in the plugin's output, in order (a torn last line is skipped)."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            snap = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(path.read_text().splitlines()):
                break  # QEMU killed while writing
            raise ProfileError(f"{path}:{number}: not a snapshot: {exc}") from exc
        if not isinstance(snap, dict) or not isinstance(snap.get("counts"), dict):
            raise ProfileError(f"{path}:{number}: not a snapshot (no counts)")
        out.append(snap)
    return out


def difference(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Per symbol, instructions from ``before`` to ``after`` (non-zero only)."""
    out = {name: int(n) - int(before.get(name, 0)) for name, n in after.items()}
    return {name: n for name, n in out.items() if n}


def base_name(symbol: str) -> str:
    """A symbol without its compiler suffix (``dd_dispatch.isra.0``: ``dd_dispatch``)."""
    return symbol.split(".", 1)[0] if not symbol.startswith(".") else symbol


def _specificity(pattern: str) -> tuple[int, int]:
    return (len(pattern.split("*", 1)[0]), len(pattern))


_RULES = sorted(
    ((pattern, part) for part, patterns in PARTS for pattern in patterns),
    key=lambda rule: _specificity(rule[0]),
    reverse=True,
)


def part_of(symbol: str) -> str:
    """The part of :data:`PARTS` a symbol belongs to, or ``rest``."""
    name = base_name(symbol)
    for pattern, part in _RULES:
        if fnmatch.fnmatchcase(name, pattern):
            return part
    return REST


def by_part(counts: Mapping[str, float]) -> dict[str, float]:
    """``counts`` summed per part, every part present (in :data:`PART_NAMES` order)."""
    out = dict.fromkeys(PART_NAMES, 0.0)
    for name, n in counts.items():
        if name == USER:
            continue
        out[part_of(name)] += n
    return out


def build_profile(
    counts: Mapping[str, int], ios: float, *, mark: str, ios_source: str
) -> dict[str, Any]:
    """A cell's profile from the instructions between its two marks and its I/Os."""
    user = int(counts.get(USER, 0))
    kernel = sum(int(n) for name, n in counts.items() if name != USER)

    def per_io(n: float) -> float | None:
        return n / ios if ios > 0 else None

    symbols = sorted(((n, name) for name, n in counts.items()), key=lambda t: (-t[0], t[1]))
    return {
        "mark": mark,
        "ios": ios,
        "ios_source": ios_source,
        "totals": {
            "kernel": kernel,
            "user": user,
            "kernel_other": int(counts.get(KERNEL_OTHER, 0)),
        },
        "per_io": {"kernel": per_io(kernel), "user": per_io(user)},
        "parts_per_io": {
            part: per_io(n) for part, n in by_part({k: float(v) for k, v in counts.items()}).items()
        },
        "symbols": {name: {"insns": int(n), "per_io": per_io(n)} for n, name in symbols},
    }


def profile_from_snapshots(
    snapshots: Sequence[Mapping[str, Any]], ios: float, *, mark: str, ios_source: str
) -> dict[str, Any]:
    """The profile of the window between the first and the last of ``snapshots``.

    ``snapshots`` are those the plugin wrote during the cell's workload:
    exactly two marks, or :class:`ProfileError`.
    """
    marks = [s for s in snapshots if s.get("reason") == "mark"]
    if len(marks) != 2:
        raise ProfileError(
            f"expected 2 snapshots at {mark} (sync before and after fio), got {len(marks)}"
        )
    counts = difference(marks[0]["counts"], marks[1]["counts"])
    return build_profile(counts, ios, mark=mark, ios_source=ios_source)


def fio_ios(report: Mapping[str, Any]) -> tuple[float, str]:
    """The I/Os of a fio run (every job's ``total_ios``) and where the number came from.

    They are the measured period's: with a ramp (``ramp_s``) the marks'
    window holds more I/Os than these, so a profile is per I/O only for a
    workload without one (``workloads/hooks.yaml``). fio's ``disk_util``
    is no better: it is sampled every 250 ms and missed a tenth of a
    one-second run's I/Os.
    """
    total = 0
    for job in report.get("jobs", []):
        for direction in ("read", "write", "trim"):
            total += int(job.get(direction, {}).get("total_ios", 0))
    return float(total), "fio total_ios"


def load_profile(path: Path) -> dict[str, Any]:
    """An ``insn-profile.json``; :class:`ProfileError` if it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or "symbols" not in data or "per_io" not in data:
        raise ProfileError(f"{path}: not an instruction profile")
    return data


def symbols_per_io(profile: Mapping[str, Any]) -> dict[str, float]:
    """Per symbol, instructions per I/O (0 when the profile has no I/Os)."""
    return {name: float(s.get("per_io") or 0.0) for name, s in profile["symbols"].items()}


def mean_profile(profiles: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Several repeats' profiles as one: per-I/O figures averaged."""
    items = list(profiles)
    if not items:
        raise ProfileError("no profile to average")
    names = {name for p in items for name in p["symbols"]}
    per_sym = {
        name: sum(symbols_per_io(p).get(name, 0.0) for p in items) / len(items) for name in names
    }
    kernel = sum(float(p["per_io"]["kernel"] or 0.0) for p in items) / len(items)
    user = sum(float(p["per_io"]["user"] or 0.0) for p in items) / len(items)
    return {
        "repeats": len(items),
        "ios": sum(float(p["ios"]) for p in items) / len(items),
        "per_io": {"kernel": kernel, "user": user},
        "parts_per_io": by_part(per_sym),
        "symbols_per_io": per_sym,
    }


def compare(base: Mapping[str, Any], other: Mapping[str, Any], top: int = 15) -> dict[str, Any]:
    """``other`` minus ``base`` (two :func:`mean_profile` results), per I/O.

    Per part, and the ``top`` symbols whose count moved most (either way).
    """
    a, b = base["symbols_per_io"], other["symbols_per_io"]
    delta = {name: b.get(name, 0.0) - a.get(name, 0.0) for name in set(a) | set(b)}
    delta.pop(USER, None)
    biggest = sorted(delta.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
    return {
        "kernel_per_io": other["per_io"]["kernel"] - base["per_io"]["kernel"],
        "parts_per_io": by_part(delta),
        "top_symbols": [
            {"symbol": name, "part": part_of(name), "per_io": d} for name, d in biggest if d
        ],
    }
