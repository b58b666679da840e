"""``tiny/nli``: a 2-layer BERT cross-encoder with ``NLI_ID2LABEL`` (premise = the more specific
text, hypothesis = the more general), trained on the exemplars' links and negatives."""

from __future__ import annotations

import random
import time
from pathlib import Path

from .tokenizers import BERT_SPECIALS, bert_tokenizer, train_bpe
from .tiny_train import DEFAULT_SEED, chain_texts, deterministic, inputs, pad, train_until, write_record

NLI_ID2LABEL = {0: "entailment", 1: "neutral", 2: "contradiction"}
NLI_LABEL2ID = {v: k for k, v in NLI_ID2LABEL.items()}


def nli_training_pairs(exemplars, seed: int = DEFAULT_SEED) -> list[tuple[str, str, int]]:
    """(premise, hypothesis, label): links -> entailment, positive vs negative tier ->
    contradiction, unrelated or reversed (general premise) pairs -> neutral."""
    rng = random.Random(seed)
    E, N, C = NLI_LABEL2ID["entailment"], NLI_LABEL2ID["neutral"], NLI_LABEL2ID["contradiction"]
    out = []
    n = len(exemplars)
    for i, ex in enumerate(exemplars):
        p = ex["positive"]
        neg = ex.get("negative") or [None] * 4
        for a in range(4):
            for b in range(a):
                out.append((p[a], p[b], E))  # more specific premise entails more general
        for k in range(4):
            if neg[k]:
                out.append((p[k], neg[k], C))
                if k < 2:
                    out.append((neg[k], p[k], C))
                if k >= 1:
                    out.append((neg[k], p[k - 1], E))
        for _ in range(5):
            j = rng.randrange(n - 1)
            j = j + 1 if j >= i else j
            a, b = rng.randrange(4), rng.randrange(4)
            out.append((p[a], exemplars[j]["positive"][b], N))
        a = rng.randrange(3)
        out.append((p[a], p[rng.randrange(a + 1, 4)], N))  # general premise, specific hypothesis
    return out


def build_tiny_nli(out_dir: str | Path, exemplars_path=None, prompts_dir=None, seed: int = DEFAULT_SEED,
                   steps: int = 200) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    out_dir = Path(out_dir)
    t0 = time.time()
    _, _, exemplars = inputs(exemplars_path, prompts_dir)
    with deterministic(seed):
        pairs = nli_training_pairs(exemplars, seed)
        tok = bert_tokenizer(train_bpe(chain_texts(exemplars), 1024, BERT_SPECIALS, min_frequency=2),
                             model_max_length=256)
        enc = [tok(a, b, truncation=True, max_length=96) for a, b, _ in pairs]
        labels = [lab for _, _, lab in pairs]
        cfg = BertConfig(
            vocab_size=len(tok), hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=192, max_position_embeddings=256, type_vocab_size=2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id,
            num_labels=3, id2label=dict(NLI_ID2LABEL), label2id=dict(NLI_LABEL2ID),
        )
        model = BertForSequenceClassification(cfg)

        def make_batch(idx):
            return {
                "input_ids": pad([enc[i]["input_ids"] for i in idx], tok.pad_token_id),
                "token_type_ids": pad([enc[i]["token_type_ids"] for i in idx], 0),
                "attention_mask": pad([enc[i]["attention_mask"] for i in idx], 0),
                "labels": torch.tensor([labels[i] for i in idx], dtype=torch.long),
            }

        record = train_until(model, None, 1, seed, "tiny nli", make_batch=make_batch, n=len(enc), steps=steps,
                             batch_size=32, lr=2e-3)
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    write_record(out_dir, kind="tiny/nli", seed=seed, steps=steps, n_train=len(enc),
                 seconds=round(time.time() - t0, 1), id2label={str(k): v for k, v in NLI_ID2LABEL.items()}, **record)
    return out_dir
