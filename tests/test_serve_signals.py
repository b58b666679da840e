"""`hierarcaps serve` stops cleanly on SIGTERM (docker stop, systemctl stop) and on Ctrl-C: within
seconds, exit code 0, no traceback or "never awaited" warning in its output, no process of its tree
left behind; a flow run in progress is cancelled and the run store keeps its finished stages."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_deployment import api, free_port, wait_until

BIN = Path(sys.executable).parent
STOP_WITHIN = 10.0  # s the test allows (measured: ~1.5-3 s idle, ~5 s with a run in progress)


def _alive(p: psutil.Process) -> bool:
    # is_running() also compares the creation time: a reused pid is not a survivor
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_stage_process(p: psutil.Process) -> bool:
    """A spawned process, or a child of a forkserver (which shares the forkserver's command line)."""
    line = " ".join(p.cmdline())
    return "multiprocessing.spawn" in line or (
        "multiprocessing.forkserver" in line and "multiprocessing.forkserver" in " ".join(p.parent().cmdline()))


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _env(tmp_path, url):
    return {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO"}


def _start(args, tmp_path, env, name):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.out"
    with open(log, "w") as out:
        return subprocess.Popen(args, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True), log


def _served(url):
    # registered, and the runner polls it (the server marks a polled deployment READY)
    return any(d["name"] == "tiny" and d.get("status") == "READY" for d in api(url, "/deployments/filter", {}))


def _stop_and_check(proc, log, sig, to_group):
    """Send `sig` (to the process, or to its process group as a terminal's Ctrl-C does) and check
    the stop; returns the seconds it took."""
    tree = _tree(proc.pid)
    t0 = time.monotonic()
    (os.killpg if to_group else os.kill)(proc.pid, sig)
    try:
        rc = proc.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_WITHIN}s after {sig.name}\n{log.read_text()[-4000:]}")
    elapsed = time.monotonic() - t0
    deadline = time.monotonic() + 2  # children reaped just before the parent exited
    while any(_alive(p) for p in tree[1:]) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in tree[1:] if _alive(p)]
    text = log.read_text()
    print(f"{sig.name}: exit code {rc} after {elapsed:.2f}s; tree was {len(tree)} processes")
    assert rc == 0, text[-4000:]
    assert "Traceback" not in text, text[-6000:]
    assert "never awaited" not in text, text[-4000:]
    assert not survivors, survivors
    return elapsed


def _cleanup(procs, prefect_home):
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    for p in psutil.process_iter():  # a process of this test that left its group
        try:
            if p.environ().get("PREFECT_HOME") == prefect_home:
                p.kill()
        except (psutil.Error, OSError):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("sig, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["sigterm", "sigint-ctrl-c"])
def test_serve_with_own_server_stops_on_signal(tmp_path, sig, to_group):
    """SIGTERM to the main process only (what `docker stop` does); SIGINT to the process group
    (what Ctrl-C in a terminal does). The Prefect server subprocess must go too."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _env(tmp_path, url)
    proc, log = _start([str(BIN / "hierarcaps"), "serve", "--port", str(port)], tmp_path, env, "serve")
    try:
        wait_until(lambda: _served(url), 120, "deployment served")
        assert any("server" in p.cmdline() for p in _tree(proc.pid)[1:]), "no Prefect server subprocess"
        _stop_and_check(proc, log, sig, to_group)
    finally:
        _cleanup([proc], env["PREFECT_HOME"])


@pytest.mark.slow
def test_serve_no_server_sigterm_cancels_run_in_progress(tmp_path, tiny_models):
    """`serve --no-server` with a flow run in its stage process: SIGTERM cancels the run (Cancelled
    in the API), leaves no flow-run or stage process behind, keeps the finished stages, and leaves
    the external server running."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _env(tmp_path, url)
    server, server_log = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                tmp_path, env, "server")
    procs = [server]
    try:
        wait_until(lambda: api(url, "/health") is True, 120, "server health")
        proc, log = _start([str(BIN / "hierarcaps"), "serve", "--no-server"], tmp_path, env, "serve")
        procs.insert(0, proc)
        wait_until(lambda: _served(url), 120, "deployment served")
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "build-hierarcaps/tiny",
                              "--param", 'stages=["ingest", "seed"]'],
                             cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        # the seed stage runs in its own process under the flow-run process (forked from its forkserver)
        wait_until(lambda: any(_is_stage_process(p) for p in _tree(proc.pid)[1:]), 120, "stage process running")
        _stop_and_check(proc, log, signal.SIGTERM, to_group=False)
        runs = api(url, "/flow_runs/filter", {})
        assert [r["state_type"] for r in runs] == ["CANCELLED"], runs
        manifests = list((tmp_path / "work").glob("artifacts/runs/*/ingest/manifest.json"))
        assert len(manifests) == 1 and json.loads(manifests[0].read_text())["rows_out"] > 0
        assert server.poll() is None and api(url, "/health") is True
    except Exception:
        print(f"--- server log ---\n{server_log.read_text()[-2000:]}")
        raise
    finally:
        _cleanup(procs, env["PREFECT_HOME"])
