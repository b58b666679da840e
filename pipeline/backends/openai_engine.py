"""LLM calls against an OpenAI-compatible server (``vllm serve``, TGI, llama.cpp, a hosted API).

Why a server: a 70B model, or one shared by a team, is already served somewhere; the stages send
it chat messages instead of loading it. Requests go to ``/v1/chat/completions``, so the server
renders the model's chat template (vLLM's server without adding a second BOS, as the offline
engine does): greedy outputs match :class:`~pipeline.backends.vllm_engine.VllmGenerator` token for
token. A shard's requests run concurrently (at most ``max_concurrency`` in flight); 429, 5xx,
refused connections and timeouts are retried with exponential backoff, anything else is a
one-line :class:`ServerError` naming the server. The API key is read from the environment
variable that ``api_key_env`` names and is never stored, logged or put in a manifest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
from typing import Any

from ..errors import UserError
from .generation import BaseGenerator, GeneratorConfig, GenRequest, SamplingConfig, as_requests, truncate_at_stop

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
RESUME = "finished units are kept: rerun to resume"


class ServerError(UserError):
    """The server could not be used (down, refusing, replying with something that is not the API)."""


def retryable(status: int) -> bool:
    """Worth asking again: rate limits, request timeouts and server-side failures."""
    return status in (408, 409, 429) or status >= 500


def backoff_delay(cfg: GeneratorConfig, attempt: int, retry_after: float | None = None) -> float:
    """``backoff_s * 2**attempt`` (at most 60 s), at least what the server asked for, plus a little
    jitter so concurrent retries do not arrive together."""
    delay = min(MAX_BACKOFF_S, cfg.backoff_s * 2 ** attempt)
    if retry_after:
        delay = max(delay, min(MAX_BACKOFF_S, retry_after))
    return delay * (1 + 0.1 * random.random())


def request_body(cfg: GeneratorConfig, req: GenRequest, sampling: SamplingConfig) -> dict[str, Any]:
    """One chat completion request: the offline vLLM engine's sampling (``sampling_params_kwargs``)
    in the API's fields; the regex goes as vLLM's ``structured_outputs`` (vLLM >= 0.12 ignores
    the removed ``guided_regex``; other servers ignore the field)."""
    if sampling.temperature == 0 and sampling.n > 1:
        raise ValueError("n > 1 with temperature 0 would return n identical completions")
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": req.messages,
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    seed = req.seed if req.seed is not None else sampling.random_seed
    if seed is not None:
        body["seed"] = seed
    if sampling.regex:
        body["extra_body"] = {"structured_outputs": {"regex": sampling.regex}}
    return body


def completion_texts(reply: Any, n: int, stop: list[str]) -> list[str]:
    """A chat completion's ``n`` texts in choice order, or a ValueError saying what is wrong with it."""
    choices = getattr(reply, "choices", None)
    if not isinstance(choices, list):
        kind = "text, not JSON" if isinstance(reply, str) else "JSON without 'choices'"
        raise ValueError(f"the reply is not a chat completion ({kind})")
    if len(choices) != n:
        raise ValueError(f"expected {n} completions, the reply has {len(choices)}")
    texts = []
    for c in sorted(choices, key=lambda c: c.index):
        content = getattr(getattr(c, "message", None), "content", None)
        texts.append(truncate_at_stop(content or "", stop))   # a server that keeps the stop string
    return texts


