"""A matrix's files and kernel: paths it names, the kernel source, the config variants.

Paths are found relative to the matrix file, then to the checkout, and
recorded repo-relative (:func:`portable`) so cell ids do not depend on where
the checkout is. The config fragments' lines and merge order are read here
(the build uses the same), so that a cell whose model needs a part of KML
its variant turns off is refused when the matrix loads
(:func:`check_kml_parts`; a model file's dtype from its header).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmlbench import paths
from kmlbench.plan.schema import DEFAULT_VARIANT, KERNEL_VARIANT_FIELDS, Field
from kmlbench.plan.source import Source, mapping, reject_unknown, resolve_fields, typed

_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set\s*$")
# A float model file: its header's dtype (docs/kml.md, "Model file format").
_MODEL_MAGIC = (0x4D4C4D4B).to_bytes(4, "little")
_MODEL_DTYPE_AT = 16


def find_file(src: Source, key: str, text: str, base_dir: Path, what: str) -> Path:
    """Resolve ``text`` relative to the matrix file, then to the repo root."""
    p = Path(text).expanduser()
    candidates = [p] if p.is_absolute() else [base_dir / p, paths.REPO_ROOT / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise src.error(key, f"{what} {text!r} not found (looked at {tried})")


def portable(path: Path) -> str:
    """A path as recorded in params: repo-relative when inside the checkout.

    Cell ids hash the params, so an absolute checkout path would make the
    same matrix produce different ids on different machines.
    """
    try:
        return path.relative_to(paths.REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def kernel_source(
    src: Source, key: str, value: Any, base_dir: Path
) -> tuple[str | dict[str, Any], Any]:
    """(what kernel.py uses: absolute path for a local source, what params record)."""
    if value == "debian":
        return "debian", "debian"
    if isinstance(value, str):
        found = find_file(src, key, value, base_dir, "kernel source")
        if not (found.is_dir() or found.is_file()):
            raise src.error(key, f"{value!r} is neither a source tree nor a tarball")
        return str(found), portable(found)
    if isinstance(value, dict):
        reject_unknown(src, key, value, ("url", "sha256"), "kernel.source")
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


def fragments(src: Source, key: str, value: Any, base_dir: Path) -> list[Path]:
    """The config fragments ``value`` names, each an existing file."""
    frags = typed(src, key, value, Field("strlist"))
    out = []
    for i, text in enumerate(frags):
        found = find_file(src, f"{key}[{i}]", text, base_dir, "config fragment")
        if not found.is_file():
            raise src.error(f"{key}[{i}]", f"config fragment {text!r} is not a file")
        out.append(found)
    return out


def kernel_axis(
    src: Source, entries: Any, base_dir: Path, common: list[Path]
) -> dict[str, list[Path]]:
    """``axes.kernel``: variant name -> its fragments after the ``common`` ones."""
    if entries is None:
        return {DEFAULT_VARIANT: list(common)}
    if not isinstance(entries, list) or not entries:
        raise src.error("axes.kernel", "must be a non-empty list of {name, fragments}")
    variants: dict[str, list[Path]] = {}
    for i, raw in enumerate(entries):
        key = f"axes.kernel[{i}]"
        entry = mapping(src, key, raw)
        reject_unknown(src, key, entry, KERNEL_VARIANT_FIELDS, "a kernel variant")
        values = resolve_fields(src, key, entry, {}, {"name": KERNEL_VARIANT_FIELDS["name"]})
        name = values["name"]
        if name in variants:
            raise src.error(f"{key}.name", f"kernel variant {name!r} is defined twice")
        variants[name] = common + fragments(
            src, f"{key}.fragments", entry.get("fragments", []), base_dir
        )
    return variants


def parse_config_lines(text: str) -> dict[str, tuple[str, int]]:
    """``{symbol: (normalized line, line number)}`` of a .config or fragment.

    ``CONFIG_X=n`` is normalized to ``# CONFIG_X is not set`` (what Kconfig
    writes); later lines win, as they do in merge_config.sh.
    """
    result: dict[str, tuple[str, int]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = _SET_RE.match(line)
        if m:
            sym, val = m.groups()
            norm = f"# {sym} is not set" if val == "n" else f"{sym}={val}"
            result[sym] = (norm, n)
            continue
        m = UNSET_RE.match(line)
        if m:
            result[m.group(1)] = (f"# {m.group(1)} is not set", n)
    return result


def merge_order(fragments: Sequence[Path], configs_dir: Path = paths.CONFIGS_DIR) -> list[Path]:
    """The fragments a kernel request merges, in merge_config.sh's order:
    base.config, kml.config (if present), then the request's.

    A request fragment that is a bare relative name not found from the
    current directory is looked up in ``configs_dir``. A fragment listed
    twice (say a matrix naming base.config) is merged once, where it first
    appears.
    """
    result = [configs_dir / "base.config"]
    if (configs_dir / "kml.config").exists():
        result.append(configs_dir / "kml.config")
    for frag in fragments:
        frag = Path(frag)
        if not frag.is_absolute() and not frag.exists() and (configs_dir / frag).exists():
            frag = configs_dir / frag
        result.append(frag)
    return list(dict.fromkeys(f.resolve() for f in result))


def kml_depends(kconfig: Path = paths.KML_SRC_DIR / "Kconfig") -> dict[str, list[str]]:
    """KML's options and the options each ``depends on`` in its Kconfig,
    for dependencies that are a plain ``&&`` of symbols (each with an
    optional ``= y``): an option whose dependency is off is off too."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in kconfig.read_text().splitlines():
        head = line.strip()
        if head.startswith("config "):
            current = "CONFIG_" + head.split()[1]
        elif head.startswith("depends on ") and current:
            terms = [t.strip() for t in head[len("depends on ") :].split("&&")]
            syms = [re.sub(r"\s*=\s*y$", "", t) for t in terms]
            if all(re.fullmatch(r"[A-Z0-9_]+", t) for t in syms):
                out.setdefault(current, []).extend("CONFIG_" + t for t in syms)
    return out


