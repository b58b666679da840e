"""export: final chains -> official HierarCaps CSVs, a Parquet dataset and a dataset card.

Reads the most downstream chain table of the run (negatives, else bulk, else ingest when the
input already was a HierarCaps file). Train rows need a full negative chain. The test side is the
paper's: the chosen test images (``test.images``), their chains with negatives as the pool
(``positive,negative,image_url``, gzipped as released), and the set to curate, one chain per image
for ``test.curate`` images, ids 0..N-1 (``id,captions,image_url``, the curation hand-off;
pipeline/testset.py). The card (``report.write_dataset_card``) declares each CSV as a ``datasets``
config.

It streams, so a 3M-chain export holds no more than a 10K one: only the test side (the COCO val
pool, tens of thousands of chains) is gathered, in a first pass over the test-split rows, to choose
the images and draw the set to curate. Then export unit i is upstream rows
``[i * export.unit_rows, (i + 1) * export.unit_rows)``, its train chains then its test chains,
committed like any stage's unit, so a killed export resumes from its finished units. The files
are written last from the committed units (each streamed into a temp file, renamed when whole),
and the card and report from accumulators (``chain_stats.ChainStats``).
"""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..chain import chain_problem, has_full_negative, join_tiers
from ..config import ExportSection
from ..io.atomic import atomic_file
from ..io.writers import PAIR_COLUMNS, csv_appender, pair_header, pair_rows, test_rows, write_csv, write_csv_gz
from ..chain_stats import ChainStats
from ..report import lineage, table_file, write_dataset_card, write_quality_report
from ..schemas import CHAINS, REJECTS, conform, reject
from ..stage import Stage, StageContext, StageError
from ..store import RunStore, StageDir
from ..testset import TestSection, choose_images, image_of, sample_test_set
from .units import BATCH, stream_units

CHAIN_TABLES = ("negatives", "bulk", "ingest")   # where a run's chains may stand, most finished first
# what the test pass and a unit's decisions read as Python values (the rest stays Arrow)
TEST_COLUMNS = ("chain_id", "caption_id", "split", "positive", "image_id", "image_url", "orig_id", "test_id")
DECIDE_COLUMNS = ("chain_id", "caption_id", "split", "positive", "negative", "image_id", "image_url",
                  "neg_missing_reason", "text")


def chain_table(store: RunStore) -> str | None:
    """The most finished chain table of a run (what export and curation read)."""
    return next((s for s in CHAIN_TABLES if store.stage(s).manifest() is not None), None)


def _present(sd: StageDir, columns) -> list[str]:
    names = set(pq.read_schema(sd.data_files()[0]).names) if sd.data_files() else set()
    return [c for c in columns if c in names]


def as_chains(table: pa.Table, test_ids: list) -> pa.Table:
    """``table`` in the CHAINS schema: absent columns null, ``chain_id`` the caption's id when the
    upstream has none (ingest), ``test_id`` as given."""
    cols = []
    for f in CHAINS:
        name = "caption_id" if f.name == "chain_id" and f.name not in table.column_names else f.name
        cols.append(pa.array(test_ids, f.type) if f.name == "test_id" else
                    table.column(name).cast(f.type) if name in table.column_names else pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=CHAINS)


