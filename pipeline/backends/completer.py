"""The completer H: a fine-tuned Flan-T5 that walks a caption hierarchy in both directions.

HierarCaps distils LLM-made chains (4 tiers, general -> specific) into a seq2seq model used two ways:

* specific -> general (bulk stage): ``"generalize: {caption}"`` -> ``"{t1} => {t2} => {t3}"``
* general -> specific (negatives stage): ``"specify: {tier_k}"`` -> tier k+1, with the root
  (producing tier 1) being the empty string, i.e. input ``"specify: "``.

This module holds the training loop (:func:`train_completer`), the batched generator
(:class:`Completer`) and a decoupled validity check (:func:`validity_rate`). It has no stage
logic: stages turn tables into chains / captions and call these functions.

Training is a plain accelerate loop (not ``Seq2SeqTrainer``) so that resume is exact: the data
order is a pure function of ``(seed, epoch)``, and checkpoints carry model, optimizer, scheduler,
RNG and step state. A run killed at any time (even mid-checkpoint-write: checkpoints are written
into a temp dir and renamed) and rerun ends with bit-identical weights to an uninterrupted run on
the same hardware and thread count (on CUDA, bit-identity additionally needs deterministic kernels,
``torch.use_deterministic_algorithms``; otherwise it is equal up to float non-associativity).

Held-out split: ``eval_fraction`` of the *pairs* (seeded permutation). Pairs of one chain can fall
on both sides, so eval loss is an in-distribution check, not a test score; keep test captions out
of the chains passed in (the stages do this).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.backends.common import (length_buckets, release_gpu_cache, resolve_device, resolve_dtype,
                                      restore_order)

log = logging.getLogger(__name__)

N_TIERS = 4
CHAIN_SEP = "=>"

GENERALIZE_PREFIX = "generalize: "
SPECIFY_PREFIX = "specify: "
TARGET_JOIN = " => "

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# config


class PairFormat(BaseModel):
    """Input/target formats of the two directions. ``{text}`` is the source text."""

    model_config = ConfigDict(extra="forbid")

    generalize_prefix: str = GENERALIZE_PREFIX
    specify_prefix: str = SPECIFY_PREFIX
    target_join: str = TARGET_JOIN
    # t3 -> t4 ("specify: clause" -> caption). Kept by default: the negatives stage needs it to
    # write negative tier 4 (must entail positive tier 3 and contradict positive tier 4).
    include_caption_target: bool = True
    # root -> t1 ("specify: " -> category). Kept by default: negative tier 1 comes from the root.
    include_root: bool = True

    def generalize_input(self, caption: str) -> str:
        return f"{self.generalize_prefix}{caption}"

    def specify_input(self, tier: str) -> str:
        # the root is the empty string -> "specify: " (trailing space kept verbatim)
        return f"{self.specify_prefix}{tier}"


class GenConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 64


class CompleterConfig(BaseModel):
    """Config of H: base model, formats, training and generation settings."""

    model_config = ConfigDict(extra="forbid")

    model: str = "google/flan-t5-base"
    revision: str | None = None
    format: PairFormat = Field(default_factory=PairFormat)
    max_source_len: int = 128
    max_target_len: int = 96
    # optimisation
    lr: float = 3e-4
    epochs: float = 3.0
    max_steps: int | None = None          # overrides epochs when set (optimizer steps)
    batch_size: int = 32                  # micro-batch size
    grad_accum: int = 1
    warmup: float = 0.03                  # fraction of total steps if < 1, else a step count
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # LoRA (peft); merged into the base at save time
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q", "k", "v", "o"])
    bf16: Literal["auto", True, False] = "auto"   # auto = on CUDA with bf16 support only
    device: str = "auto"
    seed: int = 0
    eval_fraction: float = 0.02
    eval_batch_size: int = 64
    save_every_steps: int = 500
    keep_checkpoints: int = 2
    gen: GenConfig = Field(default_factory=GenConfig)

    @field_validator("eval_fraction")
    @classmethod
    def _frac(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {v}")
        return v


# ---------------------------------------------------------------------------------------------
# pairs


def chain_problem(chain: Sequence[str]) -> str | None:
    """Why H cannot learn from ``chain`` (None when it can)."""
    if len(chain) != N_TIERS or any(not isinstance(t, str) or not t.strip() for t in chain):
        return f"expected {N_TIERS} non-empty tiers, got {list(chain)!r}"
    for t in chain:
        if CHAIN_SEP in t:
            return f"tier contains the separator {CHAIN_SEP!r}: {t!r}"
    return None


def _check_chain(chain: Sequence[str], i: int) -> None:
    if why := chain_problem(chain):
        raise ValueError(f"chain {i}: {why}")


def make_training_pairs(
    chains: Sequence[Sequence[str]], fmt: PairFormat | None = None
) -> list[tuple[str, str]]:
    """(source, target) pairs in both directions, for chains ordered general -> specific.

    Per chain ``[t1, t2, t3, t4]``:
      * ``generalize: t4`` -> ``t1 => t2 => t3``
      * ``specify: `` -> t1 (root; ``fmt.include_root``), ``specify: t1`` -> t2,
        ``specify: t2`` -> t3, ``specify: t3`` -> t4 (``fmt.include_caption_target``).

    t3 -> t4 is kept by default: it is what writes negative tier 4 from positive tier 3. Note the
    root pair has one input for all chains (a distribution over categories); use sampling with it.
    Raises ValueError naming the chain index for malformed chains.
    """
    fmt = fmt or PairFormat()
    pairs: list[tuple[str, str]] = []
    for i, chain in enumerate(chains):
        _check_chain(chain, i)
        t = [s.strip() for s in chain]
        pairs.append((fmt.generalize_input(t[3]), fmt.target_join.join(t[:3])))
        if fmt.include_root:
            pairs.append((fmt.specify_input(""), t[0]))
        for k in range(N_TIERS - 1):
            if k == N_TIERS - 2 and not fmt.include_caption_target:
                continue
            pairs.append((fmt.specify_input(t[k]), t[k + 1]))
    return pairs


def split_chain(raw: str) -> list[str]:
    """Split a generated ``"a => b => c"`` into stripped, non-empty parts."""
    return [p.strip() for p in raw.split(CHAIN_SEP) if p.strip()]


# ---------------------------------------------------------------------------------------------
# training


def _use_bf16(cfg: CompleterConfig, device) -> bool:
    import torch

    if cfg.bf16 == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return bool(cfg.bf16)


def _fingerprint(pairs: Sequence[tuple[str, str]], cfg: CompleterConfig) -> str:
    """What a checkpoint must match to be resumed: the data and every training-relevant field."""
    h = hashlib.sha256()
    for s, t in pairs:
        h.update(s.encode())
        h.update(b"\x00")
        h.update(t.encode())
        h.update(b"\x01")
    train_fields = cfg.model_dump(exclude={"gen", "device", "save_every_steps", "keep_checkpoints",
                                           "eval_batch_size"})
    h.update(json.dumps(train_fields, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _split(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([seed, 7]).permutation(n)
    n_eval = int(round(n * frac))
    if frac > 0 and n_eval == 0 and n >= 2:
        n_eval = 1
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 11, epoch]).permutation(n)


def _rng_state() -> dict[str, Any]:
    import torch

    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ckpt_dirs(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    out = [p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step-")
           and (p / "state.json").is_file()]
    return sorted(out, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(ckpt_root: Path, step: int, model, optimizer, scheduler, state: dict,
                     keep: int) -> Path:
    import torch

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    # state.json last: its presence marks a complete checkpoint
    with open(tmp / "state.json", "w") as f:
        json.dump(state, f, indent=1)
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    for old in _ckpt_dirs(ckpt_root)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_model_and_tokenizer(cfg: CompleterConfig):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    kw = {"revision": cfg.revision} if cfg.revision else {}
    tok = AutoTokenizer.from_pretrained(cfg.model, **kw)
    model = AutoModelForSeq2SeqLM.from_pretrained(cfg.model, dtype="float32", **kw)
    return model, tok


def _encode(tok, pairs, cfg: CompleterConfig) -> tuple[list[list[int]], list[list[int]]]:
    src = tok([s for s, _ in pairs], truncation=True, max_length=cfg.max_source_len)["input_ids"]
    tgt = tok(text_target=[t for _, t in pairs], truncation=True,
              max_length=cfg.max_target_len)["input_ids"]
    return src, tgt


def _collate(src, tgt, idx, pad_id: int, device):
    import torch

    b = len(idx)
    ls = max(len(src[i]) for i in idx)
    lt = max(len(tgt[i]) for i in idx)
    ids = torch.full((b, ls), pad_id, dtype=torch.long)
    att = torch.zeros((b, ls), dtype=torch.long)
    lab = torch.full((b, lt), -100, dtype=torch.long)
    for r, i in enumerate(idx):
        ids[r, : len(src[i])] = torch.tensor(src[i])
        att[r, : len(src[i])] = 1
        lab[r, : len(tgt[i])] = torch.tensor(tgt[i])
    return {"input_ids": ids.to(device), "attention_mask": att.to(device), "labels": lab.to(device)}


def _eval_loss(model, src, tgt, idx: np.ndarray, cfg, pad_id, device, accelerator) -> float | None:
    """Token-weighted mean cross-entropy over the held-out pairs (length-bucketed batches)."""
    import torch

    if len(idx) == 0:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    lens = [len(src[i]) + len(tgt[i]) for i in idx]
    with torch.inference_mode():
        for b in length_buckets(lens, cfg.eval_batch_size):
            batch = _collate(src, tgt, [int(idx[j]) for j in b], pad_id, device)
            with accelerator.autocast():
                logits = model(**batch).logits
            lab = batch["labels"]
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), lab.reshape(-1),
                ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((lab != -100).sum())
    if was_training:
        model.train()
    return total / max(count, 1)


def _model_card(cfg: CompleterConfig, metrics: dict) -> str:
    ev = metrics.get("eval_loss")
    return "\n".join([
        "# HierarCaps completer H",
        "",
        f"Seq2seq completer fine-tuned from `{cfg.model}`"
        + (f" (revision `{cfg.revision}`)" if cfg.revision else "")
        + (" with LoRA (merged into the base weights)" if cfg.lora else "") + ".",
        "",
        "Formats:",
        f"- specific -> general: `{cfg.format.generalize_prefix}{{caption}}` -> "
        f"`{{t1}}{cfg.format.target_join}{{t2}}{cfg.format.target_join}{{t3}}`",
        f"- general -> specific: `{cfg.format.specify_prefix}{{tier}}` -> next tier "
        f"(root = empty tier)",
        "",
        "| | |",
        "|---|---|",
        f"| training pairs | {metrics['train_pairs']} |",
        f"| held-out pairs | {metrics['eval_pairs']} |",
        f"| optimizer steps | {metrics['steps']} |",
        f"| epochs | {metrics['epochs']:.2f} |",
        f"| effective batch | {cfg.batch_size * cfg.grad_accum} |",
        f"| lr | {cfg.lr} |",
        f"| train loss (mean, last 10% of steps) | {metrics['train_loss']:.4f} |",
        f"| eval loss (initial) | {_fmt(metrics.get('eval_loss_initial'))} |",
        f"| eval loss (final) | {_fmt(ev)} |",
        f"| seed | {cfg.seed} |",
        "",
        "Load with `AutoModelForSeq2SeqLM.from_pretrained(<this dir>)`; "
        "`training_metrics.json` has the full metrics.",
        "",
    ])


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def train_completer(
    pairs: Sequence[tuple[str, str]],
    cfg: CompleterConfig,
    out_dir: str | os.PathLike,
    progress: Progress | None = None,
) -> dict:
    """Fine-tune ``cfg.model`` on (source, target) pairs; resumable; returns metrics.

    Layout of ``out_dir``: ``checkpoints/step-XXXXXXXX/`` (model, optimizer, scheduler, RNG,
    ``state.json``), ``model/`` (final model + tokenizer + README.md + training_metrics.json).
    A rerun with the same pairs and config resumes from the newest checkpoint (a finished run
    returns its stored metrics); a mismatching checkpoint raises ValueError.
    ``progress(step, total_steps)`` is called after every optimizer step.
    """
    import torch
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup, set_seed

    pairs = [(str(s), str(t)) for s, t in pairs]
    if not pairs:
        raise ValueError("train_completer: no training pairs")
    out = Path(out_dir)
    ckpt_root = out / "checkpoints"
    model_dir = out / "model"
    fp = _fingerprint(pairs, cfg)

    done_file = model_dir / "training_metrics.json"
    if done_file.is_file():
        prev = json.loads(done_file.read_text())
        if prev.get("fingerprint") == fp:
            log.info("completer already trained in %s; returning stored metrics", model_dir)
            return prev
        raise ValueError(f"{model_dir}: holds a model trained on other data/config "
                         f"(fingerprint {prev.get('fingerprint')} != {fp}); use another out_dir")

    device = resolve_device(cfg.device)
    bf16 = _use_bf16(cfg, device)
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=device.type == "cpu")
    device = accelerator.device

    set_seed(cfg.seed)
    model, tok = _load_model_and_tokenizer(cfg)
    if cfg.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules)))
    pad_id = tok.pad_token_id
    if pad_id is None:
        raise ValueError(f"tokenizer of {cfg.model} has no pad token")

    src, tgt = _encode(tok, pairs, cfg)
    train_idx, eval_idx = _split(len(pairs), cfg.eval_fraction, cfg.seed)
    n_train = len(train_idx)
    mb_per_epoch = math.ceil(n_train / cfg.batch_size)
    if cfg.max_steps is not None:
        total_steps = int(cfg.max_steps)
    else:
        total_steps = max(1, math.ceil(cfg.epochs * mb_per_epoch / cfg.grad_accum))
    warmup = int(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "layer_norm" in n.lower() else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    state: dict[str, Any] = {"step": 0, "fingerprint": fp, "total_steps": total_steps,
                             "loss_log": [], "eval_log": [], "eval_loss_initial": None}
    # drop half-written checkpoints / final models of killed runs
    for parent in (ckpt_root, out):
        if parent.is_dir():
            for p in parent.iterdir():
                if p.name.startswith(".tmp-") and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
    ckpts = _ckpt_dirs(ckpt_root)
    if ckpts:
        last = ckpts[-1]
        st = json.loads((last / "state.json").read_text())
        if st.get("fingerprint") != fp:
            raise ValueError(f"{last}: checkpoint is from other data/config (fingerprint "
                             f"{st.get('fingerprint')} != {fp}); delete {ckpt_root} to restart")
        raw_model.load_state_dict(torch.load(last / "model.pt", map_location=device,
                                             weights_only=True))
        optimizer.load_state_dict(torch.load(last / "optimizer.pt", map_location=device,
                                             weights_only=True))
        scheduler.load_state_dict(torch.load(last / "scheduler.pt", weights_only=True))
        _set_rng_state(torch.load(last / "rng.pt", weights_only=False))
        state = st
        log.info("resuming completer training from %s (step %d/%d)", last, st["step"], total_steps)
    else:
        state["eval_loss_initial"] = _eval_loss(model, src, tgt, eval_idx, cfg, pad_id, device,
                                                accelerator)

    model.train()
    step = state["step"]
    t0 = time.time()
    order_cache: dict[int, np.ndarray] = {}
    while step < total_steps:
        losses = []
        n_tok_total = 0
        micro = []
        for j in range(cfg.grad_accum):
            g = step * cfg.grad_accum + j          # global micro-batch index
            epoch, pos = divmod(g, mb_per_epoch)
            if epoch not in order_cache:
                order_cache.clear()
                order_cache[epoch] = _epoch_order(n_train, cfg.seed, epoch)
            sel = order_cache[epoch][pos * cfg.batch_size: (pos + 1) * cfg.batch_size]
            micro.append([int(train_idx[k]) for k in sel])
            n_tok_total += sum(len(tgt[int(train_idx[k])]) for k in sel)
        for idx in micro:
            batch = _collate(src, tgt, idx, pad_id, device)
            with accelerator.autocast():
                logits = model(**batch).logits
            lab = batch["labels"]
            # token-weighted over the whole accumulated step
            loss_sum = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), lab.reshape(-1),
                ignore_index=-100, reduction="sum")
            accelerator.backward(loss_sum / n_tok_total)
            losses.append(float(loss_sum.detach()))
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        state["step"] = step
        state["loss_log"].append(sum(losses) / n_tok_total)
        if progress is not None:
            progress(step, total_steps)
        if cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < total_steps:
            ev = _eval_loss(model, src, tgt, eval_idx, cfg, pad_id, device, accelerator)
            state["eval_log"].append([step, ev])
            _save_checkpoint(ckpt_root, step, raw_model, optimizer, scheduler, state,
                             cfg.keep_checkpoints)
            log.info("completer step %d/%d loss %.4f eval %s", step, total_steps,
                     state["loss_log"][-1], _fmt(ev))

    eval_loss = _eval_loss(model, src, tgt, eval_idx, cfg, pad_id, device, accelerator)
    loss_log = state["loss_log"]
    tail = loss_log[-max(1, len(loss_log) // 10):]
    metrics = {
        "train_loss": float(np.mean(tail)),
        "train_loss_first": float(loss_log[0]),
        "train_loss_last": float(loss_log[-1]),
        "eval_loss": eval_loss,
        "eval_loss_initial": state["eval_loss_initial"],
        "eval_log": state["eval_log"] + [[step, eval_loss]],
        "steps": step,
        "epochs": step * cfg.grad_accum / mb_per_epoch,
        "pairs": len(pairs),
        "train_pairs": int(n_train),
        "eval_pairs": int(len(eval_idx)),
        "base_model": cfg.model,
        "lora": cfg.lora,
        "bf16": bf16,
        "device": str(device),
        "seed": cfg.seed,
        "fingerprint": fp,
        "seconds_this_run": time.time() - t0,
    }

    # final save: merge LoRA so the result loads with plain from_pretrained
    final_model = raw_model
    if cfg.lora:
        final_model = raw_model.merge_and_unload()
    tmp = out / f".tmp-model-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    final_model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "README.md").write_text(_model_card(cfg, metrics))
    (tmp / "training_metrics.json").write_text(json.dumps(metrics, indent=1))
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.rename(tmp, model_dir)
    _fsync_dir(out)
    return metrics


# ---------------------------------------------------------------------------------------------
# generation


class Completer:
    """Batched generation with a trained H (or any seq2seq model directory / id).

    Inputs are tokenized once, sorted by token length into batches of ``cfg.gen.batch_size``
    (longest first) and results are written back in input order.
    """

    def __init__(self, model_path: str | os.PathLike, cfg: CompleterConfig | None = None,
                 device: str | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.cfg = cfg or CompleterConfig()
        self.device = resolve_device(device or self.cfg.device)
        self.dtype = (torch.bfloat16 if _use_bf16(self.cfg, self.device)
                      else resolve_dtype("float32"))
        kw = {"revision": self.cfg.revision} if self.cfg.revision and not Path(
            model_path).exists() else {}
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, **kw)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(self.model_path, dtype=self.dtype, **kw)
        self.model.to(self.device).eval()

    # -- core -----------------------------------------------------------------------------
    def _gen_kwargs(self, n: int, sample: bool | None, max_new_tokens: int | None) -> dict:
        g = self.cfg.gen
        do_sample = g.do_sample if sample is None else bool(sample)
        kw: dict[str, Any] = {"max_new_tokens": max_new_tokens or g.max_new_tokens,
                              "num_return_sequences": n, "do_sample": do_sample}
        if do_sample:
            kw.update(temperature=g.temperature, top_p=g.top_p, num_beams=1)
        else:
            kw["num_beams"] = max(g.num_beams, n)
        return kw

    def generate(self, inputs: Sequence[str], *, n: int = 1, sample: bool | None = None,
                 seed: int | None = None, max_new_tokens: int | None = None,
                 batch_size: int | None = None, progress: Progress | None = None,
                 bucket: bool = True) -> list[list[str]]:
        """``n`` decoded outputs per input string, in input order.

        With sampling, ``seed`` seeds the torch RNG once before the first batch: results are
        reproducible for the same inputs, batch size and device (they depend on batch makeup).
        """
        import torch

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        inputs = list(inputs)
        if not inputs:
            return []
        bs = batch_size or self.cfg.gen.batch_size
        enc = self.tokenizer(inputs, truncation=True, max_length=self.cfg.max_source_len)["input_ids"]
        lens = [len(e) for e in enc]
        batches = (length_buckets(lens, bs) if bucket
                   else [list(range(i, min(i + bs, len(inputs)))) for i in range(0, len(inputs), bs)])
        kw = self._gen_kwargs(n, sample, max_new_tokens)
        if seed is not None:
            torch.manual_seed(seed)
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(seed)
        results: list[list[list[str]]] = []
        done = 0
        with torch.inference_mode():
            for b in batches:
                padded = self.tokenizer.pad({"input_ids": [enc[i] for i in b]}, return_tensors="pt")
                out = self.model.generate(
                    input_ids=padded["input_ids"].to(self.device),
                    attention_mask=padded["attention_mask"].to(self.device), **kw)
                texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
                results.append([[t.strip() for t in texts[r * n:(r + 1) * n]]
                                for r in range(len(b))])
                done += len(b)
                if progress is not None:
                    progress(done, len(inputs))
        return restore_order(batches, results)

    def close(self) -> None:
        """Drop the model (stages close their engines so GPU memory goes back at once)."""
        self.model = None
        release_gpu_cache()

    # -- the two directions -----------------------------------------------------------------
    def generalize(self, captions: Sequence[str], *, progress: Progress | None = None,
                   **kw) -> list[str]:
        """Raw ``"t1 => t2 => t3"`` strings for each caption (use :func:`split_chain`)."""
        fmt = self.cfg.format
        outs = self.generate([fmt.generalize_input(c) for c in captions], n=1,
                             progress=progress, **kw)
        return [o[0] for o in outs]

    def specify(self, tiers: Sequence[str], n: int = 1, sample: bool | None = None,
                seed: int | None = None, *, progress: Progress | None = None,
                **kw) -> list[list[str]]:
        """``n`` more-specific candidates per tier; ``""`` is the root (produces tier 1).

        ``sample=None`` uses ``cfg.gen.do_sample``; greedy with ``n > 1`` uses beam search
        with ``num_beams = max(cfg.gen.num_beams, n)`` and returns the top ``n`` beams.
        """
        fmt = self.cfg.format
        return self.generate([fmt.specify_input(t) for t in tiers], n=n, sample=sample,
                             seed=seed, progress=progress, **kw)


# ---------------------------------------------------------------------------------------------
# validity check


Scorer = Callable[[list[str], list[str]], np.ndarray]


def chain_links_valid(chains: Sequence[Sequence[str]], score: Scorer,
                      threshold: float = 0.5) -> np.ndarray:
    """Bool per chain: has 4 tiers and every adjacent link has P(entailment) >= threshold.

    Links are scored with premise = the more specific tier, hypothesis = the more general one
    (as in ``schemas.LINK_SCORE``); all links go to ``score`` in one call.
    """
    ok = np.array([len(c) == N_TIERS for c in chains], dtype=bool)
    prem, hyp, owner = [], [], []
    for i, c in enumerate(chains):
        if not ok[i]:
            continue
        for k in range(N_TIERS - 1):
            prem.append(c[k + 1])
            hyp.append(c[k])
            owner.append(i)
    if prem:
        probs = np.asarray(score(prem, hyp), dtype=np.float64)
        if probs.shape != (len(prem), 3):
            raise ValueError(f"scorer returned shape {probs.shape}, expected ({len(prem)}, 3)")
        bad = probs[:, 0] < threshold
        for i, b in zip(owner, bad):
            if b:
                ok[i] = False
    return ok


def validity_rate(generator: Completer | Callable[[list[str]], list[str]],
                  held_out: Sequence[Sequence[str]], score: Scorer, *,
                  threshold: float = 0.5) -> float:
    """Fraction of generated chains whose every link is entailed (see :func:`validity_report`)."""
    return validity_report(generator, held_out, score, threshold=threshold)["validity_rate"]


def validity_report(generator: Completer | Callable[[list[str]], list[str]],
                    held_out: Sequence[Sequence[str]], score: Scorer, *,
                    threshold: float = 0.5) -> dict:
    """Generation check: generalize each held-out caption (tier 4) and judge the chain.

    ``generator`` is a :class:`Completer` or any ``captions -> raw strings`` callable;
    ``score(premises, hypotheses) -> [N, 3]`` (entailment, neutral, contradiction) probabilities.
    Returns ``{"validity_rate", "n", "n_valid", "n_malformed", "exact_match"}`` where validity
    is the fraction of generated chains (3 generated tiers + the caption) whose every adjacent
    link has entailment >= threshold; malformed outputs (not 3 parts) count as invalid.
    """
    captions = [str(c[-1]).strip() for c in held_out]
    gen = generator.generalize if isinstance(generator, Completer) else generator
    raws = list(gen(captions))
    if len(raws) != len(captions):
        raise ValueError(f"generator returned {len(raws)} outputs for {len(captions)} captions")
    chains = [split_chain(r) + [c] for r, c in zip(raws, captions)]
    ok = chain_links_valid(chains, score, threshold)
    exact = sum(1 for ch, ref in zip(chains, held_out)
                if [t.strip() for t in ref] == ch)
    n = len(chains)
    return {"validity_rate": float(ok.mean()) if n else 0.0, "n": n, "n_valid": int(ok.sum()),
            "n_malformed": sum(1 for ch in chains if len(ch) != N_TIERS),
            "exact_match": exact / n if n else 0.0}
