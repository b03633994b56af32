"""The ``model`` axis of a matrix: KML's entries read, checked and reduced.

Each entry is validated against :data:`kmlbench.plan.schema.MODEL_FIELDS`
(errors located as ``FILE:LINE: KEY: message``), its model files are
keyed by content, the combinations that cannot run are refused, and each
is reduced to the keys that mean something for it, so that cells recorded
before a key existed keep their ids (``docs/matrix.md``, ``axes.model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kmlbench.hashing import sha256_file
from kmlbench.plan import kernel as plan_kernel
from kmlbench.plan.cells import canonical_json
from kmlbench.plan.kernel import find_file, portable
from kmlbench.plan.schema import (
    ACTIVE_FIELDS,
    GEOMETRY_FIELDS,
    KML_ON_FIELDS,
    LAZY_FIELDS,
    MODEL_FIELDS,
    MODEL_FILE_FIELDS,
    MODEL_OFF,
    OBSERVE_FIELDS,
    POLICY_DEFAULT,
    SPARSE_FIELDS,
    STEER_FIELDS,
    TRAINER_FIELDS,
)
from kmlbench.plan.source import Source, expand, mapping, reject_unknown, resolve_fields


def model_axis(
    src: Source, entries: Any, key: str, base_dir: Path, float_models: set[str]
) -> list[tuple[dict[str, Any], str]] | None:
    """The model axis, or None when the matrix has none (stock kernel behaviour);
    the model_files whose dtype is float32 are added to ``float_models``.

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
    out: list[tuple[dict[str, Any], str]] = []
    seen: set[str] = set()
    for i, raw in enumerate(entries):
        ekey = f"{key}[{i}]"
        entry = mapping(src, ekey, raw)
        reject_unknown(src, ekey, entry, MODEL_FIELDS, "a model entry")
        for values, keypaths in expand(src, ekey, entry, set()):
            if values.get("mode") is False:  # YAML 1.1 reads a bare ``off`` as false
                values["mode"] = "off"
            model = resolve_fields(src, ekey, values, keypaths, MODEL_FIELDS)
            for name in MODEL_FILE_FIELDS:
                if model[name] is None:
                    continue
                fkey = keypaths.get(name, f"{ekey}.{name}")
                found = find_file(src, fkey, model[name], base_dir, name.replace("_", " "))
                if not found.is_file():
                    raise src.error(fkey, f"{model[name]!r} is not a file")
                model[name] = portable(found)
                model[f"{name}_sha256"] = sha256_file(found)
                # the kernel loads model_file; a warm start stays in user space
                if name == "model_file" and plan_kernel.is_float_model(found):
                    float_models.add(model[name])
            if model["calibrate_s"]:
                ckey = keypaths.get("calibrate_s", ekey)
                if model["mode"] == "off":
                    raise src.error(ckey, "calibrate_s needs mode observe or active")
                if model["trainer"] != "none":
                    raise src.error(
                        ckey,
                        "calibrate_s is for a model no trainer calibrates (trainer none): "
                        f"trainer {model['trainer']!r} sets the threshold itself",
                    )
                if model["model_file"] is None:
                    raise src.error(ckey, "calibrate_s needs a model_file to calibrate")
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
            if model["mode"] != "active" or model["policy"] == POLICY_DEFAULT:
                for name in ACTIVE_FIELDS:  # the set-up writes the default; old ids stay
                    model.pop(name, None)
            if not model.get("geometry", True):  # recorded only when told: old ids stay
                for name in GEOMETRY_FIELDS:
                    model.pop(name)
            for name in SPARSE_FIELDS:
                if model.get(name) == MODEL_FIELDS[name].default:
                    model.pop(name)
            if model["mode"] != "observe" or model["observe_every"] == 1:
                for name in OBSERVE_FIELDS:
                    model.pop(name, None)
            if model["mode"] != "active" or not model["lazy"]:
                for name in LAZY_FIELDS:
                    model.pop(name, None)
            for name in STEER_FIELDS:
                if model["mode"] != "active" or model.get(name) == MODEL_FIELDS[name].default:
                    model.pop(name, None)
            for name in KML_ON_FIELDS:
                if model.get(name) == MODEL_FIELDS[name].default:
                    model.pop(name, None)
            canon = canonical_json(model)
            if canon not in seen:
                seen.add(canon)
                out.append((model, ekey))
    return out
