"""Shared helpers for the model backends: device/dtype resolution, length-bucketed batching,
and running a function in a fresh (spawned) process so its GPU memory is released on return."""

from __future__ import annotations

import logging
import multiprocessing as mp
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")


def resolve_device(device: str = "auto"):
    """'auto' -> cuda when available, else cpu. Anything else is passed to torch.device."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str = "auto", device=None, *, half: str = "bfloat16"):
    """'auto' -> bf16 (or fp16 where bf16 is unsupported) on CUDA, fp32 on CPU.

    ``half`` picks the preferred 16-bit type for 'auto' on GPU.
    """
    import torch

    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    dev_type = getattr(device, "type", str(device or "cpu"))
    if dev_type == "cuda":
        if half == "bfloat16" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    return torch.float32


def release_gpu_cache() -> None:
    """Hand cached CUDA blocks back after an engine drops its model (a no-op without CUDA)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def engine_info(engine) -> dict[str, str]:
    """Where an engine runs, for a stage's manifest: class, device and dtype (when it knows them);
    for a server, its URL (without credentials) and the model it reports serving."""
    child = getattr(engine, "child_info", None)  # an engine in its own process: what the child runs
    if child:
        return {**child, "class": f"{type(engine).__name__}({child.get('class')})"}
    info = {"class": type(engine).__name__}
    for attr in ("device", "dtype", "server", "server_model", "server_model_root"):
        value = getattr(engine, attr, None)
        if value is not None:
            info[attr] = str(value).removeprefix("torch.")
    return info


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, stable for ties).

    Longest-first puts the peak-memory batch at the start (fail fast on OOM). Concatenating the
    returned batches gives a permutation of ``range(len(lengths))``; callers restore order by
    writing results to ``out[idx]``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def restore_order(batches: Sequence[Sequence[int]], results: Sequence[Sequence[T]]) -> list[T]:
    """Inverse of :func:`length_buckets`: put per-batch results back at their original index."""
    n = sum(len(b) for b in batches)
    out: list[Any] = [None] * n
    for idx, res in zip(batches, results, strict=True):
        if len(idx) != len(res):
            raise ValueError(f"batch of {len(idx)} indices got {len(res)} results")
        for i, r in zip(idx, res):
            out[i] = r
    return out


# ---------------------------------------------------------------------------------------------
# subprocess execution


class SubprocessError(RuntimeError):
    """An exception raised in the child process, with the child's traceback in the message."""


def _child_entry(conn, fn, args, kwargs):  # pragma: no cover - runs in the child
    try:
        result = fn(*args, **kwargs)
        conn.send(("ok", result))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        conn.send(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def run_in_subprocess(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a fresh spawned process and return its (picklable) result.

    ``fn`` must be importable (module-level). The child exits when ``fn`` returns, so everything
    it allocated (model weights, CUDA context, KV cache) is released. Exceptions are re-raised
    here as :class:`SubprocessError` carrying the child's traceback.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_entry, args=(child, fn, args, kwargs), daemon=False)
    proc.start()
    child.close()
    try:
        try:
            status, payload = parent.recv()
        except EOFError:
            proc.join()
            raise SubprocessError(
                f"subprocess running {getattr(fn, '__qualname__', fn)} died with exit code "
                f"{proc.exitcode} before returning a result"
            ) from None
        proc.join()
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status == "err":
        raise SubprocessError(payload)
    return payload
