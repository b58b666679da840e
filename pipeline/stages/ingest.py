"""ingest: caption sources -> one clean, de-duplicated captions table (plus rejects).

All sources are read as one stream; every run of ``unit_rows`` source rows is one committed unit.
A resumed run rebuilds the de-duplication index from its finished units and skips their rows, so
it ends with exactly the rows of an uninterrupted run.

Rows are handled a batch at a time, as Arrow columns: readers hand over batches
(:mod:`pipeline.io.batch`), clean-up, checks, ids and de-duplication are column operations, and
the de-duplication index holds fixed-size hashes (:mod:`pipeline.dedup`). The next batch is read,
and the last unit written, in threads while a batch is checked (:mod:`pipeline.background`).
Memory holds about two units plus 20 bytes per kept caption, whatever the file size.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..background import InOrder, read_ahead
from ..chain import TIER_SEP, join_tiers
from ..config import IngestSection, SourceConfig
from ..dedup import EXACT, KEEP, DedupIndex, dedup_hashes
from ..hashing import file_digest
from ..io.batch import Batch, read_batches
from ..io.readers import ReaderError
from ..paths import resolve_path
from ..schemas import CAPTIONS, REJECTS, reject
from ..stage import Stage, StageContext, StageError
from ..text import clean_texts

HEX = np.frombuffer(b"".join(b"%02x" % i for i in range(256)), np.uint8).reshape(256, 2)


def caption_id(source: str, text: str, positive: list[str] | None, orig_id: str | None) -> str:
    """Stable id: the same caption (and given chain) from the same source keeps its id across runs."""
    key = "\x1f".join([source, text, join_tiers(positive or []), orig_id or ""])
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def caption_ids(source: str, text: pa.Array, positive: pa.Array, orig_id: pa.Array) -> pa.Array:
    """``caption_id`` of each row: the same bytes hashed, one hashlib step a row (a copy of the
    hash of the ``source`` prefix, then the row's text and chain and id), hex by numpy."""
    start = hashlib.blake2b(f"{source}\x1f".encode("utf-8", "surrogateescape"), digest_size=8)
    if positive.null_count == len(positive) and orig_id.null_count == len(orig_id):
        rest = itertools.repeat(b"\x1f\x1f")
    else:                                   # "\x1f{chain}\x1f{orig_id}"
        chain = pc.fill_null(pc.binary_join(positive, TIER_SEP), "")
        rest = pc.binary_join_element_wise("", chain, pc.fill_null(orig_id, ""), "\x1f").cast(pa.binary()).to_pylist()
    digests = []
    for t, r in zip(text.cast(pa.binary()).to_pylist(), rest):
        h = start.copy()
        h.update(t)
        h.update(r)
        digests.append(h.digest())
    hex_ = HEX[np.frombuffer(b"".join(digests), np.uint8)].tobytes()
    offsets = np.arange(0, 16 * len(text) + 1, 16, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(text), [None, pa.py_buffer(offsets), pa.py_buffer(hex_)])


def _pick(mask: np.ndarray, a: pa.Array, b) -> pa.Array:
    """``a`` where ``mask``, else ``b`` (a function: it is only computed when some row needs it)."""
    if mask.all():
        return a
    return b() if not mask.any() else pc.if_else(pa.array(mask), a, b())


def image_keys(image_id: pa.Array, image_url: pa.Array) -> pa.Array:
    """What identifies a caption's image for per-image de-duplication (``image_id or image_url``)."""
    has_id = pc.fill_null(pc.greater(pc.binary_length(image_id), 0), False).to_numpy(zero_copy_only=False)
    return _pick(has_id, image_id, lambda: image_url)


def key_texts(text: pa.Array, positive: pa.Array) -> pa.Array:
    """What de-duplication compares: chains (HierarCaps inputs) are distinct items even when they
    share a caption."""
    return _pick(~_has(positive), text, lambda: pc.binary_join(positive, TIER_SEP))


def _or(values: pa.Array, default: str) -> pa.Array:
    """``value or default`` for each row."""
    given = pc.fill_null(pc.not_equal(values, ""), False).to_numpy(zero_copy_only=False)
    return _pick(given, values, lambda: pa.repeat(pa.scalar(default, pa.string()), len(values)))


def _has(lists: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.greater(pc.list_value_length(lists), 0), False).to_numpy(zero_copy_only=False)


def _kept_lists(lists: pa.Array, verbatim: np.ndarray) -> pa.Array:
    """Tiers cleaned unless the row's chain is kept verbatim; an empty list becomes null."""
    has = _has(lists)
    if not has.any():
        return pa.nulls(len(lists), lists.type)
    if not has.all():
        lists = pc.if_else(pa.array(has), lists, pa.scalar(None, lists.type))
    values = pc.list_flatten(lists)
    values = _pick(verbatim[pc.list_parent_indices(lists).to_numpy()], values, lambda: clean_texts(values))
    offsets = np.concatenate(([0], np.cumsum(pc.fill_null(pc.list_value_length(lists), 0).to_numpy())))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values, mask=pc.is_null(lists))


