"""Offline tiny models (pipeline/models/tiny.py): build, load back, behave, rebuild identically."""

from __future__ import annotations

import json

from pathlib import Path

import pytest
import torch

from pipeline import prompts as P
from pipeline.models import (
    T5_CHAIN_SEP,
    T5_SPECIFY,
    build_tiny,
    resolve_model,
    weights_hash,
)
from pipeline.models.tiny import TinyBuildError
from pipeline.models.tiny_llama import generate_chat
from pipeline.models.tiny_t5 import generalize
from pipeline.parsing import parse_chain

from _shared import UNSEEN

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_other_ids_pass_through(tmp_path):
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct", tmp_path) == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolve_model("/some/local/path") == "/some/local/path"
    assert not any(tmp_path.iterdir())


def test_exemplar_captions_not_in_examples():
    ex = {e["positive"][3].strip().lower() for e in P.load_exemplars()}
    caps = [ln.split("\t")[0].strip().lower() for ln in (REPO / "examples/captions.tsv").read_text().splitlines()]
    assert not ex & set(caps)


def _record(path) -> dict:
    return json.loads((Path(path) / "tiny_build.json").read_text())


def test_llama_chat_generates_parseable_chains(tiny_models):
    """The build's gate, measured again on the saved model loaded the ordinary way: seed_chain
    answers to held-out captions parse (the gate was held, whatever rounds it took)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    assert tok.chat_template and tok.eos_token and tok.pad_token and tok.bos_token
    exemplars = P.load_exemplars()
    ok_seed = ok_aug = 0
    for cap in UNSEEN:
        raw = generate_chat(tok, model, P.render_seed_chain(cap, exemplars))
        assert raw.strip()
        ok_seed += parse_chain(raw, cap).ok
        ok_aug += parse_chain(generate_chat(tok, model, P.render_augment(cap, exemplars[:3])), cap).ok
    gate = _record(tiny_models["llama"])["gate"]
    assert gate["measure"] == "seed_chains_parsed" and gate["got"] >= gate["need"] >= 3
    assert ok_seed == gate["got"], (ok_seed, gate)
    assert ok_seed + ok_aug >= 1


def test_t5_generalize_and_specify(tiny_models):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["t5"])
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_models["t5"])
    outs = generalize(tok, model, UNSEEN)
    parsed = [parse_chain(o, c) for o, c in zip(outs, UNSEEN)]
    gate = _record(tiny_models["t5"])["gate"]
    assert gate["measure"] == "chains_parsed" and gate["got"] >= gate["need"] >= 5
    assert sum(p.ok for p in parsed) == gate["got"], (outs, gate)
    assert all(len(p.tiers) == 3 and all(p.tiers) for p in parsed if p.ok)
    assert sum(len([t for t in o.split(T5_CHAIN_SEP.strip()) if t.strip()]) == 3 for o in outs) >= 2
    for tier in ["", "animal", "dog running on grass"]:
        enc = tok(T5_SPECIFY.format(tier=tier), return_tensors="pt")
        with torch.no_grad():
            out = tok.decode(model.generate(**enc, max_new_tokens=40)[0], skip_special_tokens=True)
        assert out.strip()


def test_gate_not_reached_is_an_error(tmp_path):
    """A build that cannot reach its gate within its rounds fails loudly (no weak model cached)."""
    from pipeline.models.tiny_t5 import build_tiny_t5

    with pytest.raises(TinyBuildError, match=r"chains_parsed \d+/10 after 1 rounds, the build needs 11"):
        build_tiny_t5(tmp_path / "t5", steps=5, copies=0, need=11, max_rounds=1)
    assert not (tmp_path / "t5" / "tiny_build.json").exists()


def test_nli_labels_and_judgements(tiny_models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["nli"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["nli"])
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}

    def probs(premise, hypothesis):
        with torch.no_grad():
            return model(**tok(premise, hypothesis, return_tensors="pt")).logits.softmax(-1)[0].tolist()

    exemplars = P.load_exemplars()[:30]
    links = [probs(e["positive"][k + 1], e["positive"][k]) for e in exemplars for k in range(3)]
    negs = [probs(e["positive"][k], e["negative"][k]) for e in exemplars for k in range(4)]
    assert any(p[0] > p[2] for p in links)
    assert any(p[2] == max(p) for p in negs)


def test_deterministic_rebuild(tiny_models, tmp_path):
    again = build_tiny("tiny/nli", tmp_path)
    assert weights_hash(again) == weights_hash(tiny_models["nli"])


def test_cache_reused(tiny_models):
    cache = Path(tiny_models["nli"]).parent
    assert resolve_model("tiny/nli", cache) == tiny_models["nli"]
