"""Where a stage's process comes from.

A spawned process imports torch and transformers afresh: about 7 s of a 2-core machine per model
stage, most of a tiny run's time. On Linux a stage process is instead forked from a forkserver
that imported them once (:mod:`pipeline.preload`): still a fresh, single-threaded process per
stage (its GPU memory goes when it ends; no CUDA is touched before the fork), without the imports.

``HIERARCAPS_STAGE_START=spawn`` (or a platform without forkserver) keeps the spawned process. A
parent whose environment changed since its forkserver started gets a spawned process too, since
some libraries read the environment when they are imported (``HF_HUB_OFFLINE``, thread counts).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

from .errors import UserError

METHODS = ("forkserver", "spawn")
_started_env: dict[str, str] | None = None       # the environment the forkserver was started with
_guard = threading.Lock()


def stage_context():
    """The multiprocessing context a stage process starts from."""
    global _started_env
    method = os.environ.get("HIERARCAPS_STAGE_START", "forkserver")
    if method not in METHODS:
        raise UserError(f"HIERARCAPS_STAGE_START={method!r}: use one of {', '.join(METHODS)}")
    if method == "spawn" or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    env = dict(os.environ)
    with _guard:
        if _started_env is None:
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["pipeline.preload"])
            _started_env = env
        elif _started_env != env:
            return mp.get_context("spawn")
    return mp.get_context("forkserver")
