"""Tiny deterministic models built offline, for tests and smoke runs (no model hub).

``resolve_model("tiny/llama-chat" | "tiny/t5" | "tiny/nli")`` builds the model on first use into a
cache folder keyed by a hash of the builder version, the exemplars file and the prompt
templates, and returns its path; every other id is returned unchanged for ``from_pretrained``.

Each builder trains a small byte-level BPE tokenizer with ``tokenizers`` on the exemplars and
prompt text, wraps it in ``PreTrainedTokenizerFast`` and trains its model for a few CPU seconds:

- ``tiny/llama-chat``: ``LlamaForCausalLM`` + ChatML ``chat_template``, trained on the rendered
  seed_chain / seed_tier / augment prompts (``pipeline.prompts``) -> the exemplar completions.
- ``tiny/t5``: ``T5ForConditionalGeneration``, both directions:
  ``T5_GENERALIZE.format(caption=...)`` -> ``"t1 => t2 => t3"`` and
  ``T5_SPECIFY.format(tier=...)`` -> next more specific tier (``tier=""`` for the root).
- ``tiny/nli``: ``BertForSequenceClassification`` with ``NLI_ID2LABEL``
  (premise = more specific text, hypothesis = more general).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from .tokenizers import BERT_SPECIALS, T5_SPECIALS, bert_tokenizer, t5_tokenizer, train_bpe

BUILDER_VERSION = "tiny-v1"

# Input/target formats of the tiny T5 completer (imported by other modules).
T5_GENERALIZE = "generalize: {caption}"
T5_SPECIFY = "specify: {tier}"
T5_CHAIN_SEP = " => "
T5_GENERALIZE_TARGET = "{t1} => {t2} => {t3}"

NLI_ID2LABEL = {0: "entailment", 1: "neutral", 2: "contradiction"}
NLI_LABEL2ID = {v: k for k, v in NLI_ID2LABEL.items()}

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_SEED = 0


# --------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    import torch
    from transformers import set_seed

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # reproducible reductions; also fastest for these sizes on a busy CPU
    set_seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def _inputs(exemplars_path, prompts_dir):
    from .. import prompts as P

    ex_path = Path(exemplars_path) if exemplars_path is not None else P.PROMPTS_DIR / P.EXEMPLARS_FILE
    pdir = Path(prompts_dir) if prompts_dir is not None else P.PROMPTS_DIR
    return ex_path, pdir, P.load_exemplars(ex_path)


def _prompt_texts(pdir: Path) -> list[str]:
    texts = []
    for p in sorted(pdir.glob("*.yaml")):
        texts.append(p.read_text(encoding="utf-8"))
    return texts


def _chain_texts(exemplars) -> list[str]:
    out = []
    for ex in exemplars:
        out.extend(ex["positive"])
        out.extend(t for t in (ex.get("negative") or []) if t)
        out.append(" => ".join(ex["positive"]))
    return out


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            perm = list(range(n))
            rng.shuffle(perm)
            order.extend(perm)
        yield order[:batch_size]
        del order[:batch_size]


def _train(model, make_batch: Callable[[list[int]], dict], n: int, steps: int, batch_size: int, lr: float,
           seed: int, desc: str) -> float:
    import torch
    from tqdm.auto import tqdm

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.05, 1 - s / steps))
    loss_v = float("nan")
    bar = tqdm(_batches(n, batch_size, steps, seed), total=steps, desc=desc, mininterval=2.0)
    for idx in bar:
        out = model(**make_batch(idx))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_v = float(out.loss)
        bar.set_postfix(loss=f"{loss_v:.3f}", refresh=False)
    model.eval()
    return loss_v


def _pad(seqs: list[list[int]], value: int, left: bool = False):
    import torch

    m = max(len(s) for s in seqs)
    rows = [([value] * (m - len(s)) + s) if left else (s + [value] * (m - len(s))) for s in seqs]
    return torch.tensor(rows, dtype=torch.long)


def _write_info(out_dir: Path, **info) -> None:
    (out_dir / "tiny_build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- tiny llama chat

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


def build_tiny_llama(out_dir: str | Path, exemplars_path=None, prompts_dir=None, seed: int = DEFAULT_SEED,
                     steps: int = 180, max_len: int = 160) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    t0 = time.time()
    ex_path, pdir, exemplars = _inputs(exemplars_path, prompts_dir)
    with _deterministic(seed):
        pairs = llama_training_examples(exemplars)
        specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
        texts = _chain_texts(exemplars) + _prompt_texts(pdir) + [m[0]["content"] for m, _ in pairs[:5]]
        raw_tok = train_bpe(texts, 1536, specials, min_frequency=2)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=raw_tok, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>",
            pad_token="<pad>", additional_special_tokens=["<|im_start|>", "</s>"],
            model_max_length=2048, padding_side="left",
        )
        tok.chat_template = CHATML_TEMPLATE

        seqs, labels = [], []
        for messages, completion in pairs:
            prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
            if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
                prompt_ids = prompt_ids["input_ids"]
            comp_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = list(prompt_ids) + comp_ids
            # loss on every token: the prompt's few-shot demonstrations are in the answer format,
            # which teaches the format far faster than the answer tokens alone
            lab = list(prompt_ids) + comp_ids
            if len(ids) > max_len:  # keep the end: the prompt's last demonstrations and the answer
                ids, lab = ids[-max_len:], lab[-max_len:]
            seqs.append(ids)
            labels.append(lab)

        cfg = LlamaConfig(
            vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            tie_word_embeddings=True, rms_norm_eps=1e-5,
        )
        model = LlamaForCausalLM(cfg)

        def make_batch(idx):
            ids = _pad([seqs[i] for i in idx], tok.pad_token_id)
            lab = _pad([labels[i] for i in idx], -100)
            att = _pad([[1] * len(seqs[i]) for i in idx], 0)
            return {"input_ids": ids, "attention_mask": att, "labels": lab}

        loss = _train(model, make_batch, len(seqs), steps=steps, batch_size=8, lr=4e-3, seed=seed,
                      desc="tiny llama-chat")
        gc = model.generation_config
        gc.do_sample = False
        gc.max_new_tokens = 48
        gc.eos_token_id = tok.eos_token_id
        gc.pad_token_id = tok.pad_token_id
        gc.bos_token_id = tok.bos_token_id
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    _write_info(out_dir, kind="tiny/llama-chat", builder=BUILDER_VERSION, seed=seed, steps=steps,
                final_loss=round(loss, 4), n_train=len(seqs), seconds=round(time.time() - t0, 1))
    return out_dir


# --------------------------------------------------------------------------- tiny t5

def t5_training_pairs(exemplars) -> list[tuple[str, str]]:
    pairs = []
    for ex in exemplars:
        t = ex["positive"]
        target = T5_GENERALIZE_TARGET.format(t1=t[0], t2=t[1], t3=t[2])
        pairs.append((T5_GENERALIZE.format(caption=t[3]), target))
        pairs.append((T5_GENERALIZE.format(caption=t[3]), target))  # weight the main task x2
        pairs.append((T5_SPECIFY.format(tier=""), t[0]))
        for k in range(3):
            pairs.append((T5_SPECIFY.format(tier=t[k]), t[k + 1]))
    return pairs


def build_tiny_t5(out_dir: str | Path, exemplars_path=None, prompts_dir=None, seed: int = DEFAULT_SEED,
                  steps: int = 220) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    out_dir = Path(out_dir)
    t0 = time.time()
    ex_path, pdir, exemplars = _inputs(exemplars_path, prompts_dir)
    with _deterministic(seed):
        pairs = t5_training_pairs(exemplars)
        texts = _chain_texts(exemplars) + _prompt_texts(pdir) + [a for a, _ in pairs[:10]]
        tok = t5_tokenizer(train_bpe(texts, 1280, T5_SPECIALS, min_frequency=2))
        src = [tok(a)["input_ids"] for a, _ in pairs]
        tgt = [tok(b)["input_ids"] for _, b in pairs]
        cfg = T5Config(
            vocab_size=len(tok), d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2,
            num_heads=4, dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id, feed_forward_proj="relu", tie_word_embeddings=True,
        )
        model = T5ForConditionalGeneration(cfg)

        def make_batch(idx):
            ids = _pad([src[i] for i in idx], tok.pad_token_id)
            att = _pad([[1] * len(src[i]) for i in idx], 0)
            lab = _pad([tgt[i] for i in idx], -100)
            return {"input_ids": ids, "attention_mask": att, "labels": lab}

        loss = _train(model, make_batch, len(src), steps=steps, batch_size=32, lr=5e-3, seed=seed, desc="tiny t5")
        gc = model.generation_config
        gc.do_sample = False
        gc.max_new_tokens = 48
        gc.no_repeat_ngram_size = 3  # a tiny model loops otherwise
        gc.decoder_start_token_id = tok.pad_token_id
        gc.eos_token_id = tok.eos_token_id
        gc.pad_token_id = tok.pad_token_id
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    _write_info(out_dir, kind="tiny/t5", builder=BUILDER_VERSION, seed=seed, steps=steps,
                final_loss=round(loss, 4), n_train=len(src), seconds=round(time.time() - t0, 1),
                generalize=T5_GENERALIZE, specify=T5_SPECIFY, target=T5_GENERALIZE_TARGET)
    return out_dir


# --------------------------------------------------------------------------- tiny nli

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
    ex_path, pdir, exemplars = _inputs(exemplars_path, prompts_dir)
    with _deterministic(seed):
        pairs = nli_training_pairs(exemplars, seed)
        tok = bert_tokenizer(train_bpe(_chain_texts(exemplars), 1024, BERT_SPECIALS, min_frequency=2),
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
                "input_ids": _pad([enc[i]["input_ids"] for i in idx], tok.pad_token_id),
                "token_type_ids": _pad([enc[i]["token_type_ids"] for i in idx], 0),
                "attention_mask": _pad([enc[i]["attention_mask"] for i in idx], 0),
                "labels": torch.tensor([labels[i] for i in idx], dtype=torch.long),
            }

        loss = _train(model, make_batch, len(enc), steps=steps, batch_size=32, lr=2e-3, seed=seed, desc="tiny nli")
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    _write_info(out_dir, kind="tiny/nli", builder=BUILDER_VERSION, seed=seed, steps=steps,
                final_loss=round(loss, 4), n_train=len(enc), seconds=round(time.time() - t0, 1),
                id2label={str(k): v for k, v in NLI_ID2LABEL.items()})
    return out_dir


# --------------------------------------------------------------------------- resolution / cache

TINY_IDS: dict[str, Callable[..., Path]] = {
    "tiny/llama-chat": build_tiny_llama,
    "tiny/t5": build_tiny_t5,
    "tiny/nli": build_tiny_nli,
}


def default_cache_dir() -> Path:
    env = os.environ.get("HIERARCAPS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hierarcaps" / "tiny"


def build_key(model_id: str, exemplars_path=None, prompts_dir=None) -> str:
    """Hash of builder version + model id + exemplars bytes + prompt template bytes."""
    from .. import prompts as P

    ex_path = Path(exemplars_path) if exemplars_path is not None else P.PROMPTS_DIR / P.EXEMPLARS_FILE
    pdir = Path(prompts_dir) if prompts_dir is not None else P.PROMPTS_DIR
    h = hashlib.sha256()
    h.update(f"{BUILDER_VERSION}\0{model_id}\0".encode())
    h.update(ex_path.read_bytes())
    for p in sorted(pdir.glob("*.yaml")):
        h.update(b"\0" + p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def build_tiny(model_id: str, cache_dir: str | Path | None = None, exemplars_path=None, prompts_dir=None) -> Path:
    """Build (once, under a file lock, atomically) and return the cached folder of a tiny model."""
    from filelock import FileLock

    if model_id not in TINY_IDS:
        raise KeyError(f"unknown tiny model id {model_id!r}; known: {sorted(TINY_IDS)}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    name = model_id.split("/", 1)[1]
    final = root / f"{name}-{build_key(model_id, exemplars_path, prompts_dir)}"
    if (final / "tiny_build.json").is_file():
        return final
    with FileLock(str(final) + ".lock"):
        if (final / "tiny_build.json").is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            TINY_IDS[model_id](tmp, exemplars_path=exemplars_path, prompts_dir=prompts_dir)
            if final.exists():  # a stale, incomplete folder
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def resolve_model(model_id: str, cache_dir: str | Path | None = None) -> str:
    """``tiny/...`` ids -> path of the built tiny model; any other id (hub id / path) unchanged."""
    if model_id in TINY_IDS:
        return str(build_tiny(model_id, cache_dir))
    return model_id


def weights_hash(model_dir: str | Path) -> str:
    """sha256 over the tensors (names, dtypes, shapes, bytes) of a saved model folder."""
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    for f in files:
        tensors = load_file(str(f))
        for k in sorted(tensors):
            t = tensors[k]
            h.update(f"{k}|{t.dtype}|{t.shape}|".encode())
            h.update(t.tobytes())
    return h.hexdigest()
