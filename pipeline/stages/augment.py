"""augment: few-shot in-context completion from accepted seed chains, NLI-filtered again.

For each new caption, k accepted seed chains (sampled deterministically from the run seed and the
caption id) are the demonstrations. Outputs go through the seed parser and the same NLI filter;
chains duplicating an accepted seed chain or each other are removed (to rejects).
"""

from __future__ import annotations

from ..config import PipelineConfig
from ..parsing import ParseConfig, parse_chain
from ..prompts import load_prompt, render_augment
from ..stage import Stage, StageContext, log
from ..text import norm_key
from .common import (caption_rows, chain_id, make_generator, make_scorer, model_key, prompt_key, reject,
                     rng_for, run_units, sample_rows)
from .nli_filter import filter_rows
from .seed import request_seed


class Augment(Stage):
    name = "augment"
    version = "3"  # 2: the prompt's stop strings reach the engine; 3: hashed request seeds
    inputs = ("nli_filter",)
    config_sections = ("augment", "nli_filter", "seed", "run")
    isolated = True
    engines = ("gen", "scorer")
    kind = "model"
    description = "in-context augmentation from accepted seeds"

    def key_material(self, config: PipelineConfig) -> dict:
        return {**model_key(config, "generator", "nli"), **prompt_key(config.augment.prompt),
                "engine": config.models.generator.engine}

    def setup(self, ctx: StageContext) -> None:
        self.prompt = load_prompt(ctx.config.augment.prompt)
        self.gen = make_generator(ctx.config, ctx.config.augment.sampling, self.prompt)
        self.scorer = make_scorer(ctx.config)
        self.parse_cfg = ParseConfig(max_words=tuple(ctx.config.seed.max_words))

    def process(self, ctx: StageContext) -> None:
        cfg = ctx.config.augment
        demos = ctx.upstream("nli_filter").read(columns=["caption_id", "positive"]).to_pylist()
        if not demos:  # nothing to demonstrate: record why and let distill go on with what it has
            ctx.stats["skipped"] = "nli_filter accepted no seed chains, so there are no demonstrations"
            log.warning("augment: %s", ctx.stats["skipped"])
            run_units(ctx, [], cfg.unit_rows, None)
            return
        seeded = {d["caption_id"] for d in ctx.store.stage("seed").read(columns=["caption_id"]).to_pylist()} | \
                 {r["key"] for r in ctx.store.stage("seed").read_rejects().to_pylist()}
        pool = [r for r in caption_rows(ctx, cfg.splits) if r["caption_id"] not in seeded]
        rows = sample_rows(pool, cfg.max_captions, ctx.seed, "augment")
        # chains already accepted (seeds + committed augment units) -> no duplicates across units
        seen = {self._key(d["positive"]) for d in demos}
        for i in sorted(ctx.done_units()):
            seen |= {self._key(p) for p in ctx.out.read_unit(i, ["positive"]).column("positive").to_pylist()}
        run_units(ctx, rows, cfg.unit_rows, lambda i, chunk: self._unit(ctx, chunk, demos, seen), note="captions")
        ctx.stats.update(captions=len(rows), demonstrations=len(demos))

    @staticmethod
    def _key(positive) -> str:
        return " => ".join(norm_key(t) for t in positive[:3])

    def _unit(self, ctx: StageContext, chunk: list[dict], demos: list[dict], seen: set):
        cfg = ctx.config.augment
        reqs = []
        for r in chunk:
            rng = rng_for(ctx.seed, "augment", r["caption_id"])
            picked = rng.sample(demos, min(cfg.k, len(demos)))
            reqs.append({"messages": render_augment(r["text"], [d["positive"] for d in picked], template=self.prompt),
                         "seed": request_seed(ctx.seed, r["caption_id"], 7)})
        parsed, rejects = [], []
        for r, samples in zip(chunk, self.gen.generate(reqs)):
            res = next((x for x in (parse_chain(s, r["text"], self.parse_cfg) for s in samples) if x.ok), None)
            if res is None:
                rejects.append(reject(self.name, "ingest", r["caption_id"],
                                      f"unparseable output: {parse_chain(samples[0], r['text'], self.parse_cfg).reason}",
                                      "\n---\n".join(samples)))
                continue
            pos = [*res.tiers, r["text"]]
            parsed.append(dict(chain_id=chain_id(r["caption_id"], pos), caption_id=r["caption_id"],
                               source=r["source"], split=r["split"], image_url=r["image_url"], orig_id=r["orig_id"],
                               positive=pos, stage=self.name, model=ctx.config.models.generator.model,
                               prompt_id=self.prompt.id, prompt_hash=self.prompt.hash, seed=ctx.seed, raw=res.raw))
        nf = ctx.config.nli_filter
        keep, bad = filter_rows(self.scorer, parsed, nf.entail_threshold, nf.transitive, self.name, "augment")
        out = []
        for row in keep:
            k = self._key(row["positive"])
            if k in seen:
                bad.append(reject(self.name, "augment", row["chain_id"], "duplicate chain (tiers 1-3 already accepted)",
                                  " => ".join(row["positive"])))
                continue
            seen.add(k)
            out.append(row)
        return out, rejects + bad
