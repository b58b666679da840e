"""Resolve user paths: relative to the working directory first, then to the repo checkout."""

from __future__ import annotations

from pathlib import Path

from .config import REPO_ROOT


def resolve_path(p: str | Path) -> Path:
    p = Path(p).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p
