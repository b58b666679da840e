"""Paper scale on one machine: every stage's data path over 10K, 1M and 3.3M input rows.

For each size N it writes a Conceptual-Captions-style TSV of N lines (real COCO captions from
../shared/data/hierarcaps/hierarcaps_test_expanded.csv.gz with a counter, so rows are distinct,
plus 1% exact duplicates and 1% bad rows), then runs the tiny preset stage by stage, each in its own
process (``hierarcaps stage``), recording wall time and peak RSS (``wait4``: the stage's process
and the model process it spawns; this script prepares data in children of its own and stays
small, since a child's ``ru_maxrss`` also counts its parent's memory at the fork):

- ingest, seed, nli_filter, augment, distill and bulk over the N-row ingest, model work bounded by
  ``max_captions`` (seed and augment: the preset's 40; ``bulk.max_captions=1000``);
- negatives and export over N chains: bulk's finished output is replaced by N chains from the
  released pool (counter appended), all but 50 already with a negative chain, so the data path
  streams N rows while H runs on 50; about 3,000 of them are test chains at every size (the test
  side is a fixed pool, COCO val in the paper);
- side by side, bulk's selection before its first model call: today's streamed path vs the
  ``read().to_pylist()`` path with the sha256 sample order it replaced (each in its own process,
  alternated three times; the medians are compared).

    .venv/bin/python bench/scale.py --sizes 10000 1000000 3300000
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXPANDED = REPO.parent / "shared/data/hierarcaps/hierarcaps_test_expanded.csv.gz"
STAGES = ("ingest", "seed", "nli_filter", "augment", "distill", "bulk")
BULK_N = 1000
WITHOUT_NEGATIVES = 50
PROBE_REPEATS = 3        # bulk's selection, each path: the median of 3 alternated runs
TEST_CHAINS = 3000        # the test side is a fixed pool (COCO val in the paper), whatever the train size


def load_pool() -> list[dict]:
    with gzip.open(EXPANDED, "rt", encoding="utf-8", newline="") as f:
        return [{"positive": r["positive"].split(" => "), "negative": r["negative"].split(" => "),
                 "image_url": r["image_url"]} for r in csv.DictReader(f)]


def make_tsv(path: Path, n: int, pool: list[dict]) -> None:
    """N lines: captions with a counter, every 100th an exact duplicate of the line before, every
    100th (offset 50) a bad row (an empty line or three columns)."""
    with open(path, "w", encoding="utf-8") as f:
        last = ""
        for i in range(n):
            if i % 100 == 99 and last:
                f.write(last)
            elif i % 100 == 50:
                f.write("\n" if i % 200 == 50 else "a\tb\tc\n")
            else:
                p = pool[i % len(pool)]
                last = f"{p['positive'][-1]} {i}\t{p['image_url']}?{i}\n"
                f.write(last)


def sets(tsv: Path) -> list[str]:
    out = []
    for s in (f"ingest.sources=[{{name: cc, path: {tsv}, format: cc_tsv, split: train}}]", "ingest.unit_rows=50000",
              f"bulk.max_captions={BULK_N}", "bulk.unit_rows=2048", "negatives.unit_rows=2048",
              "distill.max_steps=20", "distill.save_every_steps=10"):  # H need not be good: the data path is measured
        out += ["--set", s]
    return out


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) of a child and the descendants it waited for, its stdout."""
    t0 = time.time()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.time() - t0
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{' '.join(cmd[:6])} failed:\n{err.read().decode()[-3000:]}")
        return wall, ru.ru_maxrss / 1024, out.read().decode()


def stage(name: str, root: Path, run: str, tsv: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "flows.cli", "stage", name, "--preset", "tiny", "--no-prefect", "--root", str(root),
           "--run", run, *sets(tsv)]
    wall, rss, _ = measured(cmd)
    return wall, rss


