"""export: final chains -> official HierarCaps CSVs, a Parquet dataset and a dataset card.

Reads the most downstream chain table of the run (negatives, else bulk, else ingest when the
input already was a HierarCaps file). Train rows need a full negative chain. The test side is the
paper's: the chosen test images (``test.images``), their chains with negatives as the pool
(``positive,negative,image_url``, gzipped as released), and the set to curate, one chain per image
for ``test.curate`` images, ids 0..N-1 (``id,captions,image_url``, the curation hand-off;
pipeline/testset.py). The card (``report.write_dataset_card``) declares each CSV as a ``datasets``
config.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ..chain import chain_problem, has_full_negative, join_tiers
from ..config import ExportSection
from ..io.writers import pair_rows, test_rows, write_csv, write_csv_gz
from ..report import lineage, table_file, write_dataset_card, write_quality_report
from ..schemas import CHAINS, REJECTS, conform, reject
from ..stage import Stage, StageContext, StageError
from ..store import RunStore
from ..testset import TestSection, choose_images, image_of, sample_test_set

CHAIN_TABLES = ("negatives", "bulk", "ingest")   # where a run's chains may stand, most finished first


def chain_table(store: RunStore) -> str | None:
    """The most finished chain table of a run (what export and curation read)."""
    return next((s for s in CHAIN_TABLES if store.stage(s).manifest() is not None), None)


def to_chain_rows(table: pa.Table, origin: str) -> tuple[list[dict], list[dict]]:
    """Rows with a well-formed positive chain; the rest (plain captions, broken tiers) become rejects."""
    keep, bad = [], []
    for r in table.to_pylist():
        if (why := chain_problem(r.get("positive"))) is None:
            r.setdefault("chain_id", r.get("caption_id"))
            keep.append(r)
        else:
            reason = "no 4-tier chain (caption only)" if not r.get("positive") else f"positive chain: {why}"
            bad.append(reject("export", origin, r.get("chain_id") or r.get("caption_id"), reason,
                              (r.get("text") or join_tiers(r.get("positive") or []))[:300]))
    return keep, bad


class Export(Stage):
    name = "export"
    version = "2"   # 2: the test pool is <name>_test_expanded.csv.gz; one card config per CSV
    inputs = CHAIN_TABLES
    params = {"export": "export", "test": "test", "random_seed": "run.random_seed"}
    export: ExportSection
    test: TestSection
    random_seed: int

    def upstream_names(self, store: RunStore) -> tuple[str, ...]:
        table = chain_table(store)
        return (table,) if table else ()

    def process(self, ctx: StageContext) -> None:
        ups = self.upstream_names(ctx.store)
        if not ups:
            raise StageError(f"export: no finished chain table in this run (run one of {', '.join(CHAIN_TABLES)} first)")
        cfg, origin = self.export, ups[0]
        table = ctx.upstream(origin).read()
        chains, rejects = to_chain_rows(table, origin)
        chosen = choose_images((image_of(c) for c in chains if c.get("split") == self.test.split), self.test,
                               self.random_seed)
        train, test = [], []
        for c in chains:
            if c.get("split") in cfg.train_splits:
                if cfg.require_negatives_for_train and not has_full_negative(c):
                    why = c.get("neg_missing_reason") or "no negative chain"
                    rejects.append(reject("export", origin, c["chain_id"], f"train item without 4 negatives: {why}",
                                          join_tiers(c["positive"])))
                    continue
                train.append(c)
            elif c.get("split") in cfg.test_splits:
                if chosen is not None and c.get("split") == self.test.split and image_of(c) not in chosen:
                    rejects.append(reject("export", origin, c["chain_id"], "image is not among the test images",
                                          join_tiers(c["positive"])))
                    continue
                test.append(c)
            else:
                rejects.append(reject("export", origin, c["chain_id"],
                                      f"split '{c.get('split')}' is neither a train nor a test split",
                                      join_tiers(c["positive"])))
        out = ctx.out.path
        tables: dict[str, tuple[list[str], int]] = {}     # config -> (columns, rows), for the card

        def write(config: str, header_rows: tuple[list[str], list[list]], writer=write_csv) -> None:
            header, rows = header_rows
            tables[config] = (header, writer(out / table_file(cfg.name, config), header, rows))

        if train:
            write("train", pair_rows(train, any(c.get("image_url") for c in train)))
        if test:
            curate = sample_test_set(test, self.test, self.random_seed)   # one chain per image, ids 0..N-1
            write("test", test_rows(curate))
            ids = {c["chain_id"]: c.get("test_id") for c in curate}
            test = [{**c, "test_id": ids.get(c["chain_id"])} for c in test]
            pool = [c for c in test if has_full_negative(c)]
            if pool:
                write("test_pool", pair_rows(pool, True), write_csv_gz)
            ctx.stats.update(test_images=len({image_of(c) for c in test}), test_set=len(curate))
        data = conform(train + test, CHAINS)
        ctx.commit(0, data, conform(rejects, REJECTS), rows_in=table.num_rows)
        pq.write_table(data, out / table_file(cfg.name, "chains"), compression="zstd")
        tables["chains"] = (data.schema.names, data.num_rows)
        ctx.stats.update(files={table_file(cfg.name, c): n for c, (_, n) in tables.items()},
                         source=origin, train=len(train), test=len(test))
        stages = lineage(ctx.store, ups)
        write_dataset_card(out, cfg.name, stages, tables, train + test)
        write_quality_report(out, cfg.name, stages, train + test)
        ctx.stats["report"] = str(out / "report.md")
