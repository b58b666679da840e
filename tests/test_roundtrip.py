"""Ingesting the official HierarCaps test CSV and exporting it gives back the same rows."""

import csv

from pipeline.config import load_config
from pipeline.runner import run_stages
from pipeline.store import RunStore

from _shared import TEST_CSV, needs_shared


@needs_shared
def test_official_test_csv_roundtrip(tmp_path):
    cfg = load_config("tiny", overrides={
        "run": {"root": str(tmp_path)},
        "ingest": {"sources": [{"name": "hierarcaps_test", "path": str(TEST_CSV), "split": "test"}]},
    })
    store = RunStore(cfg.run.root, "rt")
    ms = run_stages(cfg, store, ["ingest", "export"])
    assert ms[0]["rows_in"] == 1000 and ms[0]["rows_rejected"] == 0
    out = store.stage("export").path / "hierarcaps_test.csv"
    with open(TEST_CSV, newline="", encoding="utf-8") as a, open(out, newline="", encoding="utf-8") as b:
        assert list(csv.reader(a)) == list(csv.reader(b))
    assert out.read_bytes() == TEST_CSV.read_bytes()


@needs_shared
def test_released_expanded_pool_roundtrip(tmp_path):
    """The released test pool (23,479 chains with negatives over 5,000 COCO images) ingested and
    exported comes back row for row: same chains, same negatives, same images, same order."""
    import gzip

    from _shared import EXPANDED

    cfg = load_config("tiny", overrides={
        "run": {"root": str(tmp_path)},
        "ingest": {"sources": [{"name": "pool", "path": str(EXPANDED), "split": "test"}]},
    })
    store = RunStore(cfg.run.root, "pool")
    ms = run_stages(cfg, store, ["ingest", "export"])
    assert ms[0]["rows_in"] == ms[0]["rows_out"] == 23479
    with gzip.open(EXPANDED, "rt", encoding="utf-8", newline="") as f:
        want = list(csv.reader(f))
    out = store.stage("export").path / "hierarcaps_test_expanded.csv.gz"
    with gzip.open(out, "rt", encoding="utf-8", newline="") as f:
        got = list(csv.reader(f))
    assert got == want
    images = {r["image_id"] for r in store.stage("export").read(columns=["image_id"]).to_pylist()}
    assert len(images) == 5000 and all(i.isdigit() for i in images)        # COCO image ids kept
