"""The whole flow, ingest to export, through Prefect on the tiny preset (the session's finished run:
95 CC-format train captions and 25 COCO-format test captions)."""

import csv
import json

from pipeline.chain import N_TIERS, TIER_SEP
from pipeline.registry import default_stages
from pipeline.runner import status_rows


def official_reader(path):
    """As the official RE training code reads a train CSV: split both columns on ' => '."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        pos, neg = r["positive"].split(TIER_SEP), r["negative"].split(TIER_SEP)
        assert len(pos) == N_TIERS and len(neg) == N_TIERS, r
    return rows


def test_flow_tiny_end_to_end(finished_run):
    from flows.build import build_hierarcaps

    cfg, store, result = finished_run["config"], finished_run["store"], finished_run["result"]
    test_caps = finished_run["test_captions"]
    assert result["run_id"] == store.run_id
    st = {r["stage"]: r for r in status_rows(cfg, store)}
    assert all(st[s]["status"] == "done" for s in default_stages()), st
    assert st["align"]["status"] == st["bench"]["status"] == "missing"        # off by default
    tsv, js = finished_run["inputs"]
    coco = json.loads(js.read_text())
    assert st["ingest"]["rows_in"] == len(tsv.read_text().splitlines()) + len(coco["annotations"])
    for s in ("ingest", "seed", "nli_filter", "bulk", "export"):
        assert st[s]["rows_in"] == st[s]["rows_out"] + st[s]["rows_rejected"], s
    assert st["seed"]["rows_rejected"] > 0 and st["bulk"]["rows_rejected"] > 0          # stages that reject do
    assert st["nli_filter"]["rows_out"] > 0 and st["nli_filter"]["rows_rejected"] > 0   # accepts some, rejects some
    chains = store.stage("negatives").read().to_pylist()
    assert len(chains) == st["bulk"]["rows_out"]                                        # one item per bulk chain
    assert all((c["negative"] is not None) == bool(c["neg_scores"]) for c in chains)
    assert all(c["neg_missing_reason"] or all(c["negative"]) for c in chains)
    ex = store.stage("export").path
    train = official_reader(ex / "hierarcaps_train.csv")
    assert train and all(r["image_url"].startswith("http") for r in train)
    assert not {r["positive"].split(TIER_SEP)[-1] for r in train} & test_caps   # test captions never train
    with open(ex / "hierarcaps_test.csv", newline="", encoding="utf-8") as f:
        test_rows = list(csv.DictReader(f))
    assert test_rows and all(len(r["captions"].split(TIER_SEP)) == N_TIERS for r in test_rows)
    assert {r["captions"].split(TIER_SEP)[-1] for r in test_rows} <= test_caps
    # the paper's test side: the chosen images only, one chain per image in the set to curate, ids 0..N-1
    chosen = cfg.test.images
    assert store.stage("bulk").manifest()["stats"]["test_images"] == chosen == len(coco["images"]) - 2
    exported = store.stage("export").read().to_pylist()
    test_chains = [c for c in exported if c["split"] == "test"]
    assert test_chains and len({c["image_id"] for c in test_chains}) <= chosen
    assert [int(r["id"]) for r in test_rows] == list(range(len(test_rows))) and len(test_rows) <= cfg.test.curate
    in_set = sorted((c for c in test_chains if c["test_id"] is not None), key=lambda c: c["test_id"])
    assert [c["test_id"] for c in in_set] == list(range(len(test_rows)))
    assert len({c["image_id"] for c in in_set}) == len(in_set)                    # one chain per image
    assert [r["captions"] for r in test_rows] == [" => ".join(c["positive"]) for c in in_set]
    images = {c["image_id"] for c in test_chains}
    assert len(images) > 1 and (len(in_set) == min(cfg.test.curate, len(images)))
    for name in ("hierarcaps.parquet", "README.md", "report.md", "nli_scores.png", "tier_lengths.png"):
        assert (ex / name).exists(), name
    assert (store.stage("distill").path / "h" / "model" / "README.md").exists()
    # a second run of the same flow is all cache hits
    again = build_hierarcaps(config=cfg.model_dump(mode="json"), stages=["ingest", "seed"])
    assert [r["status"] for r in again["stages"]][:2] == ["done", "done"]
    assert store.stage("seed").manifest()["wall_s"] == st["seed"]["wall_s"]
