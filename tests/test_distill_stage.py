"""distill keeps going past a chain H cannot learn from: it goes to rejects with the reason."""

import pytest

from conftest import copy_run, rewrite_stage
from pipeline.chain import chain_problem
from pipeline.config import load_config
from pipeline.runner import run_stages


def test_chain_problem_reasons():
    assert chain_problem(["bird", "blue bird", "blue bird on branch", "A blue bird on a branch."]) is None
    assert "separator" in chain_problem(["bird", "be => blue bird", "blue bird on branch", "A blue bird."])
    assert chain_problem(["bird", "", "blue bird on branch", "A blue bird."]) == "tier 2 is empty"
    assert chain_problem(["bird", "A blue bird."]) == "expected 4 tiers, got 2"


@pytest.mark.slow
def test_distill_rejects_unusable_chains(finished_run, tmp_path):
    cfg, store = copy_run(finished_run, tmp_path)
    cfg = load_config(base=cfg.model_dump(mode="json"), overrides=["distill.max_steps=2", "distill.heldout_fraction=0"])
    seeds = store.stage("nli_filter").read().to_pylist()[:2]
    assert len(seeds) == 2, "the finished run accepted fewer than 2 seed chains"
    # two accepted chains, one of them from an older run, written before the parser refused '=>'
    # inside a tier
    seeds[1]["positive"] = ["be => animal", *seeds[1]["positive"][1:]]
    rewrite_stage(store, "nli_filter", seeds)
    store.stage("augment").clear()                                     # distill reads only nli_filter now
    m = run_stages(cfg, store, ["distill"])[0]
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (2, 1, 1), m
    rej = store.stage("distill").read_rejects().to_pylist()
    assert rej[0]["key"] == seeds[1]["chain_id"] and "separator" in rej[0]["reason"], rej
