"""seed: prompt an instruction LLM for each caption's chain (the paper's Llama 2 stage).

Two strategies (config ``seed.strategy``): ``tier`` asks tier by tier, each prompt seeing the more
specific tier (caption -> tier 3 -> tier 2 -> tier 1); ``chain`` asks for tiers 1-3 in one
completion. Output that cannot be parsed goes to rejects with the raw text and the reason.
"""

from __future__ import annotations

from ..config import PipelineConfig
from ..hashing import digest
from ..parsing import ParseConfig, parse_chain, parse_tier, validate_chain
from ..prompts import load_exemplars, load_prompt, render_seed_chain, render_seed_tier
from ..stage import Stage, StageContext
from .common import (caption_rows, chain_id, make_generator, model_key, prompt_key, reject, run_units,
                     sample_rows)


def request_seed(run_seed: int, caption_id: str, step: int = 0) -> int:
    """A request's sampling seed, hashed: vLLM seeds completion k of an n > 1 request with seed + k,
    so neighbouring seeds would make one request replay another's random stream."""
    return int(digest([run_seed, caption_id, step])[:8], 16) & 0x7FFF_FFFF


class Seed(Stage):
    name = "seed"
    version = "3"  # 2: the prompt's stop strings reach the engine; 3: hashed request seeds
    inputs = ("ingest",)
    config_sections = ("seed", "run")
    isolated = True
    engines = ("gen",)
    kind = "model"
    description = "LLM prompting for seed chains"

    def key_material(self, config: PipelineConfig) -> dict:
        s = config.seed
        return {**model_key(config, "generator"), **prompt_key(s.prompt_tier if s.strategy == "tier" else s.prompt_chain),
                "engine": config.models.generator.engine}

    def setup(self, ctx: StageContext) -> None:
        cfg = ctx.config.seed
        self.exemplars = load_exemplars()
        self.prompt = load_prompt(cfg.prompt_tier if cfg.strategy == "tier" else cfg.prompt_chain)
        self.gen = make_generator(ctx.config, cfg.sampling, self.prompt)
        self.parse_cfg = ParseConfig(max_words=tuple(cfg.max_words))

    def process(self, ctx: StageContext) -> None:
        cfg = ctx.config.seed
        rows = sample_rows(caption_rows(ctx, cfg.splits), cfg.max_captions, ctx.seed, "seed")
        step = self._tier_unit if cfg.strategy == "tier" else self._chain_unit
        run_units(ctx, rows, cfg.unit_rows, lambda i, chunk: step(ctx, chunk), note="captions")
        ctx.stats["captions"] = len(rows)

    def _row(self, ctx, r: dict, tiers: list[str], raw: str) -> dict:
        pos = [*tiers, r["text"]]
        return dict(chain_id=chain_id(r["caption_id"], pos), caption_id=r["caption_id"], source=r["source"],
                    split=r["split"], image_url=r["image_url"], orig_id=r["orig_id"], positive=pos,
                    stage=self.name, model=ctx.config.models.generator.model, prompt_id=self.prompt.id,
                    prompt_hash=self.prompt.hash, seed=ctx.seed, raw=raw)

    def _chain_unit(self, ctx: StageContext, chunk: list[dict]):
        cfg = ctx.config.seed
        reqs = [{"messages": render_seed_chain(r["text"], self.exemplars, cfg.n_exemplars, template=self.prompt),
                 "seed": request_seed(ctx.seed, r["caption_id"])} for r in chunk]
        outs = self.gen.generate(reqs)
        out, rejects = [], []
        for r, samples in zip(chunk, outs):
            reasons = []
            for raw in samples:                      # first sample that parses wins
                res = parse_chain(raw, r["text"], self.parse_cfg)
                if res.ok:
                    out.append(self._row(ctx, r, res.tiers, raw))
                    break
                reasons.append(res.reason)
            else:
                rejects.append(reject(self.name, "ingest", r["caption_id"], f"unparseable output: {reasons[0]}",
                                      "\n---\n".join(samples)))
        return out, rejects

    def _tier_unit(self, ctx: StageContext, chunk: list[dict]):
        cfg = ctx.config.seed
        current = {r["caption_id"]: [r["text"]] for r in chunk}   # tiers, specific first
        raws = {r["caption_id"]: [] for r in chunk}
        failed: dict[str, str] = {}
        for target in (3, 2, 1):
            live = [r for r in chunk if r["caption_id"] not in failed]
            reqs = [{"messages": render_seed_tier(current[r["caption_id"]][-1], target, self.exemplars,
                                                  cfg.n_exemplars, template=self.prompt),
                     "seed": request_seed(ctx.seed, r["caption_id"], target)} for r in live]
            for r, samples in zip(live, self.gen.generate(reqs)):
                cid = r["caption_id"]
                reasons = []
                for raw in samples:
                    res = parse_tier(raw, current[cid][-1], target, self.parse_cfg)
                    if res.ok:
                        current[cid].append(res.tiers[0])
                        raws[cid].append(raw)
                        break
                    reasons.append(res.reason)
                else:
                    raws[cid].extend(samples)
                    failed[cid] = f"tier {target}: unparseable output: {reasons[0]}"
        out, rejects = [], []
        for r in chunk:
            cid = r["caption_id"]
            raw = "\n---\n".join(raws[cid])
            if cid in failed:
                rejects.append(reject(self.name, "ingest", cid, failed[cid], raw))
                continue
            tiers = current[cid][1:][::-1]                          # general -> specific
            why = validate_chain(tiers, r["text"], self.parse_cfg)
            if why:
                rejects.append(reject(self.name, "ingest", cid, f"invalid chain: {why}", raw))
            else:
                out.append(self._row(ctx, r, tiers, raw))
        return out, rejects