def options_left_out(frags: Sequence[Path]) -> dict[str, str]:
    """The options a variant with fragments ``frags`` turns off, merged as
    the build merges them (:func:`merge_order`; a later mention wins), each
    with the fragment and line that did (``kml-lean.config:8``), and KML's
    options whose Kconfig dependency that turns off (:func:`kml_depends`:
    ``no-kml.config:3, via CONFIG_KML``)."""
    out: dict[str, str] = {}
    for frag in merge_order(frags):
        if not frag.is_file():
            continue  # the build names it
        for sym, (line, n) in parse_config_lines(frag.read_text()).items():
            if line.startswith("#"):
                out[sym] = f"{frag.name}:{n}"
            else:
                out.pop(sym, None)
    depends = kml_depends()
    changed = True
    while changed:  # to a fixed point: a dependency's dependency
        changed = False
        for option, needs in depends.items():
            cause = next((d for d in needs if d in out), None)
            if option not in out and cause is not None:
                where = out[cause].split(", via ")[0]
                out[option] = f"{where}, via {cause}"
                changed = True
    return out


def is_float_model(path: Path) -> bool:
    """Whether ``path`` is a model file whose dtype is float32 (the kernel's
    loader judges the rest)."""
    with path.open("rb") as f:
        head = f.read(_MODEL_DTYPE_AT + 4)
    return head[:4] == _MODEL_MAGIC and head[_MODEL_DTYPE_AT:] == bytes(4)


def kml_needs(model: dict[str, Any] | None, float_models: set[str]) -> dict[str, str]:
    """The options (kernel/kml/Kconfig) a cell's model needs, each with what
    needs it: KML in mq-deadline for any mode but off, float models for a
    float model file, both float models and training for the kernel
    trainer, and policy cost for active mode under it."""
    if model is None or model["mode"] == "off":
        return {}
    needs = {"CONFIG_KML_IOSCHED": f"mode {model['mode']}"}
    if model["mode"] == "active" and model.get("policy") == "cost":
        needs["CONFIG_KML_IOSCHED_COST"] = "policy cost"
    if model.get("model_file") in float_models:
        needs["CONFIG_KML_FLOAT"] = f"the float model {model['model_file']}"
    if model.get("trainer") == "kernel":
        needs["CONFIG_KML_FLOAT"] = needs["CONFIG_KML_TRAIN"] = "trainer kernel"
    return needs


def check_kml_parts(
    src: Source,
    key: str,
    variant: str,
    left_out: dict[str, str],
    params: dict[str, Any],
    float_models: set[str],
) -> None:
    """Refuse a cell whose model needs a part its kernel variant leaves out."""
    for option, what in kml_needs(params.get("model"), float_models).items():
        if option in left_out:
            raise src.error(
                key,
                f"{what} needs {option}, which kernel variant {variant!r} leaves out "
                f"({left_out[option]}): exclude the pair",
            )
