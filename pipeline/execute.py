"""Running one stage: the run lock, the cache decision, the work (here or in its own process) in
an attempt folder, the manifest with every unit's checksum, and the atomic switch to the result.

A rerun never destroys finished work: it works in its own attempt and the stage's finished
version changes only when the attempt has finished. Damage (a unit or file that no longer
matches its checksum) is found before a cache hit is trusted and before a downstream stage reads
an upstream; only the damaged units are recomputed.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing as mp
import os
import pickle
import platform
import time
import traceback
from pathlib import Path
from typing import Callable

from . import __version__
from .backends.common import engine_info
from .errors import UserError
from .hashing import digest
from .locks import InheritedLock, stage_process
from .schemas import SCHEMA_VERSION
from .stage import Stage, StageContext, StageError, stage_key
from .startup import start_stage_process
from .store import MANIFEST, PROGRESS, RunStore, StageDir, file_sum

log = logging.getLogger("hierarcaps")


def stage_status(stage: Stage, store: RunStore) -> dict:
    """done / stale / damaged / partial / missing, with counts; never raises on a broken folder."""
    sd = store.stage(stage.name)
    row = {"stage": stage.name, "status": "missing", "rows_in": None, "rows_out": None,
           "rows_rejected": None, "wall_s": None, "problem": None}
    try:
        m = sd.manifest()
        key = stage_key(stage, store)
        if m:
            problems = sd.verify()
            status = "damaged" if problems else "stale" if m.get("key") != key else "done"
            row.update(status=status, rows_in=m["rows_in"], rows_out=m["rows_out"], rows_rejected=m["rows_rejected"],
                       wall_s=m["wall_s"], problem="; ".join(problems[:3]) or None)
            return row
        units = store.attempt(stage.name, key).done_units()
        if units:
            row.update(status="partial", rows_in=sum(u.get("rows_in", 0) for u in units.values()),
                       rows_out=sum(u.get("rows_out", 0) for u in units.values()),
                       rows_rejected=sum(u.get("rows_rejected", 0) for u in units.values()))
    except Exception as e:  # status describes a run; it must not die on the run's damage
        row.update(status="unknown", problem=f"{type(e).__name__}: {e}")
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


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _execute(stage: Stage, ctx: StageContext) -> None:
    from .executors import runs_remote

    ctx.out.clean_orphans()
    try:
        if not runs_remote(ctx):   # on Ray each actor opens the engines; this process only commits
            stage.setup(ctx)
        try:
            if stage.engines:  # provenance: where each engine ran (device, dtype)
                ctx.stats["engines"] = {n: engine_info(e) for n in stage.engines
                                        if (e := getattr(stage, n, None)) is not None}
            stage.process(ctx)
        finally:
            stage.teardown(ctx)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        raise StageError(f"stage '{stage.name}': cannot write {e.filename or 'its output'}: {e.strerror}; "
                         "free some space and rerun (finished units are kept)") from None


def child_main(stage: Stage, root: str, run_id: str, out: str, force: bool, key: str, model_cache, executor,
               conn) -> None:
    """An isolated stage in its own process (started by :func:`pipeline.locks.stage_process`)."""
    try:
        ctx = StageContext(RunStore(root, run_id), stage, StageDir(Path(out)), force, key=key, model_cache=model_cache,
                           executor=executor)
        _execute(stage, ctx)
        conn.send(("ok", ctx.stats))
    except UserError as e:         # a StageError, an engine's ServerError: one line in the parent too
        conn.send(("error", str(e)))
    except BaseException as e:  # report, parent raises
        conn.send(("crash", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _execute_isolated(stage: Stage, ctx: StageContext, lock, poll: float = 1.0) -> None:
    parent, child = mp.Pipe(duplex=False)
    payload = pickle.dumps((stage, str(ctx.store.root), ctx.store.run_id, str(ctx.out.path), ctx.force, ctx.key,
                            ctx.model_cache, ctx.executor))
    proc = start_stage_process(stage_process, (os.getpid(), InheritedLock(lock), dict(os.environ), payload, child))
    child.close()
    last = None
    result = None
    try:
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
    except BaseException:          # interrupted (Ctrl-C, a cancelled flow run): the stage ends with us
        proc.terminate()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
        raise
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


def _prepare(attempt: StageDir, key: str, name: str) -> None:
    """Resume only what is sound: units of another configuration or damaged units are dropped."""
    attempt.clean_orphans()
    units = attempt.done_units()
    foreign = [i for i, u in units.items() if u.get("key") != key]
    damaged = {i: p for i, u in units.items() if i not in foreign and (p := attempt.unit_problems(i, u))}
    if foreign:
        log.warning("%s: %d unit(s) of another configuration in %s are dropped; those are recomputed",
                    name, len(foreign), attempt.path)
    for i, problems in damaged.items():
        log.warning("%s: unit %d is damaged (%s); recomputing it", name, i, problems[0])
    for i in [*foreign, *damaged]:
        attempt.drop_unit(i)
    kept = len(units) - len(foreign) - len(damaged)
    if kept:
        log.info("%s: resuming from %d finished units", name, kept)
    attempt.invalidate()


def _files(sd: StageDir) -> dict[str, list]:
    """Every file a stage wrote besides its units (models, CSVs, cards), with size and checksum."""
    skip = {MANIFEST, PROGRESS}
    out = {}
    for p in sorted(sd.path.rglob("*")):
        rel = p.relative_to(sd.path)
        if p.is_file() and rel.name not in skip and not rel.name.startswith(".") and not (
                rel.parts[0] == "rejects" or (len(rel.parts) == 1 and rel.name.startswith("part-"))):
            out[str(rel)] = file_sum(p)
    return out


def run_stage(stage: Stage, store: RunStore, force: bool = False, on_progress: Callable | None = None,
              isolate: bool | None = None, model_cache: Path | None = None, executor=None) -> dict:
    """Run one stage unless its finished version matches the stage key and is intact. Returns the manifest."""
    with store.lock(f"stage {stage.name}") as lock:
        key = stage_key(stage, store)
        published = store.stage(stage.name)
        m = published.manifest()
        if m and m.get("key") == key and not force:
            problems = published.verify()
            if not problems:
                log.info("%s: cache hit (key %s)", stage.name, key)
                return {**m, "cache_hit": True}
            log.warning("%s: the finished output is damaged (%s); recomputing what is damaged",
                        stage.name, "; ".join(problems[:3]))
        stage.preflight()
        for up in stage.upstream_names(store):
            if store.stage(up).manifest() is None:
                raise StageError(f"stage '{stage.name}' needs '{up}', which has not finished in run "
                                 f"'{store.run_id}'; run '{up}' first")
            if problems := store.stage(up).verify():
                raise StageError(f"stage '{stage.name}' needs '{up}', which is damaged ({'; '.join(problems[:2])}); "
                                 f"rerun '{up}' first")
        attempt = store.attempt(stage.name, key, fresh=force)
        _prepare(attempt, key, stage.name)
        ctx = StageContext(store, stage, attempt, force, on_progress, key=key, model_cache=model_cache,
                           executor=executor)
        t0 = time.time()
        if stage.isolated if isolate is None else isolate:
            _execute_isolated(stage, ctx, lock)
        else:
            _execute(stage, ctx)
        wall = time.time() - t0
        units = attempt.done_units()
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
            "unit_sums": {str(i): {k: u[k] for k in ("key", "rows_in", "rows_out", "rows_rejected", "data", "rejects")}
                          for i, u in sorted(units.items())},
            "files": _files(attempt),
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
        attempt.write_manifest(manifest)
        store.publish(stage.name, attempt)
        return {**manifest, "cache_hit": False}
