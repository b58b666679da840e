"""Text(-image) encoders behind one small interface: L2-normalised `encode_text` / `encode_image`,
`trainable_parameters`, a frozen copy for the pull-back loss, and `save`.

CLIP: text tower + text projection train, the image tower stays frozen (official code).
sentence-transformers: the whole text encoder trains; text only.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from pipeline.errors import UserError


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; 4.x returned the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class EncoderKindError(UserError):
    """The model folder holds another kind of encoder than the config names."""


_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def bucket_indices(texts: list[str], buckets: int) -> list[list[int]]:
    """Text indices sorted by length (characters), cut into `buckets` equal-size groups."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    n, b = len(order), max(1, buckets)
    cuts = [i * n // b for i in range(b + 1)]
    return [order[lo:hi] for lo, hi in zip(cuts, cuts[1:]) if hi > lo]


class Encoder:
    kind: str = ""
    has_images: bool = False
    module: torch.nn.Module
    length_buckets: int = 2     # AlignConfig.length_buckets sets it for training

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Normalised embeddings (with grad when enabled). Texts are encoded in `length_buckets`
        equal-size buckets by length so short tiers are not padded to caption length (CPU time is
        linear in padded tokens; bench/align_step_cost.py compares bucket counts)."""
        texts = list(texts)
        if len(texts) <= 16:
            return self._encode(texts)
        buckets = bucket_indices(texts, self.length_buckets)
        order = [i for idx in buckets for i in idx]
        parts = [self._encode([texts[i] for i in idx]) for idx in buckets]
        inv = torch.empty(len(order), dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts)[inv.to(parts[0].device)]

    def _encode(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_image(self, images) -> torch.Tensor:
        raise NotImplementedError(f"{self.kind} encoder has no image tower")

    def root(self) -> torch.Tensor:
        """Normalised embedding of the empty string (the hierarchy's root)."""
        return self.encode_text([""])[0]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def frozen_copy(self) -> "Encoder":
        twin = copy.copy(self)
        twin.module = copy.deepcopy(self.module).eval()
        for p in twin.module.parameters():
            p.requires_grad_(False)
        return twin

    def train(self, mode: bool = True) -> "Encoder":
        self.module.train(mode)
        return self

    def eval(self) -> "Encoder":
        return self.train(False)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def save(self, path: str | Path) -> None:
        raise NotImplementedError


class ClipEncoder(Encoder):
    kind = "clip"
    has_images = True

    def __init__(self, model, tokenizer, image_processor=None, max_length: int = 77):
        self.module = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length
        for p in model.parameters():
            p.requires_grad_(False)
        for p in list(model.text_model.parameters()) + list(model.text_projection.parameters()):
            p.requires_grad_(True)

    @classmethod
    def from_pretrained(cls, path_or_id: str, max_length: int = 77, device: str = "cpu") -> "ClipEncoder":
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        path_or_id = str(path_or_id)
        model = CLIPModel.from_pretrained(path_or_id).to(device)
        tok = AutoTokenizer.from_pretrained(path_or_id)
        try:
            ip = AutoImageProcessor.from_pretrained(path_or_id)
        except (OSError, ValueError):
            ip = None
        return cls(model, tok, ip, max_length)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        inp = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        out = self.module.get_text_features(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"])
        return F.normalize(_pooled(out), dim=-1)

    def encode_image(self, images) -> torch.Tensor:
        if self.image_processor is None:
            raise ValueError("CLIP encoder was loaded without an image processor")
        inp = self.image_processor(images=images, return_tensors="pt").to(self.device)
        out = self.module.get_image_features(pixel_values=inp["pixel_values"])
        return F.normalize(_pooled(out), dim=-1)

    def save(self, path: str | Path) -> None:
        self.module.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(path)


class SentenceTransformerEncoder(Encoder):
    kind = "sentence-transformers"

    def __init__(self, model, train_last_n_layers: int | None = None):
        """`train_last_n_layers`: train only the top n transformer layers (None: the whole encoder)."""
        self.module = model
        layer_ids = {int(m.group(1)) for n, _ in model.named_parameters() if (m := _LAYER.search(n))}
        first = max(layer_ids, default=0) + 1 - train_last_n_layers if train_last_n_layers else None
        for n, p in model.named_parameters():
            m = _LAYER.search(n)
            p.requires_grad_(first is None or (m is not None and int(m.group(1)) >= first))

    @classmethod
    def from_pretrained(cls, path_or_id: str, device: str = "cpu", max_length: int | None = None,
                        train_last_n_layers: int | None = None):
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path_or_id), device=device)
        if max_length:
            model.max_seq_length = min(max_length, model.max_seq_length or max_length)
        return cls(model, train_last_n_layers)

    def _encode(self, texts: list[str]) -> torch.Tensor:
        prep = getattr(self.module, "preprocess", None) or self.module.tokenize
        feats = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in prep(list(texts)).items()}
        return F.normalize(self.module(feats)["sentence_embedding"], dim=-1)

    def save(self, path: str | Path) -> None:
        self.module.save(str(path))


