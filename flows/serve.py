"""Serve the `build-hierarcaps` deployments (and optionally start a local SQLite Prefect server).

    hierarcaps serve            # server on 127.0.0.1:4200 + deployment consumer
    prefect deployment run build-hierarcaps/tiny --param stages='["ingest"]'

Stopping: SIGTERM (`docker stop`, `systemctl stop`), SIGINT (Ctrl-C) and SIGHUP stop it with exit
code 0 within a few seconds, in this order:

1. the deployment runner, with Prefect's own `Runner.astop()`: a flow run in progress is cancelled
   (its flow-run process gets SIGTERM from the runner and the run ends Cancelled, "Runner is
   shutting down."), the poll loop ends, the deployments are paused;
   the flow-run process ends the stage process it started (pipeline.execute terminates an
   isolated stage when its run is interrupted, and a stage process dies with its parent);
2. anything this command started that is still there: SIGTERM, then SIGKILL after a grace period;
3. the Prefect server, if this command started it (SIGTERM: uvicorn's graceful shutdown).

What the run store holds (finished stages, finished units of a partial stage) stays; running the
deployment again with the same config resumes from there.

Why not `prefect.serve()`: in Prefect 3.7.7 `Runner.start()`, when it runs on the main thread,
installs `Runner.handle_sigterm`, which calls the async-dispatched `stop()` from inside the running
event loop, so it only creates the `astop()` coroutine ("coroutine 'Runner.astop' was never
awaited"), and then raises `SystemExit` inside whatever the loop is running: nothing is cancelled
in order, a run's processes are left behind; Ctrl-C ends in a `KeyboardInterrupt` traceback, and
the server (which got the same SIGINT) goes away while the runner still needs it. So here the
runner runs on its own thread (where Prefect installs no handler), the main thread owns the
signals and has the runner's loop await `runner.astop()`, and the server has its own process
group so it outlives the runner.

Budget: the runner gets RUNNER_STOP_BUDGET seconds (an in-flight run costs about 3 s of them:
Prefect's ProcessManager checks every 3 s whether the process it signalled is gone). If the API
went away first (systemd's default KillMode=control-group signals every process of the unit at
once), Prefect's client retries each call for half a minute; the runner is then cancelled when its
budget is spent and what it started is killed. For systemd, `KillMode=mixed` gives the orderly
shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

DEPLOYMENTS = {
    "tiny": {"preset": "tiny"},
    "small": {"preset": "small"},
    "paper": {"preset": "paper"},
}
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))
RUNNER_STOP_BUDGET = 6.0  # s for the runner to cancel runs, pause the deployments, close its clients
PROCESS_GRACE = 3.0  # s between SIGTERM and SIGKILL for a process of the tree
SERVER_GRACE = 10.0  # s between SIGTERM and SIGKILL for the Prefect server

log = logging.getLogger("hierarcaps.serve")


def wait_for_api(url: str, timeout: float = 120, stop: threading.Event | None = None,
                 server: subprocess.Popen | None = None) -> bool:
    """True once {url}/health answers; False if `stop` is set first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stop is not None and stop.is_set():
            return False
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {server.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Prefect API at {url} did not become healthy in {timeout}s")


def api_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def build_deployments() -> list:
    from flows.build import build_hierarcaps

    return [build_hierarcaps.to_deployment(name=n, parameters=p, description=f"preset {n}")
            for n, p in DEPLOYMENTS.items()]


class StopSignals:
    """Handlers for STOP_SIGNALS (main thread only): the first signal sets `event` and calls
    `on_stop`; a repeated one is only logged. `restore()` puts the previous handlers back."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: int | None = None
        self.at: float | None = None
        self.on_stop = None
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:
        if self.event.is_set():
            log.info("%s received again; already stopping", signal.Signals(signum).name)
            return
        self.received, self.at = signum, time.monotonic()
        self.event.set()
        if self.on_stop is not None:
            self.on_stop()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "stop"

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


class RunnerThread(threading.Thread):
    """A Prefect `Runner` serving `deployments` on its own thread and event loop, until
    `request_stop()`; then `Runner.astop()` within RUNNER_STOP_BUDGET seconds."""

    def __init__(self, deployments: list) -> None:
        super().__init__(name="prefect-runner", daemon=True)
        from prefect.runner import Runner

        self.runner = Runner(pause_on_shutdown=True)
        for d in deployments:  # registers them with the API
            self.runner.add_deployment(d)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._loop_ready = threading.Event()
        self._stop_requested: asyncio.Event | None = None  # (Thread has a `_stop` of its own)

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # the main thread reports it
            self.error = e
        finally:
            self._loop_ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._loop_ready.set()
        start = asyncio.create_task(self.runner.start())
        stop = asyncio.create_task(self._stop_requested.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        if start.done():  # the runner ended by itself: an error, reported by run()
            stop.cancel()
            return start.result()
        deadline = self.loop.time() + RUNNER_STOP_BUDGET
        try:
            if self.runner.started:
                # Prefect's shutdown: cancel in-flight runs and end the poll loop; start() then
                # leaves the runner's context (pauses the deployments, closes the clients)
                await asyncio.wait_for(self.runner.astop(), deadline - self.loop.time())
                await asyncio.wait_for(asyncio.shield(start), max(deadline - self.loop.time(), 0.1))
        except asyncio.TimeoutError:
            log.warning("the deployment runner did not stop within %.0fs (is the API gone?); cancelling it",
                        RUNNER_STOP_BUDGET)
        except Exception:
            log.exception("stopping the deployment runner failed; cancelling it")
        # asyncio cancels once, and the runner's exit awaits further API calls: cancel until it ends
        for _ in range(20):
            if start.done():
                break
            start.cancel()
            await asyncio.wait({start}, timeout=0.1)
        if start.done() and not start.cancelled() and start.exception() is not None:
            log.warning("the deployment runner ended with %r", start.exception())

    def request_stop(self) -> None:
        """From any thread: stop the runner (as soon as its loop runs)."""
        self._loop_ready.wait()
        if self.loop is not None and self._stop_requested is not None:
            try:
                self.loop.call_soon_threadsafe(self._stop_requested.set)
            except RuntimeError:  # its loop is closed: it has ended already
                pass


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(exclude: set[int]) -> list:
    """This process's descendants, without the subtrees of the children in `exclude`."""
    import psutil  # a dependency of accelerate and peft

    out = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return out
    for c in children:
        if c.pid in exclude:
            continue
        out.append(c)
        try:
            out.extend(c.children(recursive=True))
        except psutil.Error:
            pass
    return out


def _terminate(procs: list, grace: float = PROCESS_GRACE) -> None:
    """SIGTERM, up to `grace` seconds to exit (an unreaped zombie counts as gone), then SIGKILL."""
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace
    while (alive := [p for p in procs if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in alive:
        try:
            log.warning("killing pid %d (%s): still running %.0fs after SIGTERM", p.pid, p.name(), grace)
            p.kill()
        except psutil.Error:
            pass


def _flush_prefect_clients() -> None:
    """Send the logs and events this process still queues for the API while the server is up
    (otherwise Prefect sends them at exit, to a stopped server: "Error logging to API")."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=2)
        EventsWorker.drain_all(timeout=2)
    except Exception:  # best effort: never keeps the server from stopping
        log.debug("flushing Prefect logs/events failed", exc_info=True)


def serve_deployments(stop: StopSignals | None = None, exclude_pids: set[int] = frozenset()) -> None:
    """Serve the deployments until a stop signal; then stop the runner and every process it
    started (the descendants of this process outside `exclude_pids`' subtrees)."""
    if stop is None:
        stop = StopSignals()
        try:
            return serve_deployments(stop, exclude_pids)
        finally:
            stop.restore()
    if stop.event.is_set():
        return
    deps = build_deployments()
    if stop.event.is_set():
        return
    worker = RunnerThread(deps)
    stop.on_stop = worker.request_stop
    worker.start()
    if stop.event.is_set():  # a signal before on_stop was set
        worker.request_stop()
    print("Serving " + ", ".join(d.full_name for d in deps)
          + f"; start a run with: prefect deployment run {deps[0].full_name}", flush=True)
    while worker.is_alive() and not stop.event.wait(0.5):
        pass
    if not stop.event.is_set():  # the runner ended by itself
        if worker.error is not None:
            raise worker.error
        return
    print(f"{stop.name} received: stopping the deployment runner...", flush=True)
    started = _descendants(exclude_pids)  # flow-run processes and their stage processes, now
    worker.join(max(stop.at + RUNNER_STOP_BUDGET + 2.5 - time.monotonic(), 0.1))
    if worker.is_alive():
        log.warning("the deployment runner thread did not end; abandoning it")
    left = [p for p in started if _alive(p)]
    left += [p for p in _descendants(exclude_pids) if p not in left and p not in started]
    if left:
        _terminate(left)


def _stop_server(server: subprocess.Popen, url: str) -> None:
    if server.poll() is not None:
        return
    if api_healthy(url):
        _flush_prefect_clients()
    server.terminate()  # uvicorn: graceful shutdown
    try:
        server.wait(timeout=SERVER_GRACE)
    except subprocess.TimeoutExpired:
        log.warning("Prefect server (pid %d) still running %.0fs after SIGTERM; killing it", server.pid, SERVER_GRACE)
        server.kill()
        server.wait()


def serve(port: int = 4200, start_server: bool = True) -> int:
    """Serve until SIGTERM/SIGINT/SIGHUP. Returns 0 after such a stop: a requested stop is a clean
    end for a service (systemd counts exit 0 as success, 143 only with SuccessExitStatus=143;
    as PID 1 in a container a SIGTERM with no handler would be ignored, not fatal)."""
    url = f"http://127.0.0.1:{port}/api"
    server = None
    stop = StopSignals()
    try:
        if start_server:
            env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            # its own session, so its own process group: Ctrl-C (SIGINT to the terminal's
            # foreground group) reaches this process only, which stops the server after the runner
            server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                       "--port", str(port)], env=env, start_new_session=True)
            os.environ["PREFECT_API_URL"] = url
            print(f"Prefect server starting at {url} (pid {server.pid})", flush=True)
            if not wait_for_api(url, stop=stop.event, server=server):
                return 0
        serve_deployments(stop, exclude_pids={server.pid} if server else set())
    finally:
        if server:
            _stop_server(server, url)
        elif api_healthy(os.environ.get("PREFECT_API_URL", url)):
            _flush_prefect_clients()
        stop.restore()
    if stop.at is not None:
        print(f"stopped on {stop.name} in {time.monotonic() - stop.at:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(start_server=False))
