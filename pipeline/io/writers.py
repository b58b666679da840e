"""HierarCaps CSV writers (the official formats, tiers joined by ' => ')."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import BinaryIO, Iterable

from ..chain import join_tiers
from .atomic import atomic_file


def _write_rows(binary: BinaryIO, header: list[str], rows: Iterable[list]) -> int:
    """The CSV, UTF-8, into a binary file (left open); returns the number of data rows."""
    f = io.TextIOWrapper(binary, encoding="utf-8", newline="")
    w = csv.writer(f, lineterminator="\n")
    w.writerow(header)
    n = 0
    for r in rows:
        w.writerow(r)
        n += 1
    f.flush()
    f.detach()
    return n


def write_csv(path: Path, header: list[str], rows: Iterable[list]) -> int:
    """Write atomically; returns the number of data rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        return _write_rows(f, header, rows)


def write_csv_gz(path: Path, header: list[str], rows: Iterable[list]) -> int:
    """A gzipped CSV, atomically, with the same bytes on every run: no mtime and no file name in the
    gzip header (both default to the moment and the temp file's name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        return _write_rows(gz, header, rows)


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
