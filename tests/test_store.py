import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.registry import get_stage
from pipeline.runner import status_rows
from pipeline.execute import run_stage
from pipeline.store import RunStore

from _shared import REPO


def make_cfg(tmp_path, tsv, **ingest):
    return load_config("tiny", overrides={"run": {"root": str(tmp_path / "art")},
                                          "ingest": {"sources": [{"name": "cc", "path": str(tsv)}], **ingest}})


def write_tsv(path, n, dup_every=7):
    with open(path, "w") as f:
        for i in range(n):
            j = i - 3 if i % dup_every == 0 and i >= 3 else i      # some duplicates
            f.write(f"A photo of thing {j} on a table.\thttp://x/{i}.jpg\n")


def test_manifest_cache_hit_force_and_stale(tmp_path):
    tsv = tmp_path / "a.tsv"
    write_tsv(tsv, 100)
    cfg = make_cfg(tmp_path, tsv, unit_rows=30)
    store = RunStore(cfg.run.root, "r")
    m1 = run_stage(get_stage("ingest", cfg), store)
    assert not m1["cache_hit"] and m1["units"] == 4
    assert m1["rows_in"] == 100 == m1["rows_out"] + m1["rows_rejected"]
    for k in ("key", "config_hash", "upstream", "versions", "random_seed", "params", "wall_s", "schema_version", "stage_version"):
        assert k in m1
    assert run_stage(get_stage("ingest", cfg), store)["cache_hit"]
    m3 = run_stage(get_stage("ingest", cfg), store, force=True)
    assert not m3["cache_hit"] and m3["rows_out"] == m1["rows_out"]
    # a config change makes the stage stale, and export (downstream) stale after a rerun
    run_stage(get_stage("export", cfg), store)
    cfg2 = make_cfg(tmp_path, tsv, unit_rows=30, dedup="exact")
    st = {r["stage"]: r["status"] for r in status_rows(cfg2, store)}
    assert st["ingest"] == "stale"
    run_stage(get_stage("ingest", cfg2), store)
    st = {r["stage"]: r["status"] for r in status_rows(cfg2, store)}
    assert st == {**st, "ingest": "done", "export": "stale"}
    # an edited input file changes the key as well
    write_tsv(tsv, 101)
    assert {r["stage"]: r["status"] for r in status_rows(cfg2, store)}["ingest"] == "stale"


def test_partial_status_and_orphan_cleanup(tmp_path):
    tsv = tmp_path / "a.tsv"
    write_tsv(tsv, 50)
    cfg = make_cfg(tmp_path, tsv, unit_rows=10)
    store = RunStore(cfg.run.root, "r")
    run_stage(get_stage("ingest", cfg), store)
    sd = store.stage("ingest")
    sd.invalidate()                               # as if killed before the manifest
    sd.record_path(4).unlink()                    # ... and during the last unit, before its commit record
    (sd.path / ".part-00004.parquet.tmp-1").write_bytes(b"junk")
    row = {r["stage"]: r for r in status_rows(cfg, store)}["ingest"]
    assert row["status"] == "partial" and row["rows_in"] == 40
    m = run_stage(get_stage("ingest", cfg), store)
    assert m["rows_in"] == 50 and not list(sd.path.glob(".*tmp*"))


@pytest.mark.slow
def test_sigkill_mid_ingest_resumes_exactly(tmp_path):
    tsv = tmp_path / "big.tsv"
    write_tsv(tsv, 300_000)
    ref_cfg = make_cfg(tmp_path, tsv, unit_rows=20_000)
    ref = RunStore(ref_cfg.run.root, "ref")
    run_stage(get_stage("ingest", ref_cfg), ref)
    cmd = [sys.executable, "-m", "flows.cli", "stage", "ingest", "--preset", "tiny", "--no-prefect",
           "--root", str(tmp_path / "art"), "--run", "killed",
           "--set", f"ingest.sources=[{{name: cc, path: {tsv}}}]", "--set", "ingest.unit_rows=20000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(tmp_path / "art", "killed")
    deadline = time.time() + 120
    while time.time() < deadline and len((store.working("ingest") or store.stage("ingest")).data_files()) < 4:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(store.working("ingest").data_files())
    sd = store.stage("ingest")
    assert 4 <= n_before < 15 and sd.manifest() is None
    assert subprocess.run(cmd, cwd=REPO, capture_output=True).returncode == 0
    got, want = sd.read(), ref.stage("ingest").read()
    assert got.equals(want)
    assert sd.read_rejects().equals(ref.stage("ingest").read_rejects())
    m, mref = sd.manifest(), ref.stage("ingest").manifest()
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"]) == (mref["rows_in"], mref["rows_out"], mref["rows_rejected"])
    assert pq.read_metadata(sd.unit_path(0)).num_rows > 0
