"""Files to lines, safely: the reading vocabulary (Record, Bad, ReaderError) and the byte-level
checks every reader shares (a regular, non-empty UTF-8 file or gzip of one; lines capped at
``MAX_LINE_BYTES`` and skipped in chunks beyond it; a truncated gzip reported where it ends).
The formats themselves are in :mod:`pipeline.io.readers`."""

from __future__ import annotations

import csv
import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


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


def excerpt_of(s: str) -> str:
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


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def first_bytes(path: Path, raw: bytes) -> bytes:
    """The first line, BOM dropped; refuses text that is not UTF-8 (UTF-16, binary, CR-only lines)."""
    raw = raw.removeprefix(UTF8_BOM)
    if raw.startswith(UTF16_BOMS):
        raise ReaderError(str(path), "UTF-16 text (byte-order mark); save it as UTF-8")
    if len(raw) > 1 and raw.count(0) * 4 > len(raw):
        raise ReaderError(str(path), "binary or UTF-16 data (NUL bytes in the first line), not UTF-8 text")
    if not raw.endswith(b"\n") and b"\r" in raw.rstrip(b"\r"):
        raise ReaderError(str(path), "lines end in CR only (classic Mac); convert them to LF or CRLF")
    return raw


def skip_rest_of_line(f) -> int:
    """Read past the rest of an overlong line in chunks; returns the bytes skipped."""
    skipped = 0
    while chunk := f.readline(MAX_LINE_BYTES):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


GZIP_DAMAGE = (EOFError, gzip.BadGzipFile, zlib.error)      # what reading a damaged .gz raises


def damage_reason(e: BaseException) -> str:
    """A damaged .gz's error, in the words every line reader uses."""
    return "file ends early (truncated gzip)" if isinstance(e, EOFError) else f"damaged gzip data ({e})"


def damage_after(path: Path, n: int, damage: str) -> Bad:
    """The Bad that ends a damaged stream after line ``n``; damage before any whole line makes the
    file unreadable."""
    if n == 0:
        raise ReaderError(str(path), f"{damage} before the end of its first line")
    return Bad(n + 1, f"{damage} after line {n}; any later lines are lost")


def text_lines(path: Path) -> Iterator[tuple[int, str | Bad]]:
    """(line number, decoded line with its line end) for each line of a text file, possibly
    gzipped. Invalid UTF-8 survives as surrogate escapes so each row can be judged on its own. An
    overlong line is a ``Bad``; damage in a .gz ends the stream with a ``Bad`` on the next line."""
    check_file(path)
    n = 0
    damage = None
    with open_binary(path) as f:
        try:
            while raw := f.readline(MAX_LINE_BYTES + 1):
                n += 1
                if n == 1:
                    raw = first_bytes(path, raw)
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    size = len(raw) + skip_rest_of_line(f)
                    excerpt = excerpt_of(raw[:EXCERPT_MAX].decode("utf-8", "surrogateescape"))
                    yield n, Bad(n, f"line longer than {MAX_LINE_BYTES} bytes ({size} bytes)", excerpt)
                    continue
                yield n, raw.decode("utf-8", "surrogateescape")
        except GZIP_DAMAGE as e:
            damage = damage_reason(e)
        except OSError as e:
            raise ReaderError(str(path), f"read error after line {n}: {e}") from None
    if damage:
        yield n + 1, damage_after(path, n, damage)
    elif n == 0:
        raise ReaderError(str(path), "empty file (nothing after decompression)")
