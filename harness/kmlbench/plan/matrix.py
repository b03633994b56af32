"""Load, validate and expand a matrix file into an ordered list of cells.

A matrix file (see ``docs/matrix.md``) names the axes of an experiment:
kernel variants, block devices, I/O schedulers and fio workloads. This
module turns it into :class:`Cell` objects, each a self-contained unit of
work whose ``params`` are fully resolved, so that a cell can be re-run on
another machine from its record alone.

Everything is checked before anything runs: a typo in a nightly matrix
must fail in a second with ``FILE:LINE: KEY: message``, not after two
hours of kernel builds. Line numbers come from PyYAML's composed node
tree, which keeps a mark for every key and value.

Cell order is chosen to keep measurements honest: cells are grouped by
kernel variant (one build, one group), and inside a group the distinct
configurations are shuffled with a seeded RNG and repeats are interleaved
(round 0 of every configuration, then round 1, ...), so that slow drift on
the host (thermal, noisy neighbours) spreads over all configurations
instead of biasing the one that happened to run last.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kmlbench import paths
from kmlbench.clock import CLOCKS, ICOUNT_SHIFT_MAX, VIRTUAL_CPUS_REASON
from kmlbench.data import fio
from kmlbench.hashing import sha256_file

AXES = ("kernel", "device", "scheduler", "workload", "model")
DEFAULT_VARIANT = "default"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TEMPLATE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_BS_RE = re.compile(r"^([1-9][0-9]*)([km]?)$")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


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


@dataclass(frozen=True)
class Cell:
    """One unit of work: one guest boot, one device, one scheduler, one fio job."""

    id: str
    repeat: int
    params: dict
    kernel_variant: str

    def __hash__(self) -> int:  # params is a dict; the id already identifies the cell
        return hash(self.id)

    @property
    def config_hash(self) -> str:
        """The 8 hex digits shared by every repeat of this configuration."""
        return config_hash(self.params)


@dataclass(frozen=True)
class Matrix:
    """A validated matrix file and its cells in run order."""

    path: Path
    name: str
    seed: int
    repeat: int
    kernel_source: str | dict
    kernel_variants: dict[str, list[Path]]
    guest: dict
    raw: dict
    cells: list[Cell] = field(default_factory=list)
    adaptive: dict | None = None  # resolved ADAPTIVE_FIELDS, or None when off


# --------------------------------------------------------------------------
# Field specifications. Each field has a type, a default (or REQUIRED) and an
# optional check returning an error message. ``expand`` says whether a list
# given for this field in an axis entry means "one entry per element".

REQUIRED = object()
# No default: the kernel's own value applies and the field is left out of
# params, so that adding such a field re-keys no existing cell.
UNSET = object()
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class Field:
    kind: str  # "int", "number", "str", "bool", "bs", "strlist"
    default: Any = REQUIRED
    check: Check | None = None
    expand: bool = True


def _at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}, got {v}"


def _between(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"must be in {low}..{high}, got {v}"


def _in(*choices: int) -> Check:
    return lambda v: (
        None if v in choices else f"must be one of {', '.join(map(str, choices))}, got {v}"
    )


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}, got {v!r}"


def _check_name(v: str) -> str | None:
    if _NAME_RE.match(v):
        return None
    return f"{v!r} must be 1-64 of A-Z a-z 0-9 _ . - (used in file names)"


GUEST_FIELDS: dict[str, Field] = {
    "memory_mib": Field("int", 1024, _at_least(128)),
    # default: 1 under the virtual clock, 2 under realtime (see load_matrix)
    "cpus": Field("int", UNSET, _at_least(1)),
    "clock": Field("str", "virtual", _one_of(*CLOCKS)),
    "icount_shift": Field("int", 0, _between(0, ICOUNT_SHIFT_MAX)),
    "boot_timeout_s": Field("number", 120, _at_least(1)),
    "command_timeout_s": Field("number", 600, _at_least(1)),
    "silence_timeout_s": Field("number", 120, _at_least(1)),
    # Cells that differ only in their model entry (and repeat) run one after
    # another in one guest boot: between-boot noise then drops out of their
    # comparison (docs/matrix.md, "Shared boots").
    "share_boot": Field("bool", False),
}

# Choices that kmlbench.cell sets up in the guest, named once; the checks of
# DEVICE_TYPES and MODEL_FIELDS below list the same (tests/test_cell_device.py).
NULL_BLK_IRQMODES = ("none", "softirq", "timer")  # null_blk's irqmode 0, 1, 2
NULL_BLK_BLOCKSIZES = (512, 1024, 2048, 4096)
VIRTIO_CACHE_MODES = ("none", "directsync", "writethrough", "writeback", "unsafe")
RING_MODES = ("block", "drop")
SAMPLE_FILTERS = ("all", "uncertain")
TRAINERS = ("none", "user", "kernel")

# Per device type, the fields besides ``type``. Defaults for null_blk are
# the module's own except irqmode: "timer" is what makes completion_nsec a
# real completion latency.
DEVICE_TYPES: dict[str, dict[str, Field]] = {
    "null_blk": {
        "completion_nsec": Field("int", 10000, _at_least(0)),
        "hw_queue_depth": Field("int", 64, _between(1, 4096)),
        "submit_queues": Field("int", 1, _at_least(1)),
        "size_mib": Field("int", 1024, _at_least(1)),
        "irqmode": Field("str", "timer", _one_of("none", "softirq", "timer")),
        "blocksize": Field("int", 4096, _in(512, 1024, 2048, 4096)),
    },
    "virtio": {
        "size_mib": Field("int", 1024, _at_least(1)),
        "cache": Field(
            "str", "none", _one_of("none", "directsync", "writethrough", "writeback", "unsafe")
        ),
        "num_queues": Field("int", 1, _at_least(1)),
    },
}
DEVICE_SLUGS = {"null_blk": "nullb", "virtio": "virtio"}

# Per scheduler, its sysfs tunables (queue/iosched/<name>) and the kernel's
# defaults, so that a cell records the values it really ran with.
SCHEDULERS: dict[str, dict[str, Field]] = {
    "mq-deadline": {
        "read_expire": Field("int", 500, _at_least(0)),
        "write_expire": Field("int", 5000, _at_least(0)),
        "fifo_batch": Field("int", 16, _at_least(1)),
        "writes_starved": Field("int", 2, _at_least(0)),
        "front_merges": Field("int", 1, _between(0, 1)),
    },
    "none": {},
    "kyber": {},
    "bfq": {},
}
# Queue settings every scheduler takes (/sys/block/<dev>/queue/<name>),
# written after the scheduler (switching scheduler resets them). Recorded
# only when given: absent means the kernel's default.
QUEUE_FIELDS: dict[str, Field] = {
    # requests the scheduler may hold; the kernel's default is twice the
    # hardware queue depth (at most 128), too few to queue past a deadline
    # on a slow device with a shallow hardware queue
    "nr_requests": Field("int", UNSET, _between(4, 8192)),
}
for _fields in SCHEDULERS.values():
    _fields.update(QUEUE_FIELDS)
SCHEDULER_SLUGS = {"mq-deadline": "mqdl", "none": "none", "kyber": "kyber", "bfq": "bfq"}

WORKLOAD_FIELDS: dict[str, Field] = {
    "template": Field("str", REQUIRED, lambda v: None if _TEMPLATE_RE.match(v) else "bad name"),
    "bs": Field("bs", "4k"),
    "iodepth": Field("int", 16, _between(1, 4096)),
    "numjobs": Field("int", 1, _between(1, 256)),
    "rwmix_read": Field("int", 70, _between(0, 100)),
    "runtime_s": Field("int", 10, _at_least(1)),
    "ramp_s": Field("int", 1, _at_least(0)),
    "size_mib": Field("int", 256, _at_least(1)),
    "thinktime_us": Field("int", 0, _at_least(0)),
    "thinktime_blocks": Field("int", 1, _at_least(1)),
}
# A template whose point is a field gets a default that makes it so.
TEMPLATE_DEFAULTS: dict[str, dict[str, Any]] = {
    "bursty": {"thinktime_us": 20000, "thinktime_blocks": 64},
}

# ``axes.model``: KML inside mq-deadline (docs/kml-iosched.md). The kernel's
# module parameters are global, so every cell sets all of them explicitly:
# the defaults below are what a cell records and what it really ran with.
MODEL_MODES = ("off", "observe", "active")
MODEL_FIELDS: dict[str, Field] = {
    "mode": Field("str", REQUIRED, _one_of(*MODEL_MODES)),
    "trainer": Field("str", "none", _one_of("none", "user", "kernel")),
    # drop, not block: without a consumer a blocking ring makes every insert spin
    "ring_mode": Field("str", "drop", _one_of("block", "drop")),
    "sample_filter": Field("str", "all", _one_of("all", "uncertain")),
    # miss when predicted issue > deadline * N / 1000 (kmlbench train prints N)
    "decision_permille": Field("int", 1000, _between(1, 64000)),
    "model_file": Field("str", None),
    "rate": Field("int", 0, _at_least(0)),
    "cpu_pct": Field("int", 100, _between(1, 100)),
    "publish_every": Field("int", 512, _at_least(1)),
    "warm_start": Field("str", None),
}
# Only meaningful with a trainer: not recorded for ``trainer: none``.
TRAINER_FIELDS = ("rate", "cpu_pct", "publish_every", "warm_start")
MODEL_FILE_FIELDS = ("model_file", "warm_start")
MODEL_SLUGS = {"off": "kmloff", "observe": "kmlobs", "active": "kmlact"}
# The scheduler KML lives in; other schedulers' cells run with the model off.
MODEL_SCHEDULER = "mq-deadline"
MODEL_OFF: dict[str, Any] = {"mode": "off"}

KERNEL_VARIANT_FIELDS: dict[str, Field] = {
    "name": Field("str", REQUIRED, _check_name, expand=False),
    "fragments": Field("strlist", [], expand=False),
}

TOP_KEYS = (
    "name",
    "description",
    "seed",
    "repeat",
    "adaptive_repeat",
    "kernel",
    "guest",
    "axes",
    "exclude",
)

# ``adaptive_repeat``: after the planned repeats, keep adding repeats of a
# configuration until the 95% interval of ``metric``'s mean is within
# ``rel_halfwidth`` of it, or ``max_repeat`` cells of it have run.
ADAPTIVE_METRIC_RE = re.compile(r"^(read_|write_)?(iops|bw_kib_s|clat_(mean|p50|p99|p999)_us)$")
ADAPTIVE_FIELDS = {
    "metric": Field(
        "str",
        "clat_p99_us",
        lambda v: (
            None
            if ADAPTIVE_METRIC_RE.match(v)
            else f"{v!r} is not a cell metric (e.g. clat_p99_us, iops, read_clat_mean_us)"
        ),
    ),
    "rel_halfwidth": Field(
        "number",
        0.05,
        lambda v: None if 0 < v < 1 else f"must be between 0 and 1 (0.05 is ±5%), got {v}",
    ),
    "max_repeat": Field("int", 10, _at_least(1)),
}


# --------------------------------------------------------------------------
# YAML with line numbers.


def _strip_last(key: str) -> str:
    m = re.match(r"^(.*?)(\.[^.\[\]]+|\[\d+\])$", key)
    return m.group(1) if m else ""


class _Source:
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


def _load_yaml(path: Path) -> tuple[Any, _Source]:
    try:
        text = path.read_text()
    except OSError as e:
        raise MatrixError(path, None, "(file)", f"cannot read: {e.strerror or e}") from e
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
    return data, _Source(path, lines)


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


def _typed(src: _Source, key: str, value: Any, spec: Field) -> Any:
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


def _mapping(src: _Source, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise src.error(key, f"must be a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            raise src.error(f"{key}.{k}" if key else str(k), "keys must be strings")
    return value


def _resolve_fields(
    src: _Source,
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
            out[name] = _typed(src, fkey, values[name], spec)
        elif defaults and name in defaults:
            out[name] = copy.deepcopy(defaults[name])
        elif spec.default is REQUIRED:
            raise src.error(key, f"missing required key {name!r}")
        elif spec.default is UNSET:
            continue
        else:
            out[name] = copy.deepcopy(spec.default)
    return out


def _reject_unknown(src: _Source, key: str, entry: dict, allowed: Any, what: str) -> None:
    for k in entry:
        if k not in allowed:
            raise src.error(
                f"{key}.{k}" if key else k,
                f"unknown key {k!r} in {what} (known: {', '.join(sorted(allowed))})",
            )


def _expand(
    src: _Source, key: str, entry: dict, no_expand: set[str]
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


# --------------------------------------------------------------------------
# Sections.


def _find_file(src: _Source, key: str, text: str, base_dir: Path, what: str) -> Path:
    """Resolve ``text`` relative to the matrix file, then to the repo root."""
    p = Path(text).expanduser()
    candidates = [p] if p.is_absolute() else [base_dir / p, paths.REPO_ROOT / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise src.error(key, f"{what} {text!r} not found (looked at {tried})")


def _portable(path: Path) -> str:
    """A path as recorded in params: repo-relative when inside the checkout.

    Cell ids hash the params, so an absolute checkout path would make the
    same matrix produce different ids on different machines.
    """
    try:
        return path.relative_to(paths.REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _kernel_source(src: _Source, key: str, value: Any, base_dir: Path) -> tuple[str | dict, Any]:
    """(what kernel.py uses: absolute path for a local source, what params record)."""
    if value == "debian":
        return "debian", "debian"
    if isinstance(value, str):
        found = _find_file(src, key, value, base_dir, "kernel source")
        if not (found.is_dir() or found.is_file()):
            raise src.error(key, f"{value!r} is neither a source tree nor a tarball")
        return str(found), _portable(found)
    if isinstance(value, dict):
        _reject_unknown(src, key, value, ("url", "sha256"), "kernel.source")
        for k in ("url", "sha256"):
            if k not in value:
                raise src.error(key, f"missing required key {k!r}")
        url, sha = value["url"], value["sha256"]
        if not isinstance(url, str) or not re.match(r"^https?://\S+$", url):
            raise src.error(f"{key}.url", f"must be an http(s) URL, got {url!r}")
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise src.error(f"{key}.sha256", f"must be 64 hex digits, got {sha!r}")
        remote = {"url": url, "sha256": sha.lower()}
        return remote, dict(remote)
    raise src.error(key, f"must be 'debian', a path, or {{url, sha256}}, got {value!r}")


def _fragments(src: _Source, key: str, value: Any, base_dir: Path) -> list[Path]:
    frags = _typed(src, key, value, Field("strlist"))
    out = []
    for i, text in enumerate(frags):
        found = _find_file(src, f"{key}[{i}]", text, base_dir, "config fragment")
        if not found.is_file():
            raise src.error(f"{key}[{i}]", f"config fragment {text!r} is not a file")
        out.append(found)
    return out


def _kernel_axis(
    src: _Source, entries: Any, base_dir: Path, common: list[Path]
) -> dict[str, list[Path]]:
    if entries is None:
        return {DEFAULT_VARIANT: list(common)}
    if not isinstance(entries, list) or not entries:
        raise src.error("axes.kernel", "must be a non-empty list of {name, fragments}")
    variants: dict[str, list[Path]] = {}
    for i, raw in enumerate(entries):
        key = f"axes.kernel[{i}]"
        entry = _mapping(src, key, raw)
        _reject_unknown(src, key, entry, KERNEL_VARIANT_FIELDS, "a kernel variant")
        values = _resolve_fields(src, key, entry, {}, {"name": KERNEL_VARIANT_FIELDS["name"]})
        name = values["name"]
        if name in variants:
            raise src.error(f"{key}.name", f"kernel variant {name!r} is defined twice")
        variants[name] = common + _fragments(
            src, f"{key}.fragments", entry.get("fragments", []), base_dir
        )
    return variants


def _typed_entries(
    src: _Source,
    entries: list,
    key: str,
    selector: str,
    schemas: dict[str, dict[str, Field]],
    noun: str,
    unknown: Callable[[str], str],
    foreign: Callable[[str, str], str],
) -> list[tuple[dict, str]]:
    """Entries of an axis whose ``selector`` (device ``type``, scheduler
    ``name``) picks the schema of the entry's other fields.

    ``unknown(value)`` words the error for a selector value with no schema,
    ``foreign(field, value)`` the one for a field that schema lacks.
    """
    all_fields = {selector} | {f for fields in schemas.values() for f in fields}
    out = []
    for i, raw in enumerate(entries):
        ekey = f"{key}[{i}]"
        entry = _mapping(src, ekey, raw)
        _reject_unknown(src, ekey, entry, all_fields, noun)
        if selector not in entry:
            raise src.error(ekey, f"missing required key '{selector}' ({', '.join(schemas)})")
        for values, keypaths in _expand(src, ekey, entry, set()):
            chosen = _typed(src, keypaths[selector], values[selector], Field("str"))
            if chosen not in schemas:
                raise src.error(
                    keypaths[selector], f"{unknown(chosen)} (known: {', '.join(schemas)})"
                )
            schema = schemas[chosen]
            for name in values:
                if name != selector and name not in schema:
                    raise src.error(keypaths[name], foreign(name, chosen))
            out.append(
                (
                    {selector: chosen, **_resolve_fields(src, ekey, values, keypaths, schema)},
                    ekey,
                )
            )
    return out


def _device_entries(src: _Source, entries: list, key: str) -> list[tuple[dict, str]]:
    return _typed_entries(
        src,
        entries,
        key,
        "type",
        DEVICE_TYPES,
        "a device",
        lambda dtype: f"unknown device type {dtype!r}",
        lambda name, dtype: f"{name!r} does not apply to device type {dtype!r}",
    )


def _scheduler_entries(src: _Source, entries: list, key: str) -> list[tuple[dict, str]]:
    return _typed_entries(
        src,
        entries,
        key,
        "name",
        SCHEDULERS,
        "a scheduler",
        lambda name: f"unknown scheduler {name!r}",
        lambda tunable, name: f"scheduler {name!r} has no tunable {tunable!r}",
    )


def _model_entries(
    src: _Source, entries: Any, key: str, base_dir: Path
) -> list[tuple[dict, str]] | None:
    """The model axis, or None when the matrix has none (stock kernel behaviour).

    Each entry is reduced to what it changes: ``mode: off`` records only the
    mode (nothing else reaches the kernel), ``trainer: none`` drops the
    trainer's fields, and files are recorded with their sha256 so that a cell
    is keyed by the model's content, not just its name. Entries that reduce
    to the same params (list expansion over fields that do not apply) are
    one entry.
    """
    if entries is None:
        return None
    if not isinstance(entries, list) or not entries:
        raise src.error(key, "must be a non-empty list of {mode, trainer, ...} mappings")
    out: list[tuple[dict, str]] = []
    seen: set[str] = set()
    for i, raw in enumerate(entries):
        ekey = f"{key}[{i}]"
        entry = _mapping(src, ekey, raw)
        _reject_unknown(src, ekey, entry, MODEL_FIELDS, "a model entry")
        for values, keypaths in _expand(src, ekey, entry, set()):
            if values.get("mode") is False:  # YAML 1.1 reads a bare ``off`` as false
                values["mode"] = "off"
            model = _resolve_fields(src, ekey, values, keypaths, MODEL_FIELDS)
            for name in MODEL_FILE_FIELDS:
                if model[name] is None:
                    continue
                fkey = keypaths.get(name, f"{ekey}.{name}")
                found = _find_file(src, fkey, model[name], base_dir, name.replace("_", " "))
                if not found.is_file():
                    raise src.error(fkey, f"{model[name]!r} is not a file")
                model[name] = _portable(found)
                model[f"{name}_sha256"] = sha256_file(found)
            if model["mode"] == "off":
                if model["trainer"] != "none":
                    raise src.error(
                        keypaths.get("trainer", ekey),
                        f"trainer {model['trainer']!r} needs mode observe or active "
                        "(a cell with mode off has no trainer)",
                    )
                model = dict(MODEL_OFF)
            elif model["trainer"] == "none":
                for name in TRAINER_FIELDS:
                    model.pop(name)
                    model.pop(f"{name}_sha256", None)
            elif model["warm_start"] is not None and model["trainer"] != "user":
                raise src.error(
                    keypaths.get("warm_start", ekey),
                    "warm_start is for trainer user (the kernel trainer starts from "
                    "model_file, the model loaded before it starts)",
                )
            canon = canonical_json(model)
            if canon not in seen:
                seen.add(canon)
                out.append((model, ekey))
    return out


def _workload_entries(
    src: _Source, entries: list, key: str, templates_dir: Path
) -> list[tuple[dict, str, dict[str, str]]]:
    out = []
    for i, raw in enumerate(entries):
        ekey = f"{key}[{i}]"
        entry = _mapping(src, ekey, raw)
        _reject_unknown(src, ekey, entry, WORKLOAD_FIELDS, "a workload")
        for values, keypaths in _expand(src, ekey, entry, set()):
            template = values.get("template")
            defaults = TEMPLATE_DEFAULTS.get(template, {}) if isinstance(template, str) else {}
            workload = _resolve_fields(src, ekey, values, keypaths, WORKLOAD_FIELDS, defaults)
            tkey = keypaths.get("template", ekey)
            tpath = templates_dir / f"{workload['template']}.fio"
            if not tpath.is_file():
                known = sorted(p.stem for p in templates_dir.glob("*.fio"))
                raise src.error(
                    tkey,
                    f"unknown template {workload['template']!r}: no {tpath} "
                    f"(known: {', '.join(known)})",
                )
            try:
                fio.render_job(workload, "/dev/null", templates_dir=templates_dir)
            except fio.FioError as e:
                raise src.error(tkey, str(e)) from e
            out.append((workload, ekey, keypaths))
    return out


def _exclusions(src: _Source, value: Any) -> list[tuple[str, dict[tuple[str, str], list]]]:
    """Each entry: (its key path, {(axis, field): allowed values})."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise src.error("exclude", "must be a list of {axis.field: value} mappings")
    fields_by_axis: dict[str, dict[str, Field]] = {
        "kernel": {"name": KERNEL_VARIANT_FIELDS["name"]},
        "device": {"type": Field("str")},
        "scheduler": {"name": Field("str")},
        "workload": dict(WORKLOAD_FIELDS),
        "model": dict(MODEL_FIELDS),
    }
    for schema in DEVICE_TYPES.values():
        fields_by_axis["device"].update(schema)
    for schema in SCHEDULERS.values():
        fields_by_axis["scheduler"].update(schema)
    out = []
    for i, raw in enumerate(value):
        ekey = f"exclude[{i}]"
        entry = _mapping(src, ekey, raw)
        if not entry:
            raise src.error(ekey, "empty exclusion would drop every cell")
        rule: dict[tuple[str, str], list] = {}
        for dotted, wanted in entry.items():
            kkey = f"{ekey}.{dotted}"
            axis, _, fname = dotted.partition(".")
            if axis not in fields_by_axis or fname not in fields_by_axis[axis]:
                raise src.error(
                    kkey,
                    f"unknown key {dotted!r}: use axis.field with axis one of "
                    f"{', '.join(AXES)} and a field of that axis",
                )
            spec = fields_by_axis[axis][fname]
            spec = Field(spec.kind, check=None)  # any well-typed value may be excluded
            items = wanted if isinstance(wanted, list) else [wanted]
            rule[(axis, fname)] = [_typed(src, kkey, v, spec) for v in items]
        out.append((ekey, rule))
    return out


