"""Locate ../shared/data/hierarcaps (third-party data, never copied into the repo)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HIERARCAPS = REPO.parent / "shared" / "data" / "hierarcaps"
TEST_CSV = HIERARCAPS / "hierarcaps_test.csv"
EXPANDED = HIERARCAPS / "hierarcaps_test_expanded.csv.gz"
IMAGES = HIERARCAPS / "test_imgs"

needs_shared = pytest.mark.skipif(
    not TEST_CSV.exists(), reason=f"shared HierarCaps data not found at {HIERARCAPS} (absent on a user's clone)"
)

# captions the tiny models were not trained on (their builds are gated on them)
from pipeline.models.tiny_train import HELDOUT_CAPTIONS as UNSEEN  # noqa: E402
