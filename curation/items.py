"""The items a curator reviews: the run's test chains, one item each, read a batch at a time.

An item is named by its chain id (what every import format carries back, and what the validator
checks against) and shown with its test id (``id``, 0..N-1 when export drew the test set: the id
the curated CSV keeps).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.chain import is_chain
from pipeline.config import ExportSection
from pipeline.io.writers import test_id_of
from pipeline.stage import StageError
from pipeline.stages.export import CHAIN_TABLES, chain_table
from pipeline.store import RunStore, StageDir


def _rows(sd: StageDir, keep) -> list[dict]:
    """The rows of ``sd`` that ``keep`` (a record batch -> mask) selects, read a batch at a time:
    only those become Python rows, never the whole table."""
    out = []
    for b in sd.iter_batches():
        out += b.filter(keep(b)).to_pylist()
    return out


def test_chains(store: RunStore, export: ExportSection) -> list[dict]:
    """The test set export drew (one chain per image, ids 0..N-1) when export has run; else the
    test-split chains of the table export reads (the furthest finished of negatives, bulk, ingest)."""
    if store.stage("export").manifest() is not None:
        rows = _rows(store.stage("export"), lambda b: pc.is_valid(b.column("test_id")))
        if rows:
            return sorted(rows, key=lambda r: r["test_id"])
    table = chain_table(store)
    if table is None:
        raise StageError(f"run {store.run_id} has no finished chain table ({', '.join(CHAIN_TABLES)})")
    splits = pa.array(export.test_splits, pa.string())
    rows = _rows(store.stage(table), lambda b: pc.is_in(b.column("split"), value_set=splits))
    return [r for r in rows if is_chain(r.get("positive"))]


def item_key(chain: dict) -> str:
    return chain.get("chain_id") or chain.get("caption_id")


def link_probs(chain: dict) -> list[float | None]:
    """P(entailment) of the adjacent links the pipeline judged, ``[2->1, 3->2, 4->3]`` (None: not judged)."""
    probs: list[float | None] = [None, None, None]
    for s in chain.get("link_scores") or []:
        if s["premise_tier"] == s["hypothesis_tier"] + 1 and 1 <= s["hypothesis_tier"] <= 3:
            probs[s["hypothesis_tier"] - 1] = round(float(s["entailment"]), 4)
    return probs


def test_items(store: RunStore, export: ExportSection) -> list[dict]:
    """One reviewable item per test chain: ids, image, the four tiers and the stored link scores."""
    return [{"chain_id": item_key(c), "id": test_id_of(c, i), "image_url": c.get("image_url") or "",
             "image_id": c.get("image_id"), "tiers": list(c["positive"]), "links": link_probs(c)}
            for i, c in enumerate(test_chains(store, export))]
