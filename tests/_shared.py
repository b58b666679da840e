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

# captions the tiny models were not trained on (none is in prompts/exemplars.jsonl)
UNSEEN = [
    "a man riding a horse along the beach at sunset",
    "a plate of sushi with chopsticks on a black tray",
    "children playing soccer in a dusty schoolyard",
    "a small wooden cabin in the snowy mountains",
    "a woman jogging with her dog in the park",
    "a red tractor parked next to a barn",
    "a golden retriever catching a frisbee in the air",
    "a young woman reading a book in a hammock",
    "a steam locomotive crossing a stone bridge",
    "a bowl of cereal with milk and blueberries",
]
