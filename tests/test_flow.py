"""The whole flow, ingest to export, on the tiny preset over 200 captions from ../shared."""

import csv
import gzip
import json

import pytest

from pipeline import N_TIERS, TIER_SEP
from pipeline.config import load_config
from pipeline.registry import default_stages
from pipeline.runner import default_run_id, status_rows
from pipeline.store import RunStore

from _shared import EXPANDED, TEST_CSV, needs_shared


def official_reader(path):
    """As the official RE training code reads a train CSV: split both columns on ' => '."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        pos, neg = r["positive"].split(TIER_SEP), r["negative"].split(TIER_SEP)
        assert len(pos) == N_TIERS and len(neg) == N_TIERS, r
    return rows


def write_inputs(tmp_path, n_train=150, n_test=50):
    with open(TEST_CSV, newline="", encoding="utf-8") as f:
        test = list(csv.DictReader(f))
    test_caps = {r["captions"].split(TIER_SEP)[-1] for r in test}
    with gzip.open(EXPANDED, "rt", encoding="utf-8", newline="") as f:
        train = [r for r in csv.DictReader(f) if r["positive"].split(TIER_SEP)[-1] not in test_caps]
    tsv = tmp_path / "cc_sample.tsv"
    with open(tsv, "w", encoding="utf-8") as f:
        for r in train[:n_train]:
            cap = " ".join(r["positive"].split(TIER_SEP)[-1].split())   # one line per caption
            f.write(f"{cap}\t{r['image_url']}\n")
    coco = {"images": [], "annotations": []}
    for i, r in enumerate(test[:n_test]):
        coco["images"].append({"id": i, "file_name": r["image_url"].rsplit("/", 1)[-1], "coco_url": r["image_url"]})
        coco["annotations"].append({"id": 1000 + i, "image_id": i, "caption": r["captions"].split(TIER_SEP)[-1]})
    js = tmp_path / "captions_val.json"
    js.write_text(json.dumps(coco))
    return tsv, js, test_caps


@needs_shared
@pytest.mark.slow
def test_flow_tiny_end_to_end(tmp_path):
    from flows.build import build_hierarcaps

    tsv, js, test_caps = write_inputs(tmp_path)
    cfg = load_config("tiny", overrides={
        "run": {"root": str(tmp_path / "art")},
        "ingest": {"sources": [{"name": "coco_val", "path": str(js), "split": "test"},
                               {"name": "cc", "path": str(tsv), "split": "train"}]},
    })
    result = build_hierarcaps(config=cfg.model_dump(mode="json"))
    store = RunStore(cfg.run.root, default_run_id(cfg))
    assert result["run_id"] == store.run_id
    st = {r["stage"]: r for r in status_rows(cfg, store)}
    assert all(st[s]["status"] == "done" for s in default_stages()), st
    assert st["align"]["status"] == st["bench"]["status"] == "missing"        # off by default
    assert st["ingest"]["rows_in"] == 200
    for s in ("ingest", "seed", "nli_filter", "bulk", "negatives"):
        assert st[s]["rows_in"] == st[s]["rows_out"] + st[s]["rows_rejected"], s
    assert st["nli_filter"]["rows_out"] > 0 and st["nli_filter"]["rows_rejected"] > 0   # accepts some, rejects some
    ex = store.stage("export").path
    train = official_reader(ex / "hierarcaps_train.csv")
    assert train and all(r["image_url"].startswith("http") for r in train)
    assert not {r["positive"].split(TIER_SEP)[-1] for r in train} & test_caps   # test captions never train
    with open(ex / "hierarcaps_test.csv", newline="", encoding="utf-8") as f:
        test_rows = list(csv.DictReader(f))
    assert test_rows and all(len(r["captions"].split(TIER_SEP)) == N_TIERS for r in test_rows)
    assert {r["captions"].split(TIER_SEP)[-1] for r in test_rows} <= test_caps
    for name in ("hierarcaps.parquet", "README.md", "report.md", "nli_scores.png", "tier_lengths.png"):
        assert (ex / name).exists(), name
    assert (store.stage("distill").path / "h" / "model" / "README.md").exists()
    # a second run of the same flow is all cache hits
    again = build_hierarcaps(config=cfg.model_dump(mode="json"), stages=["ingest", "seed"])
    assert [r["status"] for r in again["stages"]][:2] == ["done", "done"]
    assert store.stage("seed").manifest()["wall_s"] == st["seed"]["wall_s"]
