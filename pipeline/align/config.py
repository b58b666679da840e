"""AlignConfig: every knob of RE alignment, loss weights included. Defaults are the paper's (CLIP)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AlignConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # encoder
    encoder_kind: Literal["clip", "sentence-transformers"] = "clip"
    model: str = "openai/clip-vit-base-patch32"
    max_length: int = 77
    device: str = "cpu"
    threads: int | None = None      # torch CPU threads (None: torch's default); 1 on a shared machine, where
    #                                 more intra-op threads than free cores thrash
    train_last_n_layers: int | None = None   # sentence-transformers only; None = whole text encoder
    length_buckets: int = Field(2, ge=1, description="a batch's texts are encoded in this many buckets by length: "
                                "fewer padded tokens, more calls (bench/align_step_cost.py)")

    # objective: "re" (paper), "cone" (entailment-cone ablation), "clear_glass", or RE + CLEAR GLASS
    objective: Literal["re", "cone", "clear_glass", "re+clear_glass"] = "re"
    lambda_p: float = Field(10.0, description="pull-back weight (paper)")
    lambda_e: float = Field(1.0, description="RE (or cone) weight (paper)")
    lambda_m: float = Field(1.0, description="hard-mining weight (paper)")
    lambda_order: float = Field(0.0, description="weight of a hinge on tier radii (losses.radius_order_loss; "
                                "ours, 0 = the paper's loss)")
    order_margin: float = 0.05
    pullback_tier_weights: tuple[float, float, float, float] | None = Field(
        None, description="per-tier weights of the pull-back mean, general -> specific (None: uniform, as the "
                          "paper); lets short general tiers move while captions keep what they knew")

    # entailment-cone ablation (Ganea et al. 2018 / MERU half-aperture)
    cone_K: float = 0.1
    cone_margin: float = 0.1

    # CLEAR GLASS (arXiv 2509.12771), our reading: see losses.clear_glass_loss
    lambda_cg: float = 1.0
    cg_inner_weight: float = 1.0
    cg_temperature: float = 0.05
    cg_group_tier: Literal[1, 2] = 1
    cg_groups: int = 8
    cg_members: int = 4          # per group; split into two halves for the outer loss (even)

    # optimisation (paper: AdamW, lr 1e-7, 8 chains, 1 epoch)
    lr: float = 1e-7
    weight_decay: float = 0.01
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None   # cap on optimiser steps (None: full epochs)
    warmup_steps: int = 0
    schedule: Literal["constant", "linear"] = "constant"
    grad_clip: float | None = None
    dropout: bool = True           # train mode during training, as the official code
    seed: int = 0
    log_every: int = 1

    # keeping what the encoder knew (sentence-transformers): LoRA adapters via peft instead of full
    # weights, layer-wise lr decay, an EMA of the weights, distillation to the frozen encoder
    lora_rank: int | None = None           # None: train the weights themselves
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    layer_lr_decay: float | None = None    # layer i of L gets lr * decay^(L-1-i), embeddings decay^L
    ema_decay: float | None = None         # the saved / validated weights are the EMA
    lambda_distill: float = 0.0            # weight of 1 - cos(E, E_frozen) on unlabelled training captions
    distill_batch: int = 32                # captions per step for the distillation term
    wise_alpha: float | None = Field(None, gt=0.0, le=1.0, description="WiSE-FT (Wortsman et al. 2022): "
                                     "the saved weights are original + alpha * (fine-tuned - original)")

    # data
    exclude_test_csv: str | None = None   # test captions/images to drop from the training chains
    n_val_images: int = 0                 # whole images drawn (seeded) from the training chains as validation
    val_every: int | None = None          # validate every n steps too (None: after training only)
