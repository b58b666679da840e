"""Caption clean-up and de-duplication keys."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
_CTRL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b\ufeff]")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def clean_text(text: str) -> str:
    """NFC, drop control/zero-width characters, fold whitespace. Keeps case and punctuation."""
    text = unicodedata.normalize("NFC", text)
    text = _CTRL.sub(" ", text)
    return _WS.sub(" ", text).strip()


def norm_key(text: str) -> str:
    """Key for near-duplicate detection: NFKC, casefolded, edge punctuation and spacing folded."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _WS.sub(" ", text).strip()
    return _EDGE_PUNCT.sub("", text)


def has_bad_bytes(text: str) -> bool:
    """True when a string decoded with surrogateescape carried invalid UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)
