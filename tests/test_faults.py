"""Faults injected into stages of the session's finished run (bench/faults.py does ~40 of them):
after each, a plain rerun ends with exactly the rows of the uninterrupted run."""

from __future__ import annotations

import importlib.util
import random

import pytest

from _shared import REPO

spec = importlib.util.spec_from_file_location("faults", REPO / "bench" / "faults.py")
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)


@pytest.mark.slow
@pytest.mark.parametrize("stage,fault", [("ingest", "disk_full"), ("export", "disk_full"), ("ingest", "concurrent"),
                                         ("export", "damage"), ("negatives", "kill_parent"), ("bulk", "term_parent")])
def test_fault_then_rerun_gives_the_uninterrupted_rows(finished_run, tmp_path, stage, fault):
    ref = finished_run["store"]
    root = tmp_path / "art"
    store = faults.prepare(ref, root, "f", stage, keep_stage=(fault == "damage"))
    wall = ref.stage(stage).manifest()["wall_s"] + 6.0
    what = faults.inject(fault, store, stage, root, random.Random(0), wall, limit=2048)
    if fault == "disk_full":
        assert what["injected"] and what["clean_error"], what      # one line, no traceback
    if fault == "concurrent":
        assert sorted(what["exits"]) in ([0, 0], [0, 2]) and what["refused"] == what["exits"].count(2), what
    if what.get("stray_processes") is not None:
        assert what["stray_processes"] == 0, what                  # the stage process died with its parent
    rerun = faults.run(faults.cli(root, "f", stage))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    equal, lost = faults.same_as(ref, store, stage)
    assert equal and lost == 0, (what, lost)
