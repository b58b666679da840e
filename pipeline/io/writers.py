"""HierarCaps CSV writers (the official formats, tiers joined by ' => ').

A CSV is written a batch of rows at a time (:func:`csv_appender`) into a temp file that becomes
the file only when it is whole, so an export of millions of chains never holds them as rows."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..chain import join_tiers
from .atomic import atomic_file


class _Rows:
    """What :func:`csv_appender` hands out: call it with rows to append; ``n`` counts them."""

    def __init__(self, writer):
        self._writer, self.n = writer, 0

    def __call__(self, rows: Iterable[list]) -> None:
        for r in rows:
            self._writer.writerow(r)
            self.n += 1


@contextlib.contextmanager
def csv_appender(path: Path, header: list[str], gz: bool = False) -> Iterator[Callable[[Iterable[list]], None]]:
    """A UTF-8 CSV at ``path``, written atomically from batches of rows. ``gz``: gzipped with the
    same bytes on every run (no mtime and no file name in the gzip header, which default to the
    moment and the temp file's name). How the rows are batched never changes the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as raw, (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz
                                    else contextlib.nullcontext(raw)) as binary:
        f = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        yield _Rows(w)
        f.flush()
        f.detach()


def write_csv(path: Path, header: list[str], rows: Iterable[list]) -> int:
    """Write atomically; returns the number of data rows."""
    with csv_appender(path, header) as add:
        add(rows)
    return add.n


def write_csv_gz(path: Path, header: list[str], rows: Iterable[list]) -> int:
    """A gzipped CSV, atomically, byte-deterministic (see :func:`csv_appender`)."""
    with csv_appender(path, header, gz=True) as add:
        add(rows)
    return add.n


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


PAIR_COLUMNS = ["positive", "negative", "image_url"]   # what pair rows are made of


def pair_header(with_url: bool) -> list[str]:
    return PAIR_COLUMNS if with_url else PAIR_COLUMNS[:2]


def pair_rows(chains: Iterable[dict], with_url: bool) -> tuple[list[str], Iterator[list]]:
    """Train / expanded format: ``positive,negative[,image_url]``; the rows come lazily, so a
    caller may feed chains a batch at a time."""
    def rows() -> Iterator[list]:
        for c in chains:
            r = [join_tiers(c["positive"]), join_tiers(c["negative"])]
            if with_url:
                r.append(c.get("image_url") or "")
            yield r
    return pair_header(with_url), rows()
