"""The chain: four tiers, general -> specific, each entailed by the next; tier 4 is the caption.

``bird => blue bird => blue bird sitting on top of branch => A blue bird sitting on the top of a branch.``

Everything that splits, joins, checks or builds a chain goes through here: the separator, the
well-formedness check (exactly four non-empty tiers, none holding the separator, so a CSV cell
splits back into the same four), the length and repetition rules a generated chain must keep
(:class:`ChainRules`), and the chain rows every stage writes (:func:`chain_row`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .hashing import digest

N_TIERS = 4
TIER_SEP = " => "
SEP = TIER_SEP.strip()


def split_tiers(text: str, verbatim: bool = False) -> list[str]:
    """``"a => b => c"`` -> ``["a", "b", "c"]``; parts are stripped, empty parts kept (so a check can
    name them). ``verbatim``: when every separator is exactly ``" => "``, the tiers are kept as
    written (a released caption's trailing space survives a round trip)."""
    if verbatim and text.count(SEP) == text.count(TIER_SEP):
        return text.split(TIER_SEP)
    return [t.strip() for t in text.split(SEP)]


def join_tiers(tiers: Sequence[str]) -> str:
    return TIER_SEP.join(tiers)


def tier_problem(tier, number: int) -> str | None:
    """Why one tier cannot stand in a chain: not text, empty, or holding the separator."""
    if not isinstance(tier, str) or not tier.strip():
        return f"tier {number} is empty"
    if SEP in tier:
        return f"tier {number} contains the chain separator {SEP!r}: {tier!r}"
    return None


def chain_problem(tiers, n: int = N_TIERS) -> str | None:
    """Why ``tiers`` is not a well-formed chain of ``n`` tiers (None when it is)."""
    if tiers is None or isinstance(tiers, str) or len(tiers) != n:
        got = "none" if tiers is None else (1 if isinstance(tiers, str) else len(tiers))
        return f"expected {n} tiers, got {got}"
    first = N_TIERS - n + 1
    for i, t in enumerate(tiers):
        if why := tier_problem(t, first + i):
            return why
    return None


def is_chain(tiers) -> bool:
    return chain_problem(tiers) is None


def has_full_negative(row: Mapping) -> bool:
    """A training item needs a whole negative chain: four well-formed tiers."""
    return is_chain(row.get("negative"))


# --------------------------------------------------------------------------- rules


class ChainRules(BaseModel):
    """What a generated chain must keep (seed, augment, bulk, curation), calibrated on the released
    HierarCaps chains (``bench/chain_rules.py``; 1,000 curated, 23,479 generated positives and as
    many negatives): word limits per tier, how much longer than the next more specific text a tier
    may be, no tier repeating another or the caption, no tier that copies the text below it."""

    model_config = ConfigDict(extra="forbid")

    max_words: tuple[int, int, int] = Field(
        (3, 11, 27), description="per tier, the 99.9th percentile of the released tiers' word counts: "
        "longer tiers are runaway generation")
    max_growth: tuple[float | None, float | None, float | None] = Field(
        (3.0, 1.0, 2.5), description="tier k may have at most this many times the words of the next more "
        "specific text (for tier 3, the caption); None: no limit. 1.0 where every released set keeps "
        "'no more words than the next' in 99% of chains (tier 2: every positive, 99.4% of negatives), "
        "else the pooled 99.9th percentile of the ratio: tier 1, a category, is longer than tier 2 in a "
        "fifth of the chains ('motorized transportation => motorcycle'; 3.0 never binds with 3-word tier 1s); "
        "a negative's tier 3 outgrows its tier 4 in 6%, so tier 3 only has a runaway guard")
    copy_share: float | None = Field(
        0.8, description="a tier with more words than the next more specific text that repeats at least this "
        "share of its distinct words is an embellished copy, not a generalisation; None: off")
    strict_lengths: bool = Field(
        False, description="also: each tier strictly fewer words than the next, tier 1 included "
        "(accepts only 33-53% of the released chains)")


def word_count(text: str) -> int:
    return len(text.split())


def text_key(s: str) -> str:
    """Case- and punctuation-blind comparison key (a tier repeating another)."""
    return re.sub(r"[^\w]+", " ", (s or "").lower()).strip()


def copied_share(tier: str, below: str) -> float:
    """Share of ``below``'s distinct words that ``tier`` repeats (case/punctuation-blind)."""
    words = set(text_key(below).split())
    return len(words & set(text_key(tier).split())) / len(words) if words else 0.0


def rule_violation(tiers: Sequence[str], below: str | None, rules: ChainRules, *, first: int | None = None,
                   below_name: str = "caption") -> str | None:
    """Why generated ``tiers`` break the rules (None when they keep them).

    ``tiers`` are general -> specific and consecutive, ``tiers[0]`` being tier ``first`` (default:
    the run that ends at tier 3); ``below`` is the more specific text right under the last of them
    (the caption, or the tier a tier-by-tier prompt started from), named ``below_name`` in reasons.
    """
    first = N_TIERS - len(tiers) if first is None else first
    for i, t in enumerate(tiers):
        if why := tier_problem(t, first + i):
            return why
        limit = rules.max_words[first + i - 1]
        if word_count(t) > limit:
            return f"tier {first + i} has {word_count(t)} words (max {limit}): {t!r}"
    with_below = below is not None and bool(below.strip())
    chain = list(tiers) + ([below] if with_below else [])

    def name(j: int) -> str:
        return below_name if with_below and j == len(chain) - 1 else f"tier {first + j}"

    for i in range(len(chain)):
        for j in range(i + 1, len(chain)):
            if text_key(chain[i]) == text_key(chain[j]):
                return f"tier {first + i} repeats {name(j)}: {chain[i]!r}"
    for i in range(len(chain) - 1):
        a, b = chain[i], chain[i + 1]
        wa, wb = word_count(a), word_count(b)
        if rules.strict_lengths and wa >= wb:
            return f"tier {first + i} ({wa} words) is not shorter than {name(i + 1)} ({wb} words)"
        growth = rules.max_growth[first + i - 1]
        if growth is not None and wa > growth * wb:
            return f"tier {first + i} ({wa} words) is longer than {name(i + 1)} ({wb} words; at most {growth:g}x)"
        if f" {text_key(b)} " in f" {text_key(a)} ":
            return f"tier {first + i} contains {name(i + 1)} verbatim, so it is not more general: {a!r}"
        if rules.copy_share is not None and wa > wb and (share := copied_share(a, b)) >= rules.copy_share:
            return (f"tier {first + i} ({wa} words) is longer than {name(i + 1)} ({wb} words) and repeats "
                    f"{share:.0%} of its words: an elaboration, not a generalisation: {a!r}")
    return None


# --------------------------------------------------------------------------- rows


def chain_id(caption_id: str, positive: Sequence[str]) -> str:
    return digest([caption_id, list(positive)])


def chain_row(caption: Mapping, positive: Sequence[str], *, stage: str, split: str | None = None,
              **provenance) -> dict:
    """A CHAINS row for ``positive`` (four tiers) built on a captions (or chains) row: ids, source,
    image and split carried over, ``stage`` and any provenance columns (model, prompt_id,
    prompt_hash, random_seed, llm_output, link_scores, negative...) set."""
    row = {
        "chain_id": chain_id(caption["caption_id"], positive),
        "caption_id": caption["caption_id"],
        "source": caption.get("source"),
        "split": split if split is not None else caption.get("split"),
        "image_url": caption.get("image_url"),
        "image_id": caption.get("image_id"),
        "orig_id": caption.get("orig_id"),
        "positive": list(positive),
        "negative": caption.get("negative"),
        "stage": stage,
    }
    row.update(provenance)
    return row
