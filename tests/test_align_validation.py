"""Validation metrics and the knowledge-keeping knobs (LoRA, layer-wise lr, EMA, distillation) on
hand-made embeddings and a tiny CLIP built offline."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.align.config import AlignConfig
from pipeline.align.data import Chain
from pipeline.align.validation import Validator, caption_hits, r1_delta_ci, unique_captions


def test_caption_hits_and_paired_interval():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    # image 1: two captions near x; image 2: one near y, one near x (its nearest is of image 1)
    E = torch.nn.functional.normalize(torch.stack([x, x + 0.2 * y, y, x - 0.05 * y]), dim=-1)
    hits = caption_hits(E, [1, 1, 2, 2])
    assert hits == {0: False, 1: True, 2: False, 3: False}   # caption 0's nearest is caption 3 (image 2)
    assert caption_hits(E, [1, 1, 2, 3]) == {0: False, 1: True}  # single-caption images are not queries
    assert r1_delta_ci(hits, hits, [1, 1, 2, 2]) == [0.0, 0.0]
    lo, hi = r1_delta_ci({0: True, 1: True, 2: True, 3: True}, hits, [1, 1, 2, 2])
    assert 0.0 <= lo <= 0.75 <= hi <= 1.0


def _chains(n=12):
    nouns = ["bird", "dog", "car", "cat"]
    out = []
    for i in range(n):
        w, o = nouns[i % 4], nouns[(i + 1) % 4]
        out.append(Chain(["animal", w, f"a {w} on a branch", f"a photo of a {w} on branch {i % 6}"],
                         ["vehicle", o, f"a {o} on the grass", f"a photo of a {o} on the grass {i}"],
                         f"COCO_val2014_{i % 6:012d}.jpg"))
    return out


@pytest.fixture(scope="module")
def clip():
    from pipeline.align.tiny import build_tiny_clip

    torch.set_num_threads(1)
    return build_tiny_clip


def test_validator_of_the_original_is_the_identity(clip):
    enc = clip()
    chains = _chains()
    v = Validator(chains, enc)(enc)
    assert v["cosine"] == pytest.approx(1.0, abs=1e-5) and v["caption_r1_delta"] == 0.0
    assert v["n_images"] == 6 and v["n_captions"] == len(unique_captions(chains)[0]) == 12
    assert -1.0 <= v["d_corr"] <= 1.0 and 0.0 <= v["tie_share"] <= 1.0


def test_train_with_validation_lora_ema_and_distillation(clip, tmp_path):
    from pipeline.align.encoders import embed_texts, load_encoder
    from pipeline.align.train import train_align

    enc = clip()
    before = embed_texts(enc, ["a photo of a dog"])
    cfg = AlignConfig(lr=5e-3, batch_size=4, epochs=2, max_steps=4, lora_rank=4, ema_decay=0.5, lambda_distill=1.0,
                      distill_batch=4, val_every=2, lambda_order=1.0)
    m = train_align(_chains(), enc, cfg, tmp_path / "out", val=_chains()[:6])
    assert m["validation"]["step"] == 4 and m["train_cpu_seconds"] > 0
    curves = json.loads((tmp_path / "out" / "train_curves.json").read_text())
    assert [v["step"] for v in curves["validation"]] == [2, 4] and {"distill", "order"} <= set(curves["curves"][-1])
    assert not any("lora_" in n for n, _ in enc.module.named_parameters())   # merged: a plain model again
    after = embed_texts(enc, ["a photo of a dog"])
    assert not torch.allclose(before, after)                                    # the adapters did something
    reloaded = load_encoder("clip", str(tmp_path / "out"))
    assert torch.allclose(embed_texts(reloaded, ["a photo of a dog"]), after, atol=1e-5)
    assert (tmp_path / "out" / "training_data.npz").exists()


def test_layer_lr_decay_groups_and_ema_swap(clip):
    from pipeline.align.tricks import Ema, param_groups

    enc = clip()
    groups = param_groups(enc, AlignConfig(lr=1.0, layer_lr_decay=0.5))
    lrs = sorted(g["lr"] for g in groups)
    assert lrs == [0.25, 0.5, 1.0]      # 2 layers: embeddings 0.5^2, layer 0 at 0.5, top layer and the rest at 1
    assert sum(len(g["params"]) for g in groups) == len(enc.trainable_parameters())
    p = torch.nn.Parameter(torch.zeros(3))
    ema = Ema([p], 0.5)
    with torch.no_grad():
        p.add_(2.0)
    ema.update()                         # shadow: 0.5 * 0 + 0.5 * 2 = 1
    with ema.swapped():
        assert p.tolist() == [1.0, 1.0, 1.0]
    assert p.tolist() == [2.0, 2.0, 2.0]


def test_sweep_selects_on_validation_only():
    """The sweep's choice reads validation numbers only; a run with the best test d_corr but worse
    validation is not chosen, and runs losing knowledge or over the CPU budget are passed over."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "align_sweep.py"
    spec = importlib.util.spec_from_file_location("align_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)

    def run(d, cos, r1, cpu=100.0, test=None):
        r = {"config": {"lr": 1e-5}, "train_cpu_seconds": cpu,
             "validation": {"d_corr": d, "cosine": cos, "caption_r1_delta": r1}}
        return {**r, "test": {"d_corr": test}} if test is not None else r

    runs = {"zero_shot": {"config": None, "validation": {"d_corr": 0.7, "cosine": 1.0, "caption_r1_delta": 0.0}},
            "a": run(0.980, 0.96, -0.005, test=0.999), "b": run(0.985, 0.96, -0.002),
            "forgets": run(0.995, 0.93, -0.002), "drops_r1": run(0.990, 0.96, -0.02), "slow": run(0.992, 0.97, 0.0, 2000)}
    assert sweep.choose(runs) == "b"
    assert sweep.choose({"forgets": runs["forgets"], "x": run(0.9, 0.951, -0.05)}) == "x"  # fallback: cos >= 0.95


def test_length_buckets_change_padding_not_embeddings(clip):
    """Any bucket count gives each text its own embedding, in input order (the padding differs only)."""
    enc = clip().eval()
    texts = [t for c in _chains(6) for t in c.positive + c.negative] + [""]   # 49 texts of mixed length
    with torch.no_grad():
        ref = torch.cat([enc._encode([t]) for t in texts])
        for b in (1, 2, 3, 4, 8):
            enc.length_buckets = b
            assert torch.allclose(enc.encode_text(texts), ref, atol=1e-5), b


def test_wise_alpha_saves_the_point_between_original_and_fine_tuned(clip, tmp_path):
    """WiSE-FT: the same seed trained with wise_alpha=0.5 saves exactly the midpoint of the original
    and the fully fine-tuned weights (LoRA merged first); interpolation refuses another architecture."""
    from pipeline.align.train import train_align
    from pipeline.align.tricks import interpolate_weights

    def trained(**kw):
        enc = clip()
        cfg = AlignConfig(lr=5e-3, batch_size=4, max_steps=3, lora_rank=4, **kw)
        train_align(_chains(), enc, cfg, None)
        return {k: v.clone() for k, v in enc.module.state_dict().items()}

    w0 = clip().module.state_dict()
    full, half = trained(), trained(wise_alpha=0.5)
    moved = [k for k in full if full[k].is_floating_point() and not torch.equal(full[k], w0[k])]
    assert moved, "fine-tuning changed nothing"
    for k in moved:
        assert torch.allclose(half[k], (w0[k] + full[k]) / 2, atol=1e-6), k
    with pytest.raises(ValueError, match="no counterpart"):
        interpolate_weights(clip().module, torch.nn.Linear(2, 2), 0.5)
