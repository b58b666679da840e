"""bench: the HierarCaps benchmark (d_corr; with images, hierarchical retrieval P / R), zero-shot vs
this run's fine-tuned encoder. Off by default; writes bench.json, bench.md and bench.png."""

from __future__ import annotations

from ..config import PipelineConfig
from ..paths import resolve_path
from ..schemas import CHAINS
from ..stage import Stage, StageContext, StageError
from ..store import RunStore


class Bench(Stage):
    name = "bench"
    version = "1"
    inputs = ("align",)
    config_sections = ("bench", "align")
    isolated = True
    kind = "model"
    description = "HierarCaps benchmark"

    def upstream_names(self, config: PipelineConfig, store: RunStore) -> tuple[str, ...]:
        auto = config.bench.finetuned == "auto" and store.stage("align").manifest() is not None
        return ("align",) if auto else ()

    def process(self, ctx: StageContext) -> None:
        from ..benchmark.evaluate import run_bench

        b, a = ctx.config.bench, ctx.config.align
        if b.test_csv is None:
            raise StageError("bench: set bench.test_csv to the HierarCaps test CSV (id,captions,image_url)")
        finetuned = None
        if b.finetuned == "auto":
            if self.upstream_names(ctx.config, ctx.store):
                finetuned = str(ctx.upstream("align").path / "model")
        elif b.finetuned != "none":
            finetuned = str(resolve_path(b.finetuned))
        results = run_bench(b.model or a.model, b.kind or a.encoder_kind, resolve_path(b.test_csv),
                            resolve_path(b.images_dir) if b.images_dir else None, ctx.out.path, finetuned, b.device)
        table = [{"model": k, **{m: v for m, v in r.items() if isinstance(v, (int, float))}} for k, r in results.items()]
        ctx.stats.update(results=results, tables={"results": table}, report=str(ctx.out.path / "bench.md"))
        ctx.commit(0, CHAINS.empty_table(), rows_in=0)
