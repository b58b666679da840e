"""Stage processes forked from the preloaded forkserver: the same rows as a spawned process, the
parent's environment, and a spawned process wherever the forkserver's imports could be stale."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import weakref

import pytest

from conftest import copy_run
from pipeline import startup
from pipeline.errors import UserError
from pipeline.execute import run_stage
from pipeline.registry import get_stage

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver start is used on Linux")


class _Running:
    def is_alive(self) -> bool:
        return True


@linux_only
def test_forkserver_unless_a_gpu_or_spawn_asked(monkeypatch):
    monkeypatch.setattr(startup, "_started_env", startup.environment())
    monkeypatch.setattr(startup, "gpu_present", lambda: False)
    assert startup.stage_context().get_start_method() == "forkserver"
    monkeypatch.setattr(startup, "gpu_present", lambda: True)      # auto spawns beside a GPU
    assert startup.stage_context().get_start_method() == "spawn"
    for asked, gpu in (("spawn", False), ("forkserver", True)):       # asked for, the variable decides
        monkeypatch.undo()
        monkeypatch.setenv("HIERARCAPS_STAGE_START", asked)
        monkeypatch.setattr(startup, "_started_env", startup.environment())
        monkeypatch.setattr(startup, "gpu_present", lambda: gpu)
        assert startup.stage_context().get_start_method() == asked
    monkeypatch.setenv("HIERARCAPS_STAGE_START", "fork")
    with pytest.raises(UserError, match="HIERARCAPS_STAGE_START='fork': use one of auto, forkserver, spawn"):
        startup.stage_context()


def _report_env(conn) -> None:
    conn.send((os.environ.get("HIERARCAPS_PROBE"), "torch" in sys.modules))
    conn.close()


@linux_only
def test_a_changed_environment_restarts_the_forkserver_or_spawns_while_a_forked_stage_runs(monkeypatch):
    """The forkserver's imports saw the environment it started with: after a change, the next stage
    process comes from a new forkserver (which sees the change), or is spawned while the old one's
    child still runs."""
    monkeypatch.setattr(startup, "gpu_present", lambda: False)
    monkeypatch.setattr(startup, "_forked", weakref.WeakSet())
    monkeypatch.setenv("HIERARCAPS_PROBE", "before")

    def probe():
        parent, child = mp.Pipe(duplex=False)
        proc = startup.start_stage_process(_report_env, (child,))
        child.close()
        seen = parent.recv()
        proc.join()
        return seen, startup._started_env.get("HIERARCAPS_PROBE")

    assert probe() == (("before", True), "before")      # forked: torch is already imported there
    monkeypatch.setenv("HIERARCAPS_PROBE", "after")
    assert probe() == (("after", True), "after")        # a new forkserver, with the new environment
    running = _Running()
    startup._forked.add(running)
    monkeypatch.setenv("HIERARCAPS_PROBE", "later")
    with startup._guard:
        assert startup.stage_context().get_start_method() == "spawn"
    assert startup._started_env["HIERARCAPS_PROBE"] == "after"


@pytest.mark.slow
def test_spawned_and_forked_stage_processes_write_the_same_rows(finished_run, tmp_path, monkeypatch):
    """bulk (H generating, the judge scoring) rerun in a spawned process: the forked run's rows."""
    cfg, store = copy_run(finished_run, tmp_path / "copy")
    monkeypatch.setenv("HIERARCAPS_STAGE_START", "spawn")
    run_stage(get_stage("bulk", cfg), store, force=True, model_cache=cfg.run.model_cache)
    assert store.stage("bulk").read().equals(finished_run["store"].stage("bulk").read())
