"""The stage registry: adding a stage is one module and one entry here. The run order follows
from the stages' declared inputs (a topological order; ties keep the order listed here)."""

from __future__ import annotations

import importlib
from functools import lru_cache

from .stage import Stage

# name -> "module:Class"; imported on use so the CLI starts fast and model deps load on demand
STAGES: dict[str, str] = {
    "ingest": "pipeline.stages.ingest:Ingest",
    "seed": "pipeline.stages.seed:Seed",
    "nli_filter": "pipeline.stages.nli_filter:NliFilter",
    "augment": "pipeline.stages.augment:Augment",
    "distill": "pipeline.stages.distill:Distill",
    "bulk": "pipeline.stages.bulk:Bulk",
    "negatives": "pipeline.stages.negatives:Negatives",
    "export": "pipeline.stages.export:Export",
    "align": "pipeline.stages.align:Align",
    "bench": "pipeline.stages.bench:Bench",
}
DEFAULT_OFF = {"align", "bench"}


class RegistryError(ValueError):
    pass


def stage_class(name: str) -> type[Stage]:
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}'; stages are {stage_names()}")
    mod, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def get_stage(name: str, config, **engines) -> Stage:
    """The stage, constructed with the objects it declares from ``config`` (and engines handed in)."""
    return stage_class(name).from_config(config, **engines)


def run_order(inputs: dict[str, tuple[str, ...]]) -> list[str]:
    """Stages ordered so every stage comes after its inputs; a missing input or a cycle is an error."""
    for name, ins in inputs.items():
        if missing := [i for i in ins if i not in inputs]:
            raise RegistryError(f"stage '{name}' declares input(s) {missing}, which are not registered stages")
    order: list[str] = []
    remaining = dict(inputs)
    while remaining:
        ready = [n for n, ins in remaining.items() if all(i in order for i in ins)]
        if not ready:
            raise RegistryError(f"stages {sorted(remaining)} depend on each other in a cycle: "
                                + ", ".join(f"{n} <- {list(remaining[n])}" for n in sorted(remaining)))
        order.append(ready[0])
        del remaining[ready[0]]
    return order


@lru_cache(maxsize=1)
def _order() -> tuple[str, ...]:
    return tuple(run_order({n: stage_class(n).inputs for n in STAGES}))


def stage_names() -> list[str]:
    return list(_order())


def default_stages() -> list[str]:
    return [s for s in stage_names() if s not in DEFAULT_OFF]
