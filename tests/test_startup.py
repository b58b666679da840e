"""Stage processes forked from the preloaded forkserver: the same rows as a spawned process, the
parent's environment, and a spawned process wherever the forkserver's imports could be stale."""

from __future__ import annotations

import os
import sys

import pytest

from conftest import copy_run
from pipeline import startup
from pipeline.errors import UserError
from pipeline.execute import run_stage
from pipeline.registry import get_stage

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver start is used on Linux")


@linux_only
def test_forkserver_unless_the_environment_changed_or_spawn_asked(monkeypatch):
    monkeypatch.setattr(startup, "_started_env", dict(os.environ))
    assert startup.stage_context().get_start_method() == "forkserver"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")           # read by huggingface_hub when it is imported
    assert startup.stage_context().get_start_method() == "spawn"
    monkeypatch.undo()
    monkeypatch.setattr(startup, "_started_env", dict(os.environ))
    monkeypatch.setenv("HIERARCAPS_STAGE_START", "spawn")
    # the variable itself is a change: spawn either way, and asked for here
    assert startup.stage_context().get_start_method() == "spawn"
    monkeypatch.setenv("HIERARCAPS_STAGE_START", "fork")
    with pytest.raises(UserError, match="HIERARCAPS_STAGE_START='fork': use one of forkserver, spawn"):
        startup.stage_context()


@pytest.mark.slow
def test_spawned_and_forked_stage_processes_write_the_same_rows(finished_run, tmp_path, monkeypatch):
    """bulk (H generating, the judge scoring) rerun in a spawned process: the forked run's rows."""
    cfg, store = copy_run(finished_run, tmp_path / "copy")
    monkeypatch.setenv("HIERARCAPS_STAGE_START", "spawn")
    run_stage(get_stage("bulk", cfg), store, force=True, model_cache=cfg.run.model_cache)
    assert store.stage("bulk").read().equals(finished_run["store"].stage("bulk").read())
