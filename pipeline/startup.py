"""Where a stage's process comes from.

A spawned process imports torch and transformers afresh: about 7 s of a 2-core machine per model
stage, most of a tiny run's time. On Linux a stage process is instead forked from a forkserver
that imported them once (:mod:`pipeline.preload`): still a fresh, single-threaded process per
stage (its GPU memory goes when it ends; no CUDA is touched before the fork), without the imports.

``HIERARCAPS_STAGE_START``: ``auto`` (the default) forks where no GPU device is present and
spawns where one is (a CUDA runtime touched before a fork breaks CUDA in the child, and there a
stage's hours dwarf its imports); ``forkserver`` or ``spawn`` chooses. Some libraries read the
environment when they are imported (``HF_HUB_OFFLINE``, thread counts), so a parent whose
environment changed since its forkserver started gets a new forkserver, or, while a stage forked
from the old one still runs, a spawned process. A platform without forkserver spawns.
"""

from __future__ import annotations

import glob
import multiprocessing as mp
import multiprocessing.forkserver
import os
import threading
import weakref

from .errors import UserError

METHODS = ("auto", "forkserver", "spawn")
# set by a test runner for each test and read by no library: no reason for a new forkserver
IGNORED_ENV = frozenset({"PYTEST_CURRENT_TEST"})
_started_env: dict[str, str] | None = None       # the environment the running forkserver started with
_forked: weakref.WeakSet = weakref.WeakSet()     # stage processes forked from it
_guard = threading.Lock()


def start_stage_process(target, args: tuple):
    """Start ``target(*args)`` in a stage process and return the started ``Process``."""
    with _guard:                    # no forkserver restart between choosing the context and the fork
        ctx = stage_context()
        proc = ctx.Process(target=target, args=args)
        proc.start()
        if ctx.get_start_method() == "forkserver":
            _forked.add(proc)
        return proc


def stage_context():
    """The multiprocessing context the next stage process starts from (call under ``_guard``)."""
    global _started_env
    method = os.environ.get("HIERARCAPS_STAGE_START", "auto")
    if method not in METHODS:
        raise UserError(f"HIERARCAPS_STAGE_START={method!r}: use one of {', '.join(METHODS)}")
    if method == "auto":
        method = "spawn" if gpu_present() else "forkserver"
    if method == "spawn" or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    env = environment()
    if _started_env is not None and _started_env != env:
        server = multiprocessing.forkserver._forkserver
        if any(p.is_alive() for p in list(_forked)) or not hasattr(server, "_stop"):
            return mp.get_context("spawn")
        server._stop()              # started again, with this environment, at the next fork
        _started_env = None
    if _started_env is None:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["pipeline.preload"])
        _started_env = env
    return mp.get_context("forkserver")


def environment() -> dict[str, str]:
    """The parent's environment as a forkserver's imports would see it (``IGNORED_ENV`` left out)."""
    return {k: v for k, v in os.environ.items() if k not in IGNORED_ENV}


def gpu_present() -> bool:
    """An NVIDIA or AMD GPU device node, looked up without touching a GPU runtime."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))