def model_dir(path_or_id: str) -> str:
    """A `train_align` output dir (holding `model/`) resolves to that subdir; anything else is itself."""
    p = Path(str(path_or_id))
    if p.is_dir() and not (p / "config.json").exists() and (p / "model").is_dir():
        return str(p / "model")
    return str(path_or_id)


def detect_kind(path_or_id: str) -> tuple[str | None, str]:
    """(kind, evidence) read from a local model folder: sentence-transformers writes `modules.json` /
    `config_sentence_transformers.json`, a CLIP folder has `config.json` with model_type "clip".
    (None, why) for a hub id or a folder that shows neither."""
    p = Path(model_dir(path_or_id))
    if not p.is_dir():
        return None, "not a local folder"
    for marker in ("modules.json", "config_sentence_transformers.json"):
        if (p / marker).is_file():
            return "sentence-transformers", marker
    try:
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None, "no readable config.json"
    if model_type == "clip":
        return "clip", 'config.json model_type "clip"'
    return None, f"config.json model_type {model_type!r}"


_KIND_FIELDS = "align.encoder_kind / bench.kind"


def check_kind(kind: str, path_or_id: str) -> None:
    """Refuse, in one line, a folder whose files say it is another kind of encoder (a MiniLM folder
    loaded as CLIP gives degenerate embeddings, every radius ties, and d_corr reads as perfect)."""
    found, evidence = detect_kind(path_or_id)
    if found is not None and found != kind:
        raise EncoderKindError(f"{model_dir(path_or_id)}: a {found} model ({evidence}), but the encoder kind "
                               f"is {kind!r}: set {_KIND_FIELDS} to {found}")
    p = Path(model_dir(path_or_id))
    if found is None and p.is_dir() and kind == "clip":
        raise EncoderKindError(f"{p}: not a CLIP model ({evidence}), but the encoder kind is 'clip' ({_KIND_FIELDS})")


def load_encoder(kind: Literal["clip", "sentence-transformers"], path_or_id: str, device: str = "cpu",
                 max_length: int = 77, train_last_n_layers: int | None = None) -> Encoder:
    """Load by hub id or path (a `train_align` output dir resolves to its `model/`); a local folder
    of another kind is refused before anything loads."""
    path_or_id = model_dir(path_or_id)
    check_kind(kind, path_or_id)
    if kind == "clip":
        return ClipEncoder.from_pretrained(path_or_id, max_length=max_length, device=device)
    if kind == "sentence-transformers":
        return SentenceTransformerEncoder.from_pretrained(path_or_id, device=device,
                                                          train_last_n_layers=train_last_n_layers)
    raise ValueError(f"unknown encoder kind {kind!r}")


@torch.no_grad()
def embed_texts(enc: Encoder, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Eval-mode embeddings of many texts, in batches (restores the previous train/eval mode)."""
    was = enc.module.training
    enc.eval()
    try:
        parts = [enc.encode_text(texts[i:i + batch_size]).cpu() for i in range(0, len(texts), batch_size)]
    finally:
        enc.train(was)
    return torch.cat(parts) if parts else torch.empty(0)
