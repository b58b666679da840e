"""Kill bulk (a model stage in its own process) mid-run with SIGKILL; the rerun ends with the same output."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pipeline.config import load_config
from pipeline.runner import run_stages
from pipeline.store import RunStore

from _shared import REPO


@pytest.mark.slow
def test_sigkill_mid_bulk_resumes_to_same_output(tmp_path):
    over = ["seed.max_captions=8", "augment.max_captions=4", "bulk.unit_rows=8", "bulk.batch_size=8"]
    cfg = load_config("tiny", overrides=over + [f"run.root={tmp_path}"])
    ref = RunStore(cfg.run.root, "ref")
    run_stages(cfg, ref, ["ingest", "seed", "nli_filter", "augment", "distill"])
    shutil.copytree(ref.path, RunStore(cfg.run.root, "killed").path)
    run_stages(cfg, ref, ["bulk"])
    # manifests say where each engine ran (the tiny preset pins the LLM and NLI model to the CPU)
    assert ref.stage("seed").manifest()["stats"]["engines"] == {
        "gen": {"class": "TransformersGenerator", "device": "cpu", "dtype": "float32"}}
    assert set(ref.stage("bulk").manifest()["stats"]["engines"]) == {"h", "scorer"}
    cmd = [sys.executable, "-m", "pipeline.cli", "stage", "bulk", "--preset", "tiny", "--no-prefect",
           "--root", str(tmp_path), "--run", "killed"] + [a for o in over for a in ("--set", o)]
    sd = RunStore(cfg.run.root, "killed").stage("bulk")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(sd.data_files()) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)          # the stage runs in a spawned child: kill the group
    proc.wait()
    n_units = ref.stage("bulk").manifest()["units"]
    assert 3 <= len(sd.data_files()) < n_units and sd.manifest() is None
    assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
    assert sd.read().equals(ref.stage("bulk").read())
    assert sd.read_rejects().equals(ref.stage("bulk").read_rejects())
