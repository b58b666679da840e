"""Parsing real-looking LLM output into tiers (pipeline/parsing.py)."""

from __future__ import annotations

import csv
import gzip

import pytest
from _shared import EXPANDED, TEST_CSV, needs_shared
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.chain import ChainRules, split_tiers, text_key, word_count
from pipeline.parsing import normalize_tier, parse_chain, parse_tier

CAP = "A blue bird sitting on the top of a branch with autumn leaves."
GOOD = ["bird", "blue bird", "blue bird sitting on top of branch"]

GOOD_OUTPUTS = [
    "1. bird\n2. blue bird\n3. blue bird sitting on top of branch",
    "1) bird\n2) blue bird\n3) blue bird sitting on top of branch",
    "Tier 1: bird\nTier 2: blue bird\nTier 3: blue bird sitting on top of branch",
    "**Tier 1:** bird\n**Tier 2:** blue bird\n**Tier 3:** blue bird sitting on top of branch",
    "1. **Bird**\n2. **Blue bird**\n3. **Blue bird sitting on top of branch**",
    "- bird\n- blue bird\n- blue bird sitting on top of branch",
    "* Bird\n* Blue bird\n* Blue bird sitting on top of branch.",
    '1. "bird"\n2. "blue bird"\n3. "blue bird sitting on top of branch"',
    "bird => blue bird => blue bird sitting on top of branch",
    "bird => blue bird => blue bird sitting on top of branch => " + CAP,
    "Chain: bird => blue bird => blue bird sitting on top of branch",
    "Sure! Here is the hierarchy for the caption:\n\n1. Bird\n2. Blue bird\n3. Blue bird sitting on top of branch",
    "Here's the chain:\n1. bird\n2. blue bird\n3. blue bird sitting on top of branch\n\n"
    "This is because each tier is entailed by the next one.",
    "Certainly! Here are the three tiers:\n\nTier 1 (category): Bird\nTier 2 (noun phrase): Blue bird\n"
    "Tier 3 (clause): Blue bird sitting on top of branch\n\nLet me know if you need anything else!",
    "Caption: " + CAP + "\n1. bird\n2. blue bird\n3. blue bird sitting on top of branch",
    "1. bird\n2. blue bird\n3. blue bird sitting on top of branch\n4. " + CAP,
    "1. bird - the most general category\n2. blue bird - a short noun phrase\n"
    "3. blue bird sitting on top of branch - a short clause",
    "1. bird (category)\n2. blue bird (noun phrase)\n3. blue bird sitting on top of branch (clause)",
    "1. Bird.\n2. Blue bird.\n3. Blue bird sitting on top of branch.",
    "  1.   bird \n\n 2.  blue    bird\n3.blue bird sitting on top of branch  ",
    "```\n1. bird\n2. blue bird\n3. blue bird sitting on top of branch\n```",
    "bird\nblue bird\nblue bird sitting on top of branch",
    "Okay, here you go:\nbird\nblue bird\nblue bird sitting on top of branch",
    "blue bird sitting on top of branch => blue bird => bird",
    "1. bird\n2. blue bird\n3. blue bird sitting on top of branch\n\nExplanation:\n1. Bird is the category.\n"
    "2. Blue bird narrows it.\n3. The clause adds the action.",
    "Tier 1 - bird\nTier 2 - blue bird\nTier 3 - blue bird sitting on top of branch",
    "bird -> blue bird -> blue bird sitting on top of branch",
    "1. bird. This is the most general level.\n2. blue bird. Narrower.\n3. blue bird sitting on top of branch",
    "“bird” => “blue bird” => “blue bird sitting on top of branch”",
]


@pytest.mark.parametrize("raw", GOOD_OUTPUTS)
def test_good_outputs_parse(raw):
    r = parse_chain(raw, CAP)
    assert r.ok, (r.reason, raw)
    assert r.tiers == GOOD


