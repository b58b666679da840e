"""Kill bulk or negatives (model stages in their own process) mid-unit with SIGKILL; the rerun ends
with the same output as the uninterrupted run (the session's finished run). The killed run reads
its upstream 3 rows at a time, so the unit it dies in spans several record batches, and the rerun
reads 5 at a time: unit boundaries depend on the input only."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import copy_run

from _shared import REPO

DOWNSTREAM = {"bulk": ("bulk", "negatives", "export"), "negatives": ("negatives", "export")}


@pytest.mark.slow
@pytest.mark.parametrize("stage,kill_after", [("bulk", 3), ("negatives", 1)])
def test_sigkill_mid_unit_resumes_to_same_output(finished_run, tmp_path, stage, kill_after):
    ref = finished_run["store"]
    if stage == "bulk":  # manifests say where each engine ran (the tiny preset pins the LLM and NLI model to the CPU)
        assert ref.stage("seed").manifest()["stats"]["engines"] == {
            "gen": {"class": "TransformersGenerator", "device": "cpu", "dtype": "float32"}}
        assert set(ref.stage("bulk").manifest()["stats"]["engines"]) == {"h", "scorer"}
    cfg, store = copy_run(finished_run, tmp_path / "art", "killed")
    for s in DOWNSTREAM[stage]:
        store.stage(s).clear()
    cmd = [sys.executable, "-m", "flows.cli", "stage", stage, "--no-prefect", "--root", str(tmp_path / "art"),
           "--run", "killed"]
    sd = store.stage(stage)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "HIERARCAPS_SCAN_BATCH": "3"})
    deadline = time.time() + 300
    while time.time() < deadline and len(getattr(store.working(stage), "data_files", list)()) < kill_after:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)          # the stage runs in a spawned child: kill the group
    proc.wait()
    n_units = ref.stage(stage).manifest()["units"]
    assert kill_after <= len(store.working(stage).data_files()) < n_units and sd.manifest() is None
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HIERARCAPS_SCAN_BATCH": "5"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    assert sd.read().equals(ref.stage(stage).read())
    assert sd.read_rejects().equals(ref.stage(stage).read_rejects())
    assert sd.manifest()["key"] == ref.stage(stage).manifest()["key"]     # the output root is not in the key
