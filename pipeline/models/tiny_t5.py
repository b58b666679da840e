"""``tiny/t5``: a 2-layer T5 completer in both directions, trained for CPU seconds.

``T5_GENERALIZE.format(caption=...)`` -> ``"t1 => t2 => t3"`` and ``T5_SPECIFY.format(tier=...)``
-> the next more specific tier (``tier=""`` for the root). With 123 exemplars a model this small
recalls chains instead of reading its caption, so most training pairs are exemplars with caption
words swapped for others everywhere in the chain: it has to copy.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from ..chain import TIER_SEP
from .tokenizers import T5_SPECIALS, t5_tokenizer, train_bpe
from .tiny_train import (DEFAULT_SEED, HELDOUT_CAPTIONS, Gate, chain_texts, deterministic, inputs, pad,
                         prompt_texts, set_greedy, train_until, write_record)

T5_GENERALIZE = "generalize: {caption}"
T5_SPECIFY = "specify: {tier}"
T5_CHAIN_SEP = TIER_SEP
T5_GENERALIZE_TARGET = TIER_SEP.join(["{t1}", "{t2}", "{t3}"])
WORD = re.compile(r"[a-z]{3,}")


def _swap_words(chain: list[str], vocab: list[str], rng: random.Random) -> list[str] | None:
    """The chain with one or two caption words that a tier shares replaced everywhere by others."""
    words = [w for w in dict.fromkeys(WORD.findall(chain[3].lower()))
             if any(re.search(rf"\b{w}\b", t) for t in chain[1:3])]
    if not words:
        return None
    out = list(chain)
    for w in rng.sample(words, min(len(words), rng.choice((1, 2)))):
        new = rng.choice(vocab)
        out = [re.sub(rf"\b{w}\b", new, t, flags=re.IGNORECASE) for t in out]
    return out


def _spellings(caption: str) -> list[str]:
    """The caption as written and as corpora often write it (lower case, no final period)."""
    plain = caption.strip().rstrip(".").strip()
    return list(dict.fromkeys([caption, plain[:1].lower() + plain[1:]]))


def t5_training_pairs(exemplars, copies: int = 8, seed: int = DEFAULT_SEED) -> list[tuple[str, str]]:
    """Generalize pairs for every exemplar and ``copies`` word-swapped variants of it (two
    spellings each), and the specify steps of every exemplar (root first)."""
    rng = random.Random(seed)
    vocab = sorted({w for ex in exemplars for t in ex["positive"] for w in WORD.findall(t.lower())})
    pairs = []
    for ex in exemplars:
        t = ex["positive"]
        for c in [t] + [c for c in (_swap_words(t, vocab, rng) for _ in range(copies)) if c]:
            target = T5_GENERALIZE_TARGET.format(t1=c[0], t2=c[1], t3=c[2])
            pairs.extend((T5_GENERALIZE.format(caption=cap), target) for cap in _spellings(c[3]))
        pairs.append((T5_SPECIFY.format(tier=""), t[0]))
        pairs.extend((T5_SPECIFY.format(tier=t[k]), t[k + 1]) for k in range(3))
    return pairs


def generalize(tok, model, captions: list[str], max_new_tokens: int = 40) -> list[str]:
    """Greedy generalize outputs, with the model's saved generation config."""
    import torch

    outs = []
    for cap in captions:
        enc = tok(T5_GENERALIZE.format(caption=cap), return_tensors="pt")
        with torch.no_grad():
            outs.append(tok.decode(model.generate(**enc, max_new_tokens=max_new_tokens)[0], skip_special_tokens=True))
    return outs


def chains_parsed(tok, model, captions=HELDOUT_CAPTIONS) -> int:
    """How many captions' generalize outputs parse as a chain under the default chain rules."""
    from ..parsing import parse_chain

    return sum(parse_chain(out, cap).ok for out, cap in zip(generalize(tok, model, captions), captions))


def build_tiny_t5(out_dir: str | Path, exemplars_path=None, prompts_dir=None, seed: int = DEFAULT_SEED,
                  steps: int = 600, copies: int = 8, need: int = 5, max_rounds: int = 4) -> Path:
    """Train until at least ``need`` of the held-out captions generalize into a parseable chain."""
    from transformers import T5Config, T5ForConditionalGeneration

    out_dir = Path(out_dir)
    t0 = time.time()
    _, pdir, exemplars = inputs(exemplars_path, prompts_dir)
    with deterministic(seed):
        pairs = t5_training_pairs(exemplars, copies, seed)
        texts = chain_texts(exemplars) + prompt_texts(pdir) + [a for a, _ in pairs[:10]]
        # SentencePiece-style pieces: a word is the same token in the caption and in a tier
        tok = t5_tokenizer(train_bpe(texts, 1280, T5_SPECIALS, pre="metaspace", unk_token="<unk>", min_frequency=2))
        src = [tok(a)["input_ids"] for a, _ in pairs]
        tgt = [tok(b)["input_ids"] for _, b in pairs]
        cfg = T5Config(
            vocab_size=len(tok), d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2,
            num_heads=4, dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id, feed_forward_proj="relu", tie_word_embeddings=True,
        )
        model = T5ForConditionalGeneration(cfg)
        # no_repeat_ngram_size: a tiny model loops otherwise; 3 would forbid "x => y" twice in a chain
        set_greedy(model, tok, no_repeat_ngram_size=5, decoder_start_token_id=tok.pad_token_id)

        def make_batch(idx):
            return {"input_ids": pad([src[i] for i in idx], tok.pad_token_id),
                    "attention_mask": pad([[1] * len(src[i]) for i in idx], 0),
                    "labels": pad([tgt[i] for i in idx], -100)}

        record = train_until(model, Gate("chains_parsed", need, lambda m: chains_parsed(tok, m)), max_rounds, seed,
                             "tiny t5", make_batch=make_batch, n=len(src), steps=steps, batch_size=32, lr=5e-3)
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    write_record(out_dir, kind="tiny/t5", seed=seed, steps=steps, copies=copies, n_train=len(src),
                 seconds=round(time.time() - t0, 1), generalize=T5_GENERALIZE, specify=T5_SPECIFY,
                 target=T5_GENERALIZE_TARGET, **record)
    return out_dir
