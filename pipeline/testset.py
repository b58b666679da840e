"""The paper's test side: which images, the pool of their chains, and the set to curate.

HierarCaps' test pool covers 5,000 COCO val images (all chains that passed, about 4.7 per image);
the curated test set is one chain per image for 1,000 images, ids 0..999. Here: the test images
are a seeded count or an explicit list (:func:`choose_images`, applied by bulk before H runs and
by export), and the set to curate is drawn one chain per image, stratified over tier-1 concepts
(:func:`sample_test_set`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .hashing import digest

_COCO = re.compile(r"_(\d+)\.\w+$")
_STRICT = re.compile(r"COCO_[A-Za-z]+\d*_(\d+)\.\w+$")


class TestSection(BaseModel):
    """The test side of a run (config ``test:``)."""

    model_config = ConfigDict(extra="forbid")
    __test__: ClassVar[bool] = False           # not a pytest test class

    split: str = "test"                        # the output split that is the test side
    images: int | list[str] | None = Field(None)   # a seeded count, or COCO image ids / file names; None: all
    curate: int | None = Field(1000, ge=1)     # chains in the set to curate, one per image; None: every chain
    stratify: bool = True                      # over tier-1 concepts, in proportion to their share


def coco_image_id(url_or_name: str | None, strict: bool = False) -> str | None:
    """COCO image id from an url or file name (``..._000000301718.jpg`` -> ``"301718"``); ``strict``:
    only a COCO file name (``COCO_val2014_<digits>.jpg``), never a number elsewhere in an url."""
    if not url_or_name:
        return None
    m = _STRICT.search(url_or_name) if strict else _COCO.search(url_or_name) or re.search(r"_(\d+)", url_or_name)
    return str(int(m.group(1))) if m else None


def image_of(row: dict) -> str | None:
    """A row's image: the COCO id when known, else the image url."""
    return row.get("image_id") or coco_image_id(row.get("image_url")) or row.get("image_url")


def _wanted(entry: str) -> str:
    entry = str(entry).strip()
    return str(int(entry)) if entry.isdigit() else (coco_image_id(entry) or entry)


def choose_images(images: Iterable[str], cfg: TestSection, seed: int) -> set[str] | None:
    """The test images among ``images`` (None: every image is a test image)."""
    if cfg.images is None:
        return None
    distinct = {i for i in images if i is not None}
    if isinstance(cfg.images, int):
        return set(sorted(distinct, key=lambda i: digest([seed, "test-images", i]))[:cfg.images])
    return {i for i in (_wanted(e) for e in cfg.images)} & distinct


def _concept(row: dict) -> str:
    return " ".join(row["positive"][0].lower().split())


def sample_test_set(chains: list[dict], cfg: TestSection, seed: int) -> list[dict]:
    """One chain per image for ``cfg.curate`` images, in a seeded order, ids 0..N-1 (``test_id``).

    Each image's chain is drawn by a seeded hash; images are then drawn concept by concept, each
    tier-1 concept getting its share of the N places (largest remainders), so the set mirrors the
    pool's concepts. Chains that are already one per image for at most N images are the test set
    as they stand (a curated HierarCaps test CSV round-trips unchanged)."""
    by_image: dict[str, list[dict]] = defaultdict(list)
    for c in chains:
        by_image[image_of(c) or c["chain_id"]].append(c)
    n = cfg.curate
    if n is None or (len(by_image) <= n and all(len(v) == 1 for v in by_image.values())):
        return list(chains)
    rank = lambda *salt: digest([seed, "test-set", *salt])  # noqa: E731
    picked = {img: min(cs, key=lambda c: rank("chain", c["chain_id"])) for img, cs in by_image.items()}
    order = sorted(picked, key=lambda img: rank("image", img))
    n = min(n, len(order))
    if cfg.stratify:
        groups: dict[str, list[str]] = defaultdict(list)
        for img in order:
            groups[_concept(picked[img])].append(img)
        share = {k: n * len(v) / len(order) for k, v in groups.items()}
        quota = {k: int(s) for k, s in share.items()}
        for k in sorted(share, key=lambda k: (-(share[k] - quota[k]), rank("concept", k)))[:n - sum(quota.values())]:
            quota[k] += 1
        chosen = {img for k, imgs in groups.items() for img in imgs[:quota[k]]}
        order = [img for img in order if img in chosen]
    return [{**picked[img], "test_id": i} for i, img in enumerate(order[:n])]
