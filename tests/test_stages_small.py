"""Stages with small engines handed in (a rule-following generator, a word-overlap NLI scorer):
the stage logic, its rejects and its cache key, in seconds, with the real run store and Parquet."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.execute import run_stage
from pipeline.registry import get_stage
from pipeline.store import RunStore

COLORS = ["red", "blue", "green", "black", "white", "brown", "grey", "small", "large", "old"]
THINGS = [("dog", "sitting on the grass"), ("cat", "sleeping on a couch"), ("bird", "perched on a branch"),
          ("car", "parked on the street"), ("bus", "driving down the road"), ("horse", "running in a field")]


def captions(n=40):
    return [f"A {COLORS[i % len(COLORS)]} {THINGS[i % len(THINGS)][0]} {THINGS[i % len(THINGS)][1]} today."
            for i in range(n)]


class RuleGenerator:
    """Answers a seed or augment prompt with the chain the caption implies. Captions of a broken
    kind get an answer that fails on purpose: "car" a refusal (unparseable), "bus" a tier 2 that
    tier 3 does not entail (NLI rejects it)."""

    def __init__(self):
        self.requests = 0

    def generate(self, requests, sampling):
        self.requests += len(requests)
        out = []
        for r in requests:
            content = r["messages"][-1]["content"] if isinstance(r, dict) else r.messages[-1]["content"]
            cap = re.findall(r"Caption: (.*)", content)[-1]
            _, color, thing, *rest = cap.rstrip(".").split()
            clause = " ".join([color, thing, *rest[:-1]])
            if thing == "car":
                text = "I'm sorry, I can't help with that."
            elif thing == "bus":
                text = f"1. train\n2. {color} train\n3. {clause}"
            elif "Chain:" in content:                         # augment answers in the arrow format
                text = f"{thing} => {color} {thing} => {clause}"
            else:
                text = f"1. {thing}\n2. {color} {thing}\n3. {clause}"
            out.append([text] * sampling.n)
        return out

    def close(self):
        raise AssertionError("a handed-in engine is not the stage's to close")


class OverlapScorer:
    """Entailment iff every word of the hypothesis is in the premise (premise = more specific)."""

    def __init__(self):
        self.pairs = 0

    def score(self, prem, hyp):
        self.pairs += len(prem)
        e = np.array([float(set(h.lower().split()) <= set(p.lower().rstrip(".").split())) for p, h in zip(prem, hyp)])
        return np.stack([e, 1 - e, np.zeros_like(e)], axis=1)

    def close(self):
        raise AssertionError("a handed-in engine is not the stage's to close")


@pytest.fixture()
def run(tmp_path):
    tsv = tmp_path / "caps.tsv"
    tsv.write_text("".join(f"{c}\thttp://img/{i}.jpg\n" for i, c in enumerate(captions())))
    cfg = load_config("tiny", overrides={
        "run": {"root": str(tmp_path / "art")},
        "ingest": {"sources": [{"name": "cc", "path": str(tsv)}]},
        "seed": {"max_captions": 20, "unit_rows": 6}, "augment": {"max_captions": 12, "unit_rows": 5},
        "nli_filter": {"entail_threshold": 0.5, "unit_rows": 4}})
    store = RunStore(cfg.run.root, "small")
    run_stage(get_stage("ingest", cfg), store)
    return cfg, store


def counts(m):
    return m["rows_in"], m["rows_out"], m["rows_rejected"]


def test_seed_nli_filter_augment_with_small_engines(run):
    cfg, store = run
    gen, scorer = RuleGenerator(), OverlapScorer()
    seed = run_stage(get_stage("seed", cfg, gen=gen), store, isolate=False)
    rej = store.stage("seed").read_rejects().to_pylist()
    assert seed["rows_in"] == 20 and seed["rows_rejected"] == len(rej) > 0
    assert all(r["reason"].startswith("unparseable output") and "sorry" in r["excerpt"] for r in rej)
    rows = store.stage("seed").read().to_pylist()
    assert all(r["positive"][3].split()[2] != "car" for r in rows)
    assert {r["stage"] for r in rows} == {"seed"} and all(r["llm_output"].startswith("1. ") for r in rows)

    nf = run_stage(get_stage("nli_filter", cfg, scorer=scorer), store, isolate=False)
    kept = store.stage("nli_filter").read().to_pylist()
    assert counts(nf) == (seed["rows_out"], len(kept), seed["rows_out"] - len(kept))
    nf_rej = store.stage("nli_filter").read_rejects().to_pylist()
    assert nf_rej and all("link 3->2 not entailed" in r["reason"] and " train" in r["excerpt"] for r in nf_rej)
    assert all(len(r["link_scores"]) == 3 for r in kept)
    assert nf["stats"]["tables"]["acceptance-per-link"][1]["link"] == "3->2"

    aug = run_stage(get_stage("augment", cfg, gen=gen, scorer=scorer), store, isolate=False)
    seeded = {r["caption_id"] for r in rows} | {r["key"] for r in rej}
    new = store.stage("augment").read().to_pylist()
    unseeded = store.stage("ingest").manifest()["rows_out"] - 20       # captions repeat, but each on its own image
    assert aug["rows_in"] == min(12, unseeded) == 12 and new and not {r["caption_id"] for r in new} & seeded
    assert all(r["llm_output"].count("=>") == 2 for r in new)
    # the engines stay open and are not the stages' to close (RuleGenerator.close would raise)
    assert gen.requests == 32 and scorer.pairs > 0


def test_nli_settings_change_recomputes(run):
    cfg, store = run
    run_stage(get_stage("seed", cfg, gen=RuleGenerator()), store, isolate=False)
    scorer = OverlapScorer()
    first = run_stage(get_stage("nli_filter", cfg, scorer=scorer), store, isolate=False)
    asked = scorer.pairs
    assert run_stage(get_stage("nli_filter", cfg, scorer=scorer), store, isolate=False)["cache_hit"]
    assert scorer.pairs == asked
    for over in ({"label_map": {"entailment": 0, "neutral": 1, "contradiction": 2}}, {"max_length": 64}):
        cfg = load_config(base=cfg.model_dump(mode="json"), overrides={"models": {"nli": over}})
        again = run_stage(get_stage("nli_filter", cfg, scorer=scorer), store, isolate=False)
        assert not again["cache_hit"] and again["key"] != first["key"] and scorer.pairs > asked, over
        asked = scorer.pairs


class CandidateH:
    """H's general -> specific direction, scripted: the same candidates for every tier."""

    def __init__(self, candidates):
        self.candidates = candidates

    def specify(self, tiers, n=1, sample=None, seed=None):
        return [list(self.candidates[:n]) for _ in tiers]


