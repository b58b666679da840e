"""The transformers engine: in-process ``model.generate`` behind :class:`TextGenerator`."""

from __future__ import annotations

import logging
from typing import Any

from .common import length_buckets, release_gpu_cache, resolve_device, resolve_dtype, restore_order
from .generation import (BaseGenerator, GeneratorConfig, GenRequest, SamplingConfig, as_requests, batch_seed,
                         render_prompts, truncate_at_stop)

log = logging.getLogger(__name__)


class TransformersGenerator(BaseGenerator):
    """In-process ``model.generate`` with left padding and length-bucketed batches.

    Seeds: the transformers engine samples a whole batch from one RNG stream, so a request's
    output is reproducible for the same request list and batch size (the batch RNG is seeded from
    the seeds of the requests in it), not independently of its batch-mates (vLLM seeds each
    request on its own).
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__(cfg)
        if not cfg.model:
            raise ValueError("GeneratorConfig.model (id or path) is required")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(
            cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"tokenizer of {cfg.model!r} has neither pad nor eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            cfg.model,
            revision=cfg.revision,
            dtype=self.dtype,
            trust_remote_code=cfg.trust_remote_code,
        ).to(self.device)
        self.model.eval()
        self._torch = torch
        self._warned_regex = False
        if cfg.compile and not cfg.static_cache:
            log.warning("compile=True needs static_cache=True in transformers; enabling static cache")

    # kwargs for model.generate, separated so tests can inspect them
    def generate_kwargs(self, sampling: SamplingConfig) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "num_return_sequences": sampling.n,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if sampling.temperature > 0:
            kw.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:
            if sampling.n > 1:
                raise ValueError("n > 1 with temperature 0 would return n identical completions")
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kw.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if self.cfg.static_cache or self.cfg.compile:
            kw["cache_implementation"] = "static"
            if self.cfg.compile:
                from transformers import CompileConfig

                # transformers auto-compiles the decode step with a static cache on GPU;
                # CompileConfig makes that explicit (and lets it run on CPU for testing).
                kw["compile_config"] = CompileConfig(fullgraph=False, dynamic=False)
            else:
                kw["disable_compile"] = True
        return kw

    def _prompt_lengths(self, prompts: list[str]) -> list[int]:
        enc = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return [len(x) for x in enc]

    def generate(self, requests: list[GenRequest | dict], sampling: SamplingConfig) -> list[list[str]]:
        torch = self._torch
        requests = as_requests(requests)
        if not requests:
            return []
        if sampling.regex and not self._warned_regex:
            log.warning("transformers engine ignores SamplingConfig.regex (vLLM only)")
            self._warned_regex = True
        prompts = render_prompts(self.tokenizer, requests)
        batches = length_buckets(self._prompt_lengths(prompts), self.cfg.batch_size)
        gen_kw = self.generate_kwargs(sampling)
        n = sampling.n
        results: list[list[list[str]]] = []
        for idx in batches:
            enc = self.tokenizer(
                [prompts[i] for i in idx],
                add_special_tokens=False,  # the chat template already has BOS where it wants it
                padding=True,
                pad_to_multiple_of=self.cfg.pad_to_multiple_of,
                return_tensors="pt",
            ).to(self.device)
            seed = batch_seed(sampling.random_seed, [requests[i].seed for i in idx])
            if seed is not None:
                torch.manual_seed(seed)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(seed)
            with torch.inference_mode():
                out = self.model.generate(**enc, **gen_kw)
            new = out[:, enc["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            if sampling.stop:
                texts = [truncate_at_stop(t, sampling.stop) for t in texts]
            results.append([texts[j * n : (j + 1) * n] for j in range(len(idx))])
        return restore_order(batches, results)

    def close(self) -> None:
        self.model = None
        release_gpu_cache()