def _source_batches(src: SourceConfig, limit: int | None) -> Iterator[Batch]:
    n = min(x for x in (src.limit, limit) if x) if (src.limit or limit) else None
    return read_ahead(read_batches(resolve_path(src.path), src.format, src.columns, limit=n))


class Ingest(Stage):
    name = "ingest"
    version = "1"
    params = {"ingest": "ingest"}
    ingest: IngestSection

    def key_material(self) -> dict:
        """Input file digests; a source that is missing, a folder or unreadable keys as such (the
        reader then refuses it with the reason)."""
        files = {}
        for s in self.ingest.sources:
            p = resolve_path(s.path)
            try:
                files[s.name] = file_digest(p) if p.is_file() else "missing"
            except OSError:
                files[s.name] = "unreadable"
        return {"files": files}

    def process(self, ctx: StageContext) -> None:
        cfg = self.ingest
        if not cfg.sources:
            raise StageError("ingest: no sources configured (ingest.sources is empty)")
        self.names = [s.name for s in cfg.sources]
        writer = InOrder()          # a finished unit is written while the next one is read and checked
        try:
            g = self._units(ctx, ctx.done_units(), DedupIndex(cfg.dedup, len(cfg.sources)), writer)
        except BaseException:
            writer.close(quiet=True)   # the unit in flight is still written, as it was before the error
            raise
        writer.close()
        ctx.progress(g, g, "done", force=True)
        ctx.stats["sources"] = self.names

    def _units(self, ctx: StageContext, done: dict, index: DedupIndex, writer: InOrder) -> int:
        """Every source's items, cut into units; returns how many items there were."""
        unit_rows, g, parts = self.ingest.unit_rows, 0, []
        for si, src in enumerate(self.ingest.sources):
            path = str(resolve_path(src.path))
            try:
                for batch in _source_batches(src, self.ingest.limit):
                    while batch.n:
                        unit, offset = divmod(g, unit_rows)
                        piece, batch = batch.split(unit_rows - offset)
                        g += piece.n
                        if unit in done:    # finished: its kept captions join the index, its rows are skipped
                            if offset == 0:
                                self._remember(ctx, index, unit)
                            continue
                        parts.append(self._piece(piece, si, src, path, index))
                        if g % unit_rows == 0:
                            writer.submit(self._commit, ctx, unit, parts)
                            parts = []
                            ctx.progress(g, None, f"{src.name}: {piece.last_row()} rows")
            except ReaderError as e:
                raise StageError(f"ingest: {e}") from None
        last = (g - 1) // unit_rows
        if g % unit_rows and last not in done or g == 0 and 0 not in done:
            writer.submit(self._commit, ctx, max(last, 0), parts)
        return g

    @staticmethod
    def _commit(ctx, index, parts):
        ctx.commit(index, pa.concat_tables([p[0] for p in parts] or [CAPTIONS.empty_table()]),
                   pa.concat_tables([p[1] for p in parts] or [REJECTS.empty_table()]))

    def _remember(self, ctx: StageContext, index: DedupIndex, unit: int) -> None:
        """A finished unit's captions into the de-dup index, as if its rows had just been read: the
        units after it (finished or not) see exactly what an uninterrupted run saw."""
        if self.ingest.dedup == "none":
            return
        t = pq.read_table(ctx.out.unit_path(unit), columns=["text", "positive", "source", "source_row", "image_id",
                                                            "image_url"])
        first = {name: i for i, name in reversed(list(enumerate(self.names)))}
        src = np.array([first[s] for s in t["source"].to_pylist()], np.int64)
        where = index.where(src, _col(t, "source_row").to_numpy())
        exact, near = dedup_hashes(key_texts(_col(t, "text"), _col(t, "positive")),
                                   image_keys(_col(t, "image_id"), _col(t, "image_url")),
                                   self.ingest.dedup, self.ingest.dedup_scope)
        index.check(exact, near, where)

    def _piece(self, piece: Batch, si: int, src: SourceConfig, path: str, index: DedupIndex):
        """One batch's captions table and rejects (in source order), against the index so far."""
        cfg, r = self.ingest, piece.records
        col = lambda name: _col(r, name)    # noqa: E731
        verbatim = _has(col("positive")) if not cfg.clean_chains else np.zeros(r.num_rows, bool)
        text = _pick(verbatim, col("text"), lambda: clean_texts(col("text")))
        pos, neg = _kept_lists(col("positive"), verbatim), _kept_lists(col("negative"), verbatim)
        length = pc.utf8_length(text).to_numpy()
        ok = (length >= cfg.min_chars) & (length <= cfg.max_chars)
        kind, of = np.zeros(r.num_rows, np.int8), np.zeros(r.num_rows, np.uint64)
        if cfg.dedup != "none" and ok.any():      # the rows that passed the checks, in order
            checked = {k: v if ok.all() else v.filter(pa.array(ok)) for k, v in
                       (("text", text), ("pos", pos), ("id", col("image_id")), ("url", col("image_url")),
                        ("row", col("row")))}
            exact, near = dedup_hashes(key_texts(checked["text"], checked["pos"]),
                                       image_keys(checked["id"], checked["url"]), cfg.dedup, cfg.dedup_scope)
            kind[ok], of[ok] = index.check(exact, near, index.where(si, checked["row"].to_numpy()))
        kept = pa.array(ok & (kind == KEEP))
        cols = {"text": text, "source_row": col("row"), "split": _or(col("split"), src.split),
                "image_url": col("image_url"), "image_id": col("image_id"), "orig_id": col("orig_id"),
                "positive": pos, "negative": neg}
        cols = {k: v.filter(kept) for k, v in cols.items()}
        n = len(cols["text"])
        cols.update(caption_id=caption_ids(src.name, cols["text"], cols["positive"], cols["orig_id"]),
                    source=pa.repeat(pa.scalar(src.name), n), source_file=pa.repeat(pa.scalar(path), n))
        rows = pa.table({f.name: cols[f.name] for f in CAPTIONS}, schema=CAPTIONS)
        return rows, self._rejects(piece, text, length, ok, kind, of, path, index)

    def _rejects(self, piece: Batch, text, length, ok, kind, of, path, index: DedupIndex) -> pa.Table:
        """The batch's Bads and refused records, in source order, with today's reasons."""
        cfg, found = self.ingest, []
        item, row = _col(piece.records, "item").to_numpy(), _col(piece.records, "row").to_numpy()
        for i in np.flatnonzero(~ok | (kind != KEEP)).tolist():
            t = text[i].as_py()
            if not ok[i]:
                why = ("empty caption" if not t else f"caption shorter than {cfg.min_chars} characters") \
                    if length[i] < cfg.min_chars else f"caption longer than {cfg.max_chars} characters ({length[i]})"
            else:
                source, at = index.unpack(int(of[i]))
                why = f"{'exact duplicate' if kind[i] == EXACT else 'near-duplicate (normalised)'} of " \
                      f"{self.names[source]} row {at}"
            found.append((int(item[i]), reject(self.name, path, None, why, t[:300], int(row[i]))))
        found += [(i, reject(self.name, path, None, b.reason, b.excerpt, b.row)) for i, b in piece.bads]
        found.sort(key=lambda x: x[0])
        return pa.Table.from_pylist([x[1] for x in found], schema=REJECTS)


def _col(t: pa.Table, name: str) -> pa.Array:
    c = t[name]
    return c.chunk(0) if c.num_chunks == 1 else c.combine_chunks()
