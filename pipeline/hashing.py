"""Stable hashes for cache keys, ids and de-duplication."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np


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



_M1, _M2, _SEED = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of 64-bit words in which every input bit moves every output bit."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def arrow_bytes(values) -> tuple[np.ndarray, np.ndarray]:
    """(data, offsets) of an Arrow string or binary array, as numpy views (no copy)."""
    if not len(values):
        return np.zeros(0, np.uint8), np.zeros(1, np.int32)
    offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset:values.offset + len(values) + 1]
    data = values.buffers()[2]
    return (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)), offsets


def hashes64(values, seed: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit hash of each value of an Arrow string array, computed by numpy for all rows at once
    (a de-duplication key: fixed-size, no Python string a row). Each row's state starts from its
    ``seed`` (say, the hash of what the value belongs to) and its length and takes its bytes 8 at a
    time, ``state = mix(state ^ word)``; deterministic, the same on every machine (little-endian
    words, wrapping uint64 arithmetic). Not ``text_hash64``."""
    data, offsets = arrow_bytes(values)
    data = np.concatenate([data, np.zeros(8, np.uint8)])
    words = np.ndarray((len(data) - 7,), "<u8", buffer=data, strides=(1,))    # the 8 bytes at each position
    lens = (offsets[1:] - offsets[:-1]).astype(np.int64)
    order = np.argsort(-lens, kind="stable")             # longest first: the rows still going are a prefix
    length, pos = lens[order], offsets[:-1][order].astype(np.int64)
    h = _mix(length.astype(np.uint64) ^ (_SEED if seed is None else _mix(seed[order] ^ _SEED)))
    going = lambda done: int(np.searchsorted(-length, -done))     # rows longer than ``done`` bytes
    done, k = 0, going(0)
    while k:
        w = words[pos[:k] + done]
        full = going(done + 7)
        w[full:] &= (np.uint64(1) << ((length[full:k] - done) * 8).astype(np.uint64)) - np.uint64(1)
        h[:k] = _mix(h[:k] ^ w)
        done += 8
        k = going(done)
    out = np.empty_like(h)
    out[order] = h
    return out