BAD_OUTPUTS = [
    ("", "empty"),
    ("   \n\n  ", "empty"),
    (CAP, "caption"),
    ('"' + CAP + '"', "caption"),
    ("1. bird\n2. blue bird", "need 3"),
    ("I'm sorry, I can't help with that.", "need 3"),
    # tier 2 longer than tier 3
    ("1. bird\n2. blue bird perched on a tall tree\n3. blue bird on branch", "longer"),
    # tier 1 too many words
    ("1. small blue garden bird\n2. blue bird on a branch\n3. blue bird sitting on top of branch", "max"),
    # tier 3 equals the caption
    ("1. bird\n2. blue bird\n3. " + CAP, None),
    # duplicate tiers
    ("1. bird\n2. Bird\n3. blue bird sitting on top of branch", "repeats"),
    # the chain separator inside a tier (it would split in two when the chain is read back)
    ("1. bird\n2. blue bird\n3. be => blue bird on branch", "separator"),
    ("1. x => bird\n2. blue bird\n3. blue bird sitting on top of branch", "separator"),
    # tier 3 longer than the caption: the caption embellished, not generalised
    ("1. bird\n2. blue bird\n3. a lovely little blue bird sitting quietly on top of a thin branch with leaves",
     "elaboration"),
    # the caption copied into tier 3
    ("1. bird\n2. blue bird\n3. A blue bird sitting on the top of a branch with autumn leaves in a quiet park",
     "verbatim"),
    # runaway length
    ("1. bird\n2. blue bird\n3. " + " ".join(["a blue bird sitting on a branch"] * 5), "max 27"),
    ("1. bird\n2. a small blue bird with bright feathers sitting on top of a tree branch\n"
     "3. a small blue bird with bright feathers sitting on top of a tree branch in autumn", "max 11"),
    # chatty text and explanations where a tier should be
    ("The most general description would be bird, then blue bird, and finally a blue bird sitting on a branch.",
     "tier 1 has 7 words"),
    ("1. bird: the general category that this image belongs to\n2. blue bird\n3. blue bird sitting on top of branch",
     "tier 1 has 9 words"),
    ("1. This image shows a bird\n2. blue bird\n3. blue bird sitting on top of branch", "max 3"),
    ("Sure! I would be glad to help with this.\nLet me think about the caption step by step.\n"
     "First, what is in the image? A bird.\nWhat kind of bird? A blue one.", "need 3"),
]


@pytest.mark.parametrize("raw,why", BAD_OUTPUTS)
def test_bad_outputs_give_reason(raw, why):
    r = parse_chain(raw, CAP)
    assert not r.ok and r.tiers is None
    assert isinstance(r.reason, str) and r.reason
    if why:
        assert why in r.reason, r.reason


def test_more_chains():
    cap = "A man holding an oven door open while he looks in it."
    r = parse_chain("1. cooking\n2. oven\n3. man using oven, holding door open", cap)
    assert r.tiers == ["cooking", "oven", "man using oven, holding door open"]
    r = parse_chain("Tier 1: Restroom\nTier 2: An older bathroom\nTier 3: An old, very worn out bathroom.",
                    "A very old and dirty rest room with sink and toilet.")
    assert r.tiers == ["restroom", "an older bathroom", "an old, very worn out bathroom"]


def test_all_caps_tokens_kept_and_lowercasing():
    r = parse_chain("1. Flag\n2. USA flag\n3. USA flag waving over the White House",
                    "The USA flag waving over the White House on a sunny day.")
    assert r.tiers == ["flag", "USA flag", "USA flag waving over the white house"]


def test_strict_lengths_config():
    raw = "animal => dog => dog running on grass"
    cap = "A brown dog running across a grassy field."
    assert parse_chain(raw, cap).ok
    r = parse_chain(raw, cap, ChainRules(strict_lengths=True))
    assert not r.ok and "not shorter" in r.reason


def test_runaway_tier_3_against_a_short_caption():
    cap = "A dog on grass."
    assert parse_chain("1. dog\n2. brown dog\n3. brown dog on grass", cap).ok
    r = parse_chain("1. dog\n2. brown dog\n3. a big brown dog running and playing happily with a red ball", cap)
    assert not r.ok and "at most 2.5x" in r.reason


def test_tier_1_may_be_longer_than_tier_2():
    """Real chains do it ('motorized transportation => motorcycle', a fifth of the released chains)."""
    cap = "A black Honda motorcycle parked in front of a garage."
    r = parse_chain("motorized transportation => motorcycle => a motorcycle parked in front", cap)
    assert r.tiers == ["motorized transportation", "motorcycle", "a motorcycle parked in front"]


def test_max_words_config():
    raw = "1. bird\n2. blue bird\n3. blue bird sitting on top of branch"
    assert not parse_chain(raw, CAP, ChainRules(max_words=(3, 8, 4))).ok
    assert parse_chain(raw, CAP, ChainRules(max_words=(1, 2, 7))).ok


