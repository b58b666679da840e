"""Knowledge kept and structure learned, measured on chains never trained on: d_corr (with its tie
share), mean cosine of each caption to its original embedding, and same-image caption R@1 (each
caption retrieves its nearest other caption; a hit if both describe the same image) with a paired
bootstrap interval over images. Run on the validation split to choose settings, and once on the
test images for the chosen one.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.align.data import Chain, norm_text
from pipeline.align.encoders import Encoder, embed_texts


def unique_captions(chains: list[Chain]) -> tuple[list[str], list[int]]:
    """Tier-4 captions (first of each normalised key) and their image ids."""
    seen, texts, imgs = set(), [], []
    for c in chains:
        k = norm_text(c.caption)
        if k not in seen and c.image_id is not None:
            seen.add(k)
            texts.append(c.caption)
            imgs.append(c.image_id)
    return texts, imgs


def caption_hits(E: torch.Tensor, img: list[int]) -> dict[int, bool]:
    """{caption index: nearest other caption is of the same image}, over images with >= 2 captions."""
    S = E @ E.T
    S.fill_diagonal_(-float("inf"))
    nn = S.argmax(dim=1).tolist()
    counts: dict[int, int] = {}
    for i in img:
        counts[i] = counts.get(i, 0) + 1
    return {i: img[nn[i]] == img[i] for i in range(len(img)) if counts[img[i]] >= 2}


def r1_delta_ci(h1: dict[int, bool], h0: dict[int, bool], img: list[int], reps: int = 2000,
                seed: int = 0) -> list[float]:
    """95% interval of R@1 after - before by a paired bootstrap over images (an image's captions
    resampled together)."""
    by_img: dict[int, list[float]] = {}
    for i in h1:
        by_img.setdefault(img[i], []).append(float(h1[i]) - float(h0[i]))
    sums = np.array([sum(g) for g in by_img.values()])
    sizes = np.array([len(g) for g in by_img.values()])
    pick = np.random.default_rng(seed).integers(0, len(sums), size=(reps, len(sums)))
    deltas = sums[pick].sum(1) / sizes[pick].sum(1)
    return [float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))]


def tier_embeddings(enc: Encoder, chains: list[Chain]) -> torch.Tensor:
    """(n, 4, D) eval-mode embeddings, each distinct text encoded once (tiers 1-2 repeat a lot)."""
    texts = [t.strip() for c in chains for t in c.positive]
    uniq = list(dict.fromkeys(texts))
    row = {t: i for i, t in enumerate(uniq)}
    U = embed_texts(enc, uniq)
    return U[torch.tensor([row[t] for t in texts])].view(len(chains), 4, -1)


class Validator:
    """Scores an encoder on `chains` against the original (frozen) encoder's caption embeddings."""

    def __init__(self, chains: list[Chain], original: Encoder):
        self.chains = chains
        self.texts, self.imgs = unique_captions(chains)
        self.E0 = embed_texts(original, self.texts)
        self.h0 = caption_hits(self.E0, self.imgs)
        self.r1_0 = sum(self.h0.values()) / max(1, len(self.h0))

    def __call__(self, enc: Encoder) -> dict:
        from pipeline.benchmark.evaluate import d_corr_report

        root = embed_texts(enc, [""])[0]
        E = embed_texts(enc, self.texts)
        h1 = caption_hits(E, self.imgs)
        r1 = sum(h1.values()) / max(1, len(h1))
        return {"n_chains": len(self.chains), "n_images": len(set(self.imgs)), "n_captions": len(self.texts),
                **d_corr_report(tier_embeddings(enc, self.chains), root),
                "cosine": float((E * self.E0).sum(-1).mean()), "caption_r1": r1, "caption_r1_zero_shot": self.r1_0,
                "caption_r1_delta": r1 - self.r1_0, "caption_r1_delta_ci95": r1_delta_ci(h1, self.h0, self.imgs)}
