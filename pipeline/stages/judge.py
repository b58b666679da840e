"""NLI judgement of chains: premise = the more specific tier, hypothesis = the more general one."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .. import N_TIERS


def links(transitive: bool) -> list[tuple[int, int]]:
    """(premise tier, hypothesis tier), 1-based; adjacent links always, all pairs when transitive."""
    pairs = [(k + 1, k) for k in range(1, N_TIERS)]
    if transitive:
        pairs += [(p, h) for p in range(1, N_TIERS + 1) for h in range(1, p - 1)]
    return pairs


def judge_chains(scorer, chains: list[list[str]], threshold: float, transitive: bool = False
                 ) -> list[tuple[bool, list[dict], str | None]]:
    """For each chain: (accepted, link scores, reason naming the first failing link)."""
    ls = links(transitive)
    prem = [c[p - 1] for c in chains for p, _ in ls]
    hyp = [c[h - 1] for c in chains for _, h in ls]
    probs = np.asarray(scorer.score(prem, hyp)) if prem else np.zeros((0, 3))
    out = []
    for i, _ in enumerate(chains):
        scores, reason = [], None
        for j, (p, h) in enumerate(ls):
            e, n, c = (float(x) for x in probs[i * len(ls) + j])
            scores.append(dict(premise_tier=p, hypothesis_tier=h, entailment=e, neutral=n, contradiction=c))
            if reason is None and e < threshold:
                reason = f"link {p}->{h} not entailed (entailment {e:.3f} < {threshold}, neutral {n:.3f}, contradiction {c:.3f})"
        out.append((reason is None, scores, reason))
    return out


def acceptance_table(results: list[tuple[bool, list[dict], str | None]], threshold: float) -> list[dict]:
    """Share of chains whose link (p->h) passes, per link: where the hierarchy breaks."""
    passed, total = Counter(), Counter()
    for _, scores, _ in results:
        for s in scores:
            k = f"{s['premise_tier']}->{s['hypothesis_tier']}"
            total[k] += 1
            passed[k] += s["entailment"] >= threshold
    return [{"link": k, "chains": total[k], "passed": passed[k], "rate": round(passed[k] / total[k], 4)}
            for k in sorted(total)]