def public_url(url: str) -> str:
    """The URL as manifests record it: scheme, host, port and path (the config refuses credentials)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{u.hostname}{port}{u.path}"


def run_sync(coro):
    """``asyncio.run``, also from a thread that already runs an event loop (a flow's task)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIGenerator(BaseGenerator):
    """``cfg.model`` as served at ``cfg.base_url``; on open it asks the server which models it
    serves (``/v1/models``) and refuses a model it does not serve."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__(cfg)
        try:
            import openai
        except ImportError as e:
            raise ImportError("engine='openai' needs the openai client (pip install 'hierarcaps[openai]')") from e
        self._openai = openai
        self.server = public_url(cfg.base_url)
        served = run_sync(self._with_client(self._served_models))
        if cfg.model not in served:
            raise ServerError(f"models.generator.model {cfg.model!r} is not served at {self.server} "
                              f"(it serves {sorted(served)}); set models.generator.model to one of them")
        self.server_model = cfg.model
        if root := served[cfg.model]:                     # vLLM: the weights behind the served name
            self.server_model_root = root

    # --- requests -------------------------------------------------------------------------------

    def generate(self, requests: list[GenRequest | dict], sampling: SamplingConfig) -> list[list[str]]:
        requests = as_requests(requests)
        if not requests:
            return []
        bodies = [request_body(self.cfg, r, sampling) for r in requests]

        async def shard(client):
            gate = asyncio.Semaphore(self.cfg.max_concurrency)

            async def one(i: int, body: dict):
                async with gate:
                    reply = await self._call(f"request {i}", lambda: client.chat.completions.create(**body))
                try:
                    return completion_texts(reply, sampling.n, sampling.stop)
                except ValueError as e:
                    raise ServerError(f"{self.server}: request {i}: {e}; {RESUME}") from None

            return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))

        return list(run_sync(self._with_client(shard)))

    async def _served_models(self, client) -> dict[str, str | None]:
        page = await self._call("listing models (GET /models)", client.models.list)
        data = getattr(page, "data", None)
        if not isinstance(data, list):
            raise ServerError(f"{self.server}/models: the reply is not a model list; is base_url the API's "
                              "root (for vLLM: http://host:port/v1)?")
        return {m.id: (m.model_extra or {}).get("root") for m in data}

    async def _with_client(self, work):
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        # a local server without --api-key accepts any key; the client insists on one
        async with self._openai.AsyncOpenAI(base_url=self.cfg.base_url, api_key=key or "EMPTY", max_retries=0,
                                            timeout=self.cfg.request_timeout_s) as client:
            return await work(client)

    async def _call(self, what: str, send):
        """``send()`` with retries on what a later try may cure; a one-line ServerError otherwise."""
        oa = self._openai
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:
                return await send()
            except oa.APITimeoutError:
                again, why = True, f"no reply within {self.cfg.request_timeout_s:g} s (request_timeout_s)"
            except oa.APIConnectionError as e:
                again, why = True, f"cannot connect ({_short(_root_cause(e))})"
            except oa.APIStatusError as e:
                again, why = retryable(e.status_code), f"HTTP {e.status_code}: {_short(_detail(e))}"
                if e.status_code in (401, 403):
                    var = self.cfg.api_key_env
                    why += (f" (the key is read from ${var}, which is {'set' if os.environ.get(var) else 'not set'})"
                            if var else " (api_key_env is empty: a placeholder key is sent)")
                elif e.status_code == 404:
                    why += " (is base_url the API's root, e.g. http://host:8000/v1?)"
                try:
                    retry_after = float(e.response.headers.get("retry-after", ""))
                except ValueError:
                    pass
            except ValueError as e:                     # JSON declared, garbage sent
                again, why = False, f"the reply is not JSON ({_short(str(e))})"
            if not again or attempt == self.cfg.max_retries:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise ServerError(f"{self.server}: {what}: {why}{tries}; {RESUME}") from None
            delay = backoff_delay(self.cfg, attempt, retry_after)
            log.warning("%s: %s: %s; retry %d/%d in %.1f s", self.server, what, why, attempt + 1,
                        self.cfg.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _root_cause(e: BaseException) -> str:
    """The socket's own words under the client's wrappers ("[Errno 111] Connect call failed ..."):
    the innermost OSError of the chain, else the first wrapped error."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    os_errors = [x for x in chain if isinstance(x, OSError) and x.errno]
    pick = os_errors[-1] if os_errors else chain[min(1, len(chain) - 1)]
    return str(pick) or type(pick).__name__


def _detail(e) -> str:
    """The server's own words for an error reply (the API's ``{"error": {"message": ...}}``)."""
    body = e.body
    if isinstance(body, dict):
        return str(body.get("message") or body)
    return str(body or e.message)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
