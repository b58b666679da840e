"""Where a stage's units are processed: in its own process (``local``) or on a pool of Ray actors
(``ray``). Stage code does not know which: it hands :func:`pipeline.stages.common.run_units` a
unit function, and the driver commits every unit an executor hands back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Executor, Finished, process_unit
from .config import REMOTE_STAGES, ExecutorSettings, RayConfig, StageResources

if TYPE_CHECKING:
    from ..stage import StageContext

__all__ = ["Executor", "ExecutorSettings", "Finished", "RayConfig", "REMOTE_STAGES", "StageResources",
           "executor_for", "process_unit", "runs_remote"]


def runs_remote(ctx: StageContext) -> bool:
    """Whether this stage's units go to Ray: executor ``ray``, a stage whose units are independent,
    and engines that its setup opens (engines handed in already built stay in this process)."""
    spec = getattr(ctx, "executor", None)
    stage = ctx.stage
    return (spec is not None and spec.kind == "ray" and stage.name in REMOTE_STAGES
            and all(getattr(stage, e, None) is None for e in stage.engines))


def executor_for(ctx: StageContext) -> Executor:
    if runs_remote(ctx):
        from .ray_pool import RayExecutor

        return RayExecutor(ctx.executor.ray)
    from .local import LocalExecutor

    return LocalExecutor()
