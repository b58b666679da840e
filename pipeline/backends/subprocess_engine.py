"""An engine in its own spawned process: the model loads once in the child, requests go over a
pipe, and closing (or the child exiting) hands back all the memory the engine held."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

from .common import SubprocessError, engine_info
from .generation import BaseGenerator, GeneratorConfig, GenRequest, SamplingConfig, as_requests, engine_class


def _serve(conn, cfg_json: str, parent: int) -> None:  # pragma: no cover - runs in the child
    import traceback

    from ..locks import die_with_parent

    die_with_parent(parent)   # an engine outliving its stage would hold its memory for good
    try:
        cfg = GeneratorConfig.model_validate_json(cfg_json)
        gen = engine_class(cfg.engine)(cfg)
        conn.send(("ready", engine_info(gen)))
    except BaseException as e:  # noqa: BLE001
        conn.send(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "close":
                break
            _, reqs, samp = msg
            try:
                out = gen.generate([GenRequest.model_validate(r) for r in reqs], SamplingConfig.model_validate(samp))
                conn.send(("ok", out))
            except BaseException as e:  # noqa: BLE001
                conn.send(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        gen.close()
        conn.close()


class SubprocessGenerator(BaseGenerator):
    """Runs an engine in a spawned child process that lives until :meth:`close`.

    The model loads once in the child; each ``generate`` ships requests over a pipe. Closing (or
    the child exiting) releases all GPU memory the engine held, whatever the engine does.
    """

    def __init__(self, cfg: GeneratorConfig, timeout_s: float | None = None):
        super().__init__(cfg)
        self.engine = cfg.engine
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        cfg_json = cfg.model_copy(update={"subprocess": False}).model_dump_json()
        # not a daemon: vLLM starts engine processes of its own, and a daemon may not have children
        self._proc = ctx.Process(target=_serve, args=(child, cfg_json, os.getpid()), daemon=False)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self._timeout = timeout_s
        self.child_info: dict[str, str] = self._recv_expect("ready")  # engine_info() of the child's engine

    def _recv_expect(self, kind: str):
        if self._timeout is not None and not self._conn.poll(self._timeout):
            self.close()
            raise SubprocessError(f"{self.engine} generator subprocess timed out")
        try:
            status, payload = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            code = self._proc.exitcode
            self.close()
            raise SubprocessError(f"{self.engine} generator subprocess died (exit code {code})") from None
        if status == "err":
            if kind == "ready":
                self.close()
            raise SubprocessError(payload)
        return payload

    def generate(self, requests: list[GenRequest | dict], sampling: SamplingConfig) -> list[list[str]]:
        if self._proc is None:
            raise RuntimeError("generator is closed")
        reqs = [r.model_dump() for r in as_requests(requests)]
        samp = sampling.model_dump()
        with self._lock:
            self._conn.send(("gen", reqs, samp))
            return self._recv_expect("ok")

    def close(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None:
            return
        try:
            if proc.is_alive():
                self._conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        self._conn.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
