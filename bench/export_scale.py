"""Export at scale: peak RSS and wall time of the export stage over a synthetic chain table.

Builds N chains as a finished ``negatives`` stage (4-tier positives, most with a full negative
chain and NLI scores, a train split plus a few thousand test chains on COCO-style images, a few
broken or unknown-split rows), runs ``hierarcaps stage export`` on it in a child process and
records its peak RSS (wait4's ru_maxrss) and wall time. The streaming export holds one unit and
the test side, so its peak stays flat from 1M to 3.3M chains.

    .venv/bin/python bench/export_scale.py --rows 10000 1000000 3300000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipeline.schemas import CHAINS, LINK_SCORE, NEG_SCORE  # noqa: E402
from pipeline.store import RunStore  # noqa: E402

WORDS = ("man woman dog cat bird red blue green small large old young sitting standing running on in near "
         "the a of with street beach park table kitchen car bike boat tree house field water snow holding "
         "playing riding eating looking wooden white black two three people child photo view").split()
CONCEPTS = ("animal vehicle food person furniture plant building sport tool clothing device landscape "
            "instrument toy container").split()
TEST_IMAGES_PER = 5      # test chains per COCO image (the released pool has about 4.7)


def _phrases(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    return np.array([" ".join(rng.choice(WORDS, rng.integers(lo, hi + 1))) for _ in range(n)], dtype=object)


def _lists(values: pa.Array, n: int, k: int, valid: np.ndarray | None = None) -> pa.Array:
    """n lists of k consecutive ``values`` each (null where ``valid`` is False)."""
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    mask = None if valid is None else pa.array(~valid)
    return pa.ListArray.from_arrays(offsets, values, mask=mask)


def chain_block(start: int, n: int, test_every: int, rng: np.random.Generator) -> pa.Table:
    """Rows ``start .. start+n`` of the synthetic table (CHAINS)."""
    idx = np.arange(start, start + n)
    test = idx % test_every == 0
    split = np.where(test, "test", "train").astype(object)
    split[idx % 100_003 == 7] = "val"                                   # neither train nor test: a reject
    pools = [np.array(CONCEPTS, dtype=object), _phrases(rng, 400, 2, 3), _phrases(rng, 2000, 4, 8),
             _phrases(rng, 5000, 6, 14)]
    tiers = np.stack([p[rng.integers(0, len(p), n)] for p in pools], axis=1)
    tiers[:, 3] = [f"{t.capitalize()} number {i}." for t, i in zip(tiers[:, 3], idx)]
    broken = idx % 50_021 == 3                                          # a 3-tier chain: a reject
    pos_len = np.where(broken, 3, 4)
    pos_vals = pa.array([t for row, k in zip(tiers, pos_len) for t in row[:k]], pa.string())
    positive = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(pos_len)]).astype(np.int32)), pos_vals)
    has_neg = rng.random(n) < 0.9
    neg_tiers = np.stack([p[rng.integers(0, len(p), n)] for p in pools], axis=1)
    negative = _lists(pa.array(neg_tiers.ravel(), pa.string()), n, 4, has_neg)

    def floats(m: int) -> pa.Array:
        return pa.array(rng.random(m).astype(np.float32))

    links = pa.StructArray.from_arrays(
        [pa.array(np.tile(np.int8([2, 3, 4]), n)), pa.array(np.tile(np.int8([1, 2, 3]), n)),
         floats(3 * n), floats(3 * n), floats(3 * n)], fields=list(LINK_SCORE))
    negs = pa.StructArray.from_arrays(
        [pa.array(np.tile(np.int8([1, 2, 3, 4]), n)), floats(4 * n), floats(4 * n),
         pa.array(rng.integers(1, 5, 4 * n).astype(np.int16)), pa.array(rng.integers(1, 5, 4 * n).astype(np.int16))],
        fields=list(NEG_SCORE))
    image = np.where(test, idx // test_every // TEST_IMAGES_PER + 100_000, idx)
    coco = "http://images.cocodataset.org/val2014/COCO_val2014_"
    urls = [f"{coco}{i:012d}.jpg" if t else f"https://example.org/img/{i}.jpg" for i, t in zip(image, test)]
    cols = {
        "chain_id": pa.array([f"c{i:09d}" for i in idx]), "caption_id": pa.array([f"k{i:09d}" for i in idx]),
        "source": pa.array(np.where(test, "coco_val", "cc").astype(object), pa.string()),
        "split": pa.array(split, pa.string()), "image_url": pa.array(urls),
        "image_id": pa.array([str(i) if t else None for i, t in zip(image, test)], pa.string()),
        "positive": positive, "negative": negative, "link_scores": _lists(links, n, 3),
        "neg_scores": _lists(negs, n, 4, has_neg),
        "neg_missing_reason": pa.array(np.where(has_neg, None, "no candidate passed").astype(object), pa.string()),
        "neg_select": pa.array(np.where(has_neg, "best", None).astype(object), pa.string()),
        "stage": pa.array(["negatives"] * n), "model": pa.array(["tiny/t5"] * n),
        "random_seed": pa.array(np.zeros(n, np.int64)),
        "llm_output": pa.array([f"{a} => {b} => {c}" for a, b, c in tiers[:, :3]]),
    }
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in CHAINS}, schema=CHAINS)


def build_negatives(store: RunStore, rows: int, test_rows: int, unit_rows: int = 20_000, seed: int = 0) -> None:
    """A finished ``negatives`` stage of ``rows`` synthetic chains, ``test_rows`` of them test."""
    rng = np.random.default_rng(seed)
    sd = store.stage("negatives")
    sd.clear()
    test_every = max(1, rows // test_rows)
    sums, key = {}, "synthetic"
    for i, start in enumerate(range(0, rows, unit_rows)):
        t = chain_block(start, min(unit_rows, rows - start), test_every, rng)
        meta = {"key": key, "rows_in": t.num_rows, "rows_out": t.num_rows, "rows_rejected": 0}
        sd.write_unit(i, t, None, meta)
        record = sd.done_units()[i]
        sums[str(i)] = {k: record[k] for k in ("key", "rows_in", "rows_out", "rows_rejected", "data", "rejects")}
    sd.write_manifest({"stage": "negatives", "key": key, "params": {}, "upstream": {}, "units": len(sums),
                       "unit_sums": sums, "files": {}, "rows_in": rows, "rows_out": rows, "rows_rejected": 0,
                       "models": {}, "wall_s": 0.0, "stats": {}})


def export_cmd(root: Path, run: str, *overrides: str) -> list[str]:
    sets = [x for o in ("test.images=800", "test.curate=500", *overrides) for x in ("--set", o)]
    return [sys.executable, "-m", "flows.cli", "stage", "export", "--preset", "tiny", "--no-prefect",
            "--root", str(root), "--run", run, *sets]


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a child process (via wait4 rusage)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    err = p.stderr.read()
    assert os.waitstatus_to_exitcode(status) == 0, err[-3000:]
    return time.time() - t0, ru.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000, 3_300_000])
    ap.add_argument("--test-rows", type=int, default=3_000)
    ap.add_argument("--tmp", default=None, help="where to build the runs (deleted after)")
    ap.add_argument("--out", default=str(REPO / "bench/results/export_scale"))
    args = ap.parse_args()
    results = []
    td = Path(tempfile.mkdtemp(dir=args.tmp, prefix="export_scale-"))
    try:
        for n in args.rows:
            store = RunStore(td / "art", f"n{n}")
            t0 = time.time()
            build_negatives(store, n, args.test_rows)
            build_s = time.time() - t0
            wall, rss = run_measured(export_cmd(td / "art", store.run_id))
            m = store.stage("export").manifest()
            results.append({"chains": n, "test_chains": args.test_rows, "unit_rows": m["params"]["export"]["unit_rows"],
                            "export_units": m["units"], "peak_rss_mib": round(rss, 1), "wall_s": round(wall, 1),
                            "chains_per_s": round(n / wall), "rows_out": m["rows_out"],
                            "rows_rejected": m["rows_rejected"], "files": m["stats"]["files"],
                            "build_s": round(build_s, 1)})
            print(json.dumps(results[-1]), flush=True)
            shutil.rmtree(store.path)
    finally:
        shutil.rmtree(td, ignore_errors=True)
    by = {r["chains"]: r for r in results}
    summary = {}
    if {1_000_000, 3_300_000} <= set(by):
        summary["rss_3.3M_over_1M"] = round(by[3_300_000]["peak_rss_mib"] / by[1_000_000]["peak_rss_mib"], 3)
    if {10_000, 3_300_000} <= set(by):
        summary["rss_3.3M_minus_10K_mib"] = round(by[3_300_000]["peak_rss_mib"] - by[10_000]["peak_rss_mib"], 1)
    out = {"runs": results, **summary,
           "machine": f"{os.cpu_count()} cores", "command": "hierarcaps stage export --preset tiny --no-prefect"}
    Path(f"{args.out}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Export at scale", "", "`bench/export_scale.py`: the export stage over a synthetic finished `negatives` "
             f"table ({args.test_rows} test chains, the rest train), in its own process.", "",
             "| chains | units | peak RSS (MiB) | wall (s) | chains/s | rows out | rejected |", "|---" * 7 + "|",
             *[f"| {r['chains']:,} | {r['export_units']} | {r['peak_rss_mib']} | {r['wall_s']} | "
               f"{r['chains_per_s']:,} | {r['rows_out']:,} | {r['rows_rejected']:,} |" for r in results], "",
             *[f"- {k}: {v}" for k, v in summary.items()], ""]
    Path(f"{args.out}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
