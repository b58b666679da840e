"""What a fine-tuned encoder was trained on, kept beside it, so `bench` can refuse to score a model
on test captions or images it saw.

`align` writes `training_data.npz` next to the saved `model/`: 64-bit hashes of every tier-4 text
(positive and negative, the normalised caption key of `data.norm_text`) and every COCO image id of
the training chains. `bench` hashes its test set the same way and counts the overlap. A 64-bit hash
collision would report a false overlap (never hide one); at 10^5 captions its odds are ~1e-9.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pipeline.align.data import Chain, norm_text
from pipeline.errors import UserError

MANIFEST = "training_data.npz"


class LeakageError(UserError):
    """The model bench was asked to score saw test captions or images in training."""


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(norm_text(text).encode("utf-8"), digest_size=8).digest(), "little")


def caption_hashes(chains: list[Chain], negatives: bool = True) -> np.ndarray:
    texts = [c.caption for c in chains]
    if negatives:
        texts += [c.negative[-1] for c in chains if c.negative and c.negative[-1]]
    return np.unique(np.array([_hash(t) for t in texts], dtype=np.uint64))


def image_ids(chains: list[Chain]) -> np.ndarray:
    return np.unique(np.array([c.image_id for c in chains if c.image_id is not None], dtype=np.int64))


def write_manifest(out_dir: str | Path, chains: list[Chain]) -> Path:
    path = Path(out_dir) / MANIFEST
    np.savez_compressed(path, caption_hashes=caption_hashes(chains), image_ids=image_ids(chains))
    return path


def manifest_of(model_path: str | Path) -> Path | None:
    """The manifest of an align output: beside its `model/` (or inside the output dir given)."""
    p = Path(str(model_path))
    for cand in (p / MANIFEST, p.parent / MANIFEST):
        if cand.is_file():
            return cand
    return None


def overlap(model_path: str | Path, test_chains: list[Chain]) -> dict:
    """{"checked", "manifest", "test_captions", "test_images", "caption_overlap", "image_overlap"}."""
    m = manifest_of(model_path)
    if m is None:
        return {"checked": False, "manifest": None, "reason": f"no {MANIFEST} beside the model (not an align output)"}
    with np.load(m) as z:
        caps, imgs = z["caption_hashes"], z["image_ids"]
    t_caps = caption_hashes(test_chains, negatives=False)
    t_imgs = image_ids(test_chains)
    return {"checked": True, "manifest": str(m), "test_captions": int(len(t_caps)), "test_images": int(len(t_imgs)),
            "caption_overlap": int(np.isin(t_caps, caps).sum()), "image_overlap": int(np.isin(t_imgs, imgs).sum())}


def guard(model_path: str | Path, test_chains: list[Chain], test_csv: str | Path, allow: bool = False) -> dict:
    """Refuse (LeakageError, one line) a model whose training data overlaps the test set or whose
    training data is unknown, unless `allow`; the returned record says what was found and allowed."""
    rec = {**overlap(model_path, test_chains), "allowed": bool(allow)}
    if allow:
        return rec
    if not rec["checked"]:
        raise LeakageError(f"{model_path}: cannot check it against the test set {test_csv}: {rec['reason']}; "
                           "set bench.allow_test_overlap=true (--allow-test-overlap) to score it anyway")
    if rec["caption_overlap"] or rec["image_overlap"]:
        raise LeakageError(f"{model_path}: trained on {rec['caption_overlap']} of the {rec['test_captions']} test "
                           f"captions and {rec['image_overlap']} of the {rec['test_images']} test images of "
                           f"{test_csv} ({rec['manifest']}); set bench.allow_test_overlap=true "
                           "(--allow-test-overlap) to score it anyway")
    return rec
