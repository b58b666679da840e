"""Text generation behind one small interface.

A stage builds :class:`GenRequest` rows (chat messages + optional seed), hands them to a
:class:`TextGenerator` and gets back ``list[list[str]]``: output ``i`` belongs to request ``i`` and
holds ``sampling.n`` completions. Which engine runs it (transformers in-process, vLLM, either in a
subprocess) is chosen once by :func:`make_generator`.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import threading
from abc import ABC, abstractmethod
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .common import (SubprocessError, engine_info, length_buckets, release_gpu_cache, resolve_device,
                     resolve_dtype, restore_order)

log = logging.getLogger(__name__)

Engine = Literal["transformers", "vllm"]


class SamplingConfig(BaseModel):
    """Sampling settings shared by all engines. ``temperature == 0`` means greedy."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, ge=1)
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)  # always set: no engine default decides output length
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None  # default seed for requests without their own
    # Optional structured output (vLLM only; the transformers engine ignores it with a warning).
    regex: str | None = None

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
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = ""  # model id or local path; make_generator's ``model`` argument overrides it
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"  # "auto" / "cpu" / "cuda" / "cuda:1"
    batch_size: int = Field(32, ge=1)  # transformers engine; vLLM schedules the whole shard itself
    tensor_parallel_size: int = Field(1, ge=1)  # vLLM
    max_model_len: int | None = None  # vLLM; transformers: static cache length when set
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)  # vLLM (on CPU: share of RAM for the KV cache)
    engine_args: dict[str, Any] = Field(default_factory=dict)  # vLLM: more vllm.LLM kwargs (enforce_eager, ...)
    static_cache: bool = False  # transformers: cache_implementation="static"
    compile: bool = False  # transformers: torch.compile the decode step (needs static_cache)
    pad_to_multiple_of: int | None = None  # transformers: fewer distinct shapes under compile
    trust_remote_code: bool = False
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    subprocess: bool = False  # run the engine in its own process (released on close())


@runtime_checkable
class TextGenerator(Protocol):
    def generate(
        self, requests: list[GenRequest], sampling: SamplingConfig | None = None
    ) -> list[list[str]]: ...

    def close(self) -> None: ...


class BaseGenerator(ABC):
    """Convenience base: context manager + default sampling from the config."""

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg

    @abstractmethod
    def generate(
        self, requests: list[GenRequest], sampling: SamplingConfig | None = None
    ) -> list[list[str]]: ...

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
    return [
        tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True)
        for r in requests
    ]


def batch_seed(base: int | None, seeds: list[int | None]) -> int | None:
    """One RNG seed for a batch, derived from the request seeds (None when nothing is seeded)."""
    if base is None and all(s is None for s in seeds):
        return None
    h = hashlib.sha256(repr((base, seeds)).encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


# ---------------------------------------------------------------------------------------------
# transformers engine


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

    def generate(
        self, requests: list[GenRequest | dict], sampling: SamplingConfig | None = None
    ) -> list[list[str]]:
        torch = self._torch
        sampling = sampling or self.cfg.sampling
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
            seed = batch_seed(sampling.seed, [requests[i].seed for i in idx])
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


# ---------------------------------------------------------------------------------------------
# subprocess wrapper


def _build(engine: Engine, cfg: GeneratorConfig) -> TextGenerator:
    if engine == "transformers":
        return TransformersGenerator(cfg)
    if engine == "vllm":
        from .vllm_engine import VllmGenerator  # lazy: vllm is an optional extra

        return VllmGenerator(cfg)
    raise ValueError(f"unknown engine {engine!r}; expected 'transformers' or 'vllm'")


def _serve(conn, engine: Engine, cfg_json: str) -> None:  # pragma: no cover - runs in the child
    import traceback

    try:
        gen = _build(engine, GeneratorConfig.model_validate_json(cfg_json))
        conn.send(("ready", engine_info(gen)))
    except BaseException as e:  # noqa: BLE001
        conn.send(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "close":
                break
            _, reqs, samp = msg
            try:
                out = gen.generate(
                    [GenRequest.model_validate(r) for r in reqs],
                    SamplingConfig.model_validate(samp) if samp is not None else None,
                )
                conn.send(("ok", out))
            except BaseException as e:  # noqa: BLE001
                conn.send(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        gen.close()
        conn.close()


class SubprocessGenerator(BaseGenerator):
    """Runs an engine in a spawned child process that lives until :meth:`close`.

    The model loads once in the child; each ``generate`` ships requests over a pipe. Closing (or
    the child exiting) releases all GPU memory the engine held, whatever the engine does.
    """

    def __init__(self, engine: Engine, cfg: GeneratorConfig, timeout_s: float | None = None):
        super().__init__(cfg)
        self.engine = engine
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        cfg_json = cfg.model_copy(update={"subprocess": False}).model_dump_json()
        # not a daemon: vLLM starts engine processes of its own, and a daemon may not have children
        self._proc = ctx.Process(target=_serve, args=(child, engine, cfg_json), daemon=False)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self._timeout = timeout_s
        self.child_info: dict[str, str] = self._recv_expect("ready")  # engine_info() of the child's engine

    def _recv_expect(self, kind: str):
        if self._timeout is not None and not self._conn.poll(self._timeout):
            self.close()
            raise SubprocessError(f"{self.engine} generator subprocess timed out")
        try:
            status, payload = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            code = self._proc.exitcode
            self.close()
            raise SubprocessError(f"{self.engine} generator subprocess died (exit code {code})") from None
        if status == "err":
            if kind == "ready":
                self.close()
            raise SubprocessError(payload)
        return payload

    def generate(
        self, requests: list[GenRequest | dict], sampling: SamplingConfig | None = None
    ) -> list[list[str]]:
        if self._proc is None:
            raise RuntimeError("generator is closed")
        reqs = [r.model_dump() for r in as_requests(requests)]
        samp = sampling.model_dump() if sampling is not None else None
        with self._lock:
            self._conn.send(("gen", reqs, samp))
            return self._recv_expect("ok")

    def close(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None:
            return
        try:
            if proc.is_alive():
                self._conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        self._conn.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def make_generator(
    engine: Engine, model: str | None = None, cfg: GeneratorConfig | None = None
) -> TextGenerator:
    """Build a generator. ``model`` (id or path) overrides ``cfg.model``;
    ``cfg.subprocess=True`` runs the engine in its own process."""
    cfg = cfg or GeneratorConfig()
    if model:
        cfg = cfg.model_copy(update={"model": model})
    if engine not in ("transformers", "vllm"):
        raise ValueError(f"unknown engine {engine!r}; expected 'transformers' or 'vllm'")
    if cfg.subprocess:
        return SubprocessGenerator(engine, cfg)
    return _build(engine, cfg)
