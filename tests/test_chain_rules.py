"""The chain rules (pipeline/chain.py) on the released HierarCaps chains and on hand-made bad ones.

The released sets are read from ../shared (skipped where absent); the figures recorded in
bench/results/chain_rules.json by bench/chain_rules.py must be what the code measures now.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from _shared import REPO, needs_shared

from pipeline.chain import ChainRules, rule_violation, split_tiers

spec = importlib.util.spec_from_file_location("chain_rules_bench", REPO / "bench" / "chain_rules.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
RECORDED = REPO / "bench" / "results" / "chain_rules.json"


@pytest.fixture(scope="module")
def released():
    return bench.load_sets()


@needs_shared
def test_defaults_accept_99_percent_of_every_released_set(released):
    assert set(released) == {"curated", "positive", "negative"}
    for name, chains in released.items():
        m = bench.measure(chains, ChainRules())
        assert m["rate"] >= 0.99, (name, m)


@needs_shared
def test_recorded_figures_are_what_the_code_measures(released):
    rec = json.loads(RECORDED.read_text())
    assert rec["command"].startswith(".venv/bin/python bench/chain_rules.py")
    assert set(rec["rules"]) == {"old", "new"}
    for name, rules in rec["rules"].items():
        assert rules == bench.RULES[name].model_dump(mode="json"), name
    assert rec["rules"]["new"] == ChainRules().model_dump(mode="json")
    for s, by_rules in rec["sets"].items():
        for name, figures in by_rules.items():
            assert bench.measure(released[s], bench.RULES[name]) == figures, (s, name)
    assert rec["calibration"] == bench.calibration(released)


def test_defaults_are_the_recorded_calibration():
    """Word limits are the pooled 99.9th percentile; tier 2 keeps 'no more words than tier 3' because
    every set keeps it in >= 99% of chains; tier 1 vs 2 and tier 3 vs 4 do not, so they get the
    pooled 99.9th percentile of the ratio (a runaway guard)."""
    cal = json.loads(RECORDED.read_text())["calibration"]
    rules = ChainRules()
    assert list(rules.max_words) == [math.ceil(x) for x in cal["words_pooled"][:3]]
    t12, t23, t34 = (cal["pairs"][f"tier {k} vs {k + 1}"] for k in (1, 2, 3))
    assert min(t23["no_more_words"].values()) >= 0.99 and rules.max_growth[1] == 1.0
    for growth, pair in ((rules.max_growth[0], t12), (rules.max_growth[2], t34)):
        assert min(pair["no_more_words"].values()) < 0.99
        assert growth == pytest.approx(pair["ratio_pooled_quantile"], abs=0.05)


REAL = [  # released chains the old rules refused (tier 1 longer than tier 2, tier 3 of 17+ words)
    "motorized transportation => motorcycle => a motorcycle parked in front => A black Honda motorcycle parked in "
    "front of a garage.",
    "art => sculpture => female sculpture with two women sat next to each other on a bench with their purses on "
    "the ground => A sculpture of two women stting on a bench with their purses on the ground while people "
    "standing in a line behind them.",
    "heat source => stove => stove with pot on top => a stove with a tea kettle and cooking pot on top",
]

CAP = "A blue bird sitting on the top of a branch with autumn leaves."
BAD = [  # (tiers 1-3, caption, reason)
    (["bird", "blue bird", "blue bird"], CAP, "repeats"),
    (["bird", "Bird!", "blue bird on a branch"], CAP, "repeats"),
    (["bird", "blue bird", "A blue bird sitting on the top of a branch with autumn leaves"], CAP, "repeats"),
    (["bird", "blue bird", "a blue bird sitting on the top of a branch with autumn leaves in a park"], CAP,
     "verbatim"),
    (["bird", "blue bird", "a lovely little blue bird sitting quietly on top of a thin branch with leaves"], CAP,
     "elaboration"),
    (["bird", "", "blue bird on a branch"], CAP, "empty"),
    (["bird", "blue => bird", "blue bird on a branch"], CAP, "separator"),
    (["a small animal with wings", "blue bird", "blue bird on a branch"], CAP, "max 3"),
    (["small bird", "bird", "blue bird on a branch"], CAP, "tier 1 contains tier 2 verbatim"),
    (["bird", "blue bird perched on a tall tree", "blue bird on branch"], CAP, "tier 2 (7 words) is longer"),
    (["bird", "blue bird", " ".join(["a blue bird on a branch"] * 6)], CAP, "max 27"),
    (["dog", "brown dog", "a big brown dog running and playing happily with a red ball"], "A dog on grass.",
     "at most 2.5x"),
]


@pytest.mark.parametrize("text", REAL)
def test_real_chains_the_old_rules_refused_are_kept(text):
    tiers = split_tiers(text)
    assert rule_violation(tiers[:3], tiers[3], ChainRules()) is None
    assert rule_violation(tiers[:3], tiers[3], bench.RULES["old"]) is not None


@pytest.mark.parametrize("tiers,caption,why", BAD)
def test_bad_chains_refused(tiers, caption, why):
    reason = rule_violation(tiers, caption, ChainRules())
    assert reason and why in reason, reason


def test_rules_are_settings():
    tiers, cap = ["motorized transportation", "motorcycle", "parked motorcycle"], "A motorcycle parked on a lawn."
    assert rule_violation(tiers, cap, ChainRules()) is None
    assert "not shorter" in rule_violation(tiers, cap, ChainRules(strict_lengths=True))
    assert "longer than tier 2" in rule_violation(tiers, cap, ChainRules(max_growth=(1.0, 1.0, 2.5)))
    runaway = ["bird", "blue bird", "a big blue bird flying high"]
    assert "at most 2.5x" in rule_violation(runaway, "A parrot.", ChainRules())
    assert rule_violation(runaway, "A parrot.", ChainRules(max_growth=(3, 1, None))) is None
    elab = ["bird", "blue bird", "a lovely little blue bird sitting quietly on top of a thin branch with leaves"]
    assert rule_violation(elab, CAP, ChainRules(copy_share=None)) is None
    assert rule_violation(elab, CAP, ChainRules(copy_share=0.9)) is None       # it repeats 83%
    assert "elaboration" in rule_violation(elab, CAP, ChainRules(copy_share=0.8))


def test_reason_key_strips_numbers_and_quotes():
    assert bench.reason_key("tier 3 has 31 words (max 27): 'a b c'") == "tier 3 has N words (max N)"
    assert bench.reason_key("tier 3 (15 words) is longer than caption (13 words) and repeats 83% of its words: "
                            "an elaboration, not a generalisation: 'x: y'") == \
        "tier 3 (N words) is longer than caption (N words) and repeats N of its words: an elaboration, not a generalisation"
