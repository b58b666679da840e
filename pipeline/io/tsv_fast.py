"""Conceptual Captions TSV a block at a time: the items of ``readers.read_cc_tsv`` (same Records,
Bads, reasons and line numbers), with the line checks done by numpy over 2 MiB blocks.

A line takes the vectorised path when it is plain: ASCII, no NUL, not empty, not over
``MAX_LINE_BYTES``, not starting with whitespace, exactly one tab. Every other line goes through
the per-line code (``cc_tsv_row``), so its Record or Bad is exactly the per-line reader's. The
first line is read as ``text_lines`` reads it (BOM, UTF-16, CR-only checks), and a gzip is read in
the same decompressor steps as its ``readline`` does, so damage ends the rows at the same line.
Memory holds a block and at most one unfinished line; an overlong line is skipped, not kept.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .batch import RECORDS, Batch, items_batch, records_table
from .readers import cc_tsv_row
from .textfile import (EXCERPT_MAX, GZIP_DAMAGE, MAX_LINE_BYTES, Bad, Record, ReaderError, check_file,
                       damage_after, damage_reason, excerpt_of, first_bytes, open_binary, skip_rest_of_line)

BLOCK = 2 << 20                   # above MAX_LINE_BYTES: a block always ends a line or starts skipping one
# gzip's readline decompresses in steps of its buffer; reading in the same steps loses the same bytes
# to a damaged stream (3.12+ buffers READ_BUFFER_SIZE, 3.11 and before the io default)
GZIP_STEP = getattr(gzip, "READ_BUFFER_SIZE", io.DEFAULT_BUFFER_SIZE)
WS = np.zeros(256, bool)
WS[list(b" \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f")] = True      # what str.strip() removes from ASCII


def overlong(row: int, head: bytes, size: int) -> Bad:
    """As ``text_lines`` says it: the excerpt is from the first ``MAX_LINE_BYTES + 1`` bytes it read."""
    return Bad(row, f"line longer than {MAX_LINE_BYTES} bytes ({size} bytes)",
               excerpt_of(head[:min(EXCERPT_MAX, MAX_LINE_BYTES + 1)].decode("utf-8", "surrogateescape")))


def slow_line(row: int, raw: bytes) -> Record | Bad:
    """One line the per-line way (``raw`` with its line end, if it has one)."""
    if len(raw) - raw.endswith(b"\n") > MAX_LINE_BYTES:
        return overlong(row, raw, len(raw))
    return cc_tsv_row(row, raw.decode("utf-8", "surrogateescape"))


def _ranges(a: np.ndarray, s: np.ndarray, e: np.ndarray) -> pa.Array:
    """The byte ranges [s, e) of ``a`` (ASCII, disjoint, in order) as one string array."""
    bounds = np.empty(2 * len(s) + 2, np.int64)
    bounds[0], bounds[1:-1:2], bounds[2:-1:2], bounds[-1] = 0, s, e, len(a)
    inside = np.zeros(2 * len(s) + 1, bool)
    inside[1::2] = True
    offsets = np.zeros(len(s) + 1, np.int32)
    np.cumsum(e - s, out=offsets[1:])
    values = a[np.repeat(inside, np.diff(bounds))]
    return pa.Array.from_buffers(pa.string(), len(s), [None, pa.py_buffer(offsets), pa.py_buffer(values)])


def _strip(a: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[s, e) without leading and trailing ASCII whitespace (``str.strip``)."""
    s, e = s.copy(), e.copy()
    for front in (False, True):
        live = np.flatnonzero(s < e)
        while live.size:
            live = live[WS[a[s[live]]]] if front else live[WS[a[e[live] - 1]]]
            if front:
                s[live] += 1
            else:
                e[live] -= 1
            live = live[s[live] < e[live]]
    return s, e


