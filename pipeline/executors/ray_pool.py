"""Units on a pool of Ray Core actors.

Each actor unpickles the driver's (stage, unit function) pair, so the function's ``self`` is the
actor's own copy of the stage, runs the stage's ``setup`` once (its engines, on the actor's CPUs
or GPU), then processes the units it is sent. The driver keeps two units queued on each actor (so
an actor never waits on a commit), commits every unit handed back, and, when an actor dies, sends
its units to another actor (a new one takes the dead one's place): a unit is committed only when
it comes back, so never twice.

Ray's ``ActorPool`` drops a dead actor but not the value it was working on (its error does not say
which unit), so the pool here is a few lines of ``ray.wait`` over our own in-flight map instead.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from ..stage import StageContext, StageError
from .base import Finished, UnitFn, process_unit
from .config import RayConfig

log = logging.getLogger("hierarcaps")

# units queued on an actor at once: the next one is there while the driver commits the last
IN_FLIGHT_PER_ACTOR = 2

# what an actor needs from the driver's environment on another machine's worker
FORWARD_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HIERARCAPS_CACHE",
               "HIERARCAPS_SCAN_BATCH", "TOKENIZERS_PARALLELISM")


class UnitWorker:
    """A Ray actor holding one stage with its engines open. A failed setup is kept and handed to
    the driver by ``info``, which raises it as the StageError it was (worded the same way)."""

    def __init__(self, payload: bytes, root: str, run_id: str, out: str, key: str, model_cache):
        from ray import cloudpickle

        from ..backends.common import engine_info
        from ..store import RunStore, StageDir

        self.error: tuple[str, str] | None = None
        self.engines: dict = {}
        try:
            self.stage, self.fn = cloudpickle.loads(payload)   # fn's self is self.stage: one pickle
            ctx = StageContext(RunStore(root, run_id), self.stage, StageDir(Path(out)), key=key,
                               model_cache=model_cache)
            self.stage.setup(ctx)
            self.engines = {n: engine_info(e) for n in self.stage.engines
                            if (e := getattr(self.stage, n, None)) is not None}
        except StageError as e:
            self.error = ("stage", str(e))
        except Exception as e:  # reported with its traceback by process()
            self.error = ("crash", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")

    def info(self) -> dict:
        return {"pid": os.getpid(), "engines": self.engines, "error": self.error}

    def process(self, index: int, table: pa.Table) -> Finished:
        return process_unit(self.fn, index, table)


def _raise_setup_error(error: tuple[str, str]) -> None:
    kind, msg = error
    raise StageError(msg) if kind == "stage" else RuntimeError(f"setup failed on a Ray worker: {msg}")


def _check_reachable(address: str) -> None:
    """A host:port (or ray://host:port) where nothing listens: ray.init would retry for minutes."""
    if address in ("", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise StageError(f"run.ray.address {address!r}: no Ray cluster answers there ({why}); start one with "
                         "`ray start --head` or set the address (auto, host:port, ray://host:port, or empty)") from None


def _connect(cfg: RayConfig) -> bool:
    """ray.init for this process; True when this call started it (and so shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    _check_reachable(cfg.address)
    try:
        ray.init(address=cfg.address or None, namespace=cfg.namespace, logging_level=logging.WARNING,
                 include_dashboard=False if not cfg.address else None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise StageError(f"run.ray.address {cfg.address!r}: cannot connect to the Ray cluster: {first}") from None
    return True


class RayExecutor:
    def __init__(self, cfg: RayConfig):
        self.cfg = cfg

    def map(self, ctx: StageContext, todo: Iterable[tuple[int, pa.Table]], fn: UnitFn) -> Iterator[Finished]:
        import ray

        started = _connect(self.cfg)
        actors: list = []
        try:
            yield from self._pool(ctx, todo, fn, actors)
        finally:
            for a in actors:
                ray.kill(a)
            if started:
                ray.shutdown()

    def _pool(self, ctx: StageContext, todo, fn: UnitFn, actors: list) -> Iterator[Finished]:
        import ray
        from ray import cloudpickle

        name = ctx.stage.name
        n, cpus, gpus = self.cfg.pool(name)
        env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        worker = ray.remote(UnitWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                                runtime_env={"env_vars": env} if env else None)
        payload = ray.put(cloudpickle.dumps((ctx.stage, fn)))
        args = (payload, str(ctx.store.root), ctx.store.run_id, str(ctx.out.path), ctx.key, ctx.model_cache)
        stats = ctx.stats.setdefault("executor", {"kind": "ray", "workers": n, "num_cpus": cpus, "num_gpus": gpus,
                                                  "retried_units": 0})
        log.info("%s: %d Ray workers (%s CPU, %s GPU each) on %s", name, n, cpus, gpus, self.cfg.address or "a local cluster")
        actors.extend(worker.remote(*args) for _ in range(n))
        t = time.perf_counter()
        try:   # every actor's setup, in parallel; the units start when all are ready
            infos = ray.get([a.info.remote() for a in actors])
        except ray.exceptions.RayActorError as e:
            raise StageError(f"stage '{name}': a Ray worker died while setting up its engines "
                             f"({type(e).__name__}); rerun to resume") from None
        stats["setup_s"] = round(time.perf_counter() - t, 3)
        if failed := next((i["error"] for i in infos if i["error"]), None):
            _raise_setup_error(failed)
        if not ctx.stats.get("engines"):   # provenance: where the engines ran (the first worker's)
            ctx.stats["engines"] = infos[0]["engines"]
        t = time.perf_counter()
        idle = [a for a in actors for _ in range(IN_FLIGHT_PER_ACTOR)]   # free slots
        dead: set = set()
        queue: deque[tuple[int, pa.Table]] = deque()
        in_flight: dict = {}
        tries: dict[int, int] = {}
        units = iter(todo)
        more = True
        while True:
            while idle and (queue or more):        # one unit per idle actor, read as they are needed
                if not queue:
                    nxt = next(units, None)
                    if nxt is None:
                        more = False
                        break
                    queue.append(nxt)
                index, table = queue.popleft()
                actor = idle.pop()
                in_flight[actor.process.remote(index, table)] = (index, table, actor)
            if not in_flight:
                stats["units_s"] = round(time.perf_counter() - t, 3)
                return
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            index, table, actor = in_flight.pop(ref)
            try:
                done = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
                tries[index] = tries.get(index, 0) + 1
                if tries[index] > self.cfg.max_unit_retries:
                    raise StageError(f"stage '{name}': unit {index} lost its Ray worker {tries[index]} times "
                                     f"({type(e).__name__}); finished units are kept, rerun to resume") from None
                log.warning("%s: the Ray worker on unit %d died (%s); the unit goes to another worker",
                            name, index, type(e).__name__)
                stats["retried_units"] += 1
                queue.appendleft((index, table))
                if actor not in dead:                    # its other unit in flight fails the same way
                    dead.add(actor)
                    actors.remove(actor)
                    idle[:] = [a for a in idle if a is not actor]
                    ray.kill(actor)
                    actors.append(worker.remote(*args))  # its setup runs before the units it is sent
                    idle.extend([actors[-1]] * IN_FLIGHT_PER_ACTOR)
                continue
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, StageError):
                    raise StageError(str(e.cause)) from None
                raise
            idle.append(actor)
            yield done
