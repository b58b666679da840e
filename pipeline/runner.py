"""Plain (Prefect-free) orchestration: resolve a run, run stages in order, report status."""

from __future__ import annotations

import logging
from typing import Callable

from .config import PipelineConfig, load_config
from .execute import run_stage, stage_status
from .executors import ExecutorSettings
from .hashing import digest
from .registry import default_stages, get_stage, stage_names
from .stage import StageError
from .store import RunStore

log = logging.getLogger("hierarcaps")


def default_run_id(config: PipelineConfig) -> str:
    """Deterministic: the same config gives the same run, so a repeated command is a cache hit.
    Where units run (``run.executor``, ``run.ray``) does not change the rows, so not the run."""
    return f"{config.preset or 'custom'}-{digest(config.model_dump(mode='json', exclude={'run': {'executor', 'ray'}}), 8)}"


def resolve(preset: str | None = None, config_path: str | None = None, overrides: list[str] | None = None,
            run_id: str | None = None, limit: int | None = None, root: str | None = None) -> tuple[PipelineConfig, RunStore]:
    """Config and store for a run. An existing run without preset/config reuses its saved config."""
    extra = list(overrides or [])
    if limit:
        extra.append(f"ingest.limit={limit}")
    if root:
        extra.append(f"run.root={root}")
    if run_id and not preset and not config_path:
        saved = RunStore(root or "artifacts", run_id).load_config_dict()
        if saved is not None:
            config = load_config(base=saved, overrides=extra)
            return config, RunStore(config.run.root, run_id)
    config = load_config(preset or ("tiny" if not config_path else None), config_path, extra)
    return config, RunStore(config.run.root, run_id or default_run_id(config))


def check_stages(stages: list[str] | None) -> list[str]:
    stages = list(stages) if stages else default_stages()
    unknown = [s for s in stages if s not in stage_names()]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; stages are {stage_names()}")
    order = stage_names()
    return sorted(stages, key=order.index)


def run_one(name: str, config: PipelineConfig, store: RunStore, force: bool = False,
            on_progress: Callable | None = None) -> dict:
    """One stage of a run, built from the config; the run's saved config is updated once it succeeds."""
    with store.lock(f"stage {name}"):
        m = run_stage(get_stage(name, config), store, force=force, on_progress=on_progress,
                      model_cache=config.run.model_cache,
                      executor=ExecutorSettings(kind=config.run.executor, ray=config.run.ray))
        store.save_config(config.model_dump(mode="json"))
    log.info("%s: %s in=%s out=%s rejected=%s (%.1fs)", name, "cached" if m["cache_hit"] else "done",
             m["rows_in"], m["rows_out"], m["rows_rejected"], m["wall_s"])
    return m


def run_stages(config: PipelineConfig, store: RunStore, stages: list[str] | None = None, force: bool = False,
               on_progress: Callable | None = None) -> list[dict]:
    names = check_stages(stages)
    with store.lock(f"stages {','.join(names)}"):
        return [run_one(name, config, store, force, on_progress) for name in names]


def status_rows(config: PipelineConfig, store: RunStore) -> list[dict]:
    return [stage_status(get_stage(n, config), store) for n in stage_names()]


def format_status(rows: list[dict]) -> str:
    head = f"{'stage':<12} {'status':<8} {'in':>9} {'out':>9} {'rejected':>9} {'wall_s':>8}"
    lines = [head, "-" * len(head)]
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    for r in rows:
        lines.append(f"{r['stage']:<12} {r['status']:<8} {fmt(r['rows_in']):>9} {fmt(r['rows_out']):>9} "
                     f"{fmt(r['rows_rejected']):>9} {fmt(r['wall_s']):>8}")
    return "\n".join(lines)
