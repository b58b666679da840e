"""Test-set curation hand-off: export chains for manual correction, import the corrected file.

The export is a CSV a person edits in a spreadsheet: one row per chain, one column per tier, a
``keep`` column (yes/no) and a ``note``. Import validates every row (errors name the file, line
and reason and go to rejects), and writes the curated test set in the official HierarCaps format
(``id,captions,image_url``) plus Parquet under ``<run>/curated/``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pyarrow as pa

from pipeline.chain import N_TIERS, chain_problem, is_chain
from pipeline.config import ExportSection
from pipeline.io.writers import test_rows, write_csv
from pipeline.schemas import CHAINS, REJECTS, conform, reject
from pipeline.stage import StageError
from pipeline.stages.export import CHAIN_TABLES, chain_table
from pipeline.store import RunStore

TIER_COLS = [f"tier{k}" for k in range(1, N_TIERS + 1)]
HEADER = ["id", "chain_id", "image_url", *TIER_COLS, "keep", "note"]
# the curated test chains: chain rows plus what the curator said and whether any tier changed
CURATED = CHAINS.append(pa.field("note", pa.string())).append(pa.field("edited", pa.bool_()))


def _test_chains(store: RunStore, export: ExportSection) -> list[dict]:
    """Test-split chains of the table export reads (the furthest finished of negatives, bulk, ingest)."""
    table = chain_table(store)
    if table is None:
        raise StageError(f"run {store.run_id} has no finished chain table ({', '.join(CHAIN_TABLES)})")
    rows = store.stage(table).read().to_pylist()
    return [r for r in rows if r.get("split") in export.test_splits and is_chain(r.get("positive"))]


def export_for_curation(store: RunStore, export: ExportSection, out: str | Path) -> int:
    chains = _test_chains(store, export)
    rows = [[c.get("orig_id") or str(i), c.get("chain_id") or c.get("caption_id"), c.get("image_url") or "",
             *c["positive"], "yes", ""] for i, c in enumerate(chains)]
    return write_csv(Path(out), HEADER, rows)


def import_curation(store: RunStore, export: ExportSection, path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path}: file not found")
    originals = {c.get("chain_id") or c.get("caption_id"): c for c in _test_chains(store, export)}
    kept, rejects, dropped, edited = [], [], 0, 0
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [h for h in HEADER[:-1] if h not in (reader.fieldnames or [])]
        if missing:
            raise StageError(f"{path}: missing columns {missing}; expected {HEADER}")
        for r in reader:
            line = reader.line_num
            bad = lambda why: rejects.append(reject("curation", str(path), r.get("chain_id"), why,  # noqa: E731
                                                    ",".join(map(str, r.values()))[:300], line))
            keep = (r.get("keep") or "").strip().lower()
            if keep in ("no", "n", "false", "0", "drop"):
                dropped += 1
                bad(f"dropped by curator{': ' + r['note'] if r.get('note') else ''}")
                continue
            if keep not in ("yes", "y", "true", "1", ""):
                bad(f"keep must be yes or no, got {r.get('keep')!r}")
                continue
            tiers = [(r.get(c) or "").strip() for c in TIER_COLS]
            if why := chain_problem(tiers):
                bad(why)
                continue
            orig = originals.get(r["chain_id"], {})
            changed = orig.get("positive") != tiers
            edited += changed
            kept.append({**orig, "chain_id": r["chain_id"], "orig_id": r["id"], "image_url": r["image_url"] or None,
                         "positive": tiers, "split": "test", "stage": "curation", "note": r.get("note") or None,
                         "edited": changed})
    sd = store.stage("curated")
    sd.clear()
    sd.write_unit(0, conform(kept, CURATED), conform(rejects, REJECTS),
                  {"rows_in": len(kept) + len(rejects), "rows_out": len(kept), "rows_rejected": len(rejects)})
    n = write_csv(sd.path / f"{export.name}_test.csv", *test_rows(kept))
    manifest = {"stage": "curated", "source_file": str(path), "rows_in": len(kept) + len(rejects), "rows_out": n,
                "rows_rejected": len(rejects), "dropped": dropped, "edited": edited, "wall_s": 0.0,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    sd.write_manifest(manifest)
    return manifest
