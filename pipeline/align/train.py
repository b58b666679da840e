"""Training loop: `train_align` (chains + encoder + config -> fine-tuned model and curves) and
`run_align` (the CLI entry: paths in, paths out)."""

from __future__ import annotations

import json
import random
import resource
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.align import losses
from pipeline.align.config import AlignConfig
from pipeline.align.data import Chain, load_chains, norm_text, training_split
from pipeline.align.encoders import Encoder, load_encoder
from pipeline.align.leakage import write_manifest
from pipeline.align.tricks import Ema, add_lora, distill_texts, interpolate_weights, merge_lora, param_groups
from pipeline.align.validation import Validator


def cpu_seconds() -> float:
    """User + system CPU of this process (all its threads): the cost on a shared machine, unlike wall."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _chain_batches(chains: list[Chain], cfg: AlignConfig, rng: random.Random):
    """Shuffled batches of `batch_size` chains for `epochs` epochs (last partial batch dropped)."""
    for _ in range(cfg.epochs):
        order = list(range(len(chains)))
        rng.shuffle(order)
        for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            yield [chains[j] for j in order[i:i + cfg.batch_size]]


class GroupSampler:
    """CLEAR GLASS batches: `cg_groups` groups x `cg_members` chains sharing a tier-`cg_group_tier`
    concept. Only the member captions (tier 4) are encoded: the shared concept is never shown."""

    def __init__(self, chains: list[Chain], cfg: AlignConfig, rng: random.Random):
        groups = defaultdict(list)
        for c in chains:
            groups[norm_text(c.positive[cfg.cg_group_tier - 1])].append(c)
        self.groups = [g for g in groups.values() if len({norm_text(c.caption) for c in g}) >= cfg.cg_members]
        if len(self.groups) < cfg.cg_groups:
            raise ValueError(f"CLEAR GLASS needs {cfg.cg_groups} groups with >= {cfg.cg_members} distinct captions; "
                             f"found {len(self.groups)}")
        self.cfg, self.rng = cfg, rng

    def sample(self) -> list[list[str]]:
        out = []
        for g in self.rng.sample(self.groups, self.cfg.cg_groups):
            caps = list(dict.fromkeys(c.caption for c in g))
            out.append(self.rng.sample(caps, self.cfg.cg_members))
        return out


def _pullback_weights(cfg: AlignConfig, n_chains: int, n_group_texts: int) -> torch.Tensor | None:
    """Per-text weights in the batch layout (pos tiers 1-4, neg tiers 1-4, then group captions = tier 4)."""
    w = cfg.pullback_tier_weights
    if w is None:
        return None
    per_text = [w[k] for k in range(4) for _ in range(n_chains)] * 2 + [w[3]] * n_group_texts
    return torch.tensor(per_text)


def _step_losses(enc: Encoder, frozen: Encoder, cfg: AlignConfig, batch: list[Chain] | None,
                 groups: list[list[str]] | None, extra: list[str] | None = None) -> dict[str, torch.Tensor]:
    texts: list[str] = []
    if batch is not None:  # official layout: [pos tier1 of all chains, ..., neg tier4 of all chains]
        texts += [c.positive[k] for k in range(4) for c in batch] + [c.negative[k] for k in range(4) for c in batch]
    n_chain_texts = len(texts)
    if groups is not None:
        texts += [t for g in groups for t in g]
    n_texts = len(texts)
    texts += extra or []
    E_all = enc.encode_text(texts)
    with torch.no_grad():
        E0_all = frozen.encode_text(texts)
    E, E0 = E_all[:n_texts], E0_all[:n_texts]
    out = {"ploss": losses.pullback_loss(E, E0, _pullback_weights(cfg, len(batch or ()), n_texts - n_chain_texts))}
    total = cfg.lambda_p * out["ploss"]
    if extra:
        out["distill"] = 1 - (E_all[n_texts:] * E0_all[n_texts:]).sum(-1).mean()
        total = total + cfg.lambda_distill * out["distill"]
    if batch is not None:
        root = enc.root()  # current weights, every step
        B = len(batch)
        Ev = E[:n_chain_texts].view(2, 4, B, -1).transpose(1, 2)  # (pos/neg, B, 4, D)
        if cfg.objective == "cone":
            part = losses.cone_loss(Ev[0], Ev[1], root, cfg.cone_K, cfg.cone_margin)
        else:
            part = losses.re_loss(Ev[0], Ev[1], root)
        out.update(part)
        total = total + cfg.lambda_e * part["eloss"] + cfg.lambda_m * part["mloss"]
        if cfg.lambda_order:
            out["order"] = losses.radius_order_loss(Ev[0], root, cfg.order_margin)
            total = total + cfg.lambda_order * out["order"]
    if groups is not None:
        G, M = len(groups), len(groups[0])
        part = losses.clear_glass_loss(E[n_chain_texts:].view(G, M, -1), cfg.cg_temperature, cfg.cg_inner_weight)
        out.update(part)
        total = total + cfg.lambda_cg * part["cg"]
    out["total_loss"] = total
    return out


def train_align(chains: list[Chain], encoder: Encoder, cfg: AlignConfig, out_dir: str | Path | None,
                val: list[Chain] | None = None) -> dict:
    """Fine-tune `encoder` in place on `chains`; validate on `val` (every `val_every` steps and at the
    end); save model, `train_curves.json` and the training-data manifest under out_dir."""
    seed_all(cfg.seed)
    rng = random.Random(cfg.seed)
    use_chains = cfg.objective != "clear_glass"
    use_groups = "clear_glass" in cfg.objective
    train_chains = [c for c in chains if c.has_full_negative] if use_chains else list(chains)
    if use_chains and not train_chains:
        raise ValueError("RE/cone training needs chains with full 4-tier negatives; none found")
    sampler = GroupSampler(chains, cfg, rng) if use_groups else None

    # an epoch: every chain once (RE/cone), or as many group batches as chains allow (CLEAR GLASS only)
    per_step = cfg.batch_size if use_chains else cfg.cg_groups * cfg.cg_members
    n_steps = len(train_chains) // per_step * cfg.epochs
    if cfg.max_steps is not None:
        n_steps = min(n_steps, cfg.max_steps)
    if n_steps <= 0:
        raise ValueError(f"no training steps: {len(train_chains)} chains, batch {cfg.batch_size}, max_steps {cfg.max_steps}")

    encoder.length_buckets = cfg.length_buckets
    frozen = encoder.frozen_copy()
    validator = Validator(val, frozen) if val else None
    if cfg.lora_rank:
        add_lora(encoder, cfg)
    params = encoder.trainable_parameters()
    opt = torch.optim.AdamW(param_groups(encoder, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = Ema(params, cfg.ema_decay) if cfg.ema_decay else None
    pool = distill_texts(train_chains if use_chains else chains) if cfg.lambda_distill else None

    def lr_factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "linear":
            return max(0.0, (n_steps - step) / max(1, n_steps - cfg.warmup_steps))
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    encoder.train(cfg.dropout)
    batches = _chain_batches(train_chains, cfg, rng) if use_chains else None
    curves: list[dict] = []
    val_curve: list[dict] = []

    def validate(step: int) -> dict:
        with (ema.swapped() if ema else _nothing()):
            v = {"step": step, **validator(encoder)}
        encoder.train(cfg.dropout)
        val_curve.append(v)
        tqdm.write(f"align val @{step}: d_corr {v['d_corr']:.4f} cos {v['cosine']:.4f} "
                   f"R@1 {100 * v['caption_r1_delta']:+.1f} pt")
        return v

    t0, c0, val_cpu = time.time(), cpu_seconds(), 0.0
    pbar = tqdm(range(n_steps), desc=f"align[{cfg.objective}]")
    for step in pbar:
        batch = next(batches) if batches is not None else None
        groups = sampler.sample() if sampler is not None else None
        extra = rng.sample(pool, min(cfg.distill_batch, len(pool))) if pool else None
        opt.zero_grad()
        L = _step_losses(encoder, frozen, cfg, batch, groups, extra)
        L["total_loss"].backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if ema:
            ema.update()
        if step % cfg.log_every == 0 or step == n_steps - 1:
            curves.append({"step": step, "lr": sched.get_last_lr()[0], **{k: float(v.detach()) for k, v in L.items()}})
            pbar.set_postfix(loss=f"{curves[-1]['total_loss']:.4f}")
        if validator and cfg.val_every and (step + 1) % cfg.val_every == 0 and step + 1 < n_steps:
            c = cpu_seconds()
            validate(step + 1)
            val_cpu += cpu_seconds() - c
    train_cpu = cpu_seconds() - c0 - val_cpu
    if ema:
        ema.copy_to()
        ema = None
    if cfg.lora_rank:
        merge_lora(encoder)
    if cfg.wise_alpha is not None and cfg.wise_alpha < 1.0:
        interpolate_weights(encoder.module, frozen.module, cfg.wise_alpha)
    encoder.eval()
    tail = curves[-max(1, len(curves) // 10):]
    metrics = {"steps": n_steps, "train_chains": len(train_chains), "seconds": round(time.time() - t0, 1),
               "train_cpu_seconds": round(train_cpu, 1),
               "first": curves[0], "last": curves[-1],
               "tail_mean": {k: float(np.mean([c[k] for c in tail])) for k in curves[-1] if k not in ("step", "lr")}}
    if validator:
        metrics["validation"] = validate(n_steps)
        encoder.eval()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        encoder.save(out / "model")
        write_manifest(out, chains)
        (out / "train_curves.json").write_text(json.dumps(
            {"config": cfg.model_dump(), "metrics": metrics, "curves": curves, "validation": val_curve}, indent=1))
    return metrics


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_align(config: AlignConfig, chains_path: str | Path, out_dir: str | Path) -> dict:
    """CLI entry: load chains, drop the captions and images of `exclude_test_csv`, draw the
    validation images, load the encoder named in the config, train, save under out_dir (model,
    curves, the training-data manifest bench checks). Returns training metrics + split stats."""
    if config.threads:
        torch.set_num_threads(config.threads)
    chains = load_chains(chains_path)
    test = load_chains(config.exclude_test_csv) if config.exclude_test_csv else []
    split = training_split(chains, test, config.n_val_images, config.seed)
    enc = load_encoder(config.encoder_kind, config.model, config.device, config.max_length, config.train_last_n_layers)
    metrics = train_align(split.train, enc, config, out_dir, val=split.val)
    metrics["split"] = {**split.stats, "excluded_test_csv": config.exclude_test_csv}
    Path(out_dir, "align_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
