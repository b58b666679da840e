"""A real Prefect server on 127.0.0.1, the deployment served, run with `prefect deployment run`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url, path, body=None):
    req = urllib.request.Request(f"{url}{path}", data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_until(fn, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if fn():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.mark.slow
def test_deployment_run_through_real_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO"}
    work = tmp_path / "work"
    work.mkdir()
    procs = []
    logs = []

    def start(args, name):
        log = open(tmp_path / f"{name}.log", "w")
        logs.append((name, tmp_path / f"{name}.log"))
        p = subprocess.Popen(args, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], "server")
        wait_until(lambda: api(url, "/health") is True, 120, "server health")
        start([str(BIN / "hierarcaps"), "serve", "--no-server"], "serve")
        wait_until(lambda: any(d["name"] == "tiny" for d in api(url, "/deployments/filter", {})), 120,
                   "deployment registered")
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "build-hierarcaps/tiny",
                              "--param", 'stages=["ingest"]', "--watch", "--watch-timeout", "300"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=360)
        assert run.returncode == 0, run.stdout + run.stderr
        runs = api(url, "/flow_runs/filter", {})
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        # the run store: the served flow wrote under its working directory
        manifests = list(work.glob("artifacts/runs/*/ingest/manifest.json"))
        assert len(manifests) == 1
        m = json.loads(manifests[0].read_text())
        assert m["rows_out"] > 50 and m["rows_in"] == m["rows_out"] + m["rows_rejected"]
        assert not (manifests[0].parent.parent / "export").exists()
        arts = api(url, "/artifacts/filter", {})
        keys = {a["key"] for a in arts}
        assert {"progress-ingest", "stage-counts"} <= keys
        table = [a for a in arts if a["key"] == "stage-counts"][0]
        assert any(r["stage"] == "ingest" and r["status"] == "done" for r in json.loads(table["data"]))
    except Exception:
        for name, p in logs:
            print(f"--- {name} log ---\n{p.read_text()[-3000:]}")
        raise
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
