"""HierarCaps evaluation, following the official `evaluation/hierarchical_retrieval.py`
(TAU-VAILab/hierarcaps):

* d_corr: radii |e_k - root| of the 4 tiers; mean over chains of Kendall tau between argsort(radii)
  and (1, 2, 3, 4).
* retrieval: `steps` (50) radius thresholds linspace(min, max) over all test texts; under each, the
  text most similar to the image among texts with radius <= threshold; consecutive duplicates
  dropped. Per unique image: precision = |preds & gt texts| / |preds| (sets, unordered), recall =
  mean over tiers k of [some chain of this image has its tier-k text in preds] (multi-reference).
Text-only encoders get d_corr only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau
from tqdm.auto import tqdm

from pipeline.align.data import Chain, image_id, load_chains
from pipeline.align.encoders import Encoder, embed_texts, load_encoder

log = logging.getLogger(__name__)


TIE_FLAG = 0.01   # above this share of tied chains a d_corr says more about argsort than the encoder
_TIE_RTOL = 1e-6


def d_corr(E: torch.Tensor, root: torch.Tensor) -> float:
    """E: (n, 4, D) tier embeddings general -> specific; root: (D,)."""
    R = (E - root).norm(dim=-1)
    ranks = R.argsort(dim=-1).cpu().numpy()
    return float(np.mean([kendalltau(r, [1, 2, 3, 4]).correlation for r in ranks]))


def tie_share(E: torch.Tensor, root: torch.Tensor) -> float:
    """Share of chains with two tier radii equal (relative 1e-6). Ties sort in tier order, as in the
    official evaluator, so degenerate embeddings (all radii equal) read as a perfect d_corr."""
    R = (E - root).norm(dim=-1).double()
    diff = (R[:, :, None] - R[:, None, :]).abs()
    tol = _TIE_RTOL * torch.maximum(R[:, :, None], R[:, None, :]) + 1e-12
    off = ~torch.eye(R.shape[1], dtype=torch.bool)
    return float(((diff <= tol) & off).any(-1).any(-1).double().mean()) if len(R) else 0.0


def d_corr_report(E: torch.Tensor, root: torch.Tensor) -> dict:
    """d_corr with the share of tied chains beside it, and a flag when that share is above 1%."""
    ties = tie_share(E, root)
    return {"d_corr": d_corr(E, root), "tie_share": ties, "ties_flag": ties > TIE_FLAG}


def hierarchical_retrieval(E: torch.Tensor, root: torch.Tensor, V: torch.Tensor, texts: list[list[str]],
                           img_of_chain: list[int], steps: int = 50) -> dict:
    """E: (n, 4, D) texts; V: (m, D) unique images; img_of_chain[i]: row of V for chain i."""
    Rs = (E - root).norm(dim=-1)                                        # (n, 4)
    levels = np.linspace(Rs.min().item(), Rs.max().item(), steps)
    masks = torch.stack([(Rs <= t).ravel() for t in levels])            # (steps, n*4)
    T = np.array(texts, dtype=object).ravel()
    chains_of_img: dict[int, list[int]] = {}
    for i, j in enumerate(img_of_chain):
        chains_of_img.setdefault(j, []).append(i)
    Ef = E.reshape(-1, E.shape[-1])
    precisions, recalls = [], []
    for j in range(V.shape[0]):
        S = Ef @ V[j]
        idx = torch.where(masks, S[None], torch.tensor(-float("inf"))).argmax(dim=1).tolist()
        preds: list[str] = []
        for i in idx:
            if not preds or preds[-1] != T[i]:
                preds.append(T[i])
        gts = [texts[i] for i in chains_of_img.get(j, [])]
        s_preds, s_gts = set(preds), {t for g in gts for t in g}
        tp, fp = len(s_preds & s_gts), len(s_preds - s_gts)
        precisions.append(tp / max(1, tp + fp))
        recalls.append(sum(any(g[k] in s_preds for g in gts) for k in range(4)) / 4.0)
    return {"precision": float(np.mean(precisions)), "recall": float(np.mean(recalls)), "n_images": len(precisions)}


@torch.no_grad()
def embed_images(enc: Encoder, paths: list[Path], batch_size: int = 64) -> torch.Tensor:
    from PIL import Image

    enc.eval()
    out = []
    for i in tqdm(range(0, len(paths), batch_size), desc="images"):
        imgs = [Image.open(p).convert("RGB") for p in paths[i:i + batch_size]]
        out.append(enc.encode_image(imgs).cpu())
    return torch.cat(out)


def evaluate(encoder: Encoder, test_chains: list[Chain], images_dir: str | Path | None = None,
             steps: int = 50) -> dict:
    """d_corr for any encoder; + hierarchical retrieval P/R when the encoder has images and a dir is given."""
    texts = [[t.strip() for t in c.positive] for c in test_chains]
    E = embed_texts(encoder, [t for row in texts for t in row]).view(len(texts), 4, -1)
    root = embed_texts(encoder, [""])[0]
    res = {"n_chains": len(texts), **d_corr_report(E, root)}
    if res["ties_flag"]:
        log.warning("d_corr %.4f: %.1f%% of the chains tie on a radius (flag above %.0f%%): the encoder's "
                    "embeddings are degenerate", res["d_corr"], 100 * res["tie_share"], 100 * TIE_FLAG)
    if images_dir is not None and encoder.has_images:
        files = {image_id(p.name): p for p in Path(images_dir).iterdir() if p.is_file()}
        ids = [c.image_id for c in test_chains]
        missing = sorted({i for i in ids if i not in files})
        if missing:
            raise ValueError(f"{images_dir}: no image file for COCO id(s) {missing[:5]} ({len(missing)} missing)")
        uniq = list(dict.fromkeys(ids))
        row_of = {i: r for r, i in enumerate(uniq)}
        V = embed_images(encoder, [files[i] for i in uniq])
        res.update(hierarchical_retrieval(E, root, V, texts, [row_of[i] for i in ids], steps))
    return res


def run_bench(model_path_or_id: str, kind: str, test_csv: str | Path, images_dir: str | Path | None,
              out_dir: str | Path, finetuned: str | None = None, device: str = "cpu",
              allow_test_overlap: bool = False) -> dict:
    """Zero-shot (and fine-tuned, when given) evaluation; writes bench.json, bench.md, bench.png.

    The fine-tuned model must be an align output whose training-data manifest shares no caption or
    image with the test set (`leakage.guard`); `allow_test_overlap` scores it anyway, on the record."""
    from pipeline.align.leakage import guard
    from pipeline.benchmark.report import write_report

    chains = load_chains(test_csv)
    leakage = guard(finetuned, chains, test_csv, allow_test_overlap) if finetuned else None
    results = {"zero-shot": evaluate(load_encoder(kind, model_path_or_id, device), chains, images_dir)}
    if finetuned:
        results["fine-tuned"] = {**evaluate(load_encoder(kind, finetuned, device), chains, images_dir),
                                 "leakage": leakage}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": model_path_or_id, "kind": kind, "finetuned": finetuned, "test_csv": str(test_csv),
            "allow_test_overlap": allow_test_overlap}
    (out / "bench.json").write_text(json.dumps({**meta, "results": results}, indent=1))
    write_report(results, out / "bench.md", out / "bench.png",
                 title=f"HierarCaps benchmark: {model_path_or_id}", reference=(kind == "clip"))
    return results
