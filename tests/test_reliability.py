"""The run store under an unlucky or hostile user: one process per run, finished work kept through a
failed rerun, damage found and repaired, no code from data, no path outside the root, the same
config and seed giving the same bytes."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import copy_run
from pipeline.config import load_config
from pipeline.execute import run_stage, stage_status
from pipeline.locks import RunLocked
from pipeline.registry import get_stage
from pipeline.runner import run_stages, status_rows
from pipeline.stage import StageError
from pipeline.store import RunStore, StoreError

from _shared import REPO


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 600), **kw)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("hierarcaps: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def tsv_run(tmp_path, n=60, **ingest):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("".join(f"A photo of thing {i} on a table.\thttp://x/{i}.jpg\n" for i in range(n)))
    cfg = load_config("tiny", overrides={"run": {"root": str(tmp_path / "art")},
                                         "ingest": {"sources": [{"name": "c", "path": str(tsv)}], **ingest}})
    return cfg, RunStore(cfg.run.root, "r")


# --------------------------------------------------------------------------- one process per run


def test_second_process_on_a_run_is_refused(tmp_path):
    cfg, store = tsv_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from pipeline.store import RunStore\n"
        "with RunStore(%r, 'r').lock('holding for a test'):\n"
        "    print('locked', flush=True); time.sleep(60)\n") % (str(REPO), str(cfg.run.root))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"in use by pid {holder.pid} .*holding for a test"):
            run_stage(get_stage("ingest", cfg), store)
        done = cli("stage", "ingest", "--no-prefect", "--root", str(cfg.run.root), "--run", "r", "--preset", "tiny",
                   "--set", f"ingest.sources=[{{name: c, path: {tmp_path / 'c.tsv'}}}]")
        assert done.returncode == 2 and f"pid {holder.pid}" in one_error_line(done.stderr)
    finally:
        holder.kill()
        holder.wait()
    assert run_stage(get_stage("ingest", cfg), store)["rows_in"] == 60     # released when the holder died


@pytest.mark.slow
def test_killing_only_the_parent_stops_the_stage_and_a_rerun_does_not_mix(finished_run, tmp_path):
    cfg, store = copy_run(finished_run, tmp_path / "art", "parent")
    for s in ("negatives", "export"):
        store.stage(s).clear()
    cmd = ["stage", "negatives", "--no-prefect", "--root", str(tmp_path / "art"), "--run", "parent",
           "--set", "negatives.unit_rows=2"]
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *cmd], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(getattr(store.working("negatives"), "data_files", list)()) < 2:
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the stage runs in a process of its own"
    proc.send_signal(signal.SIGKILL)                       # the parent only, not its group
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.pid for p in alive]               # the stage process died with its parent
    attempt = store.working("negatives")
    units = set(attempt.done_units())
    time.sleep(2)
    assert set(attempt.done_units()) == units              # nothing committed after the parent was gone
    # a rerun with another unit layout starts clean and ends with exactly one row per bulk chain
    m = run_stages(load_config(base=cfg.model_dump(mode="json"), overrides=["negatives.unit_rows=3"]), store,
                   ["negatives"])[0]
    bulk = store.stage("bulk").read()
    got = store.stage("negatives").read()
    assert m["rows_in"] == m["rows_out"] == got.num_rows == bulk.num_rows
    assert sorted(got["chain_id"].to_pylist()) == sorted(bulk["chain_id"].to_pylist())
    assert not store.working("negatives") and len(store.attempts("negatives")) == 1   # the killed attempt is gone


# --------------------------------------------------------------------------- a failed rerun keeps finished work


def test_failed_rerun_keeps_the_finished_stage_and_config(tmp_path):
    cfg, store = tsv_run(tmp_path)
    run_stages(cfg, store, ["ingest"])
    sd = store.stage("ingest")
    before = (sd.manifest(), sd.read(), (store.path / "config.json").read_bytes())
    bad = load_config(base=cfg.model_dump(mode="json"), overrides={"ingest": {"sources": [
        {"name": "c", "path": str(tmp_path / "missing.tsv")}]}})
    with pytest.raises(StageError, match="missing.tsv"):
        run_stages(bad, store, ["ingest"])
    assert sd.manifest() == before[0] and sd.read().equals(before[1])
    assert (store.path / "config.json").read_bytes() == before[2]
    assert stage_status(get_stage("ingest", cfg), store)["status"] == "done"


def test_force_rerun_that_fails_keeps_the_finished_stage(tmp_path, monkeypatch):
    cfg, store = tsv_run(tmp_path)
    first = run_stage(get_stage("ingest", cfg), store)
    from pipeline.stages import ingest

    def boom(*a, **k):
        raise StageError("ingest: injected failure")

    monkeypatch.setattr(ingest.Ingest, "process", boom)
    with pytest.raises(StageError, match="injected"):
        run_stage(get_stage("ingest", cfg), store, force=True)
    assert store.stage("ingest").manifest() == {k: v for k, v in first.items() if k != "cache_hit"}
    assert not store.stage("ingest").verify()


# --------------------------------------------------------------------------- damage


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "rejects"])
def test_damage_is_reported_and_only_damaged_units_recomputed(tmp_path, damage):
    cfg, store = tsv_run(tmp_path, n=100, unit_rows=25)
    run_stages(cfg, store, ["ingest", "export"])
    sd = store.stage("ingest")
    want, want_rej = sd.read(), sd.read_rejects()
    target = sd.reject_path(2) if damage == "rejects" else sd.unit_path(2)
    mtimes = {i: sd.unit_path(i).stat().st_mtime_ns for i in (0, 1, 3)}
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-40])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    row = stage_status(get_stage("ingest", cfg), store)
    assert row["status"] == "damaged" and target.name in row["problem"], row
    status = cli("status", "r", "--root", str(cfg.run.root))
    assert status.returncode == 0 and "damaged" in status.stdout
    with pytest.raises(StageError, match="'ingest', which is damaged"):
        run_stage(get_stage("export", cfg), store, force=True)     # downstream refuses to read it
    m = run_stage(get_stage("ingest", cfg), store)
    assert not m["cache_hit"] and sd.read().equals(want) and sd.read_rejects().equals(want_rej)
    assert {i: sd.unit_path(i).stat().st_mtime_ns for i in (0, 1, 3)} == mtimes   # intact units kept
    assert not sd.verify() and stage_status(get_stage("ingest", cfg), store)["status"] == "done"


def test_damaged_export_file_is_found(finished_run, tmp_path):
    cfg, store = copy_run(finished_run, tmp_path)
    card = store.stage("export").path / "hierarcaps_train.csv"
    card.write_text(card.read_text() + "x => y => z => w,a => b => c => d\n")
    row = {r["stage"]: r for r in status_rows(cfg, store)}["export"]
    assert row["status"] == "damaged" and "hierarcaps_train.csv" in row["problem"]


def test_status_never_crashes_on_a_broken_run(tmp_path):
    cfg, store = tsv_run(tmp_path)
    run_stages(cfg, store, ["ingest"])
    store.stage("ingest").manifest_path.write_text("{not json")
    (store.stage("ingest").path / "part-00000.json").write_text("garbage")
    rows = status_rows(cfg, store)
    assert {r["stage"]: r["status"] for r in rows}["ingest"] in ("missing", "partial", "unknown")
    done = cli("status", "r", "--root", str(cfg.run.root))
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- no code from data, no escapes


@pytest.mark.parametrize("run_id", ["../../x", "..", ".hidden", "a/b", "", "x" * 200, "a\nb"])
def test_run_ids_are_plain_names(tmp_path, run_id):
    with pytest.raises(StoreError, match="run id"):
        RunStore(tmp_path, run_id)


def test_cli_and_flow_refuse_an_escaping_run_id(tmp_path):
    done = cli("stage", "ingest", "--no-prefect", "--preset", "tiny", "--root", str(tmp_path), "--run", "../../x")
    assert done.returncode == 2 and "run id" in one_error_line(done.stderr)
    assert not (tmp_path.parent / "x").exists() and not (tmp_path / "x").exists()


def test_export_name_cannot_leave_the_stage_folder():
    from pipeline.config import ConfigError

    for name in ("../x", "a/b", ""):
        with pytest.raises(ConfigError, match="export.name"):
            load_config("tiny", overrides={"export": {"name": name}})


def test_no_pickled_results_and_no_unsafe_torch_load(finished_run):
    import ast

    root = Path(finished_run["config"].run.root)
    assert not list(root.rglob("prefect-results")) and not list(root.rglob("*.pkl")), "results pickled under the root"
    for f in [*REPO.joinpath("pipeline").rglob("*.py"), *REPO.joinpath("flows").rglob("*.py"),
              *REPO.joinpath("bench").rglob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "load" and \
                    getattr(node.func.value, "id", "") == "torch":
                kw = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert kw.get("weights_only") is True, f"{f}:{node.lineno}: torch.load without weights_only=True"


# --------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_bytes(finished_run, tmp_path):
    """The tiny preset twice, into two run ids: equal tables, byte-identical CSVs, card and report."""
    cfg = finished_run["config"]
    first = finished_run["store"]
    second = RunStore(cfg.run.root, "again")
    run_stages(cfg, second)
    for name in ("ingest", "seed", "nli_filter", "augment", "distill", "bulk", "negatives", "export"):
        a, b = first.stage(name), second.stage(name)
        assert a.read().equals(b.read()), name
        assert a.read_rejects().equals(b.read_rejects()), name
        assert a.manifest_hash() == b.manifest_hash(), name
    ex_a, ex_b = first.stage("export").path, second.stage("export").path
    names = sorted(p.name for p in ex_a.iterdir() if p.is_file() and not p.name.startswith(("part-", "manifest", "_")))
    assert {"hierarcaps_train.csv", "hierarcaps_test.csv", "README.md", "report.md", "nli_scores.png"} <= set(names)
    match, mismatch, errors = filecmp.cmpfiles(ex_a, ex_b, names, shallow=False)
    assert not mismatch and not errors, mismatch
    h_a, h_b = first.stage("distill").path / "h" / "model", second.stage("distill").path / "h" / "model"
    assert filecmp.cmp(h_a / "model.safetensors", h_b / "model.safetensors", shallow=False)
    assert json.loads((h_a / "training_metrics.json").read_text()) == json.loads((h_b / "training_metrics.json").read_text())
    assert os.path.realpath(ex_a) != os.path.realpath(ex_b)
