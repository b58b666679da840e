"""Shared fixtures. ``tiny_models``: the offline tiny models, built once per session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """{"llama": path, "t5": path, "nli": path}; cached under $HIERARCAPS_CACHE when set
    (reused across runs), else in a session tmp dir."""
    from pipeline.models import resolve_model

    cache = os.environ.get("HIERARCAPS_CACHE") or str(tmp_path_factory.mktemp("tiny_cache"))
    return {
        "llama": resolve_model("tiny/llama-chat", cache),
        "t5": resolve_model("tiny/t5", cache),
        "nli": resolve_model("tiny/nli", cache),
    }
