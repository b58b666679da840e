"""Fine-tuning H: a plain accelerate loop whose resume is exact.

The data order is a pure function of ``(seed, epoch)``, and checkpoints carry model, optimizer,
scheduler, RNG and step state. A run killed at any time and rerun ends with bit-identical
weights to an uninterrupted run on the same hardware and thread count (on CUDA, bit-identity also
needs deterministic kernels, ``torch.use_deterministic_algorithms``).

Held-out pairs (``eval_pairs``, given by the caller: distill holds out whole chains, so no chain
has pairs on both sides) give the eval loss; keep test captions out of the chains passed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..backends.common import length_buckets, resolve_device
from ..io.atomic import fsync_path
from . import checkpoints as ck
from .format import PairFormat, save_format

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


class TrainConfig(BaseModel):
    """How H is fine-tuned (the distill section extends it)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(3e-4, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1)      # overrides epochs when set (optimizer steps)
    batch_size: int = Field(16, ge=1)              # micro-batch size
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, le=1)  # share of the steps
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    lora: bool = False                             # peft LoRA, merged into the base at save time
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = ["q", "k", "v", "o"]
    bf16: Literal["auto", "on", "off"] = "auto"    # auto: on CUDA with bf16 support only
    device: str = "auto"
    eval_batch_size: int = Field(64, ge=1)
    save_every_steps: int = Field(200, ge=0)       # 0: no checkpoints
    keep_checkpoints: int = Field(2, ge=1)
    max_source_len: int = Field(96, ge=1)
    max_target_len: int = Field(64, ge=1)


# fields that do not change what is learned: a checkpoint stays valid when they change
_RUNTIME_FIELDS = {"device", "save_every_steps", "keep_checkpoints", "eval_batch_size"}


def _use_bf16(cfg: TrainConfig, device) -> bool:
    import torch

    if cfg.bf16 == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return cfg.bf16 == "on"


def _fingerprint(pairs: Sequence[tuple[str, str]], base: str, revision: str | None, cfg: TrainConfig,
                 seed: int) -> str:
    """What a checkpoint must match to be resumed: the data, the base and every learning field."""
    h = hashlib.sha256()
    for s, t in pairs:
        h.update(s.encode())
        h.update(b"\x00")
        h.update(t.encode())
        h.update(b"\x01")
    fields = TrainConfig.model_validate(cfg.model_dump(include=set(TrainConfig.model_fields))).model_dump(
        exclude=_RUNTIME_FIELDS)
    h.update(json.dumps({"base": base, "revision": revision, "seed": seed, **fields}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, 11, epoch]).permutation(n)


def _encode(tok, pairs, cfg: TrainConfig) -> tuple[list[list[int]], list[list[int]]]:
    src = tok([s for s, _ in pairs], truncation=True, max_length=cfg.max_source_len)["input_ids"]
    tgt = tok(text_target=[t for _, t in pairs], truncation=True, max_length=cfg.max_target_len)["input_ids"]
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


def _token_loss(model, batch, accelerator):
    """Summed token cross-entropy of a batch and its token count."""
    import torch

    with accelerator.autocast():
        logits = model(**batch).logits
    lab = batch["labels"]
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), lab.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    return loss, int((lab != -100).sum())


def _eval_loss(model, src, tgt, idx: np.ndarray, cfg: TrainConfig, pad_id, device, accelerator) -> float | None:
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
            loss, n = _token_loss(model, _collate(src, tgt, [int(idx[j]) for j in b], pad_id, device), accelerator)
            total += float(loss)
            count += n
    if was_training:
        model.train()
    return total / max(count, 1)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _model_card(base: str, revision: str | None, cfg: TrainConfig, fmt: PairFormat, metrics: dict) -> str:
    return "\n".join([
        "# HierarCaps completer H", "",
        f"Seq2seq completer fine-tuned from `{base}`" + (f" (revision `{revision}`)" if revision else "")
        + (" with LoRA (merged into the base weights)" if cfg.lora else "") + ".", "",
        "Formats:",
        f"- specific -> general: `{fmt.generalize_prefix}{{caption}}` -> `{{t1}} => {{t2}} => {{t3}}`",
        f"- general -> specific: `{fmt.specify_prefix}{{tier}}` -> next tier (root = empty tier)", "",
        "| | |", "|---|---|",
        f"| training pairs | {metrics['train_pairs']} |",
        f"| held-out pairs | {metrics['eval_pairs']} |",
        f"| optimizer steps | {metrics['steps']} |",
        f"| epochs | {metrics['epochs']:.2f} |",
        f"| effective batch | {cfg.batch_size * cfg.grad_accum} |",
        f"| lr | {cfg.lr} |",
        f"| train loss (mean, last 10% of steps) | {metrics['train_loss']:.4f} |",
        f"| eval loss (initial) | {_fmt(metrics.get('eval_loss_initial'))} |",
        f"| eval loss (final) | {_fmt(metrics.get('eval_loss'))} |",
        f"| seed | {metrics['seed']} |", "",
        "Load with `AutoModelForSeq2SeqLM.from_pretrained(<this dir>)`; `completer.json` holds the input "
        "format, `training_metrics.json` the full metrics.", "",
    ])