def replace_bulk(root: Path, run: str, n: int, pool: list[dict]) -> None:
    """bulk's finished output becomes N chains (units of 2048), its manifest kept consistent."""
    import pyarrow as pa

    from pipeline.schemas import CHAINS
    from pipeline.store import RunStore, StageDir

    sd = StageDir(RunStore(root, run).stage("bulk").path.resolve())
    m = sd.manifest()
    for i in sorted(sd.done_units()):
        sd.drop_unit(i)
    sums, size = {}, 2048
    for u, lo in enumerate(range(0, n, size)):
        rows = []
        for i in range(lo, min(n, lo + size)):
            p = pool[i % len(pool)]
            neg = None if i % max(1, n // WITHOUT_NEGATIVES) == 0 else [*p["negative"][:3], f"{p['negative'][3]} {i}"]
            split = "test" if i % max(1, n // TEST_CHAINS) == 0 else "train"
            rows.append(dict(chain_id=f"c{i}", caption_id=f"c{i}", source="cc", split=split,
                             image_url=f"{p['image_url']}?{i}", positive=[*p["positive"][:3], f"{p['positive'][3]} {i}"],
                             negative=neg, stage="bulk", random_seed=0))
        sd.write_unit(u, pa.Table.from_pylist(rows, schema=CHAINS), None,
                      {"key": m["key"], "rows_in": len(rows), "rows_out": len(rows), "rows_rejected": 0})
        rec = sd.done_units()[u]
        sums[str(u)] = {k: rec[k] for k in ("key", "rows_in", "rows_out", "rows_rejected", "data", "rejects")}
    m.update(units=len(sums), rows_in=n, rows_out=n, rows_rejected=0, unit_sums=sums)
    sd.write_manifest(m)


def probe(path: str, root: str, run: str) -> None:
    """In a child: bulk's selection up to its first model call, by today's path or the old one."""
    from pipeline.hashing import digest
    from pipeline.stages.units import CAPTION_COLUMNS, all_of, is_in, stream_units
    from pipeline.store import RunStore

    import pyarrow as pa

    pa.array([0])             # pyarrow's first array imports pandas (0.3 s): a bulk process has, with its engines
    t0 = time.time()
    sd = RunStore(root, run).stage("ingest")
    splits = ["train", "test"]
    if path == "old":         # pipeline/stages/bulk.py before streaming
        rows = [r for r in sd.read().to_pylist() if r["split"] in splits]
        rows = sorted(rows, key=lambda r: digest([0, "bulk", r["caption_id"]]))[:BULK_N]   # its sha256 order
        first = rows[:2048]
    else:                     # as Bulk.process calls it
        work = stream_units(sd, 2048, all_of(is_in("split", splits)), ["split"], columns=CAPTION_COLUMNS, n=BULK_N,
                            seed=0, salt="bulk")
        first = next(iter(work))[1].to_pylist()
    print(json.dumps({"first_unit_s": time.time() - t0, "ids": [r["caption_id"] for r in first]}))


def in_child(*args: str) -> str:
    """Data preparation in a process of its own: wait4's peak RSS of a later child counts what this
    (its parent) holds, so this process stays small and imports no pyarrow."""
    return measured([sys.executable, __file__, *args])[2]


def one_size(n: int, td: Path) -> dict:
    tsv, root, run = td / f"cc_{n}.tsv", td / "art", f"scale{n}"
    in_child("--make-tsv", str(n), str(tsv))
    res = {"lines": n, "file_mib": round(tsv.stat().st_size / 2**20, 1), "stages": {},
           "load_avg_1m_at_start": os.getloadavg()[0]}     # walls are only comparable on a quiet machine
    for name in STAGES:
        wall, rss = stage(name, root, run, tsv)
        res["stages"][name] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1)}
        print(n, name, res["stages"][name], flush=True)
    ingest_rows = json.loads((root / "runs" / run / "ingest" / "manifest.json").read_text())["rows_out"]
    for name in ("seed", "augment", "bulk"):
        res["stages"][name]["rows_scanned"] = ingest_rows
    res["stages"]["ingest"]["rows_scanned"] = n
    probes = {}
    for path in ("old", "new") * PROBE_REPEATS:     # alternated, so both see the same machine; medians kept
        wall, rss, out = measured([sys.executable, __file__, "--probe", path, "--root", str(root), "--run", run])
        probes.setdefault(path, []).append({**json.loads(out), "process_wall_s": round(wall, 2),
                                            "peak_rss_mib": round(rss, 1)})
    for path, runs in probes.items():
        ids = runs[0]["ids"]
        assert all(r.pop("ids") == ids for r in runs), f"the {path} path chose different captions across repeats"
        probes[path] = {"first_unit_s": statistics.median(r["first_unit_s"] for r in runs), "ids": ids,
                        "first_unit_s_runs": [round(r["first_unit_s"], 3) for r in runs],
                        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}
    old_ids, new_ids = set(probes["old"].pop("ids")), set(probes["new"].pop("ids"))
    res["bulk_first_model_call"] = {**probes, "first_unit_size": len(new_ids), "shared_with_old": len(old_ids & new_ids),
                                    "new_vs_old": round(probes["new"]["first_unit_s"] / probes["old"]["first_unit_s"], 4)}
    in_child("--replace-bulk", str(n), str(root), run)
    for name in ("negatives", "export"):
        wall, rss = stage(name, root, run, tsv)
        res["stages"][name] = {"wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1), "rows_scanned": n}
        print(n, name, res["stages"][name], flush=True)
    for s in res["stages"].values():
        if "rows_scanned" in s:
            s["rows_per_s"] = round(s["rows_scanned"] / s["wall_s"])
    tsv.unlink()
    return res


def markdown(results: list[dict]) -> str:
    sizes = [r["lines"] for r in results]
    by = {r["lines"]: r["stages"] for r in results}
    lines = ["# bench/scale.py: peak RSS (MiB) and wall (s) per stage", "",
             "| stage | " + " | ".join(f"RSS {s:,}" for s in sizes) + " | " + " | ".join(f"wall {s:,}" for s in sizes)
             + " | RSS top/1M | RSS top-smallest |", "|---" * (2 * len(sizes) + 3) + "|"]
    for name in [*STAGES, "negatives", "export"]:
        rss = [by[s][name]["peak_rss_mib"] for s in sizes]
        ratio = f"{rss[-1] / by[1_000_000][name]['peak_rss_mib']:.3f}" if 1_000_000 in by else "-"
        lines.append(f"| {name} | " + " | ".join(f"{x:.0f}" for x in rss) + " | "
                     + " | ".join(f"{by[s][name]['wall_s']:.1f}" for s in sizes) + f" | {ratio} | {rss[-1] - rss[0]:+.0f} |")
    lines += ["", "bulk, selection to its first model call (streamed vs `read().to_pylist()`, medians of "
              f"{PROBE_REPEATS} alternated runs):", ""]
    for r in results:
        b = r["bulk_first_model_call"]
        lines.append(f"- {r['lines']:,} rows: new {b['new']['first_unit_s']:.2f} s / {b['new']['peak_rss_mib']:.0f} MiB, "
                     f"old {b['old']['first_unit_s']:.2f} s / {b['old']['peak_rss_mib']:.0f} MiB, ratio "
                     f"{b['new_vs_old']:.3f} ({b['first_unit_size']} captions; the sample order is a new hash, "
                     f"{b['shared_with_old']} of them also in the old sample)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 3_300_000])
    ap.add_argument("--out", default=str(REPO / "bench/results/scale.json"))
    ap.add_argument("--probe", choices=["old", "new"])
    ap.add_argument("--make-tsv", nargs=2, metavar=("N", "PATH"))
    ap.add_argument("--replace-bulk", nargs=3, metavar=("N", "ROOT", "RUN"))
    ap.add_argument("--root")
    ap.add_argument("--run")
    args = ap.parse_args()
    if args.probe:
        return probe(args.probe, args.root, args.run)
    if args.make_tsv:
        return make_tsv(Path(args.make_tsv[1]), int(args.make_tsv[0]), load_pool())
    if args.replace_bulk:
        n, root, run = args.replace_bulk
        return replace_bulk(Path(root), run, int(n), load_pool())
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as td:
        results = [one_size(n, Path(td)) for n in args.sizes]
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
