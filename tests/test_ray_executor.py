"""run.executor: ray on a real Ray cluster on this machine (2 CPUs, no dashboard): bulk and negatives
give exactly the rows of the local executor (the session's finished run), and a worker SIGKILLed
mid-unit costs a retry on another actor, not a row. The cluster is started here and stopped here."""

import os
import signal
import threading
import time

import pytest

from conftest import copy_run

from pipeline.runner import run_one

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'hierarcaps[ray]')")
psutil = pytest.importorskip("psutil")


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node with two worker CPUs, started by this process (ray.shutdown stops all of it)."""
    ray.init(num_cpus=2, include_dashboard=False, namespace="hierarcaps-tests", logging_level="WARNING",
             _node_ip_address="127.0.0.1")          # loopback only
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    try:
        yield {"address": ray.get_runtime_context().gcs_address, "raylet": raylet}
    finally:
        ray.shutdown()
    assert not psutil.pid_exists(raylet) or psutil.Process(raylet).status() == psutil.STATUS_ZOMBIE


def _on_ray(cfg, address: str, workers: int = 2):
    from pipeline.config import load_config

    return load_config(base=cfg.model_dump(mode="json"),
                       overrides={"run": {"executor": "ray", "ray": {"address": address, "num_workers": workers}}})


def _same_rows(store, ref, stage: str) -> None:
    got, want = store.stage(stage), ref.stage(stage)
    assert got.read().equals(want.read()), f"{stage}: rows differ from the local executor's"
    assert got.read_rejects().equals(want.read_rejects())
    m = got.manifest()
    assert m["key"] == want.manifest()["key"]        # the executor is in no key
    assert (m["rows_in"], m["rows_out"], m["rows_rejected"], m["units"]) == \
        tuple(want.manifest()[k] for k in ("rows_in", "rows_out", "rows_rejected", "units"))


def _kill_one_worker_mid_unit(raylet: int, killed: list, stop: threading.Event) -> None:
    """SIGKILL the first actor process seen working on a unit (Ray titles it ray::UnitWorker.process)."""
    while not stop.is_set():
        for p in psutil.Process(raylet).children(recursive=True):
            try:
                if p.cmdline()[:1] == ["ray::UnitWorker.process"]:
                    time.sleep(0.2)                       # well inside the unit
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                    return
            except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                continue
        time.sleep(0.02)


def _ray_copy(finished_run, ray_cluster, dest, stage: str):
    """A copy of the finished (local-executor) run without ``stage`` and what follows it, on Ray."""
    cfg, store = copy_run(finished_run, dest / "art", "on-ray")
    for s in ("bulk", "negatives", "export")[("bulk", "negatives").index(stage):]:
        store.stage(s).clear()
    return _on_ray(cfg, ray_cluster["address"]), store


@pytest.mark.slow
def test_bulk_on_ray_matches_local(finished_run, ray_cluster, tmp_path):
    ref = finished_run["store"]
    cfg, store = _ray_copy(finished_run, ray_cluster, tmp_path, "bulk")
    progress = []
    m = run_one("bulk", cfg, store, on_progress=lambda d, t, n: progress.append(d))
    assert not m["cache_hit"]
    ex = m["stats"]["executor"]
    assert {k: ex[k] for k in ("kind", "workers", "num_cpus", "num_gpus", "retried_units")} == \
        {"kind": "ray", "workers": 2, "num_cpus": 1, "num_gpus": 0, "retried_units": 0}
    assert set(m["stats"]["engines"]) == {"h", "scorer"}     # reported by a worker, where they ran
    _same_rows(store, ref, "bulk")
    # per-unit progress reached the caller (the Prefect artifact and the CLI hang off it), as the
    # parent of an isolated stage samples it (once a second): whole units done, rising
    size, rows_in = cfg.bulk.unit_rows, ref.stage("bulk").manifest()["rows_in"]
    assert progress and progress == sorted(progress) and all(d % size == 0 or d == rows_in for d in progress)


@pytest.mark.slow
def test_negatives_on_ray_with_a_worker_sigkilled_mid_unit(finished_run, ray_cluster, tmp_path):
    """negatives (over bulk's rows, as the local run has them) with one actor SIGKILLed while it
    holds a unit: the unit is retried on another actor and the stage ends with exactly the rows
    of the uninterrupted local run."""
    ref = finished_run["store"]
    cfg, store = _ray_copy(finished_run, ray_cluster, tmp_path, "negatives")
    killed, stop = [], threading.Event()
    killer = threading.Thread(target=_kill_one_worker_mid_unit, args=(ray_cluster["raylet"], killed, stop))
    killer.start()
    try:
        m = run_one("negatives", cfg, store)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was seen mid-unit"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert m["stats"]["executor"]["retried_units"] in (1, 2)     # the units it held (2 in flight) went elsewhere
    _same_rows(store, ref, "negatives")                          # nothing lost, nothing twice
    assert sorted(store.stage("negatives").done_units()) == sorted(ref.stage("negatives").done_units())


def test_unknown_ray_cluster_is_one_line_error(finished_run, tmp_path):
    """An address where no cluster listens: a StageError naming run.ray.address, no traceback."""
    from pipeline.stage import StageError

    cfg, store = copy_run(finished_run, tmp_path / "art", "nowhere")
    store.stage("negatives").clear()
    with pytest.raises(StageError, match=r"run\.ray\.address '127\.0\.0\.1:9'"):
        run_one("negatives", _on_ray(cfg, "127.0.0.1:9"), store)
