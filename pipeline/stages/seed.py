"""seed: prompt an instruction LLM for each caption's chain (the paper's Llama 2 stage).

Two strategies (config ``seed.strategy``): ``tier`` asks tier by tier, each prompt seeing the more
specific tier (caption -> tier 3 -> tier 2 -> tier 1); ``chain`` asks for tiers 1-3 in one
completion. Output that cannot be parsed goes to rejects with the raw text and the reason.
"""

from __future__ import annotations

from ..backends.generation import GeneratorConfig
from ..chain import ChainRules, chain_row, rule_violation
from ..config import SeedSection
from ..parsing import parse_chain, parse_tier
from ..prompts import load_exemplars, load_prompt, render_seed_chain, render_seed_tier
from ..schemas import reject
from ..stage import Stage, StageContext
from .common import call_sampling, caption_units, model_key, open_generator, prompt_key, request_seed, run_units


class Seed(Stage):
    name = "seed"
    # 2: the prompt's stop strings reach the engine; 3: hashed request seeds; 4: streamed units
    # (numpy-hashed sample order; unsampled units in upstream order)
    version = "4"
    inputs = ("ingest",)
    params = {"seed": "seed", "generator": "models.generator", "rules": "rules", "random_seed": "run.random_seed"}
    isolated = True
    engines = ("gen",)
    seed: SeedSection
    generator: GeneratorConfig
    rules: ChainRules
    random_seed: int

    @property
    def prompt_id(self) -> str:
        return self.seed.prompt_tier if self.seed.strategy == "tier" else self.seed.prompt_chain

    def key_material(self) -> dict:
        return {**model_key(generator=self.generator), **prompt_key(self.prompt_id)}

    def setup(self, ctx: StageContext) -> None:
        self.exemplars = load_exemplars()
        self.prompt = load_prompt(self.prompt_id)
        self.sampling = call_sampling(self.seed.sampling, self.prompt, self.random_seed)
        self.open_engine("gen", lambda: open_generator(ctx, self.generator))

    def process(self, ctx: StageContext) -> None:
        work = caption_units(ctx, self.seed.splits, self.seed.unit_rows, self.seed.max_captions, self.random_seed,
                             "seed")
        step = self._tier_unit if self.seed.strategy == "tier" else self._chain_unit
        run_units(ctx, work, lambda i, chunk: step(chunk), note="captions")
        ctx.stats["captions"] = work.total

    def _row(self, r: dict, tiers: list[str], output: str) -> dict:
        return chain_row(r, [*tiers, r["text"]], stage=self.name, model=self.generator.model, prompt_id=self.prompt.id,
                         prompt_hash=self.prompt.hash, random_seed=self.random_seed, llm_output=output)

    def _chain_unit(self, chunk: list[dict]):
        reqs = [{"messages": render_seed_chain(r["text"], self.exemplars, self.seed.n_exemplars, template=self.prompt),
                 "seed": request_seed(self.random_seed, r["caption_id"])} for r in chunk]
        out, rejects = [], []
        for r, samples in zip(chunk, self.gen.generate(reqs, self.sampling)):
            reasons = []
            for text in samples:                      # first sample that parses wins
                res = parse_chain(text, r["text"], self.rules)
                if res.ok:
                    out.append(self._row(r, res.tiers, text))
                    break
                reasons.append(res.reason)
            else:
                rejects.append(reject(self.name, "ingest", r["caption_id"], f"unparseable output: {reasons[0]}",
                                      "\n---\n".join(samples)))
        return out, rejects

    def _tier_unit(self, chunk: list[dict]):
        current = {r["caption_id"]: [r["text"]] for r in chunk}   # tiers, specific first
        outputs = {r["caption_id"]: [] for r in chunk}
        failed: dict[str, str] = {}
        for target in (3, 2, 1):
            live = [r for r in chunk if r["caption_id"] not in failed]
            reqs = [{"messages": render_seed_tier(current[r["caption_id"]][-1], target, self.exemplars,
                                                  self.seed.n_exemplars, template=self.prompt),
                     "seed": request_seed(self.random_seed, r["caption_id"], target)} for r in live]
            for r, samples in zip(live, self.gen.generate(reqs, self.sampling)):
                cid = r["caption_id"]
                reasons = []
                for text in samples:
                    res = parse_tier(text, current[cid][-1], target, self.rules)
                    if res.ok:
                        current[cid].append(res.tiers[0])
                        outputs[cid].append(text)
                        break
                    reasons.append(res.reason)
                else:
                    outputs[cid].extend(samples)
                    failed[cid] = f"tier {target}: unparseable output: {reasons[0]}"
        out, rejects = [], []
        for r in chunk:
            cid = r["caption_id"]
            text = "\n---\n".join(outputs[cid])
            if cid in failed:
                rejects.append(reject(self.name, "ingest", cid, failed[cid], text))
                continue
            tiers = current[cid][1:][::-1]                          # general -> specific
            if why := rule_violation(tiers, r["text"], self.rules):
                rejects.append(reject(self.name, "ingest", cid, f"invalid chain: {why}", text))
            else:
                out.append(self._row(r, tiers, text))
        return out, rejects
