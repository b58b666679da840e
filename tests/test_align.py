"""RE alignment: loss math on hand-made vectors, data loading, a tiny-CLIP training step."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.align import losses
from pipeline.align.config import AlignConfig
from pipeline.align.data import Chain, load_chains, training_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hierarcaps"


def test_exterior_angle_formula_and_clipping():
    r = torch.zeros(2)
    e = torch.tensor([1.0, 0.0])
    assert losses.exterior_angle(r, e, torch.tensor([2.0, 0.0])).item() == pytest.approx(0.0, abs=1e-3)
    assert losses.exterior_angle(r, e, torch.tensor([1.0, 1.0])).item() == pytest.approx(math.pi / 2, abs=1e-6)
    assert losses.exterior_angle(r, e, torch.tensor([0.0, 0.0])).item() == pytest.approx(math.pi, abs=1e-3)
    # collinear vectors with a float cosine just outside [-1, 1] must not give NaN
    big = torch.tensor([1e8, 1.0])
    assert not torch.isnan(losses.exterior_angle(r, big, 3 * big)).any()
    # root offset: the angle is taken relative to e - r
    r2 = torch.tensor([0.0, -1.0])
    e2 = torch.tensor([0.0, 0.0])
    assert losses.exterior_angle(r2, e2, torch.tensor([1.0, 0.0])).item() == pytest.approx(math.pi / 2, abs=1e-6)


def _radial_chain(d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    root = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    pos = torch.stack([root + 0.3 * (k + 1) * direction for k in range(4)])  # straight outward
    side = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    neg = torch.stack([pos[k] + 0.5 * side for k in range(4)])
    return root, pos[None], neg[None]


def test_radially_ordered_chain_has_lower_loss_than_shuffled():
    root, pos, neg = _radial_chain()
    good = losses.re_loss(pos, neg, root)
    bad = losses.re_loss(pos[:, [2, 0, 3, 1]], neg, root)
    assert good["eloss"] < bad["eloss"]
    assert good["mloss"] < bad["mloss"]
    assert good["pos_angle"].item() == pytest.approx(0.0, abs=1e-2)


def test_re_loss_matches_official_layout():
    """(pos_k, pos_k+1) and (pos_k, neg_k) for k=1..3; mining = (P+N)[argmax P] + (P+N)[argmax N]."""
    torch.manual_seed(0)
    pos, neg, root = torch.randn(5, 4, 6), torch.randn(5, 4, 6), torch.randn(6)
    P = torch.stack([losses.exterior_angle(root, pos[:, k], pos[:, k + 1]) for k in range(3)])
    N = -torch.stack([losses.exterior_angle(root, pos[:, k], neg[:, k]) for k in range(3)])
    out = losses.re_loss(pos, neg, root)
    assert out["eloss"].item() == pytest.approx((P.mean() + N.mean()).item(), abs=1e-6)
    PN = (P + N).ravel()
    expected = PN[P.ravel().argmax()] + PN[N.ravel().argmax()]
    assert out["mloss"].item() == pytest.approx(expected.item(), abs=1e-6)


def test_pullback_and_cone_and_clear_glass():
    E = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert losses.pullback_loss(E, E).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.pullback_loss(E, -E).item() == pytest.approx(1.0, abs=1e-6)
    # weighted mean: only the weighted rows count; uniform weights are the official mean
    E2 = torch.cat([E[:2], -E[2:]])
    w = torch.tensor([1.0, 1.0] + [0.0] * (len(E) - 2))
    assert losses.pullback_loss(E2, E, w).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.pullback_loss(E2, E, torch.ones(len(E))).item() == pytest.approx(losses.pullback_loss(E2, E).item())
    root, pos, neg = _radial_chain()
    assert losses.cone_loss(pos, neg, root)["eloss"] < losses.cone_loss(pos[:, [3, 2, 1, 0]], neg, root)["eloss"]
    # tight, separated groups score lower than mixed ones
    centers = torch.eye(8)[:4]
    tight = torch.nn.functional.normalize(centers[:, None] + 0.05 * torch.randn(4, 4, 8), dim=-1)
    mixed = tight.reshape(16, 8)[torch.randperm(16)].reshape(4, 4, 8)
    assert losses.clear_glass_loss(tight)["cg"] < losses.clear_glass_loss(mixed)["cg"]


def test_radius_order_loss_counts_only_tiers_too_close_to_the_root():
    """Zero when every tier is at least `margin` further from the root than the one above; an
    inverted pair costs its gap plus the margin, and the gradient pushes the pair apart."""
    root = torch.zeros(3)
    unit = torch.tensor([1.0, 0.0, 0.0])
    ordered = torch.stack([unit * r for r in (0.2, 0.4, 0.6, 0.8)])[None]           # (1, 4, 3)
    assert losses.radius_order_loss(ordered, root, 0.1).item() == 0.0
    inverted = torch.stack([unit * r for r in (0.4, 0.2, 0.6, 0.8)])[None].requires_grad_(True)
    loss = losses.radius_order_loss(inverted, root, 0.1)
    assert loss.item() == pytest.approx((0.1 + 0.2) / 3)                              # one bad pair of 3
    loss.backward()
    g = inverted.grad[0, :, 0]
    assert g[0] > 0 and g[1] < 0 and g[2] == 0 and g[3] == 0     # descent: tier 1 inward, tier 2 outward


def test_load_chains_csv_formats(tmp_path):
    test = tmp_path / "t.csv"
    test.write_text('id,captions,image_url\n0,"a => b => c => d",x/COCO_val2014_000000000042.jpg\n')
    (c,) = load_chains(test)
    assert c.positive == ["a", "b", "c", "d"] and c.negative is None and c.image_id == 42
    train = tmp_path / "tr.csv.gz"
    with gzip.open(train, "wt") as f:
        f.write("positive,negative\na => b => c => d,e => f => g => h\n")
    (c,) = load_chains(train)
    assert c.negative == ["e", "f", "g", "h"] and c.has_full_negative
    bad = tmp_path / "bad.csv"
    bad.write_text("positive,negative\na => b,e => f => g => h\n")
    with pytest.raises(ValueError, match="row 2"):
        load_chains(bad)
    rejects: list = []
    assert load_chains(bad, rejects) == [] and rejects[0]["row"] == 2


def test_training_split_excludes_test_captions_and_images():
    test = [Chain(["a", "b", "c", "A cat."], None, "COCO_val2014_000000000001.jpg")]
    chains = [Chain(["a", "b", "c", "a cat"], None, "COCO_val2014_000000000002.jpg"),
              Chain(["x", "y", "z", "other"], None, "COCO_val2014_000000000001.jpg")]
    chains += [Chain(["p", "q", "r", f"s{i}"], None, f"COCO_val2014_{i + 10:012d}.jpg") for i in range(6)]
    sp = training_split(chains, test, n_val_images=2)
    assert sp.stats["dropped_test_caption"] == 1 and sp.stats["dropped_test_image"] == 1
    assert len(sp.train) == 4 and len(sp.val) == 2 and len(sp.test_images) == 1
    assert not {c.image_id for c in sp.train} & {c.image_id for c in sp.val}


def _synthetic_chains(n=8):
    nouns = ["bird", "dog", "car", "cat"]
    out = []
    for i in range(n):
        w = nouns[i % 4]
        o = nouns[(i + 1) % 4]
        out.append(Chain(["animal", w, f"a {w} on a branch", f"a photo of a {w} on a branch"],
                         ["vehicle", o, f"a {o} on the grass", f"a photo of a {o} on the grass"]))
    return out


def test_tiny_clip_training_step_decreases_loss(tmp_path):
    from pipeline.align.tiny import build_tiny_clip
    from pipeline.align.train import _step_losses, train_align

    enc = build_tiny_clip()
    chains = _synthetic_chains(8)
    cfg = AlignConfig(lr=3e-3, batch_size=8, epochs=15, lambda_p=1.0)
    frozen = enc.frozen_copy()
    before = _step_losses(enc, frozen, cfg, chains, None)["total_loss"].item()
    image_params = [p.clone() for p in enc.module.vision_model.parameters()]
    metrics = train_align(chains, enc, cfg, None)
    after = _step_losses(enc, frozen, cfg, chains, None)["total_loss"].item()
    assert after < before
    assert metrics["steps"] == 15
    assert all(torch.equal(a, b) for a, b in zip(image_params, enc.module.vision_model.parameters()))


def test_tiny_clip_clear_glass_runs(tmp_path):
    from pipeline.align.tiny import build_tiny_clip
    from pipeline.align.train import train_align

    chains = [Chain([g, f"{g} {i}", f"{g} thing {i}", f"a {g} number {i}"], None) for g in ("a", "b", "c") for i in range(4)]
    cfg = AlignConfig(objective="clear_glass", lr=1e-3, epochs=3, cg_groups=3, cg_members=4)
    m = train_align(chains, build_tiny_clip(), cfg, None)
    assert m["steps"] == 3 and "cg" in m["last"]


def test_run_align_from_paths(tmp_path):
    from pipeline.align.tiny import build_tiny_clip
    from pipeline.align.train import run_align

    build_tiny_clip().save(tmp_path / "m")
    csv = tmp_path / "train.csv"
    csv.write_text("positive,negative\n" + "".join(
        f"{' => '.join(c.positive)},{' => '.join(c.negative)}\n" for c in _synthetic_chains(8)))
    cfg = AlignConfig(model=str(tmp_path / "m"), lr=1e-3, batch_size=4, max_steps=2)
    m = run_align(cfg, csv, tmp_path / "out")
    assert m["steps"] == 2 and (tmp_path / "out" / "model" / "config.json").exists()
    curves = json.loads((tmp_path / "out" / "train_curves.json").read_text())
    assert len(curves["curves"]) == 2 and curves["config"]["lr"] == 1e-3
    from pipeline.align.encoders import load_encoder  # an output dir resolves to its model/ subdir

    assert load_encoder("clip", str(tmp_path / "out")).encode_text(["a bird"]).shape == (1, 16)


@pytest.mark.gpu
def test_tiny_clip_step_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from pipeline.align.tiny import build_tiny_clip
    from pipeline.align.train import train_align

    enc = build_tiny_clip()
    enc.module.to("cuda")
    m = train_align(_synthetic_chains(8), enc, AlignConfig(lr=1e-3, max_steps=2), None)
    assert m["steps"] == 1  # 8 chains, batch 8: one step per epoch


def test_example_align_config_validates():
    # the tuned MiniLM settings users are pointed to must stay a valid config
    from pathlib import Path

    from pipeline.config import load_config

    cfg = load_config("tiny", Path(__file__).resolve().parents[1] / "examples" / "align_minilm.yaml")
    assert cfg.align.encoder_kind == "sentence-transformers"
    assert cfg.align.pullback_tier_weights == (0.05, 0.25, 1.0, 1.0)


def test_pullback_tier_weights_follow_the_batch_layout():
    from pipeline.align.train import _pullback_weights

    assert _pullback_weights(AlignConfig(), 2, 0) is None  # official uniform mean
    w = _pullback_weights(AlignConfig(pullback_tier_weights=(1, 2, 3, 4)), 2, 3).tolist()
    assert w == [1, 1, 2, 2, 3, 3, 4, 4] * 2 + [4, 4, 4]  # pos tiers, neg tiers, group captions
