"""distill keeps going past a chain H cannot learn from: it goes to rejects with the reason."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.backends.completer import chain_problem
from pipeline.config import load_config
from pipeline.runner import run_stages
from pipeline.store import RunStore


def test_chain_problem_reasons():
    assert chain_problem(["bird", "blue bird", "blue bird on branch", "A blue bird on a branch."]) is None
    assert "separator" in chain_problem(["bird", "be => blue bird", "blue bird on branch", "A blue bird."])
    assert "4 non-empty tiers" in chain_problem(["bird", "", "blue bird on branch", "A blue bird."])
    assert "4 non-empty tiers" in chain_problem(["bird", "A blue bird."])


@pytest.mark.slow
def test_distill_rejects_unusable_chains(tmp_path):
    cfg = load_config("tiny", overrides=[f"run.root={tmp_path}", "seed.max_captions=16", "distill.max_steps=2",
                                         "distill.eval_fraction=0"])
    store = RunStore(cfg.run.root, "t")
    run_stages(cfg, store, ["ingest", "seed", "nli_filter"])
    seeds = store.stage("seed").read().to_pylist()[:2]
    assert len(seeds) == 2, "the tiny LLM parsed fewer than 2 seed chains"
    # two accepted chains, one of them from an older run, written before the parser refused '=>'
    # inside a tier
    seeds[1]["positive"] = ["be => animal", *seeds[1]["positive"][1:]]
    part = store.stage("nli_filter").data_files()[0]
    pq.write_table(pa.Table.from_pylist(seeds, schema=pq.read_schema(part)), part)
    m = run_stages(cfg, store, ["distill"])[0]
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (2, 1, 1), m
    rej = store.stage("distill").read_rejects().to_pylist()
    assert rej[0]["key"] == seeds[1]["chain_id"] and "separator" in rej[0]["reason"], rej
