"""Running one stage: the cache decision, the work (here or in its own process), the manifest."""

from __future__ import annotations

import logging
import multiprocessing as mp
import platform
import time
import traceback
from pathlib import Path
from typing import Callable

from . import __version__
from .backends.common import engine_info
from .hashing import digest
from .schemas import SCHEMA_VERSION
from .stage import Stage, StageContext, StageError, stage_key
from .store import RunStore

log = logging.getLogger("hierarcaps")


def stage_status(stage: Stage, store: RunStore) -> dict:
    sd = store.stage(stage.name)
    m = sd.manifest()
    units = sd.done_units() if sd.path.exists() else {}
    row = {"stage": stage.name, "status": "missing", "rows_in": None, "rows_out": None,
           "rows_rejected": None, "wall_s": None}
    if m:
        stale = m.get("key") != stage_key(stage, store)
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


def _child(stage: Stage, root: str, run_id: str, force: bool, key: str, model_cache, conn) -> None:
    try:
        ctx = StageContext(RunStore(root, run_id), stage, force, key=key, model_cache=model_cache)
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
    proc = spawn.Process(target=_child, args=(stage, str(ctx.store.root), ctx.store.run_id, ctx.force, ctx.key,
                                              ctx.model_cache, child))
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


def run_stage(stage: Stage, store: RunStore, force: bool = False, on_progress: Callable | None = None,
              isolate: bool | None = None, model_cache: Path | None = None) -> dict:
    """Run one stage unless its manifest already matches the stage key. Returns the manifest."""
    key = stage_key(stage, store)
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
    ctx = StageContext(store, stage, force, on_progress, key=key, model_cache=model_cache)
    t0 = time.time()
    if stage.isolated if isolate is None else isolate:
        _execute_isolated(stage, ctx)
    else:
        _execute(stage, ctx)
    wall = time.time() - t0
    units = sd.done_units()
    params = stage.param_values()
    manifest = {
        "stage": stage.name,
        "stage_version": stage.version,
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "params": params,
        "config_hash": digest(params),
        "upstream": {n: store.stage(n).manifest_hash() for n in stage.upstream_names(store)},
        "units": len(units),
        "rows_in": sum(u.get("rows_in", 0) for u in units.values()),
        "rows_out": sum(u.get("rows_out", 0) for u in units.values()),
        "rows_rejected": sum(u.get("rows_rejected", 0) for u in units.values()),
        "wall_s": round(wall, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "random_seed": getattr(stage, "random_seed", None),   # stages that declare run.random_seed
        "models": stage.key_material().get("models", {}),
        "versions": _versions(),
        "stats": ctx.stats,
    }
    sd.write_manifest(manifest)
    return {**manifest, "cache_hit": False}
