"""Prefect flow `build-hierarcaps`: wires the registered stages; the work lives in pipeline/.

Each stage is a task with a progress artifact, and a table artifact of counts ends the run. The
run store is the cache (a stage whose finished output matches its key and is intact returns at
once), so Prefect persists no task results: a result file is Prefect's pickle, and nothing read
back from the output root may run code. The flow holds the run's lock while it runs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

from pipeline import runner
from pipeline.config import PipelineConfig
from pipeline.store import RunStore


@task(task_run_name="{name}", cache_policy=NO_CACHE, persist_result=False)
def stage_task(name: str, config: dict, run_id: str, force: bool = False) -> dict:
    logger = get_run_logger()
    cfg = PipelineConfig.model_validate(config)
    store = RunStore(cfg.run.root, run_id)
    art = create_progress_artifact(0.0, key=f"progress-{name.replace('_', '-')}", description=f"{name} progress")

    def on_progress(done: int, total: int | None, note: str) -> None:
        if total:
            update_progress_artifact(art, min(100.0, 100.0 * done / max(total, 1)), description=f"{name}: {note}")

    manifest = runner.run_one(name, cfg, store, force=force, on_progress=on_progress)
    update_progress_artifact(art, 100.0, description=f"{name}: done")
    for tkey, rows in (manifest.get("stats") or {}).get("tables", {}).items():
        create_table_artifact(key=f"{name}-{tkey}".replace("_", "-"), table=rows, description=f"{name}: {tkey}")
    report = (manifest.get("stats") or {}).get("report")
    if report and Path(report).exists():
        create_markdown_artifact(key=f"{name}-report".replace("_", "-"), markdown=Path(report).read_text(),
                                 description=f"{name} quality report")
    logger.info("%s %s: in=%s out=%s rejected=%s wall=%.1fs", name, "cache hit" if manifest["cache_hit"] else "done",
                manifest["rows_in"], manifest["rows_out"], manifest["rows_rejected"], manifest["wall_s"])
    return manifest


@flow(name="build-hierarcaps", log_prints=True, persist_result=False)
def build_hierarcaps(preset: str | None = "tiny", config: dict | None = None, config_path: str | None = None,
                     overrides: list[str] | None = None, run_id: str | None = None,
                     stages: list[str] | None = None, force: bool = False, limit: int | None = None,
                     executor: str | None = None) -> dict:
    """Build a HierarCaps-style dataset. `config` (a full resolved config) wins over preset/config_path;
    `executor` ("local" | "ray") sets run.executor (run.ray comes from the config)."""
    if config is not None:
        cfg = PipelineConfig.model_validate(config)
        store = RunStore(cfg.run.root, run_id or runner.default_run_id(cfg))
    else:
        cfg, store = runner.resolve(preset, config_path, overrides, run_id, limit)
    if executor is not None:   # not part of the run id: the same run, its units run elsewhere
        cfg = PipelineConfig.model_validate({**cfg.model_dump(mode="json"),
                                             "run": {**cfg.run.model_dump(mode="json"), "executor": executor}})
    names = runner.check_stages(stages)
    print(f"run {store.run_id}: stages {names} -> {store.path}")
    cfg_json = cfg.model_dump(mode="json")
    with store.lock("flow build-hierarcaps"):
        for name in names:
            stage_task(name, cfg_json, store.run_id, force)
    rows = runner.status_rows(cfg, store)
    create_table_artifact(key="stage-counts", table=rows, description=f"run {store.run_id}")
    return {"run_id": store.run_id, "path": str(store.path), "stages": rows}
