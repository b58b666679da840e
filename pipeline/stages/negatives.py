"""negatives: hallucinate a negative chain with H (general -> specific), kept only where NLI agrees.

For positive chain p and tier k, H proposes candidates from p[k-1] (the root "" for tier 1). A
candidate c passes when NLI says c entails p[k-1] (premise c) and p[k] contradicts c (premise
p[k]); ``negatives.select: best`` keeps the passing candidate with the highest
min(P(entail p[k-1]), P(contradict p[k])), ``first`` the first that passes. When none of the
``tries`` passes, the item records why that tier has no negative.
"""

from __future__ import annotations

from ..backends.nli import NliConfig
from ..chain import N_TIERS, SEP, has_full_negative
from ..config import NegativesSection
from ..judge import score_negatives
from ..stage import Stage, StageContext
from ..text import norm_key
from .common import model_key, open_h, open_scorer, run_units
from .units import stream_units


class Negatives(Stage):
    name = "negatives"
    version = "2"  # 2: select best among the passing candidates (default), recorded per row
    inputs = ("bulk", "distill")
    params = {"negatives": "negatives", "nli": "models.nli", "random_seed": "run.random_seed"}
    isolated = True
    engines = ("h", "scorer")
    negatives: NegativesSection
    nli: NliConfig
    random_seed: int

    def key_material(self) -> dict:
        return model_key(nli=self.nli)

    def setup(self, ctx: StageContext) -> None:
        self.open_engine("h", lambda: open_h(ctx, self.negatives))
        self.open_engine("scorer", lambda: open_scorer(ctx, self.nli))

    def process(self, ctx: StageContext) -> None:
        run_units(ctx, stream_units(ctx.upstream("bulk"), self.negatives.unit_rows),
                  lambda i, chunk: (self._unit(i, chunk), []), note="chains")

    def _keep(self, candidate: str, positive_k: str, ent: float, con: float) -> bool:
        cfg = self.negatives
        return bool(candidate.strip()) and SEP not in candidate and norm_key(candidate) != norm_key(positive_k) \
            and ent >= cfg.entail_threshold and con >= cfg.contradict_threshold

    def _unit(self, index: int, chunk: list[dict]) -> list[dict]:
        cfg = self.negatives
        todo = [r for r in chunk if not has_full_negative(r)]
        negs = {id(r): [None] * N_TIERS for r in todo}
        scores = {id(r): [] for r in todo}
        why = {id(r): [] for r in todo}
        for k in range(1, N_TIERS + 1):
            above = [None if k == 1 else r["positive"][k - 2] for r in todo]
            cands = self.h.specify(["" if a is None else a for a in above], n=cfg.tries, sample=True,
                                   seed=self.random_seed * 7919 + index * 31 + k)
            judged = score_negatives(self.scorer, above, [r["positive"][k - 1] for r in todo], cands)
            for r, cs, ec in zip(todo, cands, judged):
                passing = [(c.strip(), ent, con, t + 1) for t, (c, (ent, con)) in enumerate(zip(cs, ec))
                           if self._keep(c, r["positive"][k - 1], ent, con)]
                chosen = None if not passing else passing[0] if cfg.select == "first" else \
                    max(passing, key=lambda p: (min(p[1], p[2]), -p[3]))      # ties: the earlier try
                if chosen:
                    negs[id(r)][k - 1] = chosen[0]
                    scores[id(r)].append(dict(tier=k, entails_prev=chosen[1], contradicts_pos=chosen[2],
                                              tries=chosen[3], passing=len(passing)))
                else:
                    why[id(r)].append(f"tier {k}: none of {len(cs)} candidates entailed positive tier {k - 1} "
                                      f"and contradicted positive tier {k}" if k > 1 else
                                      f"tier 1: none of {len(cs)} candidates contradicted positive tier 1")
        out = []
        for r in chunk:
            if id(r) in negs:
                neg = negs[id(r)]
                r = {**r, "negative": neg if any(neg) else None, "neg_scores": scores[id(r)],
                     "neg_missing_reason": "; ".join(why[id(r)]) or None, "neg_select": cfg.select}
            out.append(r)
        return out