def lines_batch(row0: int, data: bytes) -> Batch:
    """The lines of ``data`` (whole lines; the last may lack its line end), numbered from ``row0``."""
    a = np.frombuffer(data, np.uint8)
    at = np.flatnonzero(a - np.uint8(11) >= 117)         # the bytes that matter: < 11 (NUL, tab, LF) or >= 0x80
    byte = a[at]
    ends = at[byte == 10]
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(a))
    starts = np.concatenate(([0], ends[:-1] + 1))
    m = len(ends)
    slow = (ends - starts > MAX_LINE_BYTES) | (ends == starts)
    slow[np.searchsorted(ends, at[(byte == 0) | (byte >= 0x80)])] = True
    slow[WS[a[np.minimum(starts, len(a) - 1)]]] = True
    tabs = at[byte == 9]
    tab_line = np.searchsorted(ends, tabs)
    slow |= np.bincount(tab_line, minlength=m) != 1
    tab = np.zeros(m, np.int64)
    tab[tab_line] = tabs
    fast = np.flatnonzero(~slow)
    us, ue = _strip(a, tab[fast] + 1, ends[fast])
    url = _ranges(a, us, ue)
    cols = {"item": pa.array(row0 - 1 + fast), "row": pa.array(row0 + fast),
            "text": _ranges(a, starts[fast], tab[fast]),
            "image_url": pc.if_else(pc.equal(pc.binary_length(url), 0), pa.scalar(None, pa.string()), url)}
    records = pa.table({f.name: cols.get(f.name, pa.nulls(len(fast), f.type)) for f in RECORDS}, schema=RECORDS)
    bads = []
    if (slow_ix := np.flatnonzero(slow).tolist()):
        items = [(row0 - 1 + i, slow_line(row0 + i, data[starts[i]:ends[i] + 1])) for i in slow_ix]
        bads = [(i, b) for i, b in items if isinstance(b, Bad)]
        records = pa.concat_tables([records, records_table((i, r) for i, r in items if isinstance(r, Record))])
        records = records.take(pc.sort_indices(records["item"]))
    return Batch(row0 - 1, m, records, bads)


class _Lines:
    """Line numbering across blocks: the bytes not yet split (they start with an unfinished line)
    and an overlong line being skipped (its row, first bytes and size so far)."""

    def __init__(self, path: Path):
        self.path = path
        self.n = 0
        self.parts: list[bytes] = []
        self.size = 0
        self.long: list | None = None

    def first(self, f) -> Iterator[Batch]:
        """Line 1 exactly as ``text_lines`` reads it (BOM dropped, UTF-16 and CR-only refused)."""
        if not (raw := f.readline(MAX_LINE_BYTES + 1)):
            return
        self.n = 1
        raw = first_bytes(self.path, raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            yield items_batch(0, [overlong(1, raw, len(raw) + skip_rest_of_line(f))])
        else:
            yield items_batch(0, [cc_tsv_row(1, raw.decode("utf-8", "surrogateescape"))])

    def feed(self, chunk: bytes) -> Iterator[Batch]:
        if self.long:
            if (i := chunk.find(b"\n")) < 0:
                self.long[2] += len(chunk)
                return
            yield self._end_long(i + 1)
            chunk = chunk[i + 1:]
        self.parts.append(chunk)
        self.size += len(chunk)
        if self.size >= BLOCK:
            yield from self._split(final=False)

    def _end_long(self, more: int) -> Batch:
        row, head, size = self.long
        self.long = None
        return items_batch(row - 1, [overlong(row, head, size + more)])

    def _split(self, final: bool) -> Iterator[Batch]:
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        cut = len(data) if final else data.rfind(b"\n") + 1
        if cut:
            batch = lines_batch(self.n + 1, data[:cut] if cut < len(data) else data)
            self.n += batch.n
            yield batch
        if len(tail := data[cut:]) > MAX_LINE_BYTES:     # an overlong line, not ended yet: skip it
            self.n += 1
            self.long = [self.n, tail[:EXCERPT_MAX], len(tail)]
        elif tail:
            self.parts, self.size = [tail], len(tail)

    def end(self) -> Iterator[Batch]:
        """The end of the file: the last line may lack its line end."""
        if self.long:
            yield self._end_long(0)
        elif self.size:
            yield from self._split(final=True)
        if self.n == 0:
            raise ReaderError(str(self.path), "empty file (nothing after decompression)")

    def damaged(self, damage: str) -> Iterator[Batch]:
        """Damage in a .gz: the whole lines read are kept, the unfinished one is lost (but numbered
        when it was already overlong, as ``text_lines`` numbers it), one Bad says where it ends."""
        if not self.long and self.size:
            yield from self._split(final=False)
        yield items_batch(self.n, [damage_after(self.path, self.n, damage)])


def read_cc_tsv_batches(path: Path) -> Iterator[Batch]:
    check_file(path)
    gz = path.suffix == ".gz"
    lines = _Lines(path)
    damage = None
    with open_binary(path) as f:
        try:
            yield from lines.first(f)
            while chunk := (f.read1(GZIP_STEP) if gz else f.read(BLOCK)):
                yield from lines.feed(chunk)
            yield from lines.end()
        except GZIP_DAMAGE as e:
            damage = damage_reason(e)
        except OSError as e:
            raise ReaderError(str(path), f"read error after line {lines.n}: {e}") from None
    if damage:
        yield from lines.damaged(damage)
