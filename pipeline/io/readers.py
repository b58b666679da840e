"""Small streaming readers: each yields ``Record`` or ``Bad`` items, one per source row.

Readers never raise on a bad row: they yield ``Bad(row, reason, excerpt)`` so ingest can write it to
rejects. Files are decoded with ``surrogateescape`` so one invalid UTF-8 row does not stop a
3.3M-line file. Memory stays flat: nothing but COCO JSON (one document) is read whole.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..chain import chain_problem, split_tiers
from ..text import has_bad_bytes

csv.field_size_limit(sys.maxsize)
EXCERPT_MAX = 300


@dataclass
class Record:
    row: int                       # 1-based line (text formats) or record number
    text: str
    image_url: str | None = None
    image_id: str | None = None
    orig_id: str | None = None
    split: str | None = None
    positive: list[str] | None = None
    negative: list[str] | None = None


@dataclass
class Bad:
    row: int
    reason: str
    excerpt: str = ""            # the offending content, printable, truncated


@dataclass
class ReaderError(Exception):
    """The whole file is unusable (missing, wrong format): names the file and the reason."""

    path: str
    reason: str
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise ReaderError(str(path), "file not found")
    binary = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    # utf-8-sig drops a BOM; surrogateescape keeps invalid bytes visible per row
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _excerpt(s: str) -> str:
    """Printable excerpt; invalid bytes show as \\xNN."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")[:EXCERPT_MAX]


def detect_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".tsv"):
        return "cc_tsv"
    if name.endswith(".json"):
        return "coco_json"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        with open_text(path) as f:
            header = next(csv.reader(f), [])
        cols = [c.strip() for c in header]
        return "hierarcaps_csv" if ("captions" in cols or "positive" in cols) else "csv"
    raise ReaderError(str(path), "cannot detect format from the file name; set format in the source config")


def read_cc_tsv(path: Path, **_) -> Iterator[Record | Bad]:
    """Conceptual Captions: ``caption<TAB>url`` per line, no header."""
    with open_text(path) as f:
        for row, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if has_bad_bytes(line):
                yield Bad(row, "invalid UTF-8", _excerpt(line))
                continue
            if not line.strip():
                yield Bad(row, "empty line")
                continue
            parts = line.split("\t")
            if len(parts) != 2:
                yield Bad(row, f"expected 2 tab-separated columns (caption, url), got {len(parts)}", _excerpt(line))
                continue
            yield Record(row, parts[0], image_url=parts[1].strip() or None)


