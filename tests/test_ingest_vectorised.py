"""The vectorised ingest pieces against the per-row code they stand for: the same clean-up and keys,
the same TSV items whatever the block size, the same duplicate decisions, and a run killed in the
middle of a unit that resumes to exactly the rows of an uninterrupted one."""

from __future__ import annotations

import gzip
import itertools
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipeline import dedup as dedup_mod
from pipeline.background import read_ahead
from pipeline.config import load_config
from pipeline.dedup import EXACT, KEEP, NEAR, DedupIndex, dedup_hashes
from pipeline.execute import run_stage
from pipeline.io import textfile, tsv_fast
from pipeline.io.batch import read_batches
from pipeline.io.readers import Record, read_source
from pipeline.registry import get_stage
from pipeline.stages.ingest import caption_id, caption_ids
from pipeline.store import RunStore
from pipeline.text import clean_text, clean_texts, norm_key, norm_keys

from _shared import REPO

ALPHABET = (list(" \t\n\r\x0b\x0c\x1c\x1f\x00\x07\x7f") + list("aZ9_.,!-'\"()") + list("    aaaeeb")
            + ["é", "e\u0301", "ﬁ", "Ａ", "\u200b", "\ufeff", "\xa0", "\u3000", "\x85", "ß", "İ", "🐶", "\u0307"])


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [("".join(rng.choices(ALPHABET, k=rng.randint(0, 14))) if rng.random() < .7
             else " ".join(rng.choices(["A", "dog", "cat.", "_x_", "--", "Red", "on"], k=rng.randint(1, 5))))
            for _ in range(n)]


def test_column_clean_up_and_keys_equal_the_per_string_functions():
    texts = random_texts(20_000)
    arr = pa.array(texts)
    assert clean_texts(arr).to_pylist() == [clean_text(t) for t in texts]
    assert norm_keys(arr).to_pylist() == [norm_key(t) for t in texts]
    cleaned = [clean_text(t) for t in texts]
    assert norm_keys(pa.array(cleaned)).to_pylist() == [norm_key(t) for t in cleaned]


def test_caption_ids_equal_caption_id():
    rng = random.Random(1)
    texts = random_texts(3000, seed=1)
    chains = [None if rng.random() < .5 else rng.sample(texts, 4) for _ in texts]
    orig = [None if rng.random() < .5 else str(rng.randrange(99)) for _ in texts]
    got = caption_ids("cc", pa.array(texts), pa.array(chains, pa.list_(pa.string())), pa.array(orig, pa.string()))
    assert got.to_pylist() == [caption_id("cc", t, c, o) for t, c, o in zip(texts, chains, orig)]


def test_scoped_keys_are_equal_exactly_when_the_key_strings_are():
    """The pair (image, text) stands for the string f"{image}\\x1f{text}", \\x1f inside included."""
    rng = random.Random(3)
    parts = ["a", "b", "a\x1fb", "\x1f", "", "b\x1f", "A."]
    images = [rng.choice(parts + [None]) for _ in range(3000)]
    texts = [rng.choice(parts) + rng.choice(parts) for _ in images]
    for scope in ("image", "global"):
        exact, near = dedup_hashes(pa.array(texts), pa.array(images, pa.string()), "normalized", scope)
        strings = [f"{i}\x1f{t}" if scope == "image" and i else t for i, t in zip(images, texts)]
        norms = [f"{i}\x1f{norm_key(t)}" if scope == "image" and i else norm_key(t) for i, t in zip(images, texts)]
        for keys, want in ((exact, strings), (near, norms)):
            first: dict = {}
            assert [first.setdefault(k, w) == w for k, w in zip(keys.tolist(), want)] == [True] * len(want)
            assert len(first) == len(set(want))


def items(batches) -> list:
    out = []
    for b in batches:
        got = {r["item"]: Record(r["row"], r["text"], image_url=r["image_url"]) for r in b.records.to_pylist()}
        got.update(dict(b.bads))
        assert sorted(got) == list(range(b.start, b.start + b.n))
        out += [got[i] for i in sorted(got)]
    return out


