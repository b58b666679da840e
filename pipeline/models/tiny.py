"""Tiny deterministic models built offline, for tests and smoke runs (no model hub).

``resolve_model("tiny/llama-chat" | "tiny/t5" | "tiny/nli")`` builds the model on first use into a
cache folder keyed by a hash of the builders' source, the exemplars file and the prompt templates,
and returns its path; every other id is returned unchanged for ``from_pretrained``.

Each builder (``tiny_llama``, ``tiny_t5``, ``tiny_nli``) trains a small BPE tokenizer on the
exemplars and prompt text and its model for CPU seconds, in rounds until its quality gate on
held-out captions holds (``tiny_train``); ``tiny_build.json`` in the folder records the gate.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path

from .tiny_nli import NLI_ID2LABEL, NLI_LABEL2ID
from .tiny_t5 import T5_CHAIN_SEP, T5_GENERALIZE, T5_GENERALIZE_TARGET, T5_SPECIFY
from .tiny_train import DEFAULT_SEED, HELDOUT_CAPTIONS, TinyBuildError

__all__ = ["NLI_ID2LABEL", "NLI_LABEL2ID", "T5_CHAIN_SEP", "T5_GENERALIZE", "T5_GENERALIZE_TARGET", "T5_SPECIFY",
           "DEFAULT_SEED", "HELDOUT_CAPTIONS", "TinyBuildError", "TINY_IDS", "build_tiny", "resolve_model",
           "weights_hash", "build_key", "default_cache_dir", "resolve_models", "is_built", "model_folder"]

# --------------------------------------------------------------------------- resolution / cache

TINY_IDS: dict[str, str] = {   # id -> "module:builder" (imported when built)
    "tiny/llama-chat": "tiny_llama:build_tiny_llama",
    "tiny/t5": "tiny_t5:build_tiny_t5",
    "tiny/nli": "tiny_nli:build_tiny_nli",
}
# the code a build runs: a change to any of it is a new model
BUILDER_SOURCES = ("tiny_train.py", "tiny_llama.py", "tiny_t5.py", "tiny_nli.py", "tokenizers.py")


def default_cache_dir() -> Path:
    env = os.environ.get("HIERARCAPS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "hierarcaps" / "tiny"


def build_key(model_id: str, exemplars_path=None, prompts_dir=None) -> str:
    """Hash of the builders' source + model id + exemplars bytes + prompt template bytes."""
    from .. import prompts as P

    ex_path = Path(exemplars_path) if exemplars_path is not None else P.PROMPTS_DIR / P.EXEMPLARS_FILE
    pdir = Path(prompts_dir) if prompts_dir is not None else P.PROMPTS_DIR
    h = hashlib.sha256()
    h.update(f"{model_id}\0".encode())
    for name in BUILDER_SOURCES:
        h.update(name.encode() + b"\0" + (Path(__file__).parent / name).read_bytes())
    h.update(ex_path.read_bytes())
    for p in sorted(pdir.glob("*.yaml")):
        h.update(b"\0" + p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def model_folder(model_id: str, cache_dir: str | Path | None = None, exemplars_path=None, prompts_dir=None) -> Path:
    """Where the tiny model `model_id` lives in the cache under its current build key."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{model_id.split('/', 1)[1]}-{build_key(model_id, exemplars_path, prompts_dir)}"


def build_tiny(model_id: str, cache_dir: str | Path | None = None, exemplars_path=None, prompts_dir=None) -> Path:
    """Build (once, under a file lock, atomically) and return the cached folder of a tiny model."""
    from filelock import FileLock

    if model_id not in TINY_IDS:
        raise KeyError(f"unknown tiny model id {model_id!r}; known: {sorted(TINY_IDS)}")
    final = model_folder(model_id, cache_dir, exemplars_path, prompts_dir)
    root, name = final.parent, model_id.split("/", 1)[1]
    root.mkdir(parents=True, exist_ok=True)
    if (final / "tiny_build.json").is_file():
        return final
    with FileLock(str(final) + ".lock"):
        if (final / "tiny_build.json").is_file():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            module, builder = TINY_IDS[model_id].split(":")
            build = getattr(importlib.import_module(f"{__package__}.{module}"), builder)
            build(tmp, exemplars_path=exemplars_path, prompts_dir=prompts_dir)
            if final.exists():  # a stale, incomplete folder
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def resolve_model(model_id: str, cache_dir: str | Path | None = None) -> str:
    """``tiny/...`` ids -> path of the built tiny model; any other id (hub id / path) unchanged."""
    if model_id in TINY_IDS:
        return str(build_tiny(model_id, cache_dir))
    return model_id


def is_built(model_id: str, cache_dir: str | Path | None = None) -> bool:
    """Whether the tiny model `model_id` is in the cache under its current build key."""
    return (model_folder(model_id, cache_dir) / "tiny_build.json").is_file()


def resolve_models(model_ids: list[str], cache_dir: str | Path | None = None) -> dict[str, str]:
    """``resolve_model`` for several ids, building the missing tiny models side by side: each build
    is single-threaded (``tiny_train.deterministic``), so on a multi-core machine an empty cache
    fills in the time of the slowest build, not of all of them. Same folders, same weights."""
    todo = [m for m in dict.fromkeys(model_ids) if m in TINY_IDS and not is_built(m, cache_dir)]
    if len(todo) > 1 and (os.cpu_count() or 1) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per build, nothing inherited from a caller holding torch threads
        with ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1), mp_context=mp.get_context("spawn")) as ex:
            list(ex.map(build_tiny, todo, [cache_dir] * len(todo)))
    return {m: resolve_model(m, cache_dir) for m in model_ids}


def weights_hash(model_dir: str | Path) -> str:
    """sha256 over the tensors (names, dtypes, shapes, bytes) of a saved model folder."""
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    for f in files:
        tensors = load_file(str(f))
        for k in sorted(tensors):
            t = tensors[k]
            h.update(f"{k}|{t.dtype}|{t.shape}|".encode())
            h.update(t.tobytes())
    return h.hexdigest()
