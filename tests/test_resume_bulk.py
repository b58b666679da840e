"""Kill bulk (a model stage in its own process) mid-run with SIGKILL; the rerun ends with the same
output as the uninterrupted run (the session's finished run)."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import copy_run

from _shared import REPO


@pytest.mark.slow
def test_sigkill_mid_bulk_resumes_to_same_output(finished_run, tmp_path):
    ref = finished_run["store"]
    # manifests say where each engine ran (the tiny preset pins the LLM and NLI model to the CPU)
    assert ref.stage("seed").manifest()["stats"]["engines"] == {
        "gen": {"class": "TransformersGenerator", "device": "cpu", "dtype": "float32"}}
    assert set(ref.stage("bulk").manifest()["stats"]["engines"]) == {"h", "scorer"}
    cfg, store = copy_run(finished_run, tmp_path / "art", "killed")
    for s in ("bulk", "negatives", "export"):
        store.stage(s).clear()
    cmd = [sys.executable, "-m", "flows.cli", "stage", "bulk", "--no-prefect", "--root", str(tmp_path / "art"),
           "--run", "killed"]
    sd = store.stage("bulk")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(getattr(store.working("bulk"), "data_files", list)()) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)          # the stage runs in a spawned child: kill the group
    proc.wait()
    n_units = ref.stage("bulk").manifest()["units"]
    assert 3 <= len(store.working("bulk").data_files()) < n_units and sd.manifest() is None
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    assert sd.read().equals(ref.stage("bulk").read())
    assert sd.read_rejects().equals(ref.stage("bulk").read_rejects())
    assert sd.manifest()["key"] == ref.stage("bulk").manifest()["key"]     # the output root is not in the key
