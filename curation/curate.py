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

from pipeline import N_TIERS
from pipeline.io.writers import test_rows, write_csv
from pipeline.schemas import CHAINS, REJECTS, conform
from pipeline.stage import StageError
from pipeline.stages.export import SOURCES, Export
from pipeline.store import RunStore

TIER_COLS = [f"tier{k}" for k in range(1, N_TIERS + 1)]
HEADER = ["id", "chain_id", "image_url", *TIER_COLS, "keep", "note"]


def _test_chains(store: RunStore, config) -> list[dict]:
    """Test-split chains of the table export reads (the furthest finished of negatives, bulk, ingest)."""
    ups = Export().upstream_names(config, store)
    if not ups:
        raise StageError(f"run {store.run_id} has no finished chain table ({', '.join(SOURCES)})")
    rows = store.stage(ups[0]).read().to_pylist()
    return [r for r in rows if r.get("split") in config.export.test_splits
            and r.get("positive") and len(r["positive"]) == N_TIERS]


def export_for_curation(store: RunStore, config, out: str | Path) -> int:
    chains = _test_chains(store, config)
    rows = [[c.get("orig_id") or str(i), c.get("chain_id") or c.get("caption_id"), c.get("image_url") or "",
             *c["positive"], "yes", ""] for i, c in enumerate(chains)]
    return write_csv(Path(out), HEADER, rows)


def import_curation(store: RunStore, config, path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path}: file not found")
    originals = {c.get("chain_id") or c.get("caption_id"): c for c in _test_chains(store, config)}
    kept, rejects, dropped = [], [], 0
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [h for h in HEADER[:-1] if h not in (reader.fieldnames or [])]
        if missing:
            raise StageError(f"{path}: missing columns {missing}; expected {HEADER}")
        for r in reader:
            line = reader.line_num
            bad = lambda why: rejects.append(dict(stage="curation", source=str(path), row=line,  # noqa: E731
                                                   key=r.get("chain_id"), reason=why, raw=",".join(map(str, r.values()))[:300]))
            keep = (r.get("keep") or "").strip().lower()
            if keep in ("no", "n", "false", "0", "drop"):
                dropped += 1
                bad(f"dropped by curator{': ' + r['note'] if r.get('note') else ''}")
                continue
            if keep not in ("yes", "y", "true", "1", ""):
                bad(f"keep must be yes or no, got {r.get('keep')!r}")
                continue
            tiers = [(r.get(c) or "").strip() for c in TIER_COLS]
            if not all(tiers):
                bad(f"empty tier {tiers.index('') + 1}")
                continue
            if any("=>" in t for t in tiers):
                bad("a tier contains the separator '=>'")
                continue
            orig = originals.get(r["chain_id"], {})
            edited = orig.get("positive") != tiers
            kept.append({**orig, "chain_id": r["chain_id"], "orig_id": r["id"], "image_url": r["image_url"] or None,
                         "positive": tiers, "split": "test", "stage": "curation",
                         "raw": r.get("note") or ("edited" if edited else None)})
    sd = store.stage("curated")
    sd.clear()
    sd.write_unit(0, conform(kept, CHAINS), conform(rejects, REJECTS),
                  {"rows_in": len(kept) + len(rejects), "rows_out": len(kept), "rows_rejected": len(rejects)})
    n = write_csv(sd.path / f"{config.export.name}_test.csv", *test_rows(kept))
    edited = sum(1 for k in kept if k.get("raw") == "edited")
    manifest = {"stage": "curated", "source_file": str(path), "rows_in": len(kept) + len(rejects), "rows_out": n,
                "rows_rejected": len(rejects), "dropped": dropped, "edited": edited, "wall_s": 0.0,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    sd.write_manifest(manifest)
    return manifest
