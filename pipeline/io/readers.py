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
from pathlib import Path
from typing import Callable, Iterator

from ..chain import chain_problem, split_tiers
from ..testset import coco_image_id
from ..text import has_bad_bytes
from .textfile import (COLUMN_KEYS, MAX_DOC_BYTES, SURROGATE, UTF16_BOMS, Bad, ReaderError, Record, check_file,
                       excerpt_of, open_binary, text_lines)

__all__ = ["Bad", "Record", "ReaderError", "READERS", "cc_tsv_row", "detect_format", "read_source"]


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
    """Conceptual Captions: ``caption<TAB>url`` per line, no header. Line by line; ingest reads the
    format a block at a time (:mod:`pipeline.io.tsv_fast`), with the same items."""
    for row, line in text_lines(path):
        yield line if isinstance(line, Bad) else cc_tsv_row(row, line)


def cc_tsv_row(row: int, line: str) -> Record | Bad:
    """One decoded TSV line (its line end included or not) as a Record, or why it is not one."""
    line = line.rstrip("\r\n")
    if has_bad_bytes(line):
        return Bad(row, "invalid UTF-8", excerpt_of(line))
    if "\x00" in line:
        return Bad(row, "NUL byte in line", excerpt_of(line))
    if not line.strip():
        return Bad(row, "empty line")
    if len(parts := line.split("\t")) != 2:
        return Bad(row, f"expected 2 tab-separated columns (caption, url), got {len(parts)}", excerpt_of(line))
    return Record(row, parts[0], image_url=parts[1].strip() or None)


def _json_id(v) -> bool:
    """COCO ids are integers (some files use strings); lists and objects cannot be ids."""
    return isinstance(v, (int, str)) and not isinstance(v, bool)


def _surrogate(*values) -> bool:
    """A lone surrogate (``"\\ud800"`` in JSON) cannot be written as UTF-8."""
    return any(isinstance(v, str) and has_bad_bytes(v) for v in values)


def _load_json_doc(path: Path):
    check_file(path)
    try:
        with open_binary(path) as f:
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
            yield Bad(row, "annotation is not an object", excerpt_of(str(ann)))
            continue
        cap, img = ann.get("caption"), ann.get("image_id")
        if not isinstance(cap, str):
            yield Bad(row, "annotation has no caption string", excerpt_of(json.dumps(ann)))
        elif not _json_id(img):
            yield Bad(row, "annotation has no image_id (an integer or string)", excerpt_of(json.dumps(ann)))
        elif img not in images:
            yield Bad(row, f"image_id {img!r} not in images" + ("" if images else " (the file lists no images)"),
                      excerpt_of(json.dumps(ann)))
        elif _surrogate(cap, images[img], ann.get("id")):
            yield Bad(row, f"invalid Unicode: {SURROGATE}", excerpt_of(cap))
        else:
            url = images[img]
            yield Record(row, cap, image_url=None if url is None else str(url), image_id=str(img),
                         orig_id=None if ann.get("id") is None else str(ann["id"]))


def _csv_header(path: Path) -> list[str]:
    """The column names on a CSV's first line, for format detection (the reader checks them)."""
    for _, line in text_lines(path):
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
        for n, line in text_lines(path):
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
            yield Bad(line, f"expected {len(header)} columns {header}, got {len(values)}", excerpt_of(joined))
        elif has_bad_bytes(joined):
            yield Bad(line, "invalid UTF-8", excerpt_of(joined))
        elif "\x00" in joined:
            yield Bad(line, "NUL byte in row", excerpt_of(joined))
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
        pos = split_tiers(rec[pos_field], verbatim=True)          # curated data: kept as written
        neg = split_tiers(rec["negative"], verbatim=True) if rec.get("negative") else None
        rid = rec["id"].strip() if "id" in rec else None
        if why := chain_problem(pos):
            yield Bad(line, f"positive chain: {why}", excerpt_of(rec[pos_field]))
        elif neg is not None and (why := chain_problem(neg)):
            yield Bad(line, f"negative chain: {why}", excerpt_of(rec["negative"]))
        elif rid == "":
            yield Bad(line, "empty id", excerpt_of(",".join(rec.values())))
        elif rid is not None and rid in ids:
            yield Bad(line, f"duplicate id {rid}, first at line {ids[rid]}", excerpt_of(",".join(rec.values())))
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
        return Bad(row, f"missing text column '{text_col}'", excerpt_of(str(record)))
    if not isinstance(text, str):
        return Bad(row, f"text column '{text_col}' is not a string", excerpt_of(str(record)))

    def opt(name):
        v = get(columns[name]) if name in columns else None
        return None if v is None or v == "" else str(v)

    extra = {name: opt(name) for name in ("image_url", "image_id", "id", "split")}
    if bad := [columns.get(k, text_col) for k, v in {"text": text, **extra}.items() if _surrogate(v)]:
        return Bad(row, f"invalid Unicode in column '{bad[0]}': {SURROGATE}", excerpt_of(str(record)))
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
    for row, line in text_lines(path):
        if isinstance(line, Bad):
            yield line
            continue
        if not line.strip():
            yield Bad(row, "empty line")
            continue
        if has_bad_bytes(line):
            yield Bad(row, "invalid UTF-8", excerpt_of(line))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Bad(row, f"invalid JSON: {e.msg}", excerpt_of(line))
            continue
        except (RecursionError, ValueError) as e:  # nesting too deep; an integer too long to convert
            yield Bad(row, f"invalid JSON: {'nested too deeply' if isinstance(e, RecursionError) else e}",
                      excerpt_of(line))
            continue
        if not isinstance(obj, dict):
            yield Bad(row, "JSON line is not an object", excerpt_of(line))
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