def tsv_bytes(seed: int, n: int = 400) -> bytes:
    rng = random.Random(seed)
    pieces = [b"A dog on grass.\thttp://x/1.jpg", b"", b" \t ", b"one column", b"a\tb\tc", b"caf\xc3\xa9\tu",
              b"bad \xff\tu", b"nul\x00\tu", b"\ttab first", b"cr\tu\r", b"crcr\tu \r\r", b"x" * 150 + b"\tu",
              b"url\t", b"\x1c\tu", b"q \"quoted\" \tu", "sp\u3000\tu\xa0".encode(), b"y" * 400]
    return b"\xef\xbb\xbf" + b"\n".join(rng.choice(pieces) for _ in range(n)) + rng.choice([b"\n", b"", b"\r\n"])


@pytest.mark.parametrize("block", [64, 1000, 4 << 20])
def test_tsv_blocks_give_the_per_line_items(tmp_path, monkeypatch, block):
    """Lines over 100 bytes are overlong here, and blocks cut lines anywhere."""
    for mod in (textfile, tsv_fast):
        monkeypatch.setattr(mod, "MAX_LINE_BYTES", 100)
    monkeypatch.setattr(tsv_fast, "BLOCK", block)
    for seed in range(6):
        data = tsv_bytes(seed)
        z = gzip.compress(data, mtime=0)
        for name, raw in [("a.tsv", data), ("a.tsv.gz", z), ("t.tsv.gz", z[:len(z) // 2])]:
            p = tmp_path / name
            p.write_bytes(raw)
            want = list(read_source(p))
            assert items(read_batches(p)) == want, (seed, name)
            assert want[-1].reason.startswith("file ends early") if name.startswith("t.") else want[-1].row == 400


def sequential(exact, near, mode):
    """The per-row Deduper it replaces: exact first, then normalised; an entry only when kept."""
    seen_e, seen_n, out = {}, {}, []
    for i, (e, n) in enumerate(zip(exact, near)):
        if e in seen_e:
            out.append((EXACT, seen_e[e]))
        elif mode == "normalized" and n in seen_n:
            out.append((NEAR, seen_n[n]))
        else:
            seen_e[e] = i
            if mode == "normalized":
                seen_n[n] = i
            out.append((KEEP, 0))
    return out


@pytest.mark.parametrize("mode", ["normalized", "exact"])
def test_index_decides_as_the_sequential_loop(monkeypatch, mode):
    monkeypatch.setattr(dedup_mod, "CHUNK_MAX", 300)        # many merges and chunks
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 2**63, 4000, dtype=np.uint64) * np.uint64(2)      # keys anywhere in 64 bits
    pick = rng.integers(0, 2000, 20_000) * 2 + rng.integers(0, 2, 20_000)
    near, exact = pool[pick // 2 * 2], pool[pick] ^ np.uint64(1)             # same text => same key
    index, got = DedupIndex(mode), []
    for lo in range(0, len(near), 700):
        sl = slice(lo, lo + 700)
        kind, of = index.check(exact[sl], near[sl] if mode == "normalized" else None, np.arange(len(near))[sl])
        got += list(zip(kind.tolist(), np.where(kind == KEEP, 0, of).tolist()))
    assert got == sequential(exact.tolist(), near.tolist(), mode)
    assert len(index.chunks) < 20


def test_index_where_grows_past_32_bits():
    index = DedupIndex("exact", sources=3)
    keys = np.array([5, 7, 9], np.uint64) << np.uint64(40)
    index.check(keys[:2], None, index.where(1, np.array([10, 11])))
    index.check(keys[2:], None, index.where(2, np.array([2**33])))
    kind, of = index.check(keys[::-1], None, index.where(0, np.array([1, 2, 3])))
    assert kind.tolist() == [EXACT] * 3 and [index.unpack(int(w)) for w in of] == [(2, 2**33), (1, 11), (1, 10)]


def test_read_ahead_keeps_order_and_errors_and_stops_when_closed():
    def failing():
        yield from (1, 2)
        raise ValueError("boom")
    it = read_ahead(failing())
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(ValueError, match="boom"):
        next(it)
    closed = []

    def endless():
        try:
            yield from itertools.count()
        finally:
            closed.append(True)
    it = read_ahead(endless())
    assert next(it) == 0
    it.close()
    assert closed == [True]


def ingest_cfg(tmp_path, tsv, unit_rows=500):
    return load_config("tiny", overrides={"run": {"root": str(tmp_path / "art")}, "ingest": {
        "sources": [{"name": "c", "path": str(tsv)}, {"name": "d", "path": str(tsv)}], "unit_rows": unit_rows,
        "dedup_scope": "global"}})


def dup_tsv(path, n=6000):
    rng = random.Random(2)
    caps = [f"{rng.choice(['A', 'a', 'The'])} photo of thing {rng.randrange(n // 3)}{rng.choice(['', '.', ' !'])}"
            for _ in range(n)]
    path.write_text("".join(f"{c}\thttp://x/{i}.jpg\n" if i % 97 else "\n" for i, c in enumerate(caps)))
    return path


def tables(store):
    sd = store.stage("ingest")
    return sd.read(), sd.read_rejects()


def test_block_size_does_not_change_units(tmp_path, monkeypatch):
    tsv = dup_tsv(tmp_path / "c.tsv")
    ref = RunStore(tmp_path / "art", "ref")
    run_stage(get_stage("ingest", ingest_cfg(tmp_path, tsv)), ref)
    monkeypatch.setattr(tsv_fast, "BLOCK", 3000)
    small = RunStore(tmp_path / "art", "small")
    run_stage(get_stage("ingest", ingest_cfg(tmp_path, tsv)), small)
    a, b = tables(ref), tables(small)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert a[1].num_rows > 2000 and "near-duplicate (normalised) of c row" in str(a[1]["reason"].to_pylist())


KILL = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from pipeline.config import load_config
from pipeline.dedup import DedupIndex
from pipeline.execute import run_stage
from pipeline.io import tsv_fast
from pipeline.registry import get_stage
from pipeline.stages.ingest import caption_id, caption_ids
from pipeline.store import RunStore
tsv_fast.BLOCK = 3000                        # several batches a unit
check, calls = DedupIndex.check, [0]
def dying(self, *a):
    calls[0] += 1
    if calls[0] == {at}:                     # the index has taken part of a unit; the unit is not committed
        os.kill(os.getpid(), signal.SIGKILL)
    return check(self, *a)
DedupIndex.check = dying
cfg = load_config("tiny", overrides={{"run": {{"root": {root!r}}}, "ingest": {{"sources": [
    {{"name": "c", "path": {tsv!r}}}, {{"name": "d", "path": {tsv!r}}}], "unit_rows": 500, "dedup_scope": "global"}}}})
run_stage(get_stage("ingest", cfg), RunStore(cfg.run.root, "killed"))
"""


def test_sigkill_mid_unit_then_resume_gives_the_uninterrupted_rows(tmp_path):
    tsv = dup_tsv(tmp_path / "c.tsv")
    cfg = ingest_cfg(tmp_path, tsv)
    ref = RunStore(cfg.run.root, "ref")
    run_stage(get_stage("ingest", cfg), ref)
    code = KILL.format(repo=str(REPO), at=40, root=str(cfg.run.root), tsv=str(tsv))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    killed = RunStore(cfg.run.root, "killed")
    units = killed.working("ingest").done_units()
    assert 2 <= len(units) < 24, len(units)         # some units finished, the rest to do
    m = run_stage(get_stage("ingest", cfg), killed)
    assert m["units"] == 24
    a, b = tables(ref), tables(killed)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
