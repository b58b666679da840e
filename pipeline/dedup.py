"""Ingest's de-duplication index: fixed-size integers in numpy, never Python strings.

One entry per kept caption: a 64-bit key (the hash of its normalised text in ``normalized`` mode,
of its exact text in ``exact`` mode), in ``normalized`` mode also the exact hash, and where it came
from (row and source index in one uint32 while they fit): 20 bytes a caption (12 in ``exact`` mode).

An exact duplicate is also a near one (the same text has the same normalised text), and only one
kept caption has a given normalised key, so one lookup by that key answers both questions: the
caption it finds is a duplicate's original, exact when the exact hashes match too. That is what
checking exact first and normalised second finds, caption by caption.

Entries live in sorted chunks: each batch's new entries become a chunk, and the last chunks are
merged while that keeps them under ``CHUNK_MAX`` entries, so a merge's extra memory is bounded. A
fixed 8 MiB bitmap (one bit per 26-bit key prefix) answers most lookups of new captions; only the
keys whose bit is set are searched in the chunks (``searchsorted``).

Hash collisions: two different texts with the same 64-bit key (``hashing.hashes64``; about
n^2 / 2^65 for n kept captions, 3e-7 at 3.3M) make the later one a duplicate of the earlier, a
reject that names the original, as the per-row index of 64-bit hashes did.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .hashing import arrow_bytes, hashes64
from .text import norm_keys

KEEP, EXACT, NEAR = 0, 1, 2
CHUNK_MAX = 1 << 18         # 256K entries, 5 MiB: about the most a merge allocates
FILTER_BITS = 26            # 8 MiB of bits: with 3.3M captions 5% of new keys still need a search


def dedup_hashes(key_text: pa.Array, image: pa.Array, mode: str, scope: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(exact, normalised) hashes of each key text, within its image's scope when ``scope`` is
    ``"image"`` and the row has an image: of the string ``f"{image}\x1f{text}"``, as the per-row
    code keyed it, computed as a hash of the pair (image, text) so the image is hashed once."""
    scoped = pc.fill_null(pc.greater(pc.binary_length(image), 0), False).to_numpy(zero_copy_only=False) \
        if scope == "image" else np.zeros(len(key_text), bool)
    image_hash = hashes64(image) if scoped.any() else None
    exact = _pair_hashes(image, image_hash, key_text, scoped)
    return exact, _pair_hashes(image, image_hash, norm_keys(key_text), scoped) if mode == "normalized" else None


def _pair_hashes(image: pa.Array, image_hash: np.ndarray | None, texts: pa.Array, scoped: np.ndarray) -> np.ndarray:
    """The pair names the key string exactly when neither part holds a ``\x1f``; the (rare) rows
    with one are first cut at their key string's first ``\x1f``, so equal strings give equal pairs."""
    odd = _holds_unit_sep(texts) | (scoped & _holds_unit_sep(image))
    if odd.any():
        idx = pa.array(np.flatnonzero(odd))
        keys = [f"{i}\x1f{t}" if s else t for i, t, s in
                zip(image.take(idx).to_pylist(), texts.take(idx).to_pylist(), scoped[odd].tolist())]
        cut = [k.partition("\x1f") for k in keys]
        image = pc.replace_with_mask(image, pa.array(odd), pa.array([a if sep else None for a, sep, _ in cut],
                                                                    pa.string()))
        texts = pc.replace_with_mask(texts, pa.array(odd), pa.array([b if sep else a for a, sep, b in cut],
                                                                    pa.string()))
        scoped = scoped.copy()
        scoped[odd] = [bool(sep) for _, sep, _ in cut]
        image_hash = hashes64(image)
    seed = np.zeros(len(texts), np.uint64) if image_hash is None else np.where(scoped, image_hash, np.uint64(0))
    return hashes64(texts, seed)


def _holds_unit_sep(values: pa.Array) -> np.ndarray:
    data, offsets = arrow_bytes(values)
    out = np.zeros(len(values), bool)
    at = np.flatnonzero(data[offsets[0]:offsets[-1]] == 0x1F) + offsets[0]
    out[np.searchsorted(offsets, at, "right") - 1] = True
    return out


