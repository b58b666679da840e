"""An upstream table as units of work, streamed: no stage holds a whole upstream as Python rows.

A stage says which upstream rows it wants (``where``: a vectorised mask over a record batch),
optionally a seeded sample of ``n`` of them, and the unit size. It gets ``Units``: the row count and
the units, ``(index, table)``, built one at a time; only units still to do become Python rows.

- Unit boundaries are a function of the upstream and the config alone (never of batch sizes), so
  a resumed run skips exactly the finished units.
- Without a sample, units follow the upstream's order, a batch at a time (memory: one batch and
  one unit).
- A sample orders the wanted rows by a seeded hash of their id (:func:`order_keys`, ties in
  upstream order) and keeps the first ``n``: one streaming pass with a bounded buffer of
  candidates (memory: about 2n rows and a batch, never the upstream). The hash
  is computed by numpy for a whole batch: the sha256 a row it replaces cost 2 us a row in Python,
  6 s before bulk's first model call over 3.3M captions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..background import read_ahead
from ..hashing import digest, hashes64
from ..store import StageDir

Where = Callable[[pa.RecordBatch], pa.Array]      # batch -> boolean mask of the rows wanted
# what a chain is built from (chain.chain_row): a caption stage reads no more of ingest's columns
CAPTION_COLUMNS = ["caption_id", "text", "source", "split", "image_url", "image_id", "orig_id", "positive", "negative"]
BATCH = int(os.environ.get("HIERARCAPS_SCAN_BATCH", 8192))   # rows per read; units never depend on it


def order_keys(seed: int, salt: str, ids: pa.Array) -> np.ndarray:
    """The sample order of each id: a 64-bit hash of the id (``hashing.hashes64``, vectorised)
    started from a hash of ``[seed, salt]``, so each stage and seed draws its own order."""
    start = np.full(len(ids), int(digest([seed, salt]), 16), dtype=np.uint64)
    return hashes64(ids.cast(pa.string()), start)


def _mask(batch: pa.RecordBatch, where: Where | None) -> np.ndarray:
    if where is None:
        return np.ones(batch.num_rows, dtype=bool)
    return pc.fill_null(where(batch), False).to_numpy(zero_copy_only=False)


@dataclass
class Units:
    """What a stage's ``run_units`` walks: ``total`` rows in units of ``size``."""

    total: int
    size: int
    _tables: Callable[[], Iterator[pa.Table]]

    def __iter__(self) -> Iterator[tuple[int, pa.Table]]:
        buf: list[pa.Table] = []
        n, index = 0, 0
        for t in self._tables():
            while t.num_rows:
                take = t.slice(0, self.size - n)
                buf.append(take)
                n += take.num_rows
                t = t.slice(take.num_rows)
                if n == self.size:
                    yield index, pa.concat_tables(buf)
                    buf, n, index = [], 0, index + 1
        if n:
            yield index, pa.concat_tables(buf)

    @classmethod
    def of_table(cls, table: pa.Table, size: int) -> "Units":
        """Units over a table already in memory (a sample; small inputs)."""
        return cls(table.num_rows, size, lambda: iter([table] if table.num_rows else []))

    @classmethod
    def of_rows(cls, rows: list[dict], size: int) -> "Units":
        return cls.of_table(pa.Table.from_pylist(rows) if rows else pa.table({}), size)


def stream_units(sd: StageDir, size: int, where: Where | None = None, where_columns: list[str] = (),
                 columns: list[str] | None = None, n: int | None = None, seed: int = 0, salt: str = "",
                 id_column: str = "caption_id") -> Units:
    """The wanted rows of ``sd`` (all columns unless ``columns``) as units of ``size`` rows; with
    ``n``, the first ``n`` of them in seeded-hash order."""
    if n is None:
        total = sd.num_rows() if where is None else sum(
            int(_mask(b, where).sum()) for b in sd.iter_batches(sorted(set(where_columns)), BATCH))
        wanted = None if columns is None else sorted({*columns, *where_columns})

        def tables() -> Iterator[pa.Table]:
            for b in sd.iter_batches(wanted, BATCH):
                m = _mask(b, where)
                t = pa.Table.from_batches([b])
                yield (t if m.all() else t.filter(pa.array(m))).select(columns or t.schema.names)
        return Units(total, size, tables)
    return Units.of_table(_sample(sd, columns, where, where_columns, n, seed, salt, id_column), size)


def _sample(sd: StageDir, columns: list[str] | None, where: Where | None, where_columns, n: int, seed: int,
            salt: str, id_column: str) -> pa.Table:
    """The ``n`` wanted rows with the smallest (key, upstream position), in that order: one pass
    that keeps a bounded buffer of candidates (at most 2n + a batch), reading ahead while it hashes."""
    names = pq.read_schema(sd.data_files()[0]).names if sd.data_files() else []
    read = sorted({*(columns or names), *where_columns, id_column})
    keys, pos, parts = [np.empty(0, np.uint64)], [np.empty(0, np.int64)], []
    held, start = 0, 0

    def best() -> np.ndarray:
        return np.lexsort((np.concatenate(pos), np.concatenate(keys)))[:n]

    for b in read_ahead(sd.iter_batches(read, BATCH)):
        idx = np.flatnonzero(_mask(b, where))
        if len(idx):
            wanted = pa.Table.from_batches([b.take(pa.array(idx))])
            keys.append(order_keys(seed, salt, wanted.column(id_column).combine_chunks()))
            pos.append(idx.astype(np.int64) + start)
            parts.append(wanted)
            held += len(idx)
        start += b.num_rows
        if held > 2 * n + BATCH:                      # keep the buffer bounded: cut back to the best n
            keep = best()
            parts = [pa.concat_tables(parts).take(pa.array(keep))]
            keys, pos, held = [np.concatenate(keys)[keep]], [np.concatenate(pos)[keep]], len(keep)
    if not parts:
        return pa.schema([pq.read_schema(sd.data_files()[0]).field(c) for c in columns or names]).empty_table() \
            if names else pa.table({})
    return pa.concat_tables(parts).take(pa.array(best())).select(columns or names)


def is_in(column: str, values) -> Where:
    """Rows whose ``column`` is one of ``values``."""
    value_set = pa.array(sorted(values), type=pa.string())
    return lambda b: pc.is_in(b.column(column), value_set=value_set)


def has_no_chain(b: pa.RecordBatch) -> pa.Array:
    """Rows that arrived without a chain (a plain caption: positive null or empty)."""
    pos = b.column("positive")
    return pc.or_kleene(pc.is_null(pos), pc.equal(pc.list_value_length(pos), 0))


def all_of(*wheres: Where) -> Where:
    def both(b: pa.RecordBatch) -> pa.Array:
        out = pc.fill_null(wheres[0](b), False)
        for w in wheres[1:]:
            out = pc.and_(out, pc.fill_null(w(b), False))
        return out
    return both