def read_coco_json(path: Path, **_) -> Iterator[Record | Bad]:
    """COCO captions: {"images": [...], "annotations": [{"id","image_id","caption"}]}."""
    with open_text(path) as f:
        text = f.read()
    if has_bad_bytes(text):
        raise ReaderError(str(path), "invalid UTF-8 in JSON document")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReaderError(str(path), f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise ReaderError(str(path), "not a COCO captions file: no 'annotations' list")
    images = {}
    for im in doc.get("images") or []:
        if isinstance(im, dict) and "id" in im:
            images[im["id"]] = im.get("coco_url") or im.get("flickr_url") or im.get("file_name")
    for row, ann in enumerate(doc["annotations"], 1):
        if not isinstance(ann, dict):
            yield Bad(row, "annotation is not an object", _excerpt(str(ann)))
            continue
        cap = ann.get("caption")
        if not isinstance(cap, str):
            yield Bad(row, "annotation has no caption string", _excerpt(json.dumps(ann)))
            continue
        img = ann.get("image_id")
        if img is not None and images and img not in images:
            yield Bad(row, f"image_id {img} not in images", _excerpt(json.dumps(ann)))
            continue
        yield Record(row, cap, image_url=images.get(img), image_id=None if img is None else str(img),
                     orig_id=None if ann.get("id") is None else str(ann["id"]))


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ReaderError(str(path), "empty file (no header)") from None
        except csv.Error as e:
            raise ReaderError(str(path), f"unreadable header: {e}") from None
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield reader.line_num, None, f"malformed CSV: {e}"
                continue
            line = reader.line_num
            if not values or all(not v.strip() for v in values):
                yield line, None, "empty line"
                continue
            if len(values) != len(header):
                yield line, None, f"expected {len(header)} columns {header}, got {len(values)}|" + _excerpt(",".join(values))
                continue
            yield line, dict(zip(header, values)), None


def read_hierarcaps_csv(path: Path, **_) -> Iterator[Record | Bad]:
    """HierarCaps test (``id,captions,image_url``) or train/expanded (``positive,negative[,image_url]``)."""
    for line, rec, err in _csv_rows(path):
        if err:
            reason, _, excerpt = err.partition("|")
            yield Bad(line, reason, excerpt)
            continue
        if any(has_bad_bytes(v) for v in rec.values()):
            yield Bad(line, "invalid UTF-8", _excerpt(",".join(rec.values())))
            continue
        pos_field = "captions" if "captions" in rec else "positive"
        if pos_field not in rec:
            raise ReaderError(str(path), "not a HierarCaps CSV: needs a 'captions' or 'positive' column")
        pos = split_tiers(rec[pos_field])
        neg = split_tiers(rec["negative"]) if rec.get("negative") else None
        if why := chain_problem(pos):
            yield Bad(line, f"positive chain: {why}", _excerpt(rec[pos_field]))
            continue
        if neg is not None and (why := chain_problem(neg)):
            yield Bad(line, f"negative chain: {why}", _excerpt(rec["negative"]))
            continue
        yield Record(line, pos[-1], image_url=rec.get("image_url") or None, orig_id=rec.get("id") or None,
                     positive=pos, negative=neg)


def _mapped(get, columns: dict[str, str], row: int, record) -> Record | Bad:
    text_col = columns.get("text", "caption")
    text = get(text_col)
    if text is None:
        return Bad(row, f"missing text column '{text_col}'", _excerpt(str(record)))
    if not isinstance(text, str):
        return Bad(row, f"text column '{text_col}' is not a string", _excerpt(str(record)))
    if has_bad_bytes(text):
        return Bad(row, "invalid UTF-8", _excerpt(text))

    def opt(name):
        v = get(columns[name]) if name in columns else None
        return None if v is None or v == "" else str(v)

    return Record(row, text, image_url=opt("image_url"), image_id=opt("image_id"), orig_id=opt("id"),
                  split=opt("split"))


def read_csv(path: Path, columns: dict[str, str] | None = None, **_) -> Iterator[Record | Bad]:
    columns = columns or {}
    for line, rec, err in _csv_rows(path):
        if err:
            reason, _, excerpt = err.partition("|")
            yield Bad(line, reason, excerpt)
            continue
        yield _mapped(rec.get, columns, line, rec)


def read_jsonl(path: Path, columns: dict[str, str] | None = None, **_) -> Iterator[Record | Bad]:
    columns = columns or {}
    with open_text(path) as f:
        for row, line in enumerate(f, 1):
            if not line.strip():
                yield Bad(row, "empty line")
                continue
            if has_bad_bytes(line):
                yield Bad(row, "invalid UTF-8", _excerpt(line))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield Bad(row, f"invalid JSON: {e.msg}", _excerpt(line))
                continue
            if not isinstance(obj, dict):
                yield Bad(row, "JSON line is not an object", _excerpt(line))
                continue
            yield _mapped(obj.get, columns, row, line)


def read_parquet(path: Path, columns: dict[str, str] | None = None, **_) -> Iterator[Record | Bad]:
    import pyarrow.parquet as pq

    columns = columns or {}
    if not path.exists():
        raise ReaderError(str(path), "file not found")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise ReaderError(str(path), f"not a readable Parquet file: {e}") from None
    row = 0
    for batch in pf.iter_batches(batch_size=8192):
        for rec in batch.to_pylist():
            row += 1
            yield _mapped(rec.get, columns, row, rec)


READERS = {
    "cc_tsv": read_cc_tsv,
    "coco_json": read_coco_json,
    "hierarcaps_csv": read_hierarcaps_csv,
    "csv": read_csv,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
}


def read_source(path: Path, fmt: str = "auto", columns: dict | None = None) -> Iterator[Record | Bad]:
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise ReaderError(str(path), f"unknown format '{fmt}'; choose one of {sorted(READERS)}")
    return READERS[fmt](path, columns=columns)
