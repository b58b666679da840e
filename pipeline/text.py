"""Caption clean-up and de-duplication keys, per string and (for ingest) per Arrow column."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .hashing import arrow_bytes

_WS = re.compile(r"\s+")
_CTRL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b\ufeff]")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def clean_text(text: str) -> str:
    """NFC, drop control/zero-width characters, fold whitespace. Keeps case and punctuation."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if not text.isprintable():  # control and zero-width characters are not printable
        text = _CTRL.sub(" ", text)
    return " ".join(text.split())


def norm_key(text: str) -> str:
    """Key for near-duplicate detection: NFKC, casefolded, edge punctuation and spacing folded."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return _EDGE_PUNCT.sub("", " ".join(text.casefold().split()))


def has_bad_bytes(text: str) -> bool:
    """True when a string decoded with surrogateescape carried invalid UTF-8."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --------------------------------------------------------------- the same, over Arrow string arrays

_EDGE_ASCII = "".join(chr(c) for c in range(128) if not chr(c).isalnum())   # [\W_] within ASCII


def _double_space(texts: pa.Array) -> np.ndarray:
    """Rows that may hold two spaces in a row, by numpy over the bytes (a pair across two rows marks
    the first: that only sends it the slow, exact way)."""
    data, offsets = arrow_bytes(texts)
    space = data[offsets[0]:offsets[-1]] == 32
    hits = np.flatnonzero(space[1:] & space[:-1]) + offsets[0]
    out = np.zeros(len(texts), bool)
    out[np.searchsorted(offsets, hits, "right") - 1] = True
    return out


def _plain(texts: pa.Array) -> pa.Array:
    """Printable ASCII without a double space: what clean_text and norm_key treat simply."""
    ok = pc.and_(pc.string_is_ascii(texts), pc.ascii_is_printable(texts))
    return pc.and_(pc.fill_null(ok, True), pa.array(~_double_space(texts)))


def _patch(result: pa.Array, texts: pa.Array, slow: pa.Array, fn) -> pa.Array:
    """``result`` with the rows where ``slow`` holds replaced by ``fn`` of the input text."""
    idx = np.flatnonzero(slow.to_numpy(zero_copy_only=False))
    if not idx.size:
        return result
    fixed = [None if t is None else fn(t) for t in texts.take(pa.array(idx)).to_pylist()]
    return pc.replace_with_mask(result, slow, pa.array(fixed, pa.string()))


def clean_texts(texts: pa.Array) -> pa.Array:
    """``clean_text`` of each value. Clean printable ASCII (most real captions) is already its own
    clean-up and stays; only the other rows (non-ASCII: NFC; controls, runs of spaces) go through
    ``clean_text`` itself, so the result is identical."""
    done = pc.and_(_plain(texts), pc.invert(pc.or_(pc.starts_with(texts, " "), pc.ends_with(texts, " "))))
    return _patch(texts, texts, pc.invert(done), clean_text)


def norm_keys(texts: pa.Array) -> pa.Array:
    """``norm_key`` of each value: for printable ASCII without a double space it is lower case with
    the non-alphanumeric ends trimmed (done by Arrow); the other rows go through ``norm_key``."""
    fast = pc.ascii_trim(pc.ascii_lower(texts), _EDGE_ASCII)
    return _patch(fast, texts, pc.invert(_plain(texts)), norm_key)
