"""bench: the HierarCaps benchmark (d_corr; with images, hierarchical retrieval P / R), zero-shot vs
this run's fine-tuned encoder. Off by default; writes bench.json, bench.md and bench.png."""

from __future__ import annotations

from ..config import AlignSection, BenchSection, ModelRef
from ..errors import UserError
from ..hashing import digest
from ..paths import resolve_path
from ..schemas import CHAINS
from ..stage import Stage, StageContext, StageError
from ..store import RunStore
from .align import file_key
from .common import model_key


class Bench(Stage):
    name = "bench"
    version = "2"
    inputs = ("align",)
    params = {"bench": "bench", "align": "align"}
    isolated = True
    bench: BenchSection
    align: AlignSection

    def upstream_names(self, store: RunStore) -> tuple[str, ...]:
        auto = self.bench.finetuned == "auto" and store.stage("align").manifest() is not None
        return ("align",) if auto else ()

    def key_material(self) -> dict:
        b = self.bench
        out = model_key(encoder=ModelRef(model=b.model or self.align.model))
        if b.test_csv:
            out["test_csv"] = file_key(b.test_csv)
        if b.images_dir:
            d = resolve_path(b.images_dir)
            out["images"] = digest(sorted((p.name, p.stat().st_size) for p in d.iterdir())) if d.is_dir() else "missing"
        if b.finetuned not in ("auto", "none"):
            out["finetuned"] = model_key(finetuned=ModelRef(model=str(resolve_path(b.finetuned))))["models"]
        return out

    def process(self, ctx: StageContext) -> None:
        from ..benchmark.evaluate import run_bench

        b, a = self.bench, self.align
        if b.test_csv is None:
            raise StageError("bench: set bench.test_csv to the HierarCaps test CSV (id,captions,image_url)")
        finetuned = None
        if b.finetuned == "auto":
            if self.upstream_names(ctx.store):
                finetuned = str(ctx.upstream("align").path / "model")
        elif b.finetuned != "none":
            finetuned = str(resolve_path(b.finetuned))
        if b.threads:
            import torch

            torch.set_num_threads(b.threads)
        try:
            results = run_bench(b.model or a.model, b.kind or a.encoder_kind, resolve_path(b.test_csv),
                                resolve_path(b.images_dir) if b.images_dir else None, ctx.out.path, finetuned,
                                b.device, allow_test_overlap=b.allow_test_overlap)
        except UserError as e:        # a wrong encoder kind, a leak: one line, not a crash
            raise StageError(f"bench: {e}") from e
        table = [{"model": k, **{m: v for m, v in r.items() if isinstance(v, (int, float))}} for k, r in results.items()]
        ctx.stats.update(results=results, tables={"results": table}, report=str(ctx.out.path / "bench.md"))
        ctx.commit(0, CHAINS.empty_table(), rows_in=0)
