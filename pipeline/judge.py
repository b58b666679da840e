"""The NLI judge: premise = the more specific text, hypothesis = the more general one.

One place decides whether a chain holds (nli_filter, augment, bulk, distill's check of H) and
scores negative candidates (negatives, :func:`score_negatives`). It works through any scorer with
``score(premises, hypotheses) -> [N, 3]`` probabilities (entailment, neutral, contradiction).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .chain import N_TIERS, chain_problem, split_tiers
from .schemas import reject


class JudgeConfig(BaseModel):
    """When a chain holds: every judged link's P(entailment) reaches the threshold."""

    model_config = ConfigDict(extra="forbid")

    entail_threshold: float = Field(0.5, ge=0, le=1)
    transitive: bool = False              # also judge non-adjacent pairs


def links(transitive: bool) -> list[tuple[int, int]]:
    """(premise tier, hypothesis tier), 1-based; adjacent links always, all pairs when transitive."""
    pairs = [(k + 1, k) for k in range(1, N_TIERS)]
    if transitive:
        pairs += [(p, h) for p in range(1, N_TIERS + 1) for h in range(1, p - 1)]
    return pairs


@dataclass
class Verdict:
    ok: bool
    scores: list[dict]          # one LINK_SCORE dict per judged link
    reason: str | None          # names the first failing link


def _probs(scorer, premises: list[str], hypotheses: list[str]) -> np.ndarray:
    if not premises:
        return np.zeros((0, 3))
    probs = np.asarray(scorer.score(premises, hypotheses), dtype=np.float64)
    if probs.shape != (len(premises), 3):
        raise ValueError(f"scorer returned shape {probs.shape}, expected ({len(premises)}, 3)")
    return probs


class Judge:
    def __init__(self, scorer, cfg: JudgeConfig):
        self.scorer = scorer
        self.cfg = cfg

    def chains(self, chains: Sequence[Sequence[str]]) -> list[Verdict]:
        """A verdict per four-tier chain, all links scored in one call."""
        ls = links(self.cfg.transitive)
        probs = _probs(self.scorer, [c[p - 1] for c in chains for p, _ in ls],
                       [c[h - 1] for c in chains for _, h in ls])
        t = self.cfg.entail_threshold
        out = []
        for i in range(len(chains)):
            scores, reason = [], None
            for j, (p, h) in enumerate(ls):
                e, n, c = (float(x) for x in probs[i * len(ls) + j])
                scores.append(dict(premise_tier=p, hypothesis_tier=h, entailment=e, neutral=n, contradiction=c))
                if reason is None and e < t:
                    reason = (f"link {p}->{h} not entailed (entailment {e:.3f} < {t}, neutral {n:.3f}, "
                              f"contradiction {c:.3f})")
            out.append(Verdict(reason is None, scores, reason))
        return out

    def filter(self, rows: list[dict], stage: str, origin: str,
               sink: list[Verdict] | None = None) -> tuple[list[dict], list[dict]]:
        """Chain rows -> (accepted rows with ``link_scores``, rejects naming the failing link)."""
        verdicts = self.chains([r["positive"] for r in rows])
        if sink is not None:
            sink.extend(verdicts)
        keep, rejects = [], []
        for r, v in zip(rows, verdicts):
            if v.ok:
                keep.append({**r, "link_scores": v.scores})
            else:
                rejects.append(reject(stage, origin, r["chain_id"], v.reason,
                                      json.dumps({"positive": r["positive"], "link_scores": v.scores})))
        return keep, rejects


def score_negatives(scorer, above: Sequence[str | None], positive: Sequence[str],
                    candidates: Sequence[Sequence[str]]) -> list[list[tuple[float, float]]]:
    """Per item, per candidate c for tier k: (P(c entails positive tier k-1), P(positive tier k
    contradicts c)). ``above[i]`` is positive tier k-1, or None for tier 1 (nothing to entail: 1.0)."""
    prem, hyp = [], []
    for a, p, cs in zip(above, positive, candidates):
        for c in cs:
            prem.append(p)                 # p[k] => not c
            hyp.append(c)
            if a is not None:
                prem.append(c)             # c => p[k-1]
                hyp.append(a)
    probs = _probs(scorer, prem, hyp)
    out, j = [], 0
    for a, cs in zip(above, candidates):
        per = []
        for _ in cs:
            con = float(probs[j, 2])
            ent = 1.0 if a is None else float(probs[j + 1, 0])
            j += 1 if a is None else 2
            per.append((ent, con))
        out.append(per)
    return out


def acceptance_table(verdicts: list[Verdict], threshold: float) -> list[dict]:
    """Share of chains whose link (p->h) passes, per link: where the hierarchy breaks."""
    passed, total = Counter(), Counter()
    for v in verdicts:
        for s in v.scores:
            k = f"{s['premise_tier']}->{s['hypothesis_tier']}"
            total[k] += 1
            passed[k] += s["entailment"] >= threshold
    return [{"link": k, "chains": total[k], "passed": passed[k], "rate": round(passed[k] / total[k], 4)}
            for k in sorted(total)]


def validity_report(generalize: Callable[[list[str]], list[str]], held_out: Sequence[Sequence[str]],
                    judge: Judge) -> dict:
    """H's generation check: generalize each held-out caption (tier 4) and judge the chain it writes.

    ``generalize`` maps captions to raw ``"t1 => t2 => t3"`` strings. Validity is the share of
    written chains that are well-formed and that the judge accepts; malformed outputs count as
    invalid. ``exact_match`` is the share equal to the held-out chain.
    """
    captions = [str(c[-1]).strip() for c in held_out]
    raws = list(generalize(captions))
    if len(raws) != len(captions):
        raise ValueError(f"generator returned {len(raws)} outputs for {len(captions)} captions")
    chains = [[t for t in split_tiers(r) if t] + [c] for r, c in zip(raws, captions)]
    formed = [chain_problem(c) is None for c in chains]
    verdicts = iter(judge.chains([c for c, f in zip(chains, formed) if f]))
    valid = [f and next(verdicts).ok for f in formed]
    exact = sum(1 for ch, ref in zip(chains, held_out) if [t.strip() for t in ref] == ch)
    n = len(chains)
    return {"validity_rate": sum(valid) / n if n else 0.0, "n": n, "n_valid": sum(valid),
            "n_malformed": n - sum(formed), "exact_match": exact / n if n else 0.0}
