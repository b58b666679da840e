"""export: final chains -> official HierarCaps CSVs, a Parquet dataset and a dataset card.

Reads the most downstream chain table of the run (negatives, else bulk, else ingest when the
input already was a HierarCaps file). Train rows need a full negative chain; the test split is
written twice: the curated format (``id,captions,image_url``, the curation hand-off) and, for
rows with negatives, the expanded test-pool format (``positive,negative,image_url``).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from .. import N_TIERS
from ..config import PipelineConfig
from ..io.writers import pair_rows, test_rows, write_csv
from ..report import write_dataset_card, write_quality_report
from ..schemas import CHAINS, REJECTS, conform
from ..stage import Stage, StageContext, StageError
from ..store import RunStore

SOURCES = ("negatives", "bulk", "ingest")


def _well_formed(tiers) -> bool:
    """4 non-empty tiers, none holding the separator (the CSV must split back into exactly 4)."""
    return bool(tiers) and len(tiers) == N_TIERS and all(t and "=>" not in t for t in tiers)


def full_negative(c: dict) -> bool:
    return _well_formed(c.get("negative"))


def to_chain_rows(table: pa.Table) -> tuple[list[dict], list[dict]]:
    """Rows with a well-formed positive chain; the rest (plain captions, broken tiers) become rejects."""
    keep, bad = [], []
    for r in table.to_pylist():
        if _well_formed(r.get("positive")):
            r.setdefault("chain_id", r.get("caption_id"))
            keep.append(r)
        else:
            why = "no 4-tier chain (caption only)" if not r.get("positive") else \
                "positive chain is not 4 non-empty tiers free of '=>'"
            bad.append(dict(stage="export", source="upstream", row=-1, key=r.get("chain_id") or r.get("caption_id"),
                            reason=why, raw=(r.get("text") or " => ".join(r.get("positive") or []))[:300]))
    return keep, bad


class Export(Stage):
    name = "export"
    version = "1"
    inputs = SOURCES
    config_sections = ("export",)
    description = "HierarCaps CSVs, Parquet, dataset card"

    def upstream_names(self, config: PipelineConfig, store: RunStore) -> tuple[str, ...]:
        for s in SOURCES:
            if store.stage(s).manifest() is not None:
                return (s,)
        return ()

    def process(self, ctx: StageContext) -> None:
        ups = self.upstream_names(ctx.config, ctx.store)
        if not ups:
            raise StageError("export: no finished chain table in this run (run ingest/bulk/negatives first)")
        cfg = ctx.config.export
        table = ctx.upstream(ups[0]).read()
        chains, rejects = to_chain_rows(table)
        train, test = [], []
        for c in chains:
            if c.get("split") in cfg.train_splits:
                if cfg.require_negatives_for_train and not full_negative(c):
                    why = c.get("neg_missing_reason") or "no negative chain"
                    rejects.append(dict(stage="export", source=ups[0], row=-1, key=c["chain_id"],
                                        reason=f"train item without 4 negatives: {why}", raw=" => ".join(c["positive"])))
                    continue
                train.append(c)
            elif c.get("split") in cfg.test_splits:
                test.append(c)
            else:
                rejects.append(dict(stage="export", source=ups[0], row=-1, key=c["chain_id"],
                                    reason=f"split '{c.get('split')}' is neither a train nor a test split",
                                    raw=" => ".join(c["positive"])))
        out = ctx.out.path
        files = {}
        if train:
            with_url = any(c.get("image_url") for c in train)
            files["train_csv"] = write_csv(out / f"{cfg.name}_train.csv", *pair_rows(train, with_url))
        if test:
            files["test_csv"] = write_csv(out / f"{cfg.name}_test.csv", *test_rows(test))
            pool = [c for c in test if full_negative(c)]
            if pool:
                files["test_pool_csv"] = write_csv(out / f"{cfg.name}_test_pool.csv", *pair_rows(pool, True))
        data = conform(train + test, CHAINS)
        ctx.commit(0, data, conform(rejects, REJECTS), rows_in=table.num_rows)
        pq.write_table(data, out / f"{cfg.name}.parquet", compression="zstd")
        ctx.stats.update(files=files, source=ups[0], train=len(train), test=len(test))
        write_dataset_card(ctx, train, test)
        write_quality_report(ctx, train + test)
        ctx.stats["report"] = str(out / "report.md")
