"""Caption clean-up and de-duplication keys."""

from __future__ import annotations

import re
import unicodedata

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