def _excluded(params: dict, rule: dict[tuple[str, str], list]) -> bool:
    return all(
        fname in params.get(axis, {}) and params[axis][fname] in allowed
        for (axis, fname), allowed in rule.items()
    )


# --------------------------------------------------------------------------
# Ids and order.


def canonical_json(params: dict) -> str:
    """The byte-stable form of params that cell ids hash."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(params: dict) -> str:
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:8]


def cell_id(params: dict, repeat: int) -> str:
    """``<template>-<device>-<scheduler>[-<model>][-<variant>]-<hash8>-r<repeat>``.

    The readable part is for humans scanning a results folder; the hash of
    the full canonical params is what makes the id unique and stable.
    """
    parts = [
        params["workload"]["template"],
        DEVICE_SLUGS.get(params["device"]["type"], params["device"]["type"]),
        SCHEDULER_SLUGS.get(params["scheduler"]["name"], params["scheduler"]["name"]),
    ]
    if "model" in params:
        parts.append(MODEL_SLUGS.get(params["model"]["mode"], params["model"]["mode"]))
    if params["kernel"]["name"] != DEFAULT_VARIANT:
        parts.append(params["kernel"]["name"])
    return "-".join([*parts, config_hash(params), f"r{repeat}"])


def _run_order(configs: list[dict], repeat: int, rng: random.Random) -> list[tuple[dict, int]]:
    """Shuffled rounds, one per repeat; never the same config twice in a row."""
    order: list[tuple[dict, int]] = []
    for r in range(repeat):
        round_ = list(configs)
        rng.shuffle(round_)
        if order and len(round_) > 1 and round_[0] is order[-1][0]:
            # The round boundary would put one configuration back to back.
            round_[0], round_[-1] = round_[-1], round_[0]
        order.extend((c, r) for c in round_)
    return order


# --------------------------------------------------------------------------


def load_matrix(
    path: Path | str, *, base_dir: Path | None = None, templates_dir: Path | None = None
) -> Matrix:
    """Load, validate and expand a matrix file.

    ``base_dir`` is where relative fragment and source paths are looked up
    first (default: the matrix file's folder); a resumed run passes the
    original folder when it loads the copy kept in the run folder.
    ``templates_dir`` defaults to ``workloads/templates``.
    """
    path = Path(path)
    base_dir = Path(base_dir) if base_dir else path.resolve().parent
    templates_dir = Path(templates_dir) if templates_dir else paths.TEMPLATES_DIR
    data, src = _load_yaml(path)
    top = _mapping(src, "", data)
    _reject_unknown(src, "", top, TOP_KEYS, "the matrix")

    head = _resolve_fields(
        src,
        "",
        {k: top[k] for k in ("name", "seed", "repeat", "description") if k in top},
        {},
        {
            "name": Field("str", REQUIRED, _check_name),
            "description": Field("str", ""),
            "seed": Field("int", 0),
            "repeat": Field("int", 1, _at_least(1)),
        },
    )

    kernel = _mapping(src, "kernel", top.get("kernel") or {})
    _reject_unknown(src, "kernel", kernel, ("source", "fragments"), "kernel")
    source, source_for_params = _kernel_source(
        src, "kernel.source", kernel.get("source", "debian"), base_dir
    )
    common = _fragments(src, "kernel.fragments", kernel.get("fragments", []), base_dir)

    adaptive = None
    if "adaptive_repeat" in top:
        adaptive_raw = _mapping(src, "adaptive_repeat", top["adaptive_repeat"] or {})
        _reject_unknown(src, "adaptive_repeat", adaptive_raw, ADAPTIVE_FIELDS, "adaptive_repeat")
        adaptive = _resolve_fields(src, "adaptive_repeat", adaptive_raw, {}, ADAPTIVE_FIELDS)
        if adaptive["max_repeat"] < head["repeat"]:
            raise src.error(
                "adaptive_repeat.max_repeat",
                f"must be >= repeat ({head['repeat']}), got {adaptive['max_repeat']}",
            )

    guest_raw = _mapping(src, "guest", top.get("guest") or {})
    _reject_unknown(src, "guest", guest_raw, GUEST_FIELDS, "guest")
    guest = _resolve_fields(src, "guest", guest_raw, {}, GUEST_FIELDS)
    virtual = guest["clock"] == "virtual"
    if "cpus" not in guest:
        guest["cpus"] = 1 if virtual else 2
    elif virtual and guest["cpus"] > 1:
        raise src.error("guest.cpus", VIRTUAL_CPUS_REASON)
    if "icount_shift" in guest_raw and not virtual:
        raise src.error("guest.icount_shift", "only means something with guest.clock: virtual")

    if "axes" not in top:
        raise src.error("", "missing required key 'axes'")
    axes = _mapping(src, "axes", top["axes"])
    _reject_unknown(src, "axes", axes, AXES, "axes")
    for axis in ("device", "scheduler", "workload"):
        if axis in axes and (not isinstance(axes[axis], list) or not axes[axis]):
            raise src.error(f"axes.{axis}", "must be a non-empty list of mappings")
    if "workload" not in axes:
        raise src.error("axes", "missing required key 'workload'")

    variants = _kernel_axis(src, axes.get("kernel"), base_dir, common)
    devices = _device_entries(src, axes.get("device") or [{"type": "null_blk"}], "axes.device")
    schedulers = _scheduler_entries(
        src, axes.get("scheduler") or [{"name": "mq-deadline"}], "axes.scheduler"
    )
    workloads = _workload_entries(src, axes["workload"], "axes.workload", templates_dir)
    models = _model_entries(src, axes.get("model"), "axes.model", base_dir)
    rules = _exclusions(src, top.get("exclude"))

    # Every workload must fit its device and its time budget.
    for workload, wkey, keypaths in workloads:
        budget = workload["runtime_s"] + workload["ramp_s"]
        if budget >= guest["command_timeout_s"]:
            raise src.error(
                keypaths.get("runtime_s", wkey),
                f"runtime_s + ramp_s = {budget}s does not fit guest.command_timeout_s "
                f"{guest['command_timeout_s']}s",
            )
        for device, dkey in devices:
            if workload["size_mib"] > device["size_mib"]:
                raise src.error(
                    keypaths.get("size_mib", wkey),
                    f"size_mib {workload['size_mib']} exceeds the {device['size_mib']} MiB "
                    f"of device {dkey}",
                )

    used_rules: set[str] = set()
    by_variant: dict[str, list[dict]] = {}
    seen: dict[str, str] = {}
    for vname, frags in variants.items():
        kparams = {
            "name": vname,
            "source": copy.deepcopy(source_for_params),
            "fragments": [_portable(f) for f in frags],
        }
        configs: list[dict] = []
        collapsed: set[str] = set()
        for (device, dkey), (sched, skey), (workload, wkey, _), (model, mkey) in itertools.product(
            devices, schedulers, workloads, models or [(None, "")]
        ):
            params = copy.deepcopy(
                {"kernel": kparams, "device": device, "scheduler": sched, "workload": workload}
            )
            if model is not None:
                # KML lives in mq-deadline: other schedulers run every model
                # entry as one cell with the model off.
                params["model"] = (
                    copy.deepcopy(model) if sched["name"] == MODEL_SCHEDULER else dict(MODEL_OFF)
                )
            hit = [rkey for rkey, rule in rules if _excluded(params, rule)]
            if hit:
                used_rules.update(hit)
                continue
            h = canonical_json(params)
            if h in collapsed:
                continue
            if model is not None and sched["name"] != MODEL_SCHEDULER:
                collapsed.add(h)
            if h in seen:
                raise src.error(
                    wkey,
                    f"configuration repeats one from {seen[h]} (same params after defaults); "
                    "remove one",
                )
            seen[h] = " x ".join(k for k in (dkey, skey, wkey, mkey) if k)
            configs.append(params)
        by_variant[vname] = configs

    for rkey, _ in rules:
        if rkey not in used_rules:
            raise src.error(rkey, "excludes no cell: check the values (or remove the entry)")

    rng = random.Random(head["seed"])
    cells: list[Cell] = []
    ids: set[str] = set()
    for vname, configs in by_variant.items():
        for params, rep in _run_order(configs, head["repeat"], rng):
            cid = cell_id(params, rep)
            if cid in ids:  # two configs sharing 8 hex digits: vanishingly rare, never silent
                raise src.error("axes", f"two configurations share the cell id {cid}")
            ids.add(cid)
            cells.append(
                Cell(id=cid, repeat=rep, params=copy.deepcopy(params), kernel_variant=vname)
            )
    if not cells:
        raise src.error("exclude", "every cell is excluded")

    return Matrix(
        path=path.resolve(),
        name=head["name"],
        seed=head["seed"],
        repeat=head["repeat"],
        kernel_source=source,
        kernel_variants=variants,
        guest=guest,
        raw=data,
        cells=cells,
        adaptive=adaptive,
    )