class TableScorer:
    """NLI from a table: candidate -> (P(candidate entails tier k-1), P(tier k contradicts candidate))."""

    def __init__(self, table):
        self.table = table

    def score(self, prem, hyp):
        rows = []
        for p, h in zip(prem, hyp):
            if h in self.table:                       # premise = positive tier k, hypothesis = candidate
                con = self.table[h][1]
                rows.append([0.0, 1 - con, con])
            else:                                     # premise = candidate, hypothesis = positive tier k-1
                ent = self.table[p][0]
                rows.append([ent, 1 - ent, 0.0])
        return np.array(rows)


# tier 1 has nothing above it to entail, so every candidate that contradicts passes there
@pytest.mark.parametrize("select,want,scores", [
    ("best", ["c", "b", "b", "b"], [(1, 3, 3), (2, 2, 2), (3, 2, 2), (4, 2, 2)]),
    ("first", ["a", "a", "a", "a"], [(1, 1, 3), (2, 1, 2), (3, 1, 2), (4, 1, 2)])])
def test_negatives_keep_the_best_passing_candidate(select, want, scores):
    cfg = load_config("tiny", overrides={"negatives": {"select": select, "tries": 3, "entail_threshold": 0.5,
                                                       "contradict_threshold": 0.5}})
    table = {"a": (0.6, 0.6), "b": (0.9, 0.95), "c": (0.4, 0.99)}     # c contradicts best but entails too little
    stage = get_stage("negatives", cfg, h=CandidateH(["a", "b", "c"]), scorer=TableScorer(table))
    row = {"chain_id": "x", "positive": ["animal", "red dog", "red dog on grass", "A red dog on the grass."],
           "negative": None}
    (out,) = stage._unit(0, [row])
    assert out["negative"] == want and out["neg_select"] == select
    assert [(s["tier"], s["tries"], s["passing"]) for s in out["neg_scores"]] == scores
    assert out["neg_missing_reason"] is None
    none = get_stage("negatives", cfg, h=CandidateH(["c"]), scorer=TableScorer(table))._unit(0, [row])[0]
    assert none["negative"] == ["c", None, None, None]                  # a partial negative, and why
    assert none["neg_missing_reason"].startswith("tier 2: none of 1 candidates entailed positive tier 1")
