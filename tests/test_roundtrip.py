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
