"""Source items a block at a time, for ingest's vectorised clean-up, ids and de-duplication.

A ``Batch`` is ``n`` consecutive items of one source: its Records as one Arrow table (column
``item``, the item's ordinal in the source, keeps the order) and its Bads with their ordinals.
Ingest cuts batches at unit boundaries (every ``unit_rows`` items, Records and Bads alike), so a
unit holds the same items whatever block size a reader uses.

Conceptual Captions TSV is read by the vectorised reader (:mod:`.tsv_fast`); the other formats
keep their per-row parsers (CSV quoting, JSON and chains need them) and are grouped here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from .readers import READERS, detect_format
from .textfile import Bad, Record, ReaderError, check_file

GROUP = 8192                     # items per batch from a per-row reader

RECORDS = pa.schema([
    ("item", pa.int64()), ("row", pa.int64()), ("text", pa.string()), ("image_url", pa.string()),
    ("image_id", pa.string()), ("orig_id", pa.string()), ("split", pa.string()),
    ("positive", pa.list_(pa.string())), ("negative", pa.list_(pa.string())),
])


@dataclass
class Batch:
    start: int                                              # ordinal of the first item
    n: int                                                  # items: records + bads
    records: pa.Table = field(default_factory=RECORDS.empty_table)
    bads: list[tuple[int, Bad]] = field(default_factory=list)   # (ordinal, Bad)

    def split(self, k: int) -> tuple["Batch", "Batch"]:
        """The first ``k`` items, and the rest."""
        if k >= self.n:
            return self, Batch(self.start + self.n, 0)
        cut = self.start + k
        i = int(np.searchsorted(self.records.column("item").to_numpy(), cut))
        return (Batch(self.start, k, self.records.slice(0, i), [b for b in self.bads if b[0] < cut]),
                Batch(cut, self.n - k, self.records.slice(i), [b for b in self.bads if b[0] >= cut]))

    def last_row(self) -> int:
        rows = self.records.column("row")
        return max([b.row for _, b in self.bads[-1:]] + ([rows[-1].as_py()] if len(rows) else []), default=0)


def records_table(items: Iterable[tuple[int, Record]]) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in RECORDS.names}
    for i, r in items:
        for name, v in (("item", i), ("row", r.row), ("text", r.text), ("image_url", r.image_url),
                        ("image_id", r.image_id), ("orig_id", r.orig_id), ("split", r.split),
                        ("positive", r.positive or None), ("negative", r.negative or None)):
            cols[name].append(v)
    return pa.Table.from_pydict(cols, schema=RECORDS)


def items_batch(start: int, items: list[Record | Bad]) -> Batch:
    numbered = list(enumerate(items, start))
    return Batch(start, len(items), records_table((i, r) for i, r in numbered if isinstance(r, Record)),
                 [(i, b) for i, b in numbered if isinstance(b, Bad)])


def group(items: Iterator[Record | Bad], size: int = GROUP) -> Iterator[Batch]:
    start = 0
    while chunk := list(itertools.islice(items, size)):
        yield items_batch(start, chunk)
        start += len(chunk)


def head(batches: Iterator[Batch], limit: int) -> Iterator[Batch]:
    """The first ``limit`` items; the reader is not asked for more."""
    for b in batches:
        b, _ = b.split(limit)
        limit -= b.n
        yield b
        if limit <= 0:
            return


def read_batches(path: Path, fmt: str = "auto", columns: dict | None = None,
                 limit: int | None = None) -> Iterator[Batch]:
    """``read_source``'s items as batches (the same items, order and whole-file errors)."""
    from .tsv_fast import read_cc_tsv_batches

    check_file(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise ReaderError(str(path), f"unknown format '{fmt}'; choose one of {sorted(READERS)}")
    if fmt == "cc_tsv":
        batches = read_cc_tsv_batches(path)
        return head(batches, limit) if limit else batches
    items = READERS[fmt](path, columns=columns)
    return group(itertools.islice(items, limit) if limit else items)
