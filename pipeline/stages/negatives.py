"""negatives: hallucinate a negative chain with H (general -> specific), kept only where NLI agrees.

For positive chain p and tier k, H proposes candidates from p[k-1] (the root "" for tier 1). A
candidate c is kept when NLI says c entails p[k-1] (premise c) and p[k] contradicts c (premise
p[k]). After ``tries`` candidates fail, the item records why that tier has no negative.
"""

from __future__ import annotations

import numpy as np

from .. import N_TIERS
from ..config import PipelineConfig
from ..stage import Stage, StageContext
from ..text import norm_key
from .common import make_scorer, model_key, run_units, trained_completer
from .export import full_negative


class Negatives(Stage):
    name = "negatives"
    version = "1"
    inputs = ("bulk", "distill")
    config_sections = ("negatives", "run")
    isolated = True
    engines = ("h", "scorer")
    kind = "model"
    description = "negative chains by H + NLI"

    def key_material(self, config: PipelineConfig) -> dict:
        return model_key(config, "nli")

    def setup(self, ctx: StageContext) -> None:
        n = ctx.config.negatives
        self.h = trained_completer(ctx, batch_size=n.batch_size, do_sample=True, temperature=n.temperature,
                                   top_p=n.top_p, max_new_tokens=ctx.config.bulk.max_new_tokens)
        self.scorer = make_scorer(ctx.config)

    def process(self, ctx: StageContext) -> None:
        cfg = ctx.config.negatives
        rows = ctx.upstream("bulk").read().to_pylist()
        run_units(ctx, rows, cfg.unit_rows, lambda i, chunk: (self._unit(ctx, i, chunk), []), note="chains")

    def _unit(self, ctx: StageContext, index: int, chunk: list[dict]) -> list[dict]:
        cfg = ctx.config.negatives
        todo = [r for r in chunk if not full_negative(r)]
        negs = {id(r): [None] * N_TIERS for r in todo}
        scores = {id(r): [] for r in todo}
        why = {id(r): [] for r in todo}
        for k in range(1, N_TIERS + 1):
            prev = ["" if k == 1 else r["positive"][k - 2] for r in todo]
            cands = self.h.specify(prev, n=cfg.tries, sample=True, seed=ctx.seed * 7919 + index * 31 + k)
            per = 1 if k == 1 else 2                          # tier 1 has nothing above it to entail
            prem, hyp = [], []
            for r, cs in zip(todo, cands):
                for c in cs:
                    prem.append(r["positive"][k - 1])          # p[k] => not c
                    hyp.append(c)
                    if k > 1:
                        prem.append(c)                         # c => p[k-1]
                        hyp.append(r["positive"][k - 2])
            probs = np.asarray(self.scorer.score(prem, hyp)) if prem else np.zeros((0, 3))
            j = 0
            for r, cs in zip(todo, cands):
                chosen = None
                for t, c in enumerate(cs):
                    con = float(probs[j, 2])
                    ent = 1.0 if k == 1 else float(probs[j + 1, 0])
                    j += per
                    ok = c.strip() and "=>" not in c and norm_key(c) != norm_key(r["positive"][k - 1]) and \
                        ent >= cfg.entail_threshold and con >= cfg.contradict_threshold
                    if chosen is None and ok:
                        chosen = (c.strip(), ent, con, t + 1)
                if chosen:
                    negs[id(r)][k - 1] = chosen[0]
                    scores[id(r)].append(dict(tier=k, entails_prev=chosen[1], contradicts_pos=chosen[2], tries=chosen[3]))
                else:
                    why[id(r)].append(f"tier {k}: none of {len(cs)} candidates entailed positive tier {k - 1} "
                                      f"and contradicted positive tier {k}" if k > 1 else
                                      f"tier 1: none of {len(cs)} candidates contradicted positive tier 1")
        out = []
        for r in chunk:
            if id(r) in negs:
                neg = negs[id(r)]
                r = {**r, "negative": neg if any(neg) else None, "neg_scores": scores[id(r)],
                     "neg_missing_reason": "; ".join(why[id(r)]) or None}
            out.append(r)
        return out
