"""What the dataset card and the quality report say about the exported chains, accumulated a
table at a time (export streams: no list of every chain is held)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .chain import N_TIERS, join_tiers

BINS = 20            # score histograms: 20 bins over [0, 1]


def _bin(values: np.ndarray) -> np.ndarray:
    return np.histogram(values.astype(np.float64), BINS, range=(0, 1))[0]


def _field(structs, name: str) -> np.ndarray:
    return pc.struct_field(structs, name).to_numpy(zero_copy_only=False)


class ChainStats:
    """What the card and the quality report say about the exported chains, fed a table at a time
    in export order (train, then test) so that no list of every chain is held: the count, the
    first chain, tier-1 concepts (ties in first-seen order), items with a negative per tier, words
    per tier as a count per value (the box plot needs no more), NLI scores as histogram bins."""

    def __init__(self) -> None:
        self.n, self.example = 0, None
        self.concepts: Counter = Counter()
        self.negatives: Counter = Counter()                  # tier -> negatives found there
        self.words = [Counter() for _ in range(N_TIERS)]     # per tier: word count -> chains
        self.links: dict[str, np.ndarray] = {}               # "premise->hypothesis" -> P(entailment) bins
        self.contradicts = np.zeros(BINS, np.int64)          # P(contradiction | pos_k, neg_k)
        self.entails_prev = np.zeros(BINS, np.int64)         # P(entailment | neg_k, pos_k-1), k > 1

    def add(self, table: pa.Table) -> "ChainStats":
        positive = table.column("positive").to_pylist()
        for p in positive:
            self.concepts[p[0].lower()] += 1
            for k, words in enumerate(self.words):
                words[len(p[k].split())] += 1
        if positive and self.example is None:
            self.example = join_tiers(positive[0])
        self.n += len(positive)
        if "link_scores" in table.column_names:
            s = pc.list_flatten(table.column("link_scores"))
            prem, hyp, ent = _field(s, "premise_tier"), _field(s, "hypothesis_tier"), _field(s, "entailment")
            for p, h in sorted(set(zip(prem.tolist(), hyp.tolist()))):
                key = f"{p}->{h}"
                self.links[key] = self.links.get(key, 0) + _bin(ent[(prem == p) & (hyp == h)])
        if "neg_scores" in table.column_names:
            s = pc.list_flatten(table.column("neg_scores"))
            tier = _field(s, "tier")
            self.negatives.update(Counter(tier.tolist()))
            self.contradicts += _bin(_field(s, "contradicts_pos"))
            self.entails_prev += _bin(_field(s, "entails_prev")[tier > 1])
        return self

    def top_concepts(self, n: int = 15) -> list[tuple[str, int]]:
        return self.concepts.most_common(n)


def box_stats(counts: Counter, label: str) -> dict:
    """``matplotlib.cbook.boxplot_stats`` (whis=1.5) of the values ``counts`` holds (value -> how
    often), from the counts alone: quartiles as numpy's linear percentile, whiskers at the furthest
    values within 1.5 IQR of the box, every value beyond them a flier (in value order)."""
    values = sorted(counts)
    cum = np.cumsum([counts[v] for v in values])
    n = int(cum[-1])

    def at(j: int) -> int:                                   # the j-th smallest value, 0-based
        return values[int(np.searchsorted(cum, j, side="right"))]

    def pct(q: float) -> float:
        v = q / 100 * (n - 1)
        lo = math.floor(v)
        t, a, b = v - lo, at(lo), at(min(lo + 1, n - 1))
        return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)

    q1, med, q3 = pct(25), pct(50), pct(75)
    iqr = q3 - q1
    hi = max((v for v in values if v <= q3 + 1.5 * iqr), default=q3)
    lo = min((v for v in values if v >= q1 - 1.5 * iqr), default=q1)
    hi, lo = (q3 if hi < q3 else hi), (q1 if lo > q1 else lo)
    out = [v for v in values if v < lo or v > hi]
    fliers = np.repeat(np.array(out, dtype=np.int64), [counts[v] for v in out])
    return {"label": label, "mean": sum(v * c for v, c in counts.items()) / n, "med": med, "q1": q1, "q3": q3,
            "iqr": iqr, "cilo": med - 1.57 * iqr / np.sqrt(n), "cihi": med + 1.57 * iqr / np.sqrt(n),
            "whislo": lo, "whishi": hi, "fliers": fliers}
