"""The stage contract: declared inputs, a cache key, setup / process / teardown.

A stage is a small class: ``inputs`` names upstream stages, ``config_sections`` the parts of the
config it depends on, ``process`` does the work through a :class:`StageContext` that commits units
of output. ``isolated`` stages (model stages) run in a fresh spawned process so their GPU memory is
released when the stage ends. The runner (:func:`run_stage`) decides cache hits from the stage key.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import pyarrow as pa

from . import __version__
from .backends.common import engine_info
from .config import PipelineConfig
from .hashing import digest
from .schemas import SCHEMA_VERSION
from .store import RunStore, StageDir

log = logging.getLogger("hierarcaps")


class StageError(RuntimeError):
    """A stage failed with a message meant for the user (no traceback needed)."""


@dataclass
class StageContext:
    store: RunStore
    config: PipelineConfig
    stage: "Stage"
    force: bool = False
    on_progress: Callable[[int, int | None, str], None] | None = None
    stats: dict = field(default_factory=dict)     # extra numbers for the manifest
    key: str = ""
    _last_progress: float = 0.0

    @property
    def out(self) -> StageDir:
        return self.store.stage(self.stage.name)

    @property
    def seed(self) -> int:
        return self.config.run.seed

    def upstream(self, name: str) -> StageDir:
        sd = self.store.stage(name)
        if sd.manifest() is None:
            raise StageError(f"stage '{self.stage.name}' needs '{name}', which has not finished in run "
                             f"{self.store.run_id}; run it first")
        return sd

    def done_units(self) -> dict[int, dict]:
        return self.out.done_units()

    def commit(self, index: int, data: pa.Table, rejects: pa.Table | None = None,
               rows_in: int | None = None, **meta) -> None:
        """Commit a unit of work. rows_in defaults to out + rejected (a one-to-one stage)."""
        n_rej = 0 if rejects is None else rejects.num_rows
        meta.update(key=self.key, rows_out=data.num_rows, rows_rejected=n_rej,
                    rows_in=data.num_rows + n_rej if rows_in is None else rows_in)
        self.out.write_unit(index, data, rejects, meta)

    def progress(self, done: int, total: int | None = None, note: str = "", force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_progress < 1.0:
            return
        self._last_progress = now
        self.out.write_progress(done, total, note)
        if self.on_progress:
            self.on_progress(done, total, note)


class Stage:
    name: ClassVar[str]
    version: ClassVar[str] = "1"
    inputs: ClassVar[tuple[str, ...]] = ()
    config_sections: ClassVar[tuple[str, ...]] = ()
    isolated: ClassVar[bool] = False      # run in its own process (model stages)
    kind: ClassVar[str] = "data"          # data | model | train
    description: ClassVar[str] = ""
    engines: ClassVar[tuple[str, ...]] = ()   # attributes holding engines that setup opened

    def key_material(self, config: PipelineConfig) -> dict:
        """Extra inputs of the cache key: prompt file hashes, model ids and revisions, input files."""
        return {}

    def upstream_names(self, config: PipelineConfig, store: RunStore) -> tuple[str, ...]:
        """Upstream stages this run reads (a stage may choose among its declared inputs)."""
        return self.inputs

    def setup(self, ctx: StageContext) -> None:
        pass

    def process(self, ctx: StageContext) -> None:
        raise NotImplementedError

    def teardown(self, ctx: StageContext) -> None:
        """Close every engine named in `engines` that setup got to open (GPU memory, worker processes)."""
        for name in self.engines:
            engine = getattr(self, name, None)
            if engine is not None:
                engine.close()


def stage_key(stage: Stage, config: PipelineConfig, store: RunStore) -> str:
    upstream = {n: store.stage(n).manifest_hash() for n in stage.upstream_names(config, store)}
    material = {
        "stage": stage.name,
        "version": stage.version,
        "schema": SCHEMA_VERSION,
        "config": {s: config.section(s) for s in stage.config_sections},
        "extra": stage.key_material(config),
        "upstream": upstream,
    }
    return digest(material, 24)


def stage_status(stage: Stage, config: PipelineConfig, store: RunStore) -> dict:
    sd = store.stage(stage.name)
    m = sd.manifest()
    units = sd.done_units() if sd.path.exists() else {}
    row = {"stage": stage.name, "status": "missing", "rows_in": None, "rows_out": None,
           "rows_rejected": None, "wall_s": None}
    if m:
        stale = m.get("key") != stage_key(stage, config, store)
        row.update(status="stale" if stale else "done", rows_in=m["rows_in"], rows_out=m["rows_out"],
                   rows_rejected=m["rows_rejected"], wall_s=m["wall_s"])
    elif units:
        row.update(status="partial", rows_in=sum(u.get("rows_in", 0) for u in units.values()),
                   rows_out=sum(u.get("rows_out", 0) for u in units.values()),
                   rows_rejected=sum(u.get("rows_rejected", 0) for u in units.values()))
    return row


def _versions() -> dict:
    import importlib.metadata as md

    out = {"hierarcaps": __version__, "python": platform.python_version()}
    for pkg in ("pyarrow", "torch", "transformers", "prefect", "sentence-transformers", "peft", "vllm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _execute(stage: Stage, ctx: StageContext) -> None:
    ctx.out.clean_orphans()
    stage.setup(ctx)
    try:
        if stage.engines:  # provenance: where each engine ran (device, dtype)
            ctx.stats["engines"] = {n: engine_info(e) for n in stage.engines
                                    if (e := getattr(stage, n, None)) is not None}
        stage.process(ctx)
    finally:
        stage.teardown(ctx)


def _child(stage_name: str, root: str, run_id: str, config_json: str, force: bool, key: str, conn) -> None:
    from .registry import get_stage

    try:
        config = PipelineConfig.model_validate_json(config_json)
        stage = get_stage(stage_name)
        ctx = StageContext(RunStore(root, run_id), config, stage, force, key=key)
        _execute(stage, ctx)
        conn.send(("ok", ctx.stats))
    except StageError as e:
        conn.send(("error", str(e)))
    except BaseException as e:  # report, parent raises
        conn.send(("crash", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _execute_isolated(stage: Stage, ctx: StageContext, poll: float = 1.0) -> None:
    spawn = mp.get_context("spawn")
    parent, child = spawn.Pipe(duplex=False)
    proc = spawn.Process(target=_child, args=(stage.name, str(ctx.store.root), ctx.store.run_id,
                                              ctx.config.model_dump_json(), ctx.force, ctx.key, child))
    proc.start()
    child.close()
    last = None
    result = None
    while True:
        if parent.poll(poll):
            try:
                result = parent.recv()
            except EOFError:
                result = None
            break
        p = ctx.out.progress()
        if p and p != last and ctx.on_progress:
            ctx.on_progress(p["done"], p["total"], p.get("note", ""))
            last = p
        if not proc.is_alive():
            break
    proc.join()
    if result is None:
        raise StageError(f"stage '{stage.name}' process died (exit code {proc.exitcode}); "
                         "finished units are kept, rerun to resume")
    status, payload = result
    if status == "error":
        raise StageError(payload)
    if status == "crash":
        raise RuntimeError(f"stage '{stage.name}' crashed in its process:\n{payload}")
    ctx.stats.update(payload)


def run_stage(stage: Stage, config: PipelineConfig, store: RunStore, force: bool = False,
              on_progress: Callable | None = None, isolate: bool | None = None) -> dict:
    """Run one stage unless its manifest already matches the stage key. Returns the manifest."""
    key = stage_key(stage, config, store)
    sd = store.stage(stage.name)
    m = sd.manifest()
    if m and m.get("key") == key and not force:
        log.info("%s: cache hit (key %s)", stage.name, key)
        return {**m, "cache_hit": True}
    if force or (m and m.get("key") != key):
        sd.clear()  # recompute from scratch: config or upstream changed
    else:
        units = sd.done_units()
        foreign = [i for i, u in units.items() if u.get("key") != key]
        for i in foreign:  # units of an earlier, different configuration never mix in
            sd.unit_path(i).unlink(missing_ok=True)
        if len(units) > len(foreign):
            log.info("%s: resuming from %d finished units", stage.name, len(units) - len(foreign))
    sd.invalidate()
    store.save_config(config.model_dump(mode="json"))
    ctx = StageContext(store, config, stage, force, on_progress, key=key)
    t0 = time.time()
    if (stage.isolated if isolate is None else isolate):
        _execute_isolated(stage, ctx)
    else:
        _execute(stage, ctx)
    wall = time.time() - t0
    units = sd.done_units()
    manifest = {
        "stage": stage.name,
        "stage_version": stage.version,
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "config_hash": digest({s: config.section(s) for s in stage.config_sections}),
        "upstream": {n: store.stage(n).manifest_hash() for n in stage.upstream_names(config, store)},
        "units": len(units),
        "rows_in": sum(u.get("rows_in", 0) for u in units.values()),
        "rows_out": sum(u.get("rows_out", 0) for u in units.values()),
        "rows_rejected": sum(u.get("rows_rejected", 0) for u in units.values()),
        "wall_s": round(wall, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": config.run.seed,
        "models": stage.key_material(config).get("models", {}),
        "versions": _versions(),
        "stats": ctx.stats,
    }
    sd.write_manifest(manifest)
    return {**manifest, "cache_hit": False}