@pytest.mark.parametrize(
    "raw,more_specific,tier,expected",
    [
        ("blue bird sitting on top of branch", CAP, 3, "blue bird sitting on top of branch"),
        ("Tier 3: Blue bird sitting on top of branch.", CAP, 3, "blue bird sitting on top of branch"),
        ("Sure! Here is tier 2:\n\n**Blue bird**", "blue bird sitting on top of branch", 2, "blue bird"),
        ('"bird"', "blue bird", 1, "bird"),
        ("Bird\n\nThis is because a blue bird is a bird.", "blue bird", 1, "bird"),
        ("bird - the general category", "blue bird", 1, "bird"),
        ("Answer: bird", "blue bird", 1, "bird"),
        ("1. bird", "blue bird", 1, "bird"),
        ("Text: blue bird\nTier 1: bird", "blue bird", 1, "bird"),
        ("bird => blue bird", "blue bird", 1, "bird"),
        ("Animal.", "dog", 1, "animal"),
    ],
)
def test_parse_tier_good(raw, more_specific, tier, expected):
    r = parse_tier(raw, more_specific, tier=tier)
    assert r.ok, (r.reason, raw)
    assert r.tiers == [expected]


@pytest.mark.parametrize(
    "raw,more_specific,tier",
    [
        ("", "blue bird", 1),
        ("\n \n", "blue bird", 1),
        ("blue bird", "blue bird", 1),
        ("Blue Bird.", "blue bird", 1),
        ("a blue bird that is sitting on a branch", "blue bird on a branch", 3),
        ("small blue garden bird", "small blue garden bird on a branch", 1),
    ],
)
def test_parse_tier_bad(raw, more_specific, tier):
    r = parse_tier(raw, more_specific, tier=tier)
    assert not r.ok and r.reason


def test_normalize_tier():
    assert normalize_tier('  **"Blue   Bird."**  ') == "blue bird"
    assert normalize_tier("NYC skyline.") == "NYC skyline"


def _check_result(r, caption, cfg=ChainRules()):
    assert (r.tiers is None) != (r.reason is None)
    if r.tiers is None:
        assert isinstance(r.reason, str) and r.reason
        return
    assert len(r.tiers) == 3
    chain = r.tiers + ([caption] if caption.strip() else [])  # blank caption: no caption checks
    for i, t in enumerate(r.tiers):
        assert t and t == t.strip() and "  " not in t and "\n" not in t
        assert word_count(t) <= cfg.max_words[i]
    for growth, a, b in zip(cfg.max_growth, chain, chain[1:]):
        if growth is not None:
            assert word_count(a) <= growth * word_count(b)
        assert f" {text_key(b)} " not in f" {text_key(a)} "
    lowered = [c.lower() for c in chain]
    assert len(set(lowered)) == len(lowered)


_pieces = st.sampled_from([
    "1.", "2)", "Tier 3:", "=>", "->", "**", '"', "'", "\n", "\n\n", " ", "- ", "* ", "Sure! Here is the chain:",
    "This is because", "bird", "blue bird", "blue bird sitting on top of branch", CAP, "Caption:", "(category)",
    ".", ",", ";", "|", "```", "#", "USA", "Tier 1 (category):", "…", "→",
])
_raw = st.one_of(st.text(max_size=300), st.lists(st.one_of(_pieces, st.text(max_size=12)), max_size=30).map("".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_raw, caption=st.one_of(st.just(CAP), st.text(max_size=80)))
def test_fuzz_parse_chain_never_raises(raw, caption):
    r = parse_chain(raw, caption)
    _check_result(r, caption)
    assert not (r.reason or "").startswith("parser error"), r.reason


@settings(max_examples=300, deadline=None)
@given(raw=_raw, more_specific=st.one_of(st.just("blue bird on a branch"), st.text(max_size=60)),
       tier=st.sampled_from([None, 1, 2, 3]))
def test_fuzz_parse_tier_never_raises(raw, more_specific, tier):
    r = parse_tier(raw, more_specific, tier=tier)
    assert (r.tiers is None) != (r.reason is None)
    assert not (r.reason or "").startswith("parser error"), r.reason
    if r.ok:
        (t,) = r.tiers
        assert t and t == t.strip() and "\n" not in t
        assert t.lower() != more_specific.strip().lower()
        growth = ChainRules().max_growth[(tier or 3) - 1]
        if more_specific.strip() and growth is not None:
            assert word_count(t) <= growth * word_count(more_specific)


@needs_shared
@pytest.mark.parametrize("path,column", [(TEST_CSV, "captions"), (EXPANDED, "positive")])
def test_released_chains_written_by_an_llm_parse(path, column):
    """A released chain, written as an LLM would ("t1 => t2 => t3", caption given), parses in >= 99%
    of cases under the default rules. (Negatives are left out: the parser reads their CC-style " - "
    hyphens, as in "close - up", as a trailing explanation and cuts the tier; 98.8% parse.)"""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        chains = [split_tiers(r[column]) for r in csv.DictReader(f)]
    ok = sum(parse_chain(" => ".join(c[:3]), c[3]).ok for c in chains)
    assert ok / len(chains) >= 0.99, (ok, len(chains))
