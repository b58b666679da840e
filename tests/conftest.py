"""Shared fixtures. ``tiny_models``: the offline tiny models, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# one tiny-model cache for the fixtures and for stage processes the flow tests spawn
os.environ.setdefault("HIERARCAPS_CACHE", str(REPO / ".cache" / "tiny"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """{"llama": path, "t5": path, "nli": path}; cached under $HIERARCAPS_CACHE (default
    .cache/tiny in the checkout, git-ignored), reused across runs."""
    from pipeline.models import resolve_model

    cache = os.environ["HIERARCAPS_CACHE"]
    return {
        "llama": resolve_model("tiny/llama-chat", cache),
        "t5": resolve_model("tiny/t5", cache),
        "nli": resolve_model("tiny/nli", cache),
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on 2 shared cores the default intra-op threads thrash under
    load (50x slower here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
