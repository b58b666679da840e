"""ingest: caption sources -> one clean, de-duplicated captions table (plus rejects).

All sources are read as one stream; every run of ``unit_rows`` source rows is one committed unit.
A resumed run rebuilds the de-duplication index from its finished units and skips their rows, so
it ends with exactly the rows of an uninterrupted run. Memory holds one unit plus an 8-byte-keyed
index of accepted captions, whatever the file size.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Iterator

import pyarrow.parquet as pq

from ..chain import join_tiers
from ..config import IngestSection, SourceConfig
from ..hashing import file_digest, text_hash64
from ..io.readers import Bad, Record, ReaderError, read_source
from ..paths import resolve_path
from ..schemas import CAPTIONS, REJECTS, conform, reject
from ..stage import Stage, StageContext, StageError
from ..text import clean_text, norm_key


def caption_id(source: str, text: str, positive: list[str] | None, orig_id: str | None) -> str:
    """Stable id: the same caption (and given chain) from the same source keeps its id across runs."""
    key = "\x1f".join([source, text, join_tiers(positive or []), orig_id or ""])
    return hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def _source_rows(src: SourceConfig, limit: int | None) -> Iterator[Record | Bad]:
    rows = read_source(resolve_path(src.path), src.format, src.columns)
    n = min(x for x in (src.limit, limit) if x) if (src.limit or limit) else None
    return itertools.islice(rows, n) if n else rows


class Deduper:
    """Exact and normalised duplicate detection; remembers where each kept caption came from.

    ``scope="image"`` (the default) compares captions of the same image only: the same caption on
    two images is two items, as in the released HierarCaps pool; ``"global"`` compares all."""

    def __init__(self, mode: str, scope: str = "image"):
        self.mode = mode
        self.scope = scope
        self.exact: dict[int, str] = {}
        self.near: dict[int, str] = {}

    @staticmethod
    def key_text(rec_text: str, positive: list[str] | None) -> str:
        # chains (HierarCaps inputs) are distinct items even when they share a caption
        return join_tiers(positive) if positive else rec_text

    def check(self, text: str, where: str, image: str | None = None) -> str | None:
        if self.mode == "none":
            return None
        scope = f"{image}\x1f" if self.scope == "image" and image else ""
        h = text_hash64(scope + text)
        if h in self.exact:
            return f"exact duplicate of {self.exact[h]}"
        if self.mode == "normalized":
            n = text_hash64(scope + norm_key(text))
            if n in self.near:
                return f"near-duplicate (normalised) of {self.near[n]}"
            self.near[n] = where
        self.exact[h] = where
        return None


def image_key(image_id: str | None, image_url: str | None) -> str | None:
    """What identifies a caption's image for per-image de-duplication."""
    return image_id or image_url


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
        done = ctx.done_units()
        dedup = Deduper(cfg.dedup, cfg.dedup_scope)
        unit_rows = cfg.unit_rows
        rows, rejects, g = [], [], 0
        for src in cfg.sources:
            path = str(resolve_path(src.path))
            try:
                for item in _source_rows(src, cfg.limit):
                    g += 1
                    unit = (g - 1) // unit_rows
                    if unit in done:            # finished: its kept captions join the index, its rows are skipped
                        if (g - 1) % unit_rows == 0:
                            self._remember(ctx, dedup, unit)
                        continue
                    self._one(item, src, path, cfg, dedup, rows, rejects)
                    if g % unit_rows == 0:
                        self._commit(ctx, unit, rows, rejects)
                        rows, rejects = [], []
                        ctx.progress(g, None, f"{src.name}: {item.row} rows")
            except ReaderError as e:
                raise StageError(f"ingest: {e}") from None
        last = (g - 1) // unit_rows
        if g % unit_rows and last not in done or g == 0 and 0 not in done:
            self._commit(ctx, max(last, 0), rows, rejects)
        ctx.progress(g, g, "done", force=True)
        ctx.stats["sources"] = [s.name for s in cfg.sources]

    @staticmethod
    def _commit(ctx, index, rows, rejects):
        ctx.commit(index, conform(rows, CAPTIONS), conform(rejects, REJECTS))

    @staticmethod
    def _remember(ctx: StageContext, dedup: Deduper, unit: int) -> None:
        """A finished unit's captions into the de-dup index, as if its rows had just been read: the
        units after it (finished or not) see exactly what an uninterrupted run saw."""
        t = pq.read_table(ctx.out.unit_path(unit), columns=["text", "positive", "source", "source_row", "image_id",
                                                            "image_url"])
        for rec in t.to_pylist():
            dedup.check(dedup.key_text(rec["text"], rec["positive"]), f"{rec['source']} row {rec['source_row']}",
                        image_key(rec["image_id"], rec["image_url"]))

    def _one(self, item, src, path, cfg, dedup, rows, rejects):
        if isinstance(item, Bad):
            rejects.append(reject(self.name, path, None, item.reason, item.excerpt, item.row))
            return
        keep = (lambda t: t) if item.positive and not cfg.clean_chains else clean_text
        text = keep(item.text)
        pos = [keep(t) for t in item.positive] if item.positive else None
        neg = [keep(t) for t in item.negative] if item.negative else None
        reason = None
        if len(text) < cfg.min_chars:
            reason = "empty caption" if not text else f"caption shorter than {cfg.min_chars} characters"
        elif len(text) > cfg.max_chars:
            reason = f"caption longer than {cfg.max_chars} characters ({len(text)})"
        else:
            reason = dedup.check(dedup.key_text(text, pos), f"{src.name} row {item.row}",
                                 image_key(item.image_id, item.image_url))
        if reason:
            rejects.append(reject(self.name, path, None, reason, text[:300], item.row))
            return
        rows.append(dict(
            caption_id=caption_id(src.name, text, pos, item.orig_id), text=text, source=src.name,
            source_file=path, source_row=item.row, split=item.split or src.split,
            image_url=item.image_url, image_id=item.image_id, orig_id=item.orig_id,
            positive=pos, negative=neg,
        ))
