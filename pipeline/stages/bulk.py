"""bulk: H (specific -> general) over every caption of the configured splits, then the NLI judge.

The paper runs H over CC train captions (the train set) and COCO val captions (the test pool);
with ``test.images`` set, only the chosen test images' captions.
Captions that arrived with a chain (HierarCaps CSVs) pass through unchanged, so the negatives
stage can also serve given chains.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..backends.nli import NliConfig
from ..chain import ChainRules, chain_row, rule_violation, split_tiers
from ..config import BulkSection, NliFilterSection
from ..judge import Judge
from ..schemas import reject
from ..testset import TestSection, choose_images, image_of
from ..stage import Stage, StageContext
from .common import model_key, open_h, open_scorer, run_units
from .units import CAPTION_COLUMNS, Where, all_of, is_in, stream_units

IMAGE_COLUMNS = ("split", "image_id", "image_url")


def _outside_or_chosen(test_splits: list[str], chosen: set[str]) -> Where:
    """Rows outside the test splits, and test rows whose image is among the chosen test images."""
    in_test = is_in("split", test_splits)

    def where(b: pa.RecordBatch) -> pa.Array:
        mask = pc.fill_null(in_test(b), False).to_numpy(zero_copy_only=False)
        keep = ~mask
        idx = np.flatnonzero(mask)
        rows = b.select(list(IMAGE_COLUMNS)).take(pa.array(idx)).to_pylist()
        keep[idx] = [image_of(r) in chosen for r in rows]
        return pa.array(keep)
    return where


class Bulk(Stage):
    name = "bulk"
    version = "2"  # 2: streamed units (numpy-hashed sample order; without max_captions, upstream order)
    inputs = ("distill", "ingest")
    params = {"bulk": "bulk", "nli": "models.nli", "judge_cfg": "nli_filter", "rules": "rules",
              "test": "test", "random_seed": "run.random_seed"}
    isolated = True
    engines = ("h", "scorer")
    bulk: BulkSection
    nli: NliConfig
    judge_cfg: NliFilterSection
    rules: ChainRules
    test: TestSection
    random_seed: int

    def key_material(self) -> dict:
        return model_key(nli=self.nli)

    def setup(self, ctx: StageContext) -> None:
        self.open_engine("h", lambda: open_h(ctx, self.bulk))
        self.judge = Judge(self.open_engine("scorer", lambda: open_scorer(ctx, self.nli)), self.judge_cfg)
        self.h_id = f"H(distill {ctx.upstream('distill').manifest()['key'][:12]})"   # run-independent provenance

    def process(self, ctx: StageContext) -> None:
        ingest = ctx.upstream("ingest")
        where = [is_in("split", self.bulk.splits)]
        test_splits = [s for s, out in self.bulk.splits.items() if out == self.test.split]
        chosen = choose_images(self._test_images(ingest, test_splits), self.test, self.random_seed) \
            if self.test.images is not None else None
        if chosen is not None:   # only the test images' captions go through H
            where.append(_outside_or_chosen(test_splits, chosen))
            ctx.stats["test_images"] = len(chosen)
        work = stream_units(ingest, self.bulk.unit_rows, all_of(*where), list(IMAGE_COLUMNS), columns=CAPTION_COLUMNS,
                            n=self.bulk.max_captions, seed=self.random_seed, salt="bulk")
        run_units(ctx, work, lambda i, chunk: self._unit(chunk), note="captions")
        ctx.stats["captions"] = work.total

    @staticmethod
    def _test_images(ingest, test_splits: list[str]) -> Iterator[str | None]:
        """The images of the test-split captions (a bounded pool: COCO val), streamed."""
        wanted = is_in("split", test_splits)
        for b in ingest.iter_batches(list(IMAGE_COLUMNS)):
            yield from (image_of(r) for r in b.filter(pc.fill_null(wanted(b), False)).to_pylist())

    def _unit(self, chunk: list[dict]):
        split = self.bulk.splits
        given = [chain_row(r, r["positive"], stage="ingest", split=split[r["split"]], random_seed=self.random_seed)
                 for r in chunk if r["positive"]]
        todo = [r for r in chunk if not r["positive"]]
        made, rejects = [], []
        for r, output in zip(todo, self.h.generalize([r["text"] for r in todo])):
            tiers = [t for t in split_tiers(output) if t]
            why = f"H wrote {len(tiers)} tiers, expected 3" if len(tiers) != 3 else \
                rule_violation(tiers, r["text"], self.rules)
            if why:
                rejects.append(reject(self.name, "ingest", r["caption_id"], f"invalid chain from H: {why}", output))
                continue
            made.append(chain_row(r, [*tiers, r["text"]], stage=self.name, split=split[r["split"]], model=self.h_id,
                                  random_seed=self.random_seed, llm_output=output))
        keep, bad = self.judge.filter(made, self.name, "bulk")
        return given + keep, rejects + bad
