"""Measure "valid as generated" on the released HierarCaps data: the 1K curated test chains are
the hand-corrected versions of generated chains in the released pool (the expanded test CSV).

``python -m curation.released --pool POOL.csv.gz --curated TEST.csv --root DIR`` ingests the pool
into a run, matches each curated chain to the pool chain with the same image and caption
(tier 4), writes the curated tiers as a review-page JSON (one reviewer: the released curation)
and imports it like any curation file, so the run's report is the real share of generated chains
that the curators left fully (and per tier) unchanged. Unmatched curated chains are counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from pipeline.chain import N_TIERS, split_tiers, text_key
from pipeline.config import load_config
from pipeline.runner import run_stages
from pipeline.store import RunStore

from .importer import REVIEW_FORMAT, import_curation
from .items import test_items


def corrections(items: list[dict], curated_csv: Path, run_id: str) -> tuple[dict, dict]:
    by_caption = {}
    for it in items:
        by_caption.setdefault((it["image_url"], it["tiers"][3].strip()), it)
    out, unmatched, normalised = [], 0, [0] * N_TIERS
    with open(curated_csv, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            tiers = split_tiers(r["captions"])
            it = by_caption.get((r["image_url"], tiers[3]))
            if it is None:
                unmatched += 1
                continue
            for k in range(N_TIERS):
                normalised[k] += text_key(tiers[k]) == text_key(it["tiers"][k])
            out.append({"chain_id": it["chain_id"], "id": r["id"], "before": it["tiers"], "after": tiers,
                        "decision": "keep", "reviewer": "released HierarCaps curation", "time": None})
    doc = {"format": REVIEW_FORMAT, "version": 1, "run_id": run_id, "reviewer": "released HierarCaps curation",
           "items": out}
    return doc, {"curated_chains": len(out) + unmatched, "matched": len(out), "unmatched": unmatched,
                 "unchanged_per_tier_case_punct_blind": normalised}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, required=True)
    ap.add_argument("--curated", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--run", default="released")
    args = ap.parse_args(argv)
    cfg = load_config("tiny", overrides={"run": {"root": str(args.root)},
                                         "ingest": {"sources": [{"name": "pool", "path": str(args.pool), "split": "test"}]}})
    store = RunStore(cfg.run.root, args.run)
    run_stages(cfg, store, ["ingest"])
    items = test_items(store, cfg.export)
    doc, match = corrections(items, args.curated, store.run_id)
    path = store.path / "curation" / "released_curation.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    m = import_curation(store, cfg, path)
    print(json.dumps({"pool_items": len(items), **match, "imported": m["rows_out"], "rejected": m["rows_rejected"],
                      "report": m["report"], "report_md": str(store.stage("curated").path / "report.md")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
