"""nli_filter: keep seed chains whose every link is entailed by an MNLI cross-encoder.

Premise = the more specific tier, hypothesis = the more general one. Every link's softmax
probabilities are stored on the row; a rejected chain goes to rejects with its failing link and
scores (``raw`` holds the chain and all its scores as JSON).
"""

from __future__ import annotations

import json

from ..config import PipelineConfig
from ..stage import Stage, StageContext
from .common import make_scorer, model_key, reject, run_units
from .judge import acceptance_table, judge_chains


def filter_rows(scorer, rows: list[dict], threshold: float, transitive: bool, stage: str, source: str,
                results_sink: list | None = None) -> tuple[list[dict], list[dict]]:
    """Judge chain rows; accepted rows get link_scores, the rest become rejects."""
    results = judge_chains(scorer, [r["positive"] for r in rows], threshold, transitive)
    if results_sink is not None:
        results_sink.extend(results)
    keep, rejects = [], []
    for r, (ok, scores, reason) in zip(rows, results):
        if ok:
            keep.append({**r, "link_scores": scores})
        else:
            rejects.append(reject(stage, source, r["chain_id"], reason,
                                  json.dumps({"positive": r["positive"], "link_scores": scores})))
    return keep, rejects


class NliFilter(Stage):
    name = "nli_filter"
    version = "1"
    inputs = ("seed",)
    config_sections = ("nli_filter",)
    isolated = True
    engines = ("scorer",)
    kind = "model"
    description = "NLI entailment filter over seed chains"

    def key_material(self, config: PipelineConfig) -> dict:
        return model_key(config, "nli")

    def setup(self, ctx: StageContext) -> None:
        self.scorer = make_scorer(ctx.config)

    def process(self, ctx: StageContext) -> None:
        cfg = ctx.config.nli_filter
        rows = ctx.upstream("seed").read().to_pylist()
        results: list = []
        run_units(ctx, rows, cfg.unit_rows, lambda i, chunk: filter_rows(
            self.scorer, chunk, cfg.entail_threshold, cfg.transitive, self.name, "seed", results), note="chains")
        if results:  # units judged in this process (a resumed run reports the units it did)
            ctx.stats["tables"] = {"acceptance-per-link": acceptance_table(results, cfg.entail_threshold)}
