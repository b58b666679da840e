"""An upstream table as units of work, streamed: no stage holds a whole upstream as Python rows.

A stage says which upstream rows it wants (``where``: a vectorised mask over a record batch),
optionally a seeded sample of ``n`` of them, and the unit size. It gets ``Units``: the row count and
the units, ``(index, table)``, built one at a time; only units still to do become Python rows.

- Unit boundaries are a function of the upstream and the config alone (never of batch sizes), so
  a resumed run skips exactly the finished units.
- Without a sample, units follow the upstream's order, a batch at a time (memory: one batch and
  one unit).
- A sample orders the wanted rows by a seeded hash of their id (:func:`order_keys`, ties in
  upstream order) and keeps the first ``n``: one streaming pass over the id column (and the
  ``where`` columns) with a bounded top-n, then a pass that takes only the chosen rows. The hash
  is computed by numpy for a whole batch: the sha256 a row it replaces cost 2 us a row in Python,
  6 s before bulk's first model call over 3.3M captions.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    def of_rows(cls, rows: list[dict], size: int, schema: pa.Schema | None = None) -> "Units":
        """Units over rows already in memory (small inputs: demonstrations, test fixtures)."""
        table = pa.Table.from_pylist(rows, schema=schema) if rows else pa.table({})
        return cls(len(rows), size, lambda: iter([table] if rows else []))


def stream_units(sd: StageDir, size: int, where: Where | None = None, where_columns: list[str] = (),
                 columns: list[str] | None = None, n: int | None = None, seed: int = 0, salt: str = "",
                 id_column: str = "caption_id") -> Units:
    """The wanted rows of ``sd`` (all columns unless ``columns``) as units of ``size`` rows; with
    ``n``, the first ``n`` of them in seeded-hash order."""
    scan_cols = sorted({*where_columns, id_column}) if n else sorted(set(where_columns))
    if n is None:
        total = sd.num_rows() if where is None else sum(
            int(_mask(b, where).sum()) for b in sd.iter_batches(scan_cols, BATCH))
        wanted = None if columns is None else sorted({*columns, *where_columns})

        def tables() -> Iterator[pa.Table]:
            for b in sd.iter_batches(wanted, BATCH):
                m = _mask(b, where)
                t = pa.Table.from_batches([b])
                yield (t if m.all() else t.filter(pa.array(m))).select(columns or t.schema.names)
        return Units(total, size, tables)
    positions, keys = _top_n(sd, scan_cols, where, n, seed, salt, id_column)
    chosen = _take(sd, positions, columns)
    chosen = chosen.take(pa.array(np.lexsort((positions, keys))))    # hash order, ties in upstream order
    return Units(chosen.num_rows, size, lambda: iter([chosen]))


def _top_n(sd: StageDir, scan_cols: list[str], where: Where | None, n: int, seed: int, salt: str,
           id_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Global positions and keys of the ``n`` wanted rows with the smallest (key, position)."""
    keys, pos = [np.empty(0, np.uint64)], [np.empty(0, np.int64)]
    held, start = 0, 0
    for b in read_ahead(sd.iter_batches(scan_cols, BATCH)):     # the next batch is read while this one is hashed
        m = _mask(b, where)
        idx = np.flatnonzero(m)
        if len(idx):
            keys.append(order_keys(seed, salt, b.column(id_column).take(pa.array(idx))))
            pos.append(idx.astype(np.int64) + start)
            held += len(idx)
        start += b.num_rows
        if held > 2 * n + BATCH:                      # keep the buffer bounded: cut back to the best n
            k, p = np.concatenate(keys), np.concatenate(pos)
            best = np.lexsort((p, k))[:n]
            keys, pos, held = [k[best]], [p[best]], n
    k, p = np.concatenate(keys), np.concatenate(pos)
    best = np.lexsort((p, k))[:n]
    order = np.argsort(p[best], kind="stable")       # upstream order, for reading
    return p[best][order], k[best][order]


def _take(sd: StageDir, positions: np.ndarray, columns: list[str] | None) -> pa.Table:
    """The rows at sorted global ``positions``, reading only the units that hold them (two at a
    time: Parquet decoding releases the GIL)."""
    import pyarrow.parquet as pq

    wanted, start = [], 0
    for f in sd.data_files():
        rows = pq.ParquetFile(f).metadata.num_rows
        lo, hi = np.searchsorted(positions, [start, start + rows])
        if hi > lo:
            wanted.append((f, positions[lo:hi] - start))
        start += rows
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda w: pq.read_table(w[0], columns=columns).take(pa.array(w[1])), wanted))
    if not parts:
        return pq.read_schema(sd.data_files()[0]).empty_table() if sd.data_files() else pa.table({})
    return pa.concat_tables(parts)


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
