"""The stage registry: adding a stage is one module and one entry here, in pipeline order."""

from __future__ import annotations

import importlib

from .stage import Stage

# name -> "module:Class"; imported lazily so the CLI starts fast and model deps load on demand
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


def stage_names() -> list[str]:
    return list(STAGES)


def default_stages() -> list[str]:
    return [s for s in STAGES if s not in DEFAULT_OFF]


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}'; stages are {stage_names()}")
    mod, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(mod), cls)()
