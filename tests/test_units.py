"""Streamed units (pipeline/stages/units.py): the same rows, sample and unit boundaries as a sort
of the whole upstream in memory, whatever the batch size, without reading the upstream as Python."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from pipeline.schemas import CAPTIONS, conform
from pipeline.stages import units as U
from pipeline.store import StageDir


def in_memory_sample(rows: list[dict], n: int | None, seed: int, salt: str) -> list[dict]:
    """The sample as a sort of every row in memory (what the stages did before streaming), by each
    id's key computed on its own."""
    key = lambda r: int(U.order_keys(seed, salt, pa.array([r["caption_id"]]))[0])    # noqa: E731
    ordered = sorted(rows, key=key)
    return ordered[:n] if n else ordered


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cid = f"{rng.getrandbits(64):016x}" if i % 50 else f"odd id \"{i}\" é"     # some ids json must escape
        chain = ["a", "a b", "a b c", f"a b c {i}"] if i % 7 == 0 else None
        rows.append(dict(caption_id=cid, text=f"caption {i}", source="s", source_file="f", source_row=i + 1,
                         split=rng.choice(["train", "train", "test", None]), image_url=f"u{i % 40}",
                         positive=chain))
    rows[11]["caption_id"] = rows[10]["caption_id"]                                 # a tie keeps upstream order
    for i in (137, 500, 999):                                                       # ... across unit files too
        rows[i]["caption_id"], rows[i]["split"], rows[i]["positive"] = rows[10]["caption_id"], rows[10]["split"], None
    return rows


@pytest.fixture
def upstream(tmp_path) -> tuple[StageDir, list[dict]]:
    rows = make_rows(1000)
    sd = StageDir(tmp_path / "ingest")
    for i in range(0, len(rows), 137):                                              # uneven units
        sd.write_unit(i // 137, conform(rows[i:i + 137], CAPTIONS), None, {"key": "k"})
    return sd, rows


def wanted(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["split"] in ["train"] and not r["positive"]]


def unit_ids(work: U.Units) -> list[list[str]]:
    return [t.column("caption_id").to_pylist() for _, t in work]


@pytest.mark.parametrize("n", [1, 25, 300, 5000])
@pytest.mark.parametrize("batch", [3, 64, 8192])
def test_sample_matches_the_in_memory_order(upstream, monkeypatch, n, batch):
    sd, rows = upstream
    monkeypatch.setattr(U, "BATCH", batch)
    where = U.all_of(U.is_in("split", ["train"]), U.has_no_chain)
    work = U.stream_units(sd, 16, where, ["split", "positive"], n=n, seed=3, salt="seed")
    expect = [r["caption_id"] for r in in_memory_sample(wanted(rows), n, 3, "seed")]
    got = [c for ids in unit_ids(work) for c in ids]
    assert got == expect and work.total == len(expect)
    assert all(len(ids) == 16 for ids in unit_ids(work)[:-1])


@pytest.mark.parametrize("batch", [5, 8192])
def test_unsampled_units_follow_upstream_order(upstream, monkeypatch, batch):
    sd, rows = upstream
    monkeypatch.setattr(U, "BATCH", batch)
    work = U.stream_units(sd, 50, U.all_of(U.is_in("split", ["train"]), U.has_no_chain), ["split", "positive"])
    ids = [r["caption_id"] for r in wanted(rows)]
    assert unit_ids(work) == [ids[i:i + 50] for i in range(0, len(ids), 50)]
    assert work.total == len(ids)
    full = next(iter(work))[1]
    assert full.column_names == sd.read().column_names           # every column unless told otherwise


def test_sample_order_is_seeded_and_spread(upstream):
    """Each stage and seed draws its own order; a sample is spread over the whole upstream."""
    sd, rows = upstream
    ids = pa.array([r["caption_id"] for r in rows])
    a, b, c = U.order_keys(7, "bulk", ids), U.order_keys(8, "bulk", ids), U.order_keys(7, "seed", ids)
    assert (a != b).mean() > 0.99 and (a != c).mean() > 0.99
    picked = [t.column("source_row").to_pylist() for _, t in U.stream_units(sd, 100, n=200, seed=7, salt="bulk")]
    rows_at = sorted(r for unit in picked for r in unit)
    assert 400 < sum(rows_at) / len(rows_at) < 600           # mean row of a uniform sample of 1..1000: ~500
    assert sum(r <= 500 for r in rows_at) in range(80, 121)


def test_units_never_read_the_whole_upstream(upstream, monkeypatch):
    sd, _ = upstream

    def refuse(*a, **k):
        raise AssertionError("StageDir.read called")
    monkeypatch.setattr(StageDir, "read", refuse)
    assert sum(t.num_rows for _, t in U.stream_units(sd, 10, n=30, seed=0, salt="x")) == 30
    assert sum(t.num_rows for _, t in U.stream_units(sd, 10)) == 1000
