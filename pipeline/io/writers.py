"""HierarCaps CSV writers (the official formats, tiers joined by ' => ')."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable

from ..chain import join_tiers


def write_csv(path: Path, header: list[str], rows: Iterable[list]) -> int:
    """Write atomically; returns the number of data rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow(r)
            n += 1
    os.replace(tmp, path)
    return n


def test_id_of(chain: dict, index: int) -> str:
    """A test chain's id: the test set's (0..N-1) when it was drawn, else the source's, else its position."""
    tid = chain.get("test_id")
    return str(tid) if tid is not None else chain.get("orig_id") or str(index)


def test_rows(chains: list[dict]) -> tuple[list[str], list[list]]:
    """Curated test format: ``id,captions,image_url`` (ids from :func:`test_id_of`)."""
    rows = []
    for i, c in enumerate(chains):
        rows.append([test_id_of(c, i), join_tiers(c["positive"]), c.get("image_url") or ""])
    return ["id", "captions", "image_url"], rows


def pair_rows(chains: list[dict], with_url: bool) -> tuple[list[str], list[list]]:
    """Train / expanded format: ``positive,negative[,image_url]``."""
    header = ["positive", "negative"] + (["image_url"] if with_url else [])
    rows = []
    for c in chains:
        r = [join_tiers(c["positive"]), join_tiers(c["negative"])]
        if with_url:
            r.append(c.get("image_url") or "")
        rows.append(r)
    return header, rows
