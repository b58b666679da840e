"""NLI scoring over any MNLI-style cross-encoder.

``NliScorer.score(premises, hypotheses) -> np.ndarray[N, 3]`` of softmax probabilities in the fixed
column order :data:`NLI_COLUMNS` = (entailment, neutral, contradiction), whatever order the model's
head uses. Label indices come from ``config.id2label`` matched by name:

- roberta-large-mnli:                    contradiction, neutral, entailment
- MoritzLaurer/DeBERTa-v3-*-mnli-*:      entailment, neutral, contradiction
- cross-encoder/nli-deberta-v3-*:        contradiction, entailment, neutral

Generic names (``LABEL_0``...) cannot be resolved: pass ``NliConfig.label_map`` (e.g.
``{"entailment": 2, "neutral": 1, "contradiction": 0}``). A model with no entailment label is
refused.

Two-label models (entailment / not_entailment, e.g. RTE-style heads) are accepted: they cannot
separate neutral from contradiction, so the non-entailment probability goes to the column named by
``NliConfig.two_label_policy``: ``"neutral"`` (default, conservative: such a model never
*confirms* a contradiction, so contradiction-gated steps reject rather than accept) or
``"contradiction"``. The other column is 0; rows still sum to 1.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .common import length_buckets, release_gpu_cache, resolve_device, resolve_dtype

log = logging.getLogger(__name__)

NLI_COLUMNS = ("entailment", "neutral", "contradiction")

_SYNONYMS: dict[str, set[str]] = {
    "entailment": {"entailment", "entail", "entails", "entailed", "entailing"},
    "neutral": {"neutral", "neutrality"},
    "contradiction": {"contradiction", "contradict", "contradicts", "contradictory", "contradicted"},
    "not_entailment": {
        "not_entailment", "non_entailment", "not_entailed", "not_entail", "no_entailment",
        "nonentailment", "notentailment",
    },
}
_CANON = {syn: canon for canon, syns in _SYNONYMS.items() for syn in syns}
_GENERIC = re.compile(r"^label_?\d+$")

SANITY_PAIR = ("A man is sleeping on a couch.", "A person is sleeping.")


class NliConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    revision: str | None = None
    backend: Literal["transformers", "cross_encoder"] = "transformers"  # "cross-encoder" accepted
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8)
    # explicit {label name: logit index}; names as accepted in id2label (entailment, neutral, ...)
    label_map: dict[str, int] | None = None
    two_label_policy: Literal["neutral", "contradiction"] = "neutral"
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: fp16 on GPU, fp32 CPU
    sanity_check: bool = True
    strict_sanity: bool = False  # raise if the sanity pair is not predicted as entailment
    trust_remote_code: bool = False

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_alias(cls, v):
        return v.replace("-", "_") if isinstance(v, str) else v

    @field_validator("label_map")
    @classmethod
    def _check_label_map(cls, v):
        if v is None:
            return v
        out = {}
        for k, idx in v.items():
            canon = _canonical(k)
            if canon is None:
                raise ValueError(f"label_map key {k!r} is not an NLI label name ({', '.join(_SYNONYMS)})")
            out[canon] = int(idx)
        return out


def _canonical(name: str) -> str | None:
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return _CANON.get(key) or _CANON.get(key.replace("_", ""))


def resolve_label_indices(
    id2label: Mapping[int | str, str],
    model_name: str = "<model>",
    label_map: Mapping[str, int] | None = None,
    two_label_policy: str = "neutral",
) -> np.ndarray:
    """Projection matrix ``P [num_labels, 3]``: ``probs3 = softmax(logits) @ P``.

    Raises ``ValueError`` naming the model when labels cannot be resolved.
    """
    num = len(id2label)
    if label_map:
        mapping = {_canonical(k) or k: int(v) for k, v in label_map.items()}
        bad = [v for v in mapping.values() if not 0 <= v < num]
        if bad:
            raise ValueError(f"{model_name}: label_map indices {bad} out of range for {num} labels")
    else:
        mapping: dict[str, int] = {}
        unresolved = []
        for raw_idx, name in id2label.items():
            idx = int(raw_idx)
            canon = _canonical(name)
            if canon is None:
                unresolved.append(name)
                continue
            if canon in mapping:
                raise ValueError(f"{model_name}: labels {id2label} map {canon!r} twice")
            mapping[canon] = idx
        if unresolved:
            generic = all(_GENERIC.match(str(n).lower()) for n in unresolved)
            hint = (
                "generic label names carry no meaning; " if generic else "unknown label names; "
            ) + "pass NliConfig.label_map, e.g. {'entailment': 0, 'neutral': 1, 'contradiction': 2}"
            raise ValueError(f"{model_name}: cannot resolve NLI labels {unresolved} in id2label={dict(id2label)}: {hint}")
    if "entailment" not in mapping:
        raise ValueError(
            f"{model_name} has no entailment label (id2label={dict(id2label)}); it is not an NLI model "
            "this pipeline can use"
        )
    proj = np.zeros((num, 3), dtype=np.float32)
    if "not_entailment" in mapping:
        if set(mapping) != {"entailment", "not_entailment"} or num != 2:
            raise ValueError(f"{model_name}: mixes not_entailment with other labels: {dict(id2label)}")
        col = NLI_COLUMNS.index(two_label_policy)
        proj[mapping["entailment"], 0] = 1.0
        proj[mapping["not_entailment"], col] = 1.0
        return proj
    missing = [c for c in NLI_COLUMNS if c not in mapping]
    if missing or num != 3:
        raise ValueError(
            f"{model_name}: expected 3 labels (entailment, neutral, contradiction) or 2 "
            f"(entailment, not_entailment); got id2label={dict(id2label)}"
            + (f", missing {missing}" if missing else "")
        )
    for col, name in enumerate(NLI_COLUMNS):
        proj[mapping[name], col] = 1.0
    return proj


class NliScorer:
    """Batched NLI scoring. ``score`` returns float32 ``[N, 3]`` (entailment, neutral, contradiction)."""

    def __init__(self, cfg: NliConfig):
        import torch

        self.cfg = cfg
        self._torch = torch
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device, half="float16")
        self._ce = None
        if cfg.backend == "transformers":
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(
                cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                cfg.model, revision=cfg.revision, dtype=self.dtype, trust_remote_code=cfg.trust_remote_code
            ).to(self.device)
            self.model.eval()
            config = self.model.config
        elif cfg.backend == "cross_encoder":
            from sentence_transformers import CrossEncoder

            self._ce = CrossEncoder(
                cfg.model,
                revision=cfg.revision,
                device=str(self.device),
                max_length=cfg.max_length,
                trust_remote_code=cfg.trust_remote_code,
                model_kwargs={"dtype": self.dtype},
            )
            self.tokenizer = self._ce.tokenizer
            config = self._ce.config
        else:  # pragma: no cover - pydantic guards it
            raise ValueError(f"unknown backend {cfg.backend!r}")
        self.id2label = {int(k): v for k, v in config.id2label.items()}
        self.proj = resolve_label_indices(self.id2label, cfg.model, cfg.label_map, cfg.two_label_policy)
        self._proj_t = torch.from_numpy(self.proj).to(self.device)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer of {cfg.model!r} has no pad token")
        self.sanity = self._sanity_check() if cfg.sanity_check else None

    # ---------------------------------------------------------------------------------------
    def _sanity_check(self) -> dict[str, float]:
        probs = self.score([SANITY_PAIR[0]], [SANITY_PAIR[1]])
        if probs.shape != (1, 3) or not np.all(np.isfinite(probs)) or not math.isclose(
            float(probs.sum()), 1.0, abs_tol=1e-3
        ):
            raise RuntimeError(f"{self.cfg.model}: NLI sanity check produced invalid output {probs!r}")
        res = dict(zip(NLI_COLUMNS, map(float, probs[0])))
        log.info("NLI sanity %s: P(entailment | %r => %r) = %.3f", self.cfg.model, *SANITY_PAIR, res["entailment"])
        if self.cfg.strict_sanity and int(np.argmax(probs[0])) != 0:
            raise RuntimeError(
                f"{self.cfg.model}: sanity pair {SANITY_PAIR} not judged entailment (probs {res}); "
                "label mapping or model is wrong"
            )
        return res

    def _encode_all(self, premises: Sequence[str], hypotheses: Sequence[str]) -> dict[str, list[list[int]]]:
        return self.tokenizer(
            list(premises),
            list(hypotheses),
            truncation=True,
            max_length=self.cfg.max_length,
            padding=False,
        ).data

    def _collate(self, enc: dict[str, list[list[int]]], idx: Sequence[int]) -> dict:
        torch = self._torch
        width = max(len(enc["input_ids"][i]) for i in idx)
        out = {}
        pad_values = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        accepted = set(getattr(self.tokenizer, "model_input_names", pad_values))
        for key, pad in pad_values.items():
            if key not in enc or key not in accepted:
                continue
            arr = np.full((len(idx), width), pad, dtype=np.int64)
            for r, i in enumerate(idx):
                row = enc[key][i]
                arr[r, : len(row)] = row  # right padding (encoder models)
            out[key] = torch.from_numpy(arr).to(self.device, non_blocking=True)
        return out

    def score(self, premises: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
        """Probabilities ``[N, 3]`` (entailment, neutral, contradiction) for each (premise, hypothesis)."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises vs {len(hypotheses)} hypotheses")
        if len(premises) == 0:
            return np.zeros((0, 3), dtype=np.float32)
        # identical links recur across chains (shared tiers, transitive pairs): score each pair once
        index: dict[tuple[str, str], int] = {}
        rows = [index.setdefault(pair, len(index)) for pair in zip(premises, hypotheses)]
        if len(index) < len(rows):
            uniq = list(index)
            return self.score([p for p, _ in uniq], [h for _, h in uniq])[rows]
        if self._ce is not None:
            return self._score_cross_encoder(premises, hypotheses)
        n = len(premises)
        torch = self._torch
        enc = self._encode_all(premises, hypotheses)
        batches = length_buckets([len(x) for x in enc["input_ids"]], self.cfg.batch_size)
        out = torch.empty((n, 3), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for idx in batches:
                logits = self.model(**self._collate(enc, idx)).logits.float()
                probs = torch.softmax(logits, dim=-1) @ self._proj_t
                out[torch.as_tensor(idx, device=self.device)] = probs
        return out.cpu().numpy()

    def _score_cross_encoder(self, premises, hypotheses) -> np.ndarray:
        torch = self._torch
        lengths = [len(p) + len(h) for p, h in zip(premises, hypotheses)]  # chars: cheap proxy
        order = [i for b in length_buckets(lengths, len(lengths)) for i in b]
        pairs = [(premises[i], hypotheses[i]) for i in order]
        logits = self._ce.predict(
            pairs,
            batch_size=self.cfg.batch_size,
            activation_fn=torch.nn.Identity(),
            convert_to_tensor=True,
            show_progress_bar=False,
        ).float()
        probs = (torch.softmax(logits, dim=-1) @ self._proj_t.to(logits.device)).cpu().numpy()
        out = np.empty_like(probs)
        out[order] = probs
        return out

    def close(self) -> None:
        self.model = None
        self._ce = None
        release_gpu_cache()
