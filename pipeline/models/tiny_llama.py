"""``tiny/llama-chat``: a 2-layer Llama with a ChatML template, trained on the pipeline's own
rendered seed_chain / seed_tier / augment prompts -> the exemplar completions."""

from __future__ import annotations

import time
from pathlib import Path

from .tokenizers import train_bpe
from .tiny_train import (DEFAULT_SEED, HELDOUT_CAPTIONS, Gate, chain_texts, deterministic, inputs, pad,
                         prompt_texts, set_greedy, train_until, write_record)

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def llama_training_examples(exemplars, n_examples: int | None = None, k_demos: int = 3) -> list[tuple[list[dict], str]]:
    """(messages, completion) pairs for every exemplar: seed_chain, augment and 3 seed_tier steps,
    rendered exactly as the pipeline renders them (default template settings)."""
    from .. import prompts as P

    n_examples = P.DEFAULT_N_EXAMPLES if n_examples is None else n_examples
    seed_tier = P.load_prompt(P.SEED_TIER_ID)
    seed_chain = P.load_prompt(P.SEED_CHAIN_ID)
    augment = P.load_prompt(P.AUGMENT_ID)
    out = []
    n = len(exemplars)
    for i, ex in enumerate(exemplars):
        pos = ex["positive"]
        out.append((P.render_seed_chain(pos[3], exemplars, n_examples, template=seed_chain),
                    P.format_chain_numbered(pos)))
        demos = [exemplars[(i + 1 + 7 * j) % n] for j in range(k_demos)]
        out.append((P.render_augment(pos[3], demos, template=augment), P.format_chain_arrows(pos)))
        for k in (3, 2, 1):
            out.append((P.render_seed_tier(pos[k], k, exemplars, n_examples, template=seed_tier,
                                           exclude_caption=pos[3]), pos[k - 1]))
    return out


def generate_chat(tok, model, messages, max_new_tokens: int = 40) -> str:
    import torch

    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def seed_chains_parsed(tok, model, exemplars, captions=HELDOUT_CAPTIONS) -> int:
    """How many held-out captions' seed_chain answers parse as a chain."""
    from .. import prompts as P
    from ..parsing import parse_chain

    return sum(parse_chain(generate_chat(tok, model, P.render_seed_chain(c, exemplars)), c).ok for c in captions)


def build_tiny_llama(out_dir: str | Path, exemplars_path=None, prompts_dir=None, seed: int = DEFAULT_SEED,
                     steps: int = 180, max_len: int = 160, need: int = 3, max_rounds: int = 4) -> Path:
    """Train until at least ``need`` held-out captions get a parseable seed_chain answer."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    t0 = time.time()
    _, pdir, exemplars = inputs(exemplars_path, prompts_dir)
    with deterministic(seed):
        pairs = llama_training_examples(exemplars)
        specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
        texts = chain_texts(exemplars) + prompt_texts(pdir) + [m[0]["content"] for m, _ in pairs[:5]]
        tok = PreTrainedTokenizerFast(
            tokenizer_object=train_bpe(texts, 1536, specials, min_frequency=2), bos_token="<s>",
            eos_token="<|im_end|>", unk_token="<unk>", pad_token="<pad>",
            additional_special_tokens=["<|im_start|>", "</s>"], model_max_length=2048, padding_side="left",
        )
        tok.chat_template = CHATML_TEMPLATE

        seqs = []
        for messages, completion in pairs:
            prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
            if hasattr(prompt_ids, "keys"):
                prompt_ids = prompt_ids["input_ids"]
            comp_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            # loss on every token: the prompt's few-shot demonstrations are in the answer format,
            # which teaches the format far faster than the answer tokens alone; a long one keeps
            # its end (the last demonstrations and the answer)
            seqs.append((list(prompt_ids) + comp_ids)[-max_len:])

        cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True, rms_norm_eps=1e-5,
        )
        model = LlamaForCausalLM(cfg)
        set_greedy(model, tok, bos_token_id=tok.bos_token_id)

        def make_batch(idx):
            return {"input_ids": pad([seqs[i] for i in idx], tok.pad_token_id),
                    "attention_mask": pad([[1] * len(seqs[i]) for i in idx], 0),
                    "labels": pad([seqs[i] for i in idx], -100)}

        gate = Gate("seed_chains_parsed", need, lambda m: seed_chains_parsed(tok, m, exemplars))
        record = train_until(model, gate, max_rounds, seed, "tiny llama-chat", make_batch=make_batch, n=len(seqs),
                             steps=steps, batch_size=8, lr=4e-3)
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    write_record(out_dir, kind="tiny/llama-chat", seed=seed, steps=steps, n_train=len(seqs),
                 seconds=round(time.time() - t0, 1), **record)
    return out_dir
