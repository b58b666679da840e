"""Stable hashes for cache keys, ids and de-duplication."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def stable_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, n: int = 16) -> str:
    data = obj if isinstance(obj, (bytes, bytearray)) else stable_json(obj).encode()
    return hashlib.sha256(data).hexdigest()[:n]


def file_digest(path: str | Path, n: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def text_hash64(text: str) -> int:
    """64-bit hash of a string: a compact de-duplication key (memory stays flat for millions)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)
