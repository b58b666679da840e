"""Alignment losses on L2-normalised embeddings.

RE follows the official HierarCaps `train.py` (TAU-VAILab/hierarcaps, `batch2losses`):
  * root r = normalised embedding of "" under the current weights (recomputed every step);
  * exterior angle Xi_r(e, e') = arccos(<e - r, e' - e> / (|e - r| |e' - e|)), cosine clipped to [-1, 1];
  * positive triplets (pos_k, pos_{k+1}), k = 1..3; negative triplets (pos_k, neg_k), k = 1..3
    (neg tier 4 is unused, as in the official code);
  * L_RE = mean positive angle - mean negative angle;
  * mining: with P, -N flattened over (k, chain), i = argmax P, j = argmax(-N_angle), loss
    (P + N)[i] + (P + N)[j] (N holds negated angles);
  * pull-back (1 - mean cos(E, E_frozen)) / 2 over every text of the batch.
`radius_order_loss` (a hinge on tier radii) is an extra of ours, off by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def exterior_angle(root: torch.Tensor, e: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
    """Angle at e between the ray root->e and the step e->e2 (0 = e2 lies straight outward)."""
    a = e - root
    b = e2 - e
    cos = (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(_EPS) * b.norm(dim=-1).clamp_min(_EPS))
    return cos.clip(min=-1.0, max=1.0).acos()


def pullback_loss(E: torch.Tensor, E_orig: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - mean cosine to the frozen original embeddings) / 2; both inputs normalised. `weights`
    (one per text) make it a weighted mean; None is the official uniform mean."""
    cos = (E * E_orig).sum(-1)
    mean = cos.mean() if weights is None else (cos * weights.to(cos)).sum() / weights.sum().to(cos)
    return (1 - mean) / 2


def re_angles(pos: torch.Tensor, neg: torch.Tensor, root: torch.Tensor):
    """P: positive angles (3, B); N: negated negative angles (3, B). pos/neg: (B, 4, D)."""
    P = torch.stack([exterior_angle(root, pos[:, k], pos[:, k + 1]) for k in range(3)])
    N = torch.stack([-exterior_angle(root, pos[:, k], neg[:, k]) for k in range(3)])
    return P, N


def re_loss(pos: torch.Tensor, neg: torch.Tensor, root: torch.Tensor) -> dict[str, torch.Tensor]:
    """RE loss and hard-mining loss of the official code."""
    P, N = re_angles(pos, neg, root)
    eloss = P.mean() + N.mean()
    Pr, Nr = P.ravel(), N.ravel()
    PN = Pr + Nr
    i, j = Pr.argmax(), Nr.argmax()
    mloss = PN[i] + PN[j]
    return {"eloss": eloss, "mloss": mloss, "pos_angle": P.mean().detach(), "neg_angle": -N.mean().detach()}


def radius_order_loss(pos: torch.Tensor, root: torch.Tensor, margin: float) -> torch.Tensor:
    """Our addition, not the paper's: a hinge on the generality order itself. Each tier's radius
    |e - r| should exceed the tier above it by `margin`; d_corr counts exactly these inversions, and
    RE's angles constrain them only indirectly (short general tiers tie near the root). pos: (B, 4, D)."""
    d = (pos - root).norm(dim=-1)
    return F.relu(margin - (d[:, 1:] - d[:, :-1])).mean()


def cone_half_aperture(u: torch.Tensor, K: float) -> torch.Tensor:
    """Euclidean entailment-cone half-aperture psi(u) = arcsin(K / |u|) (Ganea et al. 2018), u = e - root."""
    return (K / u.norm(dim=-1).clamp_min(_EPS)).clamp(max=1 - 1e-6).asin()


def cone_loss(pos: torch.Tensor, neg: torch.Tensor, root: torch.Tensor, K: float = 0.1,
              margin: float = 0.1) -> dict[str, torch.Tensor]:
    """Ablation: a child must fall inside its parent's cone (exterior angle <= half-aperture), a
    negative must fall outside it by `margin`. Cone apex at the parent, axis pointing away from root
    (MERU's cone with the origin moved to the root)."""
    pe, ne = [], []
    for k in range(3):
        psi = cone_half_aperture(pos[:, k] - root, K)
        pe.append(F.relu(exterior_angle(root, pos[:, k], pos[:, k + 1]) - psi))
        ne.append(F.relu(margin + psi - exterior_angle(root, pos[:, k], neg[:, k])))
    pe, ne = torch.stack(pe), torch.stack(ne)
    return {"eloss": pe.mean() + ne.mean(), "mloss": pe.max() + ne.max()}


def clear_glass_loss(E: torch.Tensor, temperature: float = 0.05, inner_weight: float = 1.0
                     ) -> dict[str, torch.Tensor]:
    """CLEAR GLASS grouped loss (arXiv 2509.12771), our reading of the abstract.

    E: (G, M, D) normalised embeddings of M members of each of G groups; a group is a set of
    captions sharing a higher concept that is never shown to the model. Outer loss: symmetric
    InfoNCE between group representations -- the centroids of the two halves of each group (the
    paper contrasts the text and image sides of a group; without training images the second view is
    the other half of the group's captions). Inner loss: mean distance (1 - cos) of each member to its
    group centroid, pulling members toward what they share.
    """
    G, M, _ = E.shape
    h = M // 2
    a = F.normalize(E[:, :h].mean(1), dim=-1)
    b = F.normalize(E[:, h:].mean(1), dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(G, device=E.device)
    outer = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    c = F.normalize(E.mean(1), dim=-1)
    inner = (1 - (E * c[:, None]).sum(-1)).mean()
    return {"cg_outer": outer, "cg_inner": inner, "cg": outer + inner_weight * inner}
