"""Small streaming readers: each yields ``Record`` or ``Bad`` items, one per source row.

Two kinds of failure, never a traceback:

- a row that cannot be used is a ``Bad(row, reason, excerpt)``, which ingest writes to rejects, so
  one bad line does not stop a 3.3M-line file;
- a file that cannot be read at all (missing, a directory, not gzip, UTF-16 or binary, empty, no
  header, no data rows, not Parquet, a COCO document that does not parse) raises
  ``ReaderError(path, reason)``.

A damaged or truncated ``.gz`` keeps the rows read before the damage and ends with one ``Bad``
naming the line where the file ends early (a document read whole, COCO JSON, cannot be partly
kept: there it is a ``ReaderError``). Memory stays flat: text is read one line at a time, a line
longer than ``MAX_LINE_BYTES`` is rejected and skipped in chunks, CSV fields are capped at the same
size, and only COCO JSON (one document, at most ``MAX_DOC_BYTES``) is read whole.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..chain import chain_problem, split_tiers
from ..testset import coco_image_id
from ..text import has_bad_bytes

MAX_LINE_BYTES = 1 << 20        # 1 MiB: no caption or chain comes near it
MAX_DOC_BYTES = 256 << 20       # a COCO JSON document is parsed whole (captions_train2017: 92 MB)
EXCERPT_MAX = 300
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
COLUMN_KEYS = ("text", "image_url", "image_id", "id", "split")
SURROGATE = "lone surrogate escape (like \\ud800) in a JSON string"
csv.field_size_limit(MAX_LINE_BYTES)


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


def _excerpt(s: str) -> str:
    """Printable excerpt: invalid bytes show as \\xNN, lone surrogates as \\udNNN."""
    s = s[:EXCERPT_MAX * 2]
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")[:EXCERPT_MAX]
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape, not an escaped byte
        return s.encode("utf-8", "backslashreplace").decode("ascii")[:EXCERPT_MAX]


def check_file(path: Path) -> None:
    """Whole-file problems that show before any row is read."""
    if not path.exists():
        raise ReaderError(str(path), "file not found")
    if path.is_dir():
        raise ReaderError(str(path), "is a directory, not a file")
    if not path.is_file():
        raise ReaderError(str(path), "not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as e:
        raise ReaderError(str(path), f"cannot read: {e.strerror or e}") from None
    if not head:
        raise ReaderError(str(path), "empty file")
    if path.suffix == ".gz" and head != GZIP_MAGIC:
        raise ReaderError(str(path), "not a gzip file (the name ends in .gz)")
    if path.suffix != ".gz" and head == GZIP_MAGIC:
        raise ReaderError(str(path), "gzip-compressed, but the name does not end in .gz")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _first_bytes(path: Path, raw: bytes) -> bytes:
    """The first line, BOM dropped; refuses text that is not UTF-8 (UTF-16, binary, CR-only lines)."""
    raw = raw.removeprefix(UTF8_BOM)
    if raw.startswith(UTF16_BOMS):
        raise ReaderError(str(path), "UTF-16 text (byte-order mark); save it as UTF-8")
    if len(raw) > 1 and raw.count(0) * 4 > len(raw):
        raise ReaderError(str(path), "binary or UTF-16 data (NUL bytes in the first line), not UTF-8 text")
    if not raw.endswith(b"\n") and b"\r" in raw.rstrip(b"\r"):
        raise ReaderError(str(path), "lines end in CR only (classic Mac); convert them to LF or CRLF")
    return raw


def _skip_rest_of_line(f) -> int:
    """Read past the rest of an overlong line in chunks; returns the bytes skipped."""
    skipped = 0
    while chunk := f.readline(MAX_LINE_BYTES):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _lines(path: Path) -> Iterator[tuple[int, str | Bad]]:
    """(line number, decoded line with its line end) for each line of a text file, possibly
    gzipped. Invalid UTF-8 survives as surrogate escapes so each row can be judged on its own. An
    overlong line is a ``Bad``; damage in a .gz ends the stream with a ``Bad`` on the next line."""
    check_file(path)
    n = 0
    damage = None
    with _open_binary(path) as f:
        try:
            while raw := f.readline(MAX_LINE_BYTES + 1):
                n += 1
                if n == 1:
                    raw = _first_bytes(path, raw)
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    size = len(raw) + _skip_rest_of_line(f)
                    excerpt = _excerpt(raw[:EXCERPT_MAX].decode("utf-8", "surrogateescape"))
                    yield n, Bad(n, f"line longer than {MAX_LINE_BYTES} bytes ({size} bytes)", excerpt)
                    continue
                yield n, raw.decode("utf-8", "surrogateescape")
        except EOFError:
            damage = "file ends early (truncated gzip)"
        except (gzip.BadGzipFile, zlib.error) as e:
            damage = f"damaged gzip data ({e})"
        except OSError as e:
            raise ReaderError(str(path), f"read error after line {n}: {e}") from None
    if damage and n == 0:
        raise ReaderError(str(path), f"{damage} before the end of its first line")
    if damage:
        yield n + 1, Bad(n + 1, f"{damage} after line {n}; any later lines are lost")
    elif n == 0:
        raise ReaderError(str(path), "empty file (nothing after decompression)")


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
        cols = _csv_header(path)
        return "hierarcaps_csv" if ("captions" in cols or "positive" in cols) else "csv"
    raise ReaderError(str(path), "cannot detect format from the file name; set format in the source config")


def read_cc_tsv(path: Path, **_) -> Iterator[Record | Bad]:
    """Conceptual Captions: ``caption<TAB>url`` per line, no header."""
    for row, line in _lines(path):
        if isinstance(line, Bad):
            yield line
            continue
        line = line.rstrip("\r\n")
        if has_bad_bytes(line):
            yield Bad(row, "invalid UTF-8", _excerpt(line))
        elif "\x00" in line:
            yield Bad(row, "NUL byte in line", _excerpt(line))
        elif not line.strip():
            yield Bad(row, "empty line")
        elif len(parts := line.split("\t")) != 2:
            yield Bad(row, f"expected 2 tab-separated columns (caption, url), got {len(parts)}", _excerpt(line))
        else:
            yield Record(row, parts[0], image_url=parts[1].strip() or None)


def _json_id(v) -> bool:
    """COCO ids are integers (some files use strings); lists and objects cannot be ids."""
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _surrogate(*values) -> bool:
    """A lone surrogate (``"\\ud800"`` in JSON) cannot be written as UTF-8."""
    return any(isinstance(v, str) and has_bad_bytes(v) for v in values)


def _load_json_doc(path: Path):
    check_file(path)
    try:
        with _open_binary(path) as f:
            data = f.read(MAX_DOC_BYTES + 1)
    except EOFError:
        raise ReaderError(str(path), "file ends early (truncated gzip); a JSON document cannot be read in part") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise ReaderError(str(path), f"damaged gzip data ({e}); a JSON document cannot be read in part") from None
    if len(data) > MAX_DOC_BYTES:
        raise ReaderError(str(path), f"JSON document larger than {MAX_DOC_BYTES} bytes; use JSONL for big inputs")
    if data.startswith(UTF16_BOMS):
        raise ReaderError(str(path), "UTF-16 text (byte-order mark); save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ReaderError(str(path), f"not UTF-8 at byte {e.start}: {e.reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReaderError(str(path), f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (RecursionError, ValueError) as e:  # nesting too deep; a number too long to convert
        raise ReaderError(str(path), f"invalid JSON: {type(e).__name__}: {e}") from None


def read_coco_json(path: Path, **_) -> Iterator[Record | Bad]:
    """COCO captions: {"images": [...], "annotations": [{"id","image_id","caption"}]}. Every
    annotation must name an image of the file's ``images`` (none match when it is empty or absent)."""
    doc = _load_json_doc(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
        raise ReaderError(str(path), "not a COCO captions file: no 'annotations' list")
    if not isinstance(doc.get("images", []), list):
        raise ReaderError(str(path), "not a COCO captions file: 'images' is not a list")
    if not doc["annotations"]:
        raise ReaderError(str(path), "no annotations")
    images = {}
    for im in doc.get("images") or []:
        if isinstance(im, dict) and _json_id(im.get("id")):
            images[im["id"]] = im.get("coco_url") or im.get("flickr_url") or im.get("file_name")
    for row, ann in enumerate(doc["annotations"], 1):
        if not isinstance(ann, dict):
            yield Bad(row, "annotation is not an object", _excerpt(str(ann)))
            continue
        cap, img = ann.get("caption"), ann.get("image_id")
        if not isinstance(cap, str):
            yield Bad(row, "annotation has no caption string", _excerpt(json.dumps(ann)))
        elif not _json_id(img):
            yield Bad(row, "annotation has no image_id (an integer or string)", _excerpt(json.dumps(ann)))
        elif img not in images:
            yield Bad(row, f"image_id {img!r} not in images" + ("" if images else " (the file lists no images)"),
                      _excerpt(json.dumps(ann)))
        elif _surrogate(cap, images[img], ann.get("id")):
            yield Bad(row, f"invalid Unicode: {SURROGATE}", _excerpt(cap))
        else:
            url = images[img]
            yield Record(row, cap, image_url=None if url is None else str(url), image_id=str(img),
                         orig_id=None if ann.get("id") is None else str(ann["id"]))


def _csv_header(path: Path) -> list[str]:
    """The column names on a CSV's first line, for format detection (the reader checks them)."""
    for _, line in _lines(path):
        if isinstance(line, Bad):
            raise ReaderError(str(path), f"unreadable header: {line.reason}")
        try:
            return [c.strip() for c in next(csv.reader([line]))]
        except (csv.Error, StopIteration):
            return []
    return []


def _csv_rows(path: Path, check_header: Callable[[list[str]], str | None] | None = None
              ) -> Iterator[tuple[int, dict] | Bad]:
    """(line, {column: value}) per CSV record, or a Bad; a record's line is the one it starts on.
    ``check_header`` returns why the header does not suit the reader (a whole-file error)."""
    pending: list[Bad] = []                       # overlong lines and damage, reported in order
    span = {"first": None, "last": 0}             # the lines csv took for the record it is reading

    def text() -> Iterator[str]:
        for n, line in _lines(path):
            if isinstance(line, Bad):
                pending.append(line)
                continue
            if span["first"] is None:
                span["first"] = n
            span["last"] = n
            yield line

    def taken() -> tuple[int, int]:
        first, span["first"] = span["first"], None
        return first or span["last"], span["last"]

    reader = csv.reader(text(), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        header = []
    except csv.Error as e:
        raise ReaderError(str(path), f"unreadable header: {e}") from None
    taken()
    if pending or not any(header):
        raise ReaderError(str(path), f"unreadable header: {pending[0].reason}" if pending else "no header")
    if has_bad_bytes(",".join(header)):
        raise ReaderError(str(path), "header is not valid UTF-8")
    if dupes := sorted({h for h in header if header.count(h) > 1}):
        raise ReaderError(str(path), f"duplicate column names {dupes} in the header")
    if check_header and (why := check_header(header)):
        raise ReaderError(str(path), why)
    any_rows = False
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield from pending
            pending.clear()
            first, last = taken()
            any_rows = True
            yield Bad(first, f"malformed CSV ({f'line {first}' if first == last else f'lines {first}-{last}'}): {e}")
            continue
        yield from pending
        pending.clear()
        line, _ = taken()
        any_rows = True
        joined = ",".join(values)
        if not values or all(not v.strip() for v in values):
            yield Bad(line, "empty line")
        elif len(values) != len(header):
            yield Bad(line, f"expected {len(header)} columns {header}, got {len(values)}", _excerpt(joined))
        elif has_bad_bytes(joined):
            yield Bad(line, "invalid UTF-8", _excerpt(joined))
        elif "\x00" in joined:
            yield Bad(line, "NUL byte in row", _excerpt(joined))
        else:
            yield line, dict(zip(header, values))
    if not any_rows and not pending:
        raise ReaderError(str(path), "no data rows (header only)")
    yield from pending


def _hierarcaps_header(header: list[str]) -> str | None:
    if "captions" not in header and "positive" not in header:
        return f"not a HierarCaps CSV: needs a 'captions' or 'positive' column, has {header}"
    return None


def read_hierarcaps_csv(path: Path, **_) -> Iterator[Record | Bad]:
    """HierarCaps test (``id,captions,image_url``) or train/expanded (``positive,negative[,image_url]``).
    Ids must be unique within a file: a later row with a kept row's id is a reject."""
    ids: dict[str, int] = {}
    for item in _csv_rows(path, _hierarcaps_header):
        if isinstance(item, Bad):
            yield item
            continue
        line, rec = item
        pos_field = "captions" if "captions" in rec else "positive"
        pos = split_tiers(rec[pos_field])
        neg = split_tiers(rec["negative"]) if rec.get("negative") else None
        rid = rec["id"].strip() if "id" in rec else None
        if why := chain_problem(pos):
            yield Bad(line, f"positive chain: {why}", _excerpt(rec[pos_field]))
        elif neg is not None and (why := chain_problem(neg)):
            yield Bad(line, f"negative chain: {why}", _excerpt(rec["negative"]))
        elif rid == "":
            yield Bad(line, "empty id", _excerpt(",".join(rec.values())))
        elif rid is not None and rid in ids:
            yield Bad(line, f"duplicate id {rid}, first at line {ids[rid]}", _excerpt(",".join(rec.values())))
        else:
            if rid is not None:
                ids[rid] = line
            url = rec.get("image_url") or None
            yield Record(line, pos[-1], image_url=url, image_id=coco_image_id(url, strict=True), orig_id=rid,
                         positive=pos, negative=neg)


def _check_columns(path: Path, columns: dict[str, str]) -> dict[str, str]:
    if unknown := sorted(set(columns) - set(COLUMN_KEYS)):
        raise ReaderError(str(path), f"columns: unknown key(s) {unknown}; known: {list(COLUMN_KEYS)}")
    return {"text": "caption", **columns}


def _missing_columns(columns: dict[str, str], names: list[str]) -> str | None:
    """A mapped column the file's header (or Parquet schema) does not have: a whole-file error."""
    missing = [f"'{col}' (columns.{key})" for key, col in columns.items() if col not in names]
    if missing:
        return f"no column {', '.join(missing)}; the file has {names}"
    return None


def _mapped(get, columns: dict[str, str], row: int, record) -> Record | Bad:
    text_col = columns["text"]
    text = get(text_col)
    if text is None:
        return Bad(row, f"missing text column '{text_col}'", _excerpt(str(record)))
    if not isinstance(text, str):
        return Bad(row, f"text column '{text_col}' is not a string", _excerpt(str(record)))

    def opt(name):
        v = get(columns[name]) if name in columns else None
        return None if v is None or v == "" else str(v)

    extra = {name: opt(name) for name in ("image_url", "image_id", "id", "split")}
    if bad := [columns.get(k, text_col) for k, v in {"text": text, **extra}.items() if _surrogate(v)]:
        return Bad(row, f"invalid Unicode in column '{bad[0]}': {SURROGATE}", _excerpt(str(record)))
    return Record(row, text, image_url=extra["image_url"], image_id=extra["image_id"], orig_id=extra["id"],
                  split=extra["split"])


def read_csv(path: Path, columns: dict[str, str] | None = None, **_) -> Iterator[Record | Bad]:
    columns = _check_columns(path, columns or {})
    for item in _csv_rows(path, lambda header: _missing_columns(columns, header)):
        if isinstance(item, Bad):
            yield item
        else:
            line, rec = item
            yield _mapped(rec.get, columns, line, ",".join(rec.values()))


def read_jsonl(path: Path, columns: dict[str, str] | None = None, **_) -> Iterator[Record | Bad]:
    columns = _check_columns(path, columns or {})
    for row, line in _lines(path):
        if isinstance(line, Bad):
            yield line
            continue
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
        except (RecursionError, ValueError) as e:  # nesting too deep; an integer too long to convert
            yield Bad(row, f"invalid JSON: {'nested too deeply' if isinstance(e, RecursionError) else e}",
                      _excerpt(line))
            continue
        if not isinstance(obj, dict):
            yield Bad(row, "JSON line is not an object", _excerpt(line))
            continue
        yield _mapped(obj.get, columns, row, line)


def read_parquet(path: Path, columns: dict[str, str] | None = None, **_) -> Iterator[Record | Bad]:
    """Parquet, read in small batches of the mapped columns only. A file damaged past its footer
    keeps the records read before the damage and ends with one Bad (as a damaged .gz does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = _check_columns(path, columns or {})
    check_file(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise ReaderError(str(path), f"not a readable Parquet file: {e}") from None
    names = pf.schema_arrow.names
    if why := _missing_columns(columns, names):
        raise ReaderError(str(path), why)
    if pf.metadata.num_rows == 0:
        raise ReaderError(str(path), "no data rows")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=sorted(set(columns.values()))):
            for rec in batch.to_pylist():
                row += 1
                yield _mapped(rec.get, columns, row, rec)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
        yield Bad(row + 1, f"damaged Parquet data after record {row} ({e}); any later records are lost")


READERS = {
    "cc_tsv": read_cc_tsv,
    "coco_json": read_coco_json,
    "hierarcaps_csv": read_hierarcaps_csv,
    "csv": read_csv,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
}


def read_source(path: Path, fmt: str = "auto", columns: dict | None = None) -> Iterator[Record | Bad]:
    check_file(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise ReaderError(str(path), f"unknown format '{fmt}'; choose one of {sorted(READERS)}")
    return READERS[fmt](path, columns=columns)
