"""align: RE text-tower fine-tuning (or the cone / CLEAR GLASS objectives) on the run's chains.

Off by default. Reads this run's exported train chains (``align.chains: export``) or any HierarCaps
CSV / Parquet path. The captions and images of ``align.exclude_test_csv`` (by default the bench's
``bench.test_csv``) never enter training; ``align.n_val_images`` whole images are drawn as validation.
"""

from __future__ import annotations

from pathlib import Path

from ..config import AlignSection, ExportSection
from ..errors import UserError
from ..hashing import file_digest
from ..paths import resolve_path
from ..schemas import CHAINS
from ..stage import Stage, StageContext, StageError
from ..store import RunStore
from .common import model_key


def file_key(path) -> str:
    p = resolve_path(path)
    return file_digest(p) if p.is_file() else "missing"


class Align(Stage):
    name = "align"
    version = "2"
    inputs = ("export",)
    params = {"align": "align", "export": "export", "bench_test_csv": "bench.test_csv"}
    isolated = True
    align: AlignSection
    export: ExportSection
    bench_test_csv: Path | None

    def excluded_test_csv(self):
        """The test set kept out of training: align.exclude_test_csv, else (by default) bench.test_csv."""
        a = self.align
        if a.exclude_test_csv:
            return resolve_path(a.exclude_test_csv)
        if a.exclude_bench_test and self.bench_test_csv:
            return resolve_path(self.bench_test_csv)
        return None

    def upstream_names(self, store: RunStore) -> tuple[str, ...]:
        return ("export",) if self.align.chains == "export" else ()

    def key_material(self) -> dict:
        a = self.align
        files = {} if a.chains == "export" else {"chains_file": file_key(a.chains)}
        if (excluded := self.excluded_test_csv()) is not None:
            files["exclude_test_csv"] = file_key(excluded)
        return {**files, **model_key(encoder=a)}

    def process(self, ctx: StageContext) -> None:
        from ..align.config import AlignConfig
        from ..align.train import run_align

        cfg = self.align
        if cfg.chains == "export":
            path = ctx.upstream("export").path / f"{self.export.name}_train.csv"
            if not path.exists():
                raise StageError("align: this run exported no train CSV (no train chains with 4 negatives)")
        else:
            path = resolve_path(cfg.chains)
        acfg = AlignConfig.model_validate(cfg.model_dump(exclude={"chains", "exclude_bench_test"}))
        excluded = self.excluded_test_csv()
        acfg = acfg.model_copy(update={"exclude_test_csv": None if excluded is None else str(excluded)})
        try:
            metrics = run_align(acfg, path, ctx.out.path)   # saves ctx.out.path / "model"
        except UserError as e:        # a wrong encoder kind: one line, not a crash
            raise StageError(f"align: {e}") from e
        ctx.stats.update(metrics=metrics, chains=str(path), model_dir=str(ctx.out.path / "model"))
        ctx.commit(0, CHAINS.empty_table(), rows_in=metrics.get("split", {}).get("input", 0))
