"""bulk: H (specific -> general) over every caption of the configured splits, then the NLI filter.

The paper runs H over CC train captions (the train set) and COCO val captions (the test pool).
Captions that arrived with a chain (HierarCaps CSVs) pass through unchanged, so the negatives
stage can also serve given chains.
"""

from __future__ import annotations

from ..backends.completer import split_chain
from ..config import PipelineConfig
from ..parsing import ParseConfig, validate_chain
from ..stage import Stage, StageContext
from .common import chain_id, make_scorer, model_key, reject, run_units, sample_rows, trained_completer
from .nli_filter import filter_rows


class Bulk(Stage):
    name = "bulk"
    version = "1"
    inputs = ("distill", "ingest")
    config_sections = ("bulk", "nli_filter", "seed", "run")
    isolated = True
    engines = ("h", "scorer")
    kind = "model"
    description = "H over all captions, NLI-filtered"

    def key_material(self, config: PipelineConfig) -> dict:
        return model_key(config, "nli")

    def setup(self, ctx: StageContext) -> None:
        b = ctx.config.bulk
        self.h = trained_completer(ctx, batch_size=b.batch_size, num_beams=b.num_beams,
                                   max_new_tokens=b.max_new_tokens)
        self.scorer = make_scorer(ctx.config)
        self.parse_cfg = ParseConfig(max_words=tuple(ctx.config.seed.max_words))

    def process(self, ctx: StageContext) -> None:
        cfg = ctx.config.bulk
        rows = [r for r in ctx.upstream("ingest").read().to_pylist() if r["split"] in cfg.splits]
        rows = sample_rows(rows, cfg.max_captions, ctx.seed, "bulk")
        run_units(ctx, rows, cfg.unit_rows, lambda i, chunk: self._unit(ctx, chunk), note="captions")
        ctx.stats["captions"] = len(rows)

    def _base(self, ctx, r: dict, pos: list[str], stage: str, model: str | None, raw: str | None) -> dict:
        return dict(chain_id=chain_id(r["caption_id"], pos), caption_id=r["caption_id"], source=r["source"],
                    split=ctx.config.bulk.splits[r["split"]], image_url=r["image_url"], orig_id=r["orig_id"],
                    positive=pos, negative=r.get("negative"), stage=stage, model=model, seed=ctx.seed, raw=raw)

    def _unit(self, ctx: StageContext, chunk: list[dict]):
        given = [self._base(ctx, r, r["positive"], "ingest", None, None) for r in chunk if r["positive"]]
        todo = [r for r in chunk if not r["positive"]]
        raws = self.h.generalize([r["text"] for r in todo])
        made, rejects = [], []
        h_id = f"H(distill {ctx.upstream('distill').manifest()['key'][:12]})"   # run-independent provenance
        for r, raw in zip(todo, raws):
            tiers = split_chain(raw)
            why = f"H wrote {len(tiers)} tiers, expected 3" if len(tiers) != 3 else \
                validate_chain(tiers, r["text"], self.parse_cfg)
            if why:
                rejects.append(reject(self.name, "ingest", r["caption_id"], f"invalid chain from H: {why}", raw))
                continue
            made.append(self._base(ctx, r, [*tiers, r["text"]], self.name, h_id, raw))
        nf = ctx.config.nli_filter
        keep, bad = filter_rows(self.scorer, made, nf.entail_threshold, nf.transitive, self.name, "bulk")
        return given + keep, rejects + bad
