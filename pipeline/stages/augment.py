"""augment: few-shot in-context completion from accepted seed chains, NLI-filtered again.

For each new caption, k accepted seed chains (sampled deterministically from the run seed and the
caption id) are the demonstrations. Outputs go through the seed parser and the same NLI judge;
chains duplicating an accepted seed chain or each other are removed (to rejects).
"""

from __future__ import annotations

from ..backends.generation import GeneratorConfig
from ..backends.nli import NliConfig
from ..chain import ChainRules, chain_row, join_tiers
from ..config import AugmentSection, NliFilterSection
from ..judge import Judge
from ..parsing import parse_chain
from ..prompts import load_prompt, render_augment
from ..schemas import reject
from ..stage import Stage, StageContext, log
from ..text import norm_key
from .common import (call_sampling, caption_units, model_key, open_generator, open_scorer, prompt_key,
                     request_seed, rng_for, run_units)
from .units import Units


class Augment(Stage):
    name = "augment"
    # 2: the prompt's stop strings reach the engine; 3: hashed request seeds; 4: streamed units
    # (numpy-hashed sample order; unsampled units in upstream order)
    version = "4"
    inputs = ("ingest", "seed", "nli_filter")
    params = {"augment": "augment", "judge_cfg": "nli_filter", "generator": "models.generator",
              "nli": "models.nli", "rules": "rules", "random_seed": "run.random_seed"}
    isolated = True
    engines = ("gen", "scorer")
    augment: AugmentSection
    judge_cfg: NliFilterSection
    generator: GeneratorConfig
    nli: NliConfig
    rules: ChainRules
    random_seed: int

    def key_material(self) -> dict:
        return {**model_key(generator=self.generator, nli=self.nli), **prompt_key(self.augment.prompt)}

    def setup(self, ctx: StageContext) -> None:
        self.prompt = load_prompt(self.augment.prompt)
        self.sampling = call_sampling(self.augment.sampling, self.prompt, self.random_seed)
        self.open_engine("gen", lambda: open_generator(ctx, self.generator))
        self.judge = Judge(self.open_engine("scorer", lambda: open_scorer(ctx, self.nli)), self.judge_cfg)

    def process(self, ctx: StageContext) -> None:
        cfg = self.augment
        demos = ctx.upstream("nli_filter").read(columns=["caption_id", "positive"]).to_pylist()
        if not demos:  # nothing to demonstrate: record why and let distill go on with what it has
            ctx.stats["skipped"] = "nli_filter accepted no seed chains, so there are no demonstrations"
            log.warning("augment: %s", ctx.stats["skipped"])
            run_units(ctx, Units.of_rows([], cfg.unit_rows), None)
            return
        seed_stage = ctx.upstream("seed")
        seeded = {d["caption_id"] for d in seed_stage.read(columns=["caption_id"]).to_pylist()} | \
                 {r["key"] for r in seed_stage.read_rejects().to_pylist()}
        work = caption_units(ctx, cfg.splits, cfg.unit_rows, cfg.max_captions, self.random_seed, "augment",
                             exclude=seeded)
        # chains already accepted (seeds + committed augment units) -> no duplicates across units
        seen = {self._key(d["positive"]) for d in demos}
        for i in sorted(ctx.done_units()):
            seen |= {self._key(p) for p in ctx.out.read_unit(i, ["positive"]).column("positive").to_pylist()}
        run_units(ctx, work, lambda i, chunk: self._unit(chunk, demos, seen), note="captions")
        ctx.stats.update(captions=work.total, demonstrations=len(demos))

    @staticmethod
    def _key(positive) -> str:
        return join_tiers([norm_key(t) for t in positive[:3]])

    def _unit(self, chunk: list[dict], demos: list[dict], seen: set):
        reqs = []
        for r in chunk:
            rng = rng_for(self.random_seed, "augment", r["caption_id"])
            picked = rng.sample(demos, min(self.augment.k, len(demos)))
            reqs.append({"messages": render_augment(r["text"], [d["positive"] for d in picked], template=self.prompt),
                         "seed": request_seed(self.random_seed, r["caption_id"], 7)})
        parsed, rejects = [], []
        for r, samples in zip(chunk, self.gen.generate(reqs, self.sampling)):
            results = [parse_chain(s, r["text"], self.rules) for s in samples]
            res = next((x for x in results if x.ok), None)
            if res is None:
                rejects.append(reject(self.name, "ingest", r["caption_id"], f"unparseable output: {results[0].reason}",
                                      "\n---\n".join(samples)))
                continue
            parsed.append(chain_row(r, [*res.tiers, r["text"]], stage=self.name, model=self.generator.model,
                                    prompt_id=self.prompt.id, prompt_hash=self.prompt.hash,
                                    random_seed=self.random_seed, llm_output=res.raw))
        keep, bad = self.judge.filter(parsed, self.name, "augment")
        out = []
        for row in keep:
            k = self._key(row["positive"])
            if k in seen:
                bad.append(reject(self.name, "augment", row["chain_id"], "duplicate chain (tiers 1-3 already accepted)",
                                  join_tiers(row["positive"])))
                continue
            seen.add(k)
            out.append(row)
        return out, rejects + bad