class DedupIndex:
    def __init__(self, mode: str, sources: int = 1):
        self.mode = mode
        self.source_bits = max(sources - 1, 0).bit_length()
        self.chunks: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]] = []   # (keys sorted, exact, where)
        self.seen = np.zeros(1 << (FILTER_BITS - 3), np.uint8)   # a bit per key prefix: most misses end here

    def where(self, source, rows: np.ndarray) -> np.ndarray:
        """(row, source index) in one integer: uint32 while it fits (as it does for any file under
        4G lines from one source), else uint64."""
        w = (rows.astype(np.uint64) << np.uint64(self.source_bits)) | np.asarray(source).astype(np.uint64)
        return w.astype(np.uint32) if not len(w) or w.max() < 1 << 32 else w

    def unpack(self, where: int) -> tuple[int, int]:
        """(source index, row) of a ``where``."""
        return where & ((1 << self.source_bits) - 1), where >> self.source_bits

    def __len__(self) -> int:
        return sum(len(c[0]) for c in self.chunks)

    def check(self, exact: np.ndarray, near: np.ndarray | None, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows in order against the index and the rows before them: (KEEP / EXACT / NEAR per row,
        the original's ``where`` for a duplicate). Kept rows join the index."""
        keys = near if self.mode == "normalized" else exact
        kind = np.zeros(len(keys), np.int8)
        of = np.zeros(len(keys), np.uint64)
        hit, f_exact, f_where = self._lookup(keys)
        kind[hit] = EXACT if f_exact is None else np.where(f_exact == exact[hit], EXACT, NEAR)
        of[hit] = f_where
        new = np.ones(len(keys), bool)
        new[hit] = False
        new = np.flatnonzero(new)
        unique, first, inverse = np.unique(keys[new], return_index=True, return_inverse=True)
        orig = new[first][inverse.ravel()]              # each new row's first row with its key
        dup, orig = new[orig != new], orig[orig != new]
        kind[dup] = EXACT if near is None else np.where(exact[dup] == exact[orig], EXACT, NEAR)
        of[dup] = where[orig]
        kept = new[first]                               # in key order
        self._add(unique, None if near is None else exact[kept], where[kept])
        return kind, of

    def _lookup(self, keys: np.ndarray):
        """(rows found, their entries' exact hashes and wheres)."""
        prefix = keys >> np.uint64(64 - FILTER_BITS)
        maybe = np.flatnonzero((self.seen[prefix >> np.uint64(3)] >> (prefix & np.uint64(7)).astype(np.uint8)) & 1)
        order = maybe[np.argsort(keys[maybe])]
        needles = keys[order]
        rows, f_exact, f_where = [], [], []
        for k, e, w in self.chunks:
            pos = np.minimum(np.searchsorted(k, needles), len(k) - 1)
            found = k[pos] == needles
            rows.append(order[found])
            f_where.append(w[pos[found]])
            if e is not None:
                f_exact.append(e[pos[found]])
        cat = lambda parts, t: np.concatenate(parts) if parts else np.zeros(0, t)    # noqa: E731
        return cat(rows, np.int64), (cat(f_exact, np.uint64) if self.mode == "normalized" else None), \
            cat(f_where, np.uint64)

    def _add(self, keys: np.ndarray, exact: np.ndarray | None, where: np.ndarray) -> None:
        """New entries, ``keys`` sorted, none in the index yet."""
        if not len(keys):
            return
        prefix = keys >> np.uint64(64 - FILTER_BITS)
        np.bitwise_or.at(self.seen, prefix >> np.uint64(3), np.left_shift(1, prefix & np.uint64(7)).astype(np.uint8))
        self.chunks.append((keys, exact, where))
        while len(self.chunks) > 1 and len(self.chunks[-2][0]) <= 2 * len(self.chunks[-1][0]) \
                and len(self.chunks[-2][0]) + len(self.chunks[-1][0]) <= CHUNK_MAX:
            b = self.chunks.pop()
            self.chunks[-1] = _merge(self.chunks[-1], b)


def _merge(a, b):
    """Two sorted chunks as one: each array is written once into its place (no sort)."""
    at = np.searchsorted(a[0], b[0]) + np.arange(len(b[0]))
    into_a = np.ones(len(a[0]) + len(b[0]), bool)
    into_a[at] = False
    out = []
    for x, y in zip(a, b):
        if x is None:
            out.append(None)
            continue
        m = np.empty(len(into_a), np.result_type(x, y))
        m[into_a], m[at] = x, y
        out.append(m)
    return tuple(out)
