"""Load caption chains from HierarCaps CSVs or CHAINS Parquet, and split them for training.

Test captions never enter training: `training_split` drops every chain whose caption (tier 4) is a
test caption or whose image is a test image, and draws whole images as the validation split.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from dataclasses import dataclass
from pathlib import Path

from pipeline.chain import N_TIERS, chain_problem, is_chain, split_tiers
from pipeline.schemas import reject
from pipeline.testset import coco_image_id



@dataclass
class Chain:
    positive: list[str]                 # 4 tiers, general -> specific
    negative: list[str | None] | None   # 4 tiers or None
    image_url: str | None = None
    chain_id: str = ""

    @property
    def caption(self) -> str:
        return self.positive[-1]

    @property
    def image_id(self) -> int | None:
        return image_id(self.image_url)

    @property
    def has_full_negative(self) -> bool:
        return is_chain(self.negative)


def image_id(url: str | None) -> int | None:
    """COCO image id from an url or file name (`..._000000301718.jpg` -> 301718)."""
    found = coco_image_id(url)
    return None if found is None else int(found)


def norm_text(t: str) -> str:
    """Key for matching captions across files: case, spacing and final period ignored."""
    return " ".join(t.lower().split()).rstrip(" .")


def _open_text(path: Path):
    raw = open(path, "rb")
    if path.suffix == ".gz":
        raw = gzip.open(raw)
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _bad(path, row, reason, rejects):
    if rejects is None:
        raise ValueError(f"{path}: row {row}: {reason}")
    rejects.append(reject("align", str(path), "", reason, "", row))


def _load_csv(path: Path, rejects) -> list[Chain]:
    out: list[Chain] = []
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if "captions" not in cols and "positive" not in cols:
            raise ValueError(f"{path}: need a 'captions' (test) or 'positive' (train) column, got {sorted(cols)}")
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            pos = split_tiers(row.get("captions") or row.get("positive") or "")
            if why := chain_problem(pos):
                _bad(path, i, f"positive chain: {why}", rejects)
                continue
            neg = split_tiers(row["negative"]) if row.get("negative") else None
            if neg is not None and len(neg) != N_TIERS:
                _bad(path, i, f"negative chain has {len(neg)} tiers, need {N_TIERS}", rejects)
                continue
            cid = row.get("id") or f"{path.name}:{i}"
            out.append(Chain(pos, neg, row.get("image_url") or None, str(cid)))
    return out


def _load_parquet(path: Path, rejects) -> list[Chain]:
    import pyarrow.parquet as pq

    cols = ["chain_id", "positive", "negative", "image_url"]
    table = pq.read_table(path, columns=cols)
    out = []
    for i, r in enumerate(table.to_pylist(), start=1):
        pos = r["positive"]
        if why := chain_problem(pos):
            _bad(path, i, f"positive chain: {why}", rejects)
            continue
        out.append(Chain(list(pos), list(r["negative"]) if r["negative"] else None, r["image_url"], r["chain_id"] or ""))
    return out


def load_chains(path: str | Path, rejects: list[dict] | None = None) -> list[Chain]:
    """Chains from a HierarCaps CSV (.csv/.csv.gz; test or train layout) or CHAINS Parquet file/dir.

    Bad rows raise ValueError naming file and row, unless `rejects` is given (then they go there).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir() or path.suffix == ".parquet":
        return _load_parquet(path, rejects)
    return _load_csv(path, rejects)


@dataclass
class Split:
    train: list[Chain]
    val: list[Chain]          # chains of the validation images (never trained on; selection uses these)
    test_images: list[Chain]  # chains of the test images found among the input (never trained on)
    stats: dict

    @property
    def heldout(self) -> list[Chain]:
        return self.val


def training_split(chains: list[Chain], test_chains: list[Chain], n_val_images: int = 500,
                   seed: int = 0) -> Split:
    """Drop test captions and test images, then draw `n_val_images` whole images (seeded) as the
    validation split. Chains without an image id can only train."""
    test_caps = {norm_text(c.caption) for c in test_chains}
    test_imgs = {c.image_id for c in test_chains if c.image_id is not None}
    on_test_img = [c for c in chains if c.image_id is not None and c.image_id in test_imgs]
    kept = [c for c in chains if norm_text(c.caption) not in test_caps
            and (c.image_id is None or c.image_id not in test_imgs)]
    imgs = sorted({c.image_id for c in kept if c.image_id is not None})
    held = set(random.Random(seed).sample(imgs, min(n_val_images, len(imgs))))
    train = [c for c in kept if c.image_id is None or c.image_id not in held]
    val = [c for c in kept if c.image_id is not None and c.image_id in held]
    n_cap = sum(norm_text(c.caption) in test_caps for c in chains)
    stats = {"input": len(chains), "dropped_test_caption": n_cap,
             "dropped_test_image": len(chains) - len(kept) - n_cap, "train": len(train),
             "val": len(val), "val_images": len(held), "seed": seed}
    return Split(train, val, on_test_img, stats)
