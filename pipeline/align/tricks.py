"""What the field uses to learn a new structure without forgetting the old one, each behind one
AlignConfig knob: LoRA adapters (peft), layer-wise learning-rate decay, an EMA of the weights, and
distillation to the frozen encoder on unlabelled captions (the loss term lives in train.py)."""

from __future__ import annotations

import contextlib
import re

import torch

from pipeline.align.config import AlignConfig
from pipeline.align.data import Chain, norm_text
from pipeline.align.encoders import Encoder

_LAYER = re.compile(r"\.layers?\.(\d+)\.")
_BERT_LINEAR = ["query", "key", "value", "dense"]          # BERT / MiniLM
_CLIP_LINEAR = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def add_lora(enc: Encoder, cfg: AlignConfig) -> None:
    """Freeze the encoder and inject LoRA adapters (rank `lora_rank`) into its transformer's linear
    layers; only the adapters train. CLIP: the text tower only."""
    from peft import LoraConfig, inject_adapter_in_model

    target = enc.module.text_model if enc.kind == "clip" else enc.module
    for p in enc.module.parameters():
        p.requires_grad_(False)
    names = _CLIP_LINEAR if enc.kind == "clip" else _BERT_LINEAR
    inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                       target_modules=names), target)
    for n, p in enc.module.named_parameters():
        p.requires_grad_("lora_" in n)


def merge_lora(enc: Encoder) -> None:
    """Fold the adapters into the weights and put the plain layers back, so the saved model is an
    ordinary one (loads without peft)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, mod in list(enc.module.named_modules()):
        if isinstance(mod, BaseTunerLayer):
            mod.merge()
            parent_name, _, child = name.rpartition(".")
            parent = enc.module.get_submodule(parent_name) if parent_name else enc.module
            setattr(parent, child, mod.get_base_layer())
    for p in enc.module.parameters():
        p.requires_grad_(False)


def param_groups(enc: Encoder, cfg: AlignConfig) -> list[dict]:
    """One group per depth when `layer_lr_decay` is set: layer i of L at lr * decay^(L-1-i),
    embeddings at decay^L, the rest (pooling, projection) at lr. Else one group."""
    named = [(n, p) for n, p in enc.module.named_parameters() if p.requires_grad]
    if not cfg.layer_lr_decay:
        return [{"params": [p for _, p in named]}]
    depth = {n: int(m.group(1)) if (m := _LAYER.search(n)) else None for n, _ in named}
    n_layers = max((d for d in depth.values() if d is not None), default=-1) + 1
    groups: dict[float, list] = {}
    for n, p in named:
        d = depth[n]
        if d is not None:
            scale = cfg.layer_lr_decay ** (n_layers - 1 - d)
        elif "embeddings" in n:
            scale = cfg.layer_lr_decay ** n_layers
        else:
            scale = 1.0
        groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr": cfg.lr * s} for s, ps in sorted(groups.items())]


class Ema:
    """Exponential moving average of the trainable weights (Polyak averaging): training moves the
    live weights, evaluation and the saved model use the smoothed ones."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)

    @contextlib.contextmanager
    def swapped(self):
        live = [p.detach().clone() for p in self.params]
        self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for v, p in zip(live, self.params):
                    p.copy_(v)


def distill_texts(chains: list[Chain]) -> list[str]:
    """Unlabelled captions for the distillation term: the distinct tier-4 texts (positive and negative)
    of the training chains, the kind of text whose embeddings must not drift."""
    seen: dict[str, str] = {}
    for c in chains:
        for t in (c.caption, c.negative[-1] if c.negative else None):
            if t:
                seen.setdefault(norm_text(t), t)
    return list(seen.values())


@torch.no_grad()
def interpolate_weights(module: torch.nn.Module, original: torch.nn.Module, alpha: float) -> None:
    """WiSE-FT: move every floating-point weight of `module` to original + alpha * (module - original),
    in place. Fine-tuning's gain on the new task tends to survive a step back along this line better
    than the old knowledge survives the fine-tuning, so alpha < 1 trades a little d_corr for cosine
    and retrieval. Both modules must have the same architecture (LoRA merged first)."""
    ref = original.state_dict()
    for name, t in module.state_dict().items():
        if t.is_floating_point():
            if name not in ref or ref[name].shape != t.shape:
                raise ValueError(f"interpolate_weights: {name} has no counterpart of shape {tuple(t.shape)}")
            t.copy_(ref[name].to(t.device) + alpha * (t - ref[name].to(t.device)))
