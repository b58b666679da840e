"""``run.executor`` / ``run.ray``: where a model stage's units run. Runtime settings: they are in
no stage key and not in the run id, since both executors give the same rows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# stages whose units are independent of each other (no state carried from one unit to the next),
# so they may be processed anywhere, in any order. augment de-duplicates against the chains of the
# units before it and nli_filter gathers per-link tables in its process: they stay local.
REMOTE_STAGES = ("seed", "bulk", "negatives")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StageResources(_Strict):
    """One stage's pool, where it differs from ``run.ray``'s defaults."""

    num_workers: int | None = Field(None, ge=1)
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)


class RayConfig(_Strict):
    # "" starts a Ray cluster in the stage's process (one machine); "auto" joins the cluster this
    # machine belongs to (`ray start` ran here); "host:port" its GCS; "ray://host:port" Ray Client
    address: str = ""
    num_workers: int = Field(2, ge=1)      # actors per stage, each with its own engines
    num_cpus: float = Field(1, ge=0)       # per actor (Ray sets OMP_NUM_THREADS from it)
    num_gpus: float = Field(0, ge=0)       # per actor; 1 puts each actor's engines on its own GPU
    max_unit_retries: int = Field(2, ge=0)  # a unit whose actor dies goes to another actor this often
    namespace: str = "hierarcaps"
    # a stage's own pool, one section per stage in REMOTE_STAGES (another name is refused as unknown)
    seed: StageResources = StageResources()
    bulk: StageResources = StageResources()
    negatives: StageResources = StageResources()

    def pool(self, stage: str) -> tuple[int, float, float]:
        """(workers, cpus, gpus) for a stage's actor pool."""
        s: StageResources = getattr(self, stage)
        pick = lambda own, default: default if own is None else own  # noqa: E731
        return pick(s.num_workers, self.num_workers), pick(s.num_cpus, self.num_cpus), pick(s.num_gpus, self.num_gpus)


class ExecutorSettings(_Strict):
    """What a stage's context carries: the executor and, for Ray, its settings."""

    kind: Literal["local", "ray"] = "local"
    ray: RayConfig = RayConfig()