class Export(Stage):
    name = "export"
    version = "3"   # 2: the test pool is <name>_test_expanded.csv.gz; one card config per CSV; 3: streamed units
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
        origin = ups[0]
        up = ctx.upstream(origin)
        chosen, curate, test_images = self.test_side(up)
        ids = {c["chain_id"]: c.get("test_id") for c in curate}
        units, done = stream_units(up, self.export.unit_rows), ctx.done_units()
        total, size = units.total, units.size
        for i, table in units:                            # upstream rows [i * size, (i + 1) * size)
            if i not in done:
                self.commit_unit(ctx, i, table, origin, chosen, ids)
            ctx.progress(min(total, (i + 1) * size), total, f"unit {i + 1} of {-(-total // size)}")
        if not total and 0 not in done:
            ctx.commit(0, CHAINS.empty_table(), None, rows_in=0)
        if curate:
            ctx.stats.update(test_images=test_images, test_set=len(curate))
        self.write_files(ctx, ups, curate)

    def test_side(self, up: StageDir) -> tuple[set[str] | None, list[dict], int]:
        """One pass over the test-split rows alone (bounded by construction): the test images, the
        set to curate (ids 0..N-1) and how many images the test chains show."""
        cfg, wanted = self.export, pa.array(sorted({*self.export.test_splits, self.test.split}), pa.string())
        images, test = set(), []
        for b in up.iter_batches(_present(up, TEST_COLUMNS), BATCH):
            for r in b.filter(pc.is_in(b.column("split"), value_set=wanted)).to_pylist():
                if chain_problem(r.get("positive")) is not None:
                    continue
                if r["split"] == self.test.split:
                    images.add(image_of(r))
                if r["split"] in cfg.test_splits and r["split"] not in cfg.train_splits:
                    r.setdefault("chain_id", r.get("caption_id"))
                    test.append(r)
        chosen = choose_images(images, self.test, self.random_seed)
        test = [c for c in test if chosen is None or c["split"] != self.test.split or image_of(c) in chosen]
        curate = sample_test_set(test, self.test, self.random_seed) if test else []
        return chosen, curate, len({image_of(c) for c in test})

    def commit_unit(self, ctx: StageContext, index: int, table: pa.Table, origin: str, chosen: set | None,
                    ids: dict) -> None:
        """One block: its train chains then its test chains, and its rejects (chains that are not
        4 tiers first, then the rest in order). Only the columns a decision needs become Python."""
        cfg = self.export
        rows = table.select([c for c in DECIDE_COLUMNS if c in table.column_names]).to_pylist()
        train, test, bad, rejects = [], [], [], []
        for i, r in enumerate(rows):
            if (why := chain_problem(r.get("positive"))) is not None:
                reason = "no 4-tier chain (caption only)" if not r.get("positive") else f"positive chain: {why}"
                bad.append(reject("export", origin, r.get("chain_id") or r.get("caption_id"), reason,
                                  (r.get("text") or join_tiers(r.get("positive") or []))[:300]))
                continue
            r.setdefault("chain_id", r.get("caption_id"))
            split, why = r.get("split"), None
            if split in cfg.train_splits:
                if cfg.require_negatives_for_train and not has_full_negative(r):
                    why = f"train item without 4 negatives: {r.get('neg_missing_reason') or 'no negative chain'}"
                else:
                    train.append(i)
            elif split in cfg.test_splits:
                if chosen is not None and split == self.test.split and image_of(r) not in chosen:
                    why = "image is not among the test images"
                else:
                    test.append(i)
            else:
                why = f"split '{split}' is neither a train nor a test split"
            if why:
                rejects.append(reject("export", origin, r["chain_id"], why, join_tiers(r["positive"])))
        kept = table.take(pa.array(train + test, pa.int64()))
        upstream_ids = kept.column("test_id").to_pylist() if "test_id" in kept.column_names else [None] * len(train)
        test_ids = upstream_ids[:len(train)] + [ids.get(rows[i]["chain_id"]) for i in test]
        ctx.commit(index, as_chains(kept, test_ids), conform(bad + rejects, REJECTS), rows_in=table.num_rows)

    def write_files(self, ctx: StageContext, ups: tuple[str, ...], curate: list[dict]) -> None:
        """The CSVs, the Parquet, the card and the report, from the committed units (train chains
        of every unit, then test chains), so they are whole and the same after a resume."""
        cfg, out, units = self.export, ctx.out.path, ctx.out.data_files()
        train_splits = pa.array(cfg.train_splits, pa.string())
        is_train = lambda t: pc.fill_null(pc.is_in(t.column("split"), value_set=train_splits), False)  # noqa: E731
        n_train, with_url = 0, False                      # what the train CSV's header needs to know
        for f in units:
            t = pq.read_table(f, columns=["split", "image_url"])
            t = t.filter(is_train(t))
            n_train += t.num_rows
            with_url = with_url or bool(pc.any(pc.not_equal(t.column("image_url"), "")).as_py())
        tables: dict[str, tuple[list[str], int]] = {}     # config -> (columns, rows), for the card
        stats, tests, held = ChainStats(), [], []
        with contextlib.ExitStack() as files:
            parquet = files.enter_context(pq.ParquetWriter(
                files.enter_context(atomic_file(out / table_file(cfg.name, "chains"))), CHAINS, compression="zstd"))
            add_train = files.enter_context(csv_appender(out / table_file(cfg.name, "train"), pair_header(with_url))
                                            ) if n_train else None

            def write(t: pa.Table, last: bool = False) -> None:   # row groups of at least unit_rows rows
                held.append(t)
                stats.add(t)
                if last or sum(h.num_rows for h in held) >= cfg.unit_rows:
                    parquet.write_table(pa.concat_tables(held))
                    held.clear()

            for f in units:
                t = pq.read_table(f).replace_schema_metadata(None)
                mask = is_train(t)
                write(t.filter(mask))
                if add_train:
                    add_train(pair_rows(t.filter(mask).select(PAIR_COLUMNS).to_pylist(), with_url)[1])
                tests.append(t.filter(pc.invert(mask)))
            for k, t in enumerate(tests):
                write(t, last=k == len(tests) - 1)
        if add_train:
            tables["train"] = (pair_header(with_url), add_train.n)
        if curate:
            tables["test"] = (["id", "captions", "image_url"],
                              write_csv(out / table_file(cfg.name, "test"), *test_rows(curate)))
        pool = [c for t in tests for c in t.select(PAIR_COLUMNS).to_pylist() if has_full_negative(c)]
        if pool:
            tables["test_pool"] = (pair_header(True), write_csv_gz(out / table_file(cfg.name, "test_pool"),
                                                                   *pair_rows(pool, True)))
        tables["chains"] = (CHAINS.names, stats.n)
        n_test = sum(t.num_rows for t in tests)
        ctx.stats.update(files={table_file(cfg.name, c): n for c, (_, n) in tables.items()},
                         source=ups[0], train=n_train, test=n_test)
        stages = lineage(ctx.store, ups)
        write_dataset_card(out, cfg.name, stages, tables, stats)
        write_quality_report(out, cfg.name, stages, stats)
        ctx.stats["report"] = str(out / "report.md")
