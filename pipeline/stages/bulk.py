"""bulk: H (specific -> general) over every caption of the configured splits, then the NLI judge.

The paper runs H over CC train captions (the train set) and COCO val captions (the test pool);
with ``test.images`` set, only the chosen test images' captions.
Captions that arrived with a chain (HierarCaps CSVs) pass through unchanged, so the negatives
stage can also serve given chains.
"""

from __future__ import annotations

from ..backends.nli import NliConfig
from ..chain import ChainRules, chain_row, rule_violation, split_tiers
from ..config import BulkSection, NliFilterSection
from ..judge import Judge
from ..schemas import reject
from ..testset import TestSection, choose_images, image_of
from ..stage import Stage, StageContext
from .common import model_key, open_h, open_scorer, run_units, sample_rows


class Bulk(Stage):
    name = "bulk"
    version = "1"
    inputs = ("distill", "ingest")
    params = {"bulk": "bulk", "nli": "models.nli", "judge_cfg": "nli_filter", "rules": "rules",
              "test": "test", "random_seed": "run.random_seed"}
    isolated = True
    engines = ("h", "scorer")
    bulk: BulkSection
    nli: NliConfig
    judge_cfg: NliFilterSection
    rules: ChainRules
    test: TestSection
    random_seed: int

    def key_material(self) -> dict:
        return model_key(nli=self.nli)

    def setup(self, ctx: StageContext) -> None:
        self.open_engine("h", lambda: open_h(ctx, self.bulk))
        self.judge = Judge(self.open_engine("scorer", lambda: open_scorer(ctx, self.nli)), self.judge_cfg)
        self.h_id = f"H(distill {ctx.upstream('distill').manifest()['key'][:12]})"   # run-independent provenance

    def process(self, ctx: StageContext) -> None:
        rows = [r for r in ctx.upstream("ingest").read().to_pylist() if r["split"] in self.bulk.splits]
        test = [r for r in rows if self.bulk.splits[r["split"]] == self.test.split]
        chosen = choose_images((image_of(r) for r in test), self.test, self.random_seed)
        if chosen is not None:   # only the test images' captions go through H
            rows = [r for r in rows if self.bulk.splits[r["split"]] != self.test.split or image_of(r) in chosen]
            ctx.stats["test_images"] = len(chosen)
        rows = sample_rows(rows, self.bulk.max_captions, self.random_seed, "bulk")
        run_units(ctx, rows, self.bulk.unit_rows, lambda i, chunk: self._unit(chunk), note="captions")
        ctx.stats["captions"] = len(rows)

    def _unit(self, chunk: list[dict]):
        split = self.bulk.splits
        given = [chain_row(r, r["positive"], stage="ingest", split=split[r["split"]], random_seed=self.random_seed)
                 for r in chunk if r["positive"]]
        todo = [r for r in chunk if not r["positive"]]
        made, rejects = [], []
        for r, output in zip(todo, self.h.generalize([r["text"] for r in todo])):
            tiers = [t for t in split_tiers(output) if t]
            why = f"H wrote {len(tiers)} tiers, expected 3" if len(tiers) != 3 else \
                rule_violation(tiers, r["text"], self.rules)
            if why:
                rejects.append(reject(self.name, "ingest", r["caption_id"], f"invalid chain from H: {why}", output))
                continue
            made.append(chain_row(r, [*tiers, r["text"]], stage=self.name, split=split[r["split"]], model=self.h_id,
                                  random_seed=self.random_seed, llm_output=output))
        keep, bad = self.judge.filter(made, self.name, "bulk")
        return given + keep, rejects + bad
