"""Serve the `build-hierarcaps` deployments (and optionally start a local SQLite Prefect server).

    hierarcaps serve            # server on 127.0.0.1:4200 + deployment consumer
    prefect deployment run build-hierarcaps/tiny --param stages='["ingest"]'
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

DEPLOYMENTS = {
    "tiny": {"preset": "tiny"},
    "small": {"preset": "small"},
    "paper": {"preset": "paper"},
}


def wait_for_api(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Prefect API at {url} did not become healthy in {timeout}s")


def serve_deployments() -> None:
    from prefect import serve as prefect_serve

    from flows.build import build_hierarcaps

    deps = [build_hierarcaps.to_deployment(name=n, parameters=p, description=f"preset {n}")
            for n, p in DEPLOYMENTS.items()]
    prefect_serve(*deps)


def serve(port: int = 4200, start_server: bool = True) -> int:
    url = f"http://127.0.0.1:{port}/api"
    server = None
    if start_server:
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env)
        os.environ["PREFECT_API_URL"] = url
        print(f"Prefect server starting at {url} (pid {server.pid})", flush=True)
        wait_for_api(url)
    try:
        serve_deployments()
    finally:
        if server:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    serve_deployments()
