"""Curation over the released pool (../shared): the curated 1K test chains imported as one
reviewer's corrections of the pool's generated chains; the report must agree with a direct
comparison of the two CSVs (which tiers the curators left unchanged)."""

from __future__ import annotations

import csv
import gzip
import json

from _shared import EXPANDED, TEST_CSV, needs_shared


def _direct_counts() -> tuple[int, int, list[int]]:
    """(matched, fully unchanged, unchanged per tier), straight from the released files."""
    tiers = lambda s: [t.strip() for t in s.split("=>")]  # noqa: E731
    with gzip.open(EXPANDED, "rt", encoding="utf-8", newline="") as f:
        pool = {(r["image_url"], tiers(r["positive"])[3]): tiers(r["positive"]) for r in csv.DictReader(f)}
    matched, full, per = 0, 0, [0] * 4
    with open(TEST_CSV, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            c = tiers(r["captions"])
            if (g := pool.get((r["image_url"], c[3]))) is not None:
                matched, full = matched + 1, full + (g == c)
                per = [p + (a == b) for p, a, b in zip(per, g, c)]
    return matched, full, per


@needs_shared
def test_released_pool_report(tmp_path, capsys):
    from curation.released import main

    assert main(["--pool", str(EXPANDED), "--curated", str(TEST_CSV), "--root", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    matched, full, per = _direct_counts()
    r = out["report"]
    assert (out["pool_items"], out["matched"] + out["unmatched"]) == (23479, 1000)
    assert (out["matched"], out["imported"] + out["rejected"]) == (matched, matched)
    assert (r["reviewed"], r["fully_valid"]) == (out["imported"], full)
    assert [t["valid_as_generated"] for t in r["per_tier"]] == per
    assert (tmp_path / "runs" / "released" / "curated" / "hierarcaps_test.csv").exists()
