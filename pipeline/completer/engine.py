"""Batched generation with H (or any seq2seq model folder / id), in both directions."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..backends.common import (
    length_buckets,
    release_gpu_cache,
    resolve_device,
    resolve_dtype,
    restore_order,
)
from .format import PairFormat, load_format

Progress = Callable[[int, int], None]
DEFAULT_MAX_SOURCE_LEN = 128


class GenConfig(BaseModel):
    """How H generates (bulk and negatives sections extend it)."""

    model_config = ConfigDict(extra="forbid")

    num_beams: int = Field(1, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(64, ge=1)
    device: str = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"   # auto: bf16 on a bf16 GPU, else fp32


class Completer:
    """Inputs are tokenized once, sorted by token length into batches of ``gen.batch_size``
    (longest first) and results are written back in input order."""

    def __init__(self, model_path: str | os.PathLike, gen: GenConfig | None = None, *,
                 fmt: PairFormat | None = None, max_source_len: int | None = None, revision: str | None = None):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        self.gen = gen or GenConfig()
        saved_fmt, saved_len = load_format(model_path)
        self.format = fmt or saved_fmt
        self.max_source_len = max_source_len or saved_len or DEFAULT_MAX_SOURCE_LEN
        self.device = resolve_device(self.gen.device)
        if self.gen.dtype == "auto":
            bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            self.dtype = torch.bfloat16 if bf16 else torch.float32
        else:
            self.dtype = resolve_dtype(self.gen.dtype, self.device)
        kw = {"revision": revision} if revision and not Path(model_path).exists() else {}
        self.model_path = str(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, **kw)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(self.model_path, dtype=self.dtype, **kw)
        self.model.to(self.device).eval()

    def _gen_kwargs(self, n: int, sample: bool | None, max_new_tokens: int | None) -> dict:
        g = self.gen
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
        bs = batch_size or self.gen.batch_size
        enc = self.tokenizer(inputs, truncation=True, max_length=self.max_source_len)["input_ids"]
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
                out = self.model.generate(input_ids=padded["input_ids"].to(self.device),
                                          attention_mask=padded["attention_mask"].to(self.device), **kw)
                texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
                results.append([[t.strip() for t in texts[r * n:(r + 1) * n]] for r in range(len(b))])
                done += len(b)
                if progress is not None:
                    progress(done, len(inputs))
        return restore_order(batches, results)

    def generalize(self, captions: Sequence[str], *, progress: Progress | None = None, **kw) -> list[str]:
        """Raw ``"t1 => t2 => t3"`` strings for each caption (split them with chain.split_tiers)."""
        outs = self.generate([self.format.generalize_input(c) for c in captions], n=1, progress=progress, **kw)
        return [o[0] for o in outs]

    def specify(self, tiers: Sequence[str], n: int = 1, sample: bool | None = None, seed: int | None = None, *,
                progress: Progress | None = None, **kw) -> list[list[str]]:
        """``n`` more-specific candidates per tier; ``""`` is the root (produces tier 1).

        ``sample=None`` uses ``gen.do_sample``; greedy with ``n > 1`` uses beam search with
        ``num_beams = max(gen.num_beams, n)`` and returns the top ``n`` beams.
        """
        return self.generate([self.format.specify_input(t) for t in tiers], n=n, sample=sample, seed=seed,
                             progress=progress, **kw)

    def close(self) -> None:
        """Drop the model (stages close their engines so GPU memory goes back at once)."""
        self.model = None
        release_gpu_cache()
