"""NliScorer on tiny random BERT classifiers built offline (no hub)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pipeline.backends.nli import NLI_COLUMNS, NliConfig, NliScorer, resolve_label_indices  # noqa: E402
from pipeline.models.tokenizers import bert_tokenizer, train_wordpiece  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORPUS = [
    "A man is sleeping on a couch.",
    "A person is sleeping.",
    "a blue bird sitting on top of a branch",
    "bird",
    "two dogs running through the snow in a park",
    "dogs playing",
    "a woman riding a red bicycle down the street",
    "the cat is not on the mat",
    "children play football on a green field at sunset",
]

ORDERS = {
    "roberta": {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
    "moritz": {0: "entailment", 1: "neutral", 2: "contradiction"},
    "crossenc": {0: "contradiction", 1: "entailment", 2: "neutral"},
    "two": {0: "entailment", 1: "not_entailment"},
    "generic": {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"},
    "noent": {0: "positive", 1: "negative"},
}


def _tokenizer():
    return bert_tokenizer(train_wordpiece(CORPUS * 3, vocab_size=200), model_max_length=128)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("nli_models")
    tok = _tokenizer()
    paths = {}
    for name, id2label in ORDERS.items():
        torch.manual_seed(0)  # same weights for same head size: outputs are permutations
        cfg = BertConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128, num_labels=len(id2label),
            id2label=id2label, label2id={v: k for k, v in id2label.items()},
        )
        model = BertForSequenceClassification(cfg)
        p = root / name
        model.save_pretrained(p)
        tok.save_pretrained(p)
        paths[name] = str(p)
    return paths


def _raw_probs(path, premises, hypotheses):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for p, h in zip(premises, hypotheses):
            enc = tok(p, h, return_tensors="pt")
            out.append(torch.softmax(model(**enc).logits, -1)[0].numpy())
    return np.stack(out)


PREMISES = [("very " * (i % 7)) + CORPUS[i % len(CORPUS)] for i in range(23)]
HYPOTHESES = [CORPUS[(3 * i + 1) % len(CORPUS)] for i in range(23)]


@pytest.mark.parametrize(
    "name,perm",
    [("roberta", [2, 1, 0]), ("moritz", [0, 1, 2]), ("crossenc", [1, 2, 0])],
)
def test_three_label_orders_map_to_fixed_columns(models_dir, name, perm):
    scorer = NliScorer(NliConfig(model=models_dir[name], batch_size=4, device="cpu"))
    got = scorer.score(PREMISES, HYPOTHESES)
    raw = _raw_probs(models_dir[name], PREMISES, HYPOTHESES)
    assert got.shape == (len(PREMISES), 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, raw[:, perm], atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_same_weights_any_label_order_same_semantics(models_dir):
    # identical weights, different id2label: the fixed columns must be the matching permutation
    a = NliScorer(NliConfig(model=models_dir["roberta"], device="cpu")).score(PREMISES, HYPOTHESES)
    b = NliScorer(NliConfig(model=models_dir["moritz"], device="cpu")).score(PREMISES, HYPOTHESES)
    np.testing.assert_allclose(a, b[:, ::-1], atol=1e-5)


def test_repeated_pairs_scored_once(models_dir):
    scorer = NliScorer(NliConfig(model=models_dir["roberta"], batch_size=4, device="cpu"))
    rows_seen = []
    hook = scorer.model.register_forward_hook(lambda m, args, kw, out: rows_seen.append(len(out.logits)),
                                              with_kwargs=True)
    order = [3, 0, 3, 7, 0, 3, 11]
    prem, hyp = [PREMISES[i] for i in order], [HYPOTHESES[i] for i in order]
    got = scorer.score(prem, hyp)
    hook.remove()
    assert sum(rows_seen) == 4                      # 4 distinct pairs went through the model
    np.testing.assert_allclose(got, scorer.score(PREMISES, HYPOTHESES)[order], atol=1e-5)


@pytest.mark.parametrize("policy,col", [("neutral", 1), ("contradiction", 2)])
def test_two_label_model(models_dir, policy, col):
    scorer = NliScorer(NliConfig(model=models_dir["two"], device="cpu", two_label_policy=policy))
    got = scorer.score(PREMISES, HYPOTHESES)
    raw = _raw_probs(models_dir["two"], PREMISES, HYPOTHESES)
    np.testing.assert_allclose(got[:, 0], raw[:, 0], atol=1e-5)
    np.testing.assert_allclose(got[:, col], raw[:, 1], atol=1e-5)
    assert np.all(got[:, 3 - col] == 0)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_generic_labels_need_label_map(models_dir):
    with pytest.raises(ValueError, match="label_map"):
        NliScorer(NliConfig(model=models_dir["generic"], device="cpu"))
    scorer = NliScorer(
        NliConfig(
            model=models_dir["generic"], device="cpu",
            label_map={"CONTRADICTION": 0, "neutral": 1, "Entailment": 2},
        )
    )
    raw = _raw_probs(models_dir["generic"], PREMISES[:5], HYPOTHESES[:5])
    np.testing.assert_allclose(scorer.score(PREMISES[:5], HYPOTHESES[:5]), raw[:, [2, 1, 0]], atol=1e-5)


def test_model_without_entailment_refused(models_dir):
    with pytest.raises(ValueError, match="noent"):
        NliScorer(NliConfig(model=models_dir["noent"], device="cpu"))
    with pytest.raises(ValueError, match="no entailment label"):
        resolve_label_indices({0: "neutral", 1: "contradiction"}, "m")


@pytest.mark.parametrize(
    "labels",
    [
        {0: "Entail", 1: "Neutral", 2: "Contradict"},
        {0: "ENTAILED", 1: "neutral", 2: "contradictory"},
        {0: "entailment", 1: "neutral", 2: "CONTRADICTION"},
        {"0": "entailment", "1": "neutral", "2": "contradiction"},
    ],
)
def test_label_spellings(labels):
    proj = resolve_label_indices(labels, "m")
    np.testing.assert_array_equal(proj, np.eye(3))


def test_label_resolution_errors():
    with pytest.raises(ValueError, match="twice"):
        resolve_label_indices({0: "entailment", 1: "entail", 2: "neutral"}, "m")
    with pytest.raises(ValueError, match="missing"):
        resolve_label_indices({0: "entailment", 1: "neutral", 2: "neutral_x"}, "m", {"entailment": 0, "neutral": 1})
    with pytest.raises(ValueError):
        NliConfig(model="x", label_map={"yes": 0})


def test_order_restored_under_bucketing(models_dir):
    scorer = NliScorer(NliConfig(model=models_dir["moritz"], batch_size=5, device="cpu"))
    batched = scorer.score(PREMISES, HYPOTHESES)
    single = np.concatenate([scorer.score([p], [h]) for p, h in zip(PREMISES, HYPOTHESES)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # a different batch composition (reversed input, other batch size) gives the same rows
    scorer.cfg = scorer.cfg.model_copy(update={"batch_size": 3})
    rev = scorer.score(PREMISES[::-1], HYPOTHESES[::-1])[::-1]
    np.testing.assert_allclose(rev, single, atol=1e-5)


def test_shapes_and_edge_cases(models_dir):
    scorer = NliScorer(NliConfig(model=models_dir["moritz"], device="cpu", max_length=16))
    assert scorer.score([], []).shape == (0, 3)
    long = ["word " * 200]
    assert scorer.score(long, ["bird"]).shape == (1, 3)  # truncated to max_length, no error
    with pytest.raises(ValueError, match="premises"):
        scorer.score(["a"], ["b", "c"])
    assert set(scorer.sanity) == set(NLI_COLUMNS)
    assert abs(sum(scorer.sanity.values()) - 1) < 1e-4


def test_strict_sanity(models_dir):
    path = models_dir["moritz"]
    probs = NliScorer(NliConfig(model=path, device="cpu")).sanity
    if max(probs, key=probs.get) == "entailment":
        NliScorer(NliConfig(model=path, device="cpu", strict_sanity=True))
    else:
        with pytest.raises(RuntimeError, match="sanity"):
            NliScorer(NliConfig(model=path, device="cpu", strict_sanity=True))


def test_cross_encoder_backend_matches(models_dir):
    pytest.importorskip("sentence_transformers")
    path = models_dir["crossenc"]
    ce = NliScorer(NliConfig(model=path, backend="cross-encoder", device="cpu", batch_size=4))
    assert ce.cfg.backend == "cross_encoder"
    hf = NliScorer(NliConfig(model=path, device="cpu", batch_size=4))
    np.testing.assert_allclose(ce.score(PREMISES, HYPOTHESES), hf.score(PREMISES, HYPOTHESES), atol=1e-4)
