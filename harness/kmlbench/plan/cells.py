"""Cells: one unit of work each, its stable id, and the seeded run order.

A cell's ``params`` are fully resolved, so that a cell can be re-run on
another machine from its record alone; its id hashes them. Cell order is
chosen to keep measurements honest: cells are grouped by kernel variant
(one build, one group), and inside a group the distinct configurations are
shuffled with a seeded RNG and repeats are interleaved (round 0 of every
configuration, then round 1, ...), so that slow drift on the host (thermal,
noisy neighbours) spreads over all configurations instead of biasing the
one that happened to run last.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from kmlbench.plan.schema import DEFAULT_VARIANT, DEVICE_SLUGS, MODEL_SLUGS, SCHEDULER_SLUGS


@dataclass(frozen=True)
class Cell:
    """One unit of work: one guest boot, one device, one scheduler, one fio job."""

    id: str
    repeat: int
    params: dict[str, Any]
    kernel_variant: str

    def __hash__(self) -> int:  # params is a dict; the id already identifies the cell
        return hash(self.id)

    @property
    def config_hash(self) -> str:
        """The 8 hex digits shared by every repeat of this configuration."""
        return config_hash(self.params)


def canonical_json(params: dict[str, Any]) -> str:
    """The byte-stable form of params that cell ids hash."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:8]


def cell_id(params: dict[str, Any], repeat: int) -> str:
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


def _run_order(
    configs: list[dict[str, Any]], repeat: int, rng: random.Random
) -> list[tuple[dict[str, Any], int]]:
    """Shuffled rounds, one per repeat; never the same config twice in a row."""
    order: list[tuple[dict[str, Any], int]] = []
    for r in range(repeat):
        round_ = list(configs)
        rng.shuffle(round_)
        if order and len(round_) > 1 and round_[0] is order[-1][0]:
            # The round boundary would put one configuration back to back.
            round_[0], round_[-1] = round_[-1], round_[0]
        order.extend((c, r) for c in round_)
    return order


def ordered_cells(
    by_variant: dict[str, list[dict[str, Any]]], repeat: int, seed: int
) -> list[Cell]:
    """Every configuration ``repeat`` times, in run order.

    Variants keep their order (one kernel build, one group); one RNG seeded
    with ``seed`` shuffles every round of every variant in turn.
    """
    rng = random.Random(seed)
    cells: list[Cell] = []
    for vname, configs in by_variant.items():
        for params, rep in _run_order(configs, repeat, rng):
            cells.append(
                Cell(
                    id=cell_id(params, rep),
                    repeat=rep,
                    params=copy.deepcopy(params),
                    kernel_variant=vname,
                )
            )
    return cells
