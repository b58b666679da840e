"""Text generation behind one small interface.

A stage builds :class:`GenRequest` rows (chat messages + optional seed), hands them with a
:class:`SamplingConfig` to a :class:`TextGenerator` and gets back ``list[list[str]]``: output ``i``
belongs to request ``i`` and holds ``sampling.n`` completions. Which engine runs it is the
:class:`GeneratorConfig`'s ``engine`` (transformers in-process, vLLM; either in its own process
with ``subprocess``; or ``openai``: a server speaking the OpenAI API), built by :func:`pipeline.backends.factory.make_generator`.
"""

from __future__ import annotations

import hashlib
import importlib
from abc import ABC, abstractmethod
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Engine = Literal["transformers", "vllm", "openai"]
# engine name -> its class, imported on use (vLLM and the openai client are optional extras)
ENGINES: dict[str, str] = {
    "transformers": "pipeline.backends.transformers_engine:TransformersGenerator",
    "vllm": "pipeline.backends.vllm_engine:VllmGenerator",
    "openai": "pipeline.backends.openai_engine:OpenAIGenerator",
}


class SamplingConfig(BaseModel):
    """Sampling settings shared by all engines. ``temperature == 0`` means greedy."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1)  # always set: no engine default decides output length
    stop: list[str] = Field(default_factory=list)
    random_seed: int | None = None  # for requests without a seed of their own
    regex: str | None = None        # structured output (vLLM only; the transformers engine warns)

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must be non-empty")
        return v


class GenRequest(BaseModel):
    """One prompt: chat messages ``[{"role": ..., "content": ...}]`` and an optional seed."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, str]]
    seed: int | None = None

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, v: list[dict[str, str]]) -> list[dict[str, str]]:
        if not v:
            raise ValueError("messages must not be empty")
        for i, m in enumerate(v):
            if "role" not in m or "content" not in m:
                raise ValueError(f"message {i} needs 'role' and 'content' keys, got {sorted(m)}")
        return v


class GeneratorConfig(BaseModel):
    """Which engine loads which model, and how (the config's ``models.generator``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    engine: Engine = "transformers"
    model: str = ""  # model id or local path
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"  # "auto" / "cpu" / "cuda" / "cuda:1"
    batch_size: int = Field(32, ge=1)  # transformers engine; vLLM schedules the whole shard itself
    tensor_parallel_size: int = Field(1, ge=1)  # vLLM
    pipeline_parallel_size: int = Field(1, ge=1)  # vLLM: layers split over GPUs (or nodes)
    # vLLM over several GPUs: None lets vLLM choose (mp on one node); "ray" spans a Ray cluster's nodes
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = None
    max_model_len: int | None = None  # vLLM; transformers: static cache length when set
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)  # vLLM (on CPU: share of RAM for the KV cache)
    engine_args: dict[str, Any] = Field(default_factory=dict)  # vLLM: more vllm.LLM kwargs (enforce_eager, ...)
    static_cache: bool = False  # transformers: cache_implementation="static"
    compile: bool = False  # transformers: torch.compile the decode step (needs static_cache)
    pad_to_multiple_of: int | None = None  # transformers: fewer distinct shapes under compile
    trust_remote_code: bool = False
    subprocess: bool = False  # run the engine in its own process (released on close())
    # engine="openai": an OpenAI-compatible server (vllm serve, TGI, llama.cpp, hosted) serving `model`
    base_url: str = "http://127.0.0.1:8000/v1"  # no credentials here: it is recorded in manifests
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")  # the variable's NAME
    max_concurrency: int = Field(32, ge=1)        # requests in flight at once
    request_timeout_s: float = Field(300.0, gt=0)  # one request, all n completions
    max_retries: int = Field(5, ge=0)             # on 429 / 5xx / connection errors / timeouts
    backoff_s: float = Field(1.0, gt=0)           # first retry's delay; doubles per retry (at most 60 s)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {v!r}")
        if u.username or u.password or u.query:
            raise ValueError("base_url must not carry credentials or a query (it is recorded in manifests); "
                             "put the API key in the environment variable that api_key_env names")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _openai_runs_here(self) -> "GeneratorConfig":
        if self.engine == "openai" and self.subprocess:
            raise ValueError("engine 'openai' loads no model here: subprocess=True has nothing to release")
        return self


def engine_class(engine: str):
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {sorted(ENGINES)}")
    module, name = ENGINES[engine].split(":")
    return getattr(importlib.import_module(module), name)


@runtime_checkable
class TextGenerator(Protocol):
    def generate(self, requests: list[GenRequest], sampling: SamplingConfig) -> list[list[str]]: ...

    def close(self) -> None: ...


class BaseGenerator(ABC):
    """Convenience base: the config, a context manager."""

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg

    @abstractmethod
    def generate(self, requests: list[GenRequest], sampling: SamplingConfig) -> list[list[str]]: ...

    def close(self) -> None:  # noqa: B027 - optional override
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def as_requests(requests: list[GenRequest | dict]) -> list[GenRequest]:
    return [r if isinstance(r, GenRequest) else GenRequest.model_validate(r) for r in requests]


def truncate_at_stop(text: str, stop: list[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (the stop string is dropped),
    matching vLLM's default ``include_stop_str_in_output=False``."""
    cut = len(text)
    for s in stop:
        j = text.find(s)
        if j != -1 and j < cut:
            cut = j
    return text[:cut]


def render_prompts(tokenizer, requests: list[GenRequest]) -> list[str]:
    """Chat messages -> prompt strings through the tokenizer's chat template
    (``add_generation_prompt=True``). A tokenizer without a template is an error naming it."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise ValueError(
            f"tokenizer {name!r} has no chat_template; generation prompts are chat messages. "
            "Use an instruct/chat model or set tokenizer.chat_template."
        )
    return [tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests]


def batch_seed(base: int | None, seeds: list[int | None]) -> int | None:
    """One RNG seed for a batch, derived from the request seeds (None when nothing is seeded)."""
    if base is None and all(s is None for s in seeds):
        return None
    h = hashlib.sha256(repr((base, seeds)).encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
