"""A matrix's ``exclude`` list: which combinations of axis values not to run."""

from __future__ import annotations

from typing import Any

from kmlbench.plan.schema import (
    AXES,
    DEVICE_TYPES,
    KERNEL_VARIANT_FIELDS,
    MODEL_FIELDS,
    SCHEDULERS,
    WORKLOAD_FIELDS,
    Field,
)
from kmlbench.plan.source import Source, mapping, typed

Rule = dict[tuple[str, str], list[Any]]


def exclusions(src: Source, value: Any) -> list[tuple[str, Rule]]:
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
        entry = mapping(src, ekey, raw)
        if not entry:
            raise src.error(ekey, "empty exclusion would drop every cell")
        rule: Rule = {}
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
            rule[(axis, fname)] = [typed(src, kkey, v, spec) for v in items]
        out.append((ekey, rule))
    return out


def excluded(params: dict[str, Any], rule: Rule) -> bool:
    """Whether ``params`` has every field ``rule`` names at one of its values."""
    return all(
        fname in params.get(axis, {}) and params[axis][fname] in allowed
        for (axis, fname), allowed in rule.items()
    )