def train_completer(pairs: Sequence[tuple[str, str]], base: str, cfg: TrainConfig, out_dir: str | os.PathLike,
                    *, eval_pairs: Sequence[tuple[str, str]] = (), fmt: PairFormat | None = None,
                    revision: str | None = None, seed: int = 0, progress: Progress | None = None) -> dict:
    """Fine-tune ``base`` (a seq2seq id or folder) on (source, target) pairs; resumable; returns metrics.

    Layout of ``out_dir``: ``checkpoints/step-XXXXXXXX/`` (model, optimizer, scheduler, RNG,
    ``state.json``), ``model/`` (final model + tokenizer + completer.json + README.md +
    training_metrics.json). A rerun with the same pairs and config resumes from the newest
    checkpoint (a finished run returns its stored metrics); a mismatching checkpoint raises
    ValueError. ``progress(step, total_steps)`` is called after every optimizer step.
    """
    import torch
    from accelerate import Accelerator
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
        set_seed,
    )

    fmt = fmt or PairFormat()
    pairs = [(str(s), str(t)) for s, t in pairs]
    held = [(str(s), str(t)) for s, t in eval_pairs]
    if not pairs:
        raise ValueError("train_completer: no training pairs")
    out = Path(out_dir)
    ckpt_root, model_dir = out / "checkpoints", out / "model"
    fp = _fingerprint([*pairs, ("\x00held-out", ""), *held], base, revision, cfg, seed)

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

    set_seed(seed)
    kw = {"revision": revision} if revision else {}
    tok = AutoTokenizer.from_pretrained(base, **kw)
    model = AutoModelForSeq2SeqLM.from_pretrained(base, dtype="float32", **kw)
    if cfg.lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(
            task_type=TaskType.SEQ_2_SEQ_LM, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_target_modules)))
    pad_id = tok.pad_token_id
    if pad_id is None:
        raise ValueError(f"tokenizer of {base} has no pad token")

    src, tgt = _encode(tok, [*pairs, *held], cfg)
    train_idx, eval_idx = np.arange(len(pairs)), np.arange(len(pairs), len(pairs) + len(held))
    n_train = len(train_idx)
    mb_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps = int(cfg.max_steps) if cfg.max_steps is not None else \
        max(1, math.ceil(cfg.epochs * mb_per_epoch / cfg.grad_accum))
    warmup = int(cfg.warmup_ratio * total_steps)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "layer_norm" in n.lower() else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    state: dict[str, Any] = {"step": 0, "fingerprint": fp, "total_steps": total_steps,
                             "loss_log": [], "eval_log": [], "eval_loss_initial": None}
    ck.drop_partial(ckpt_root, out)
    saved = ck.checkpoints(ckpt_root)
    if saved:
        last = saved[-1]
        st = json.loads((last / ck.STATE).read_text())
        if st.get("fingerprint") != fp:
            raise ValueError(f"{last}: checkpoint is from other data/config (fingerprint "
                             f"{st.get('fingerprint')} != {fp}); delete {ckpt_root} to restart")
        state = ck.load(last, raw_model, optimizer, scheduler, device)
        log.info("resuming completer training from %s (step %d/%d)", last, state["step"], total_steps)
    else:
        state["eval_loss_initial"] = _eval_loss(model, src, tgt, eval_idx, cfg, pad_id, device, accelerator)

    model.train()
    step = state["step"]
    t0 = time.time()
    order_cache: dict[int, np.ndarray] = {}
    while step < total_steps:
        micro, n_tok_total = [], 0
        for j in range(cfg.grad_accum):
            epoch, pos = divmod(step * cfg.grad_accum + j, mb_per_epoch)   # global micro-batch index
            if epoch not in order_cache:
                order_cache.clear()
                order_cache[epoch] = _epoch_order(n_train, seed, epoch)
            sel = order_cache[epoch][pos * cfg.batch_size: (pos + 1) * cfg.batch_size]
            micro.append([int(train_idx[k]) for k in sel])
            n_tok_total += sum(len(tgt[int(train_idx[k])]) for k in sel)
        losses = []
        for idx in micro:   # token-weighted over the whole accumulated step
            loss_sum, _ = _token_loss(model, _collate(src, tgt, idx, pad_id, device), accelerator)
            accelerator.backward(loss_sum / n_tok_total)
            losses.append(float(loss_sum.detach()))
        if cfg.max_grad_norm > 0:
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
            ck.save(ckpt_root, step, raw_model, optimizer, scheduler, state, cfg.keep_checkpoints)
            log.info("completer step %d/%d loss %.4f eval %s", step, total_steps, state["loss_log"][-1], _fmt(ev))

    eval_loss = _eval_loss(model, src, tgt, eval_idx, cfg, pad_id, device, accelerator)
    loss_log = state["loss_log"]
    tail = loss_log[-max(1, len(loss_log) // 10):]
    metrics = {
        "train_loss": float(np.mean(tail)), "train_loss_first": float(loss_log[0]),
        "train_loss_last": float(loss_log[-1]), "eval_loss": eval_loss,
        "eval_loss_initial": state["eval_loss_initial"], "eval_log": state["eval_log"] + [[step, eval_loss]],
        "steps": step, "epochs": step * cfg.grad_accum / mb_per_epoch, "pairs": len(pairs) + len(held),
        "train_pairs": int(n_train), "eval_pairs": int(len(eval_idx)), "base_model": base, "lora": cfg.lora,
        "bf16": bf16, "device": str(device), "seed": seed, "fingerprint": fp,
    }

    final_model = raw_model.merge_and_unload() if cfg.lora else raw_model   # loads with plain from_pretrained
    tmp = out / f".tmp-model-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    final_model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    save_format(tmp, fmt, cfg.max_source_len)
    (tmp / "README.md").write_text(_model_card(base, revision, cfg, fmt, metrics))
    (tmp / "training_metrics.json").write_text(json.dumps(metrics, indent=1))
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.rename(tmp, model_dir)
    fsync_path(out)
    shutil.rmtree(ckpt_root, ignore_errors=True)   # only a resume needs them; the model is final
    return {**metrics, "seconds_this_run": time.time() - t0}   # timings only in what is returned
