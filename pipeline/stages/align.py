"""align: RE text-tower fine-tuning (or the cone / CLEAR GLASS objectives) on the run's chains.

Off by default. Reads this run's exported train chains (``align.chains: export``) or any HierarCaps
CSV / Parquet path; test captions named by ``align.exclude_test_csv`` never enter training.
"""

from __future__ import annotations

from ..config import PipelineConfig
from ..paths import resolve_path
from ..schemas import CHAINS
from ..stage import Stage, StageContext, StageError
from ..store import RunStore


class Align(Stage):
    name = "align"
    version = "1"
    inputs = ("export",)
    config_sections = ("align",)
    isolated = True
    kind = "train"
    description = "RE alignment of a text encoder"

    def upstream_names(self, config: PipelineConfig, store: RunStore) -> tuple[str, ...]:
        return ("export",) if config.align.chains == "export" else ()

    def key_material(self, config: PipelineConfig) -> dict:
        from ..hashing import file_digest

        c = config.align.chains
        return {} if c == "export" else {"chains_file": file_digest(resolve_path(c))}

    def process(self, ctx: StageContext) -> None:
        from ..align.config import AlignConfig
        from ..align.train import run_align

        cfg = ctx.config.align
        if cfg.chains == "export":
            path = ctx.upstream("export").path / f"{ctx.config.export.name}_train.csv"
            if not path.exists():
                raise StageError("align: this run exported no train CSV (no train chains with 4 negatives)")
        else:
            path = resolve_path(cfg.chains)
        acfg = AlignConfig.model_validate(cfg.model_dump(exclude={"chains"}))
        if acfg.exclude_test_csv:
            acfg = acfg.model_copy(update={"exclude_test_csv": str(resolve_path(acfg.exclude_test_csv))})
        metrics = run_align(acfg, path, ctx.out.path)   # saves ctx.out.path / "model"
        ctx.stats.update(metrics=metrics, chains=str(path), model_dir=str(ctx.out.path / "model"))
        ctx.commit(0, CHAINS.empty_table(), rows_in=metrics.get("split", {}).get("input", 0))
