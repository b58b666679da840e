"""Ingest at scale: Conceptual-Captions-style TSVs of 10K, 1M and 3.3M lines.

The captions are the real COCO captions of HierarCaps (the last tier of ``positive`` in
``hierarcaps_test_expanded.csv.gz``) with a counter appended, so rows are distinct, plus 1% exact
duplicates of earlier lines and 1% bad rows (empty lines, a wrong column count). For each size it
measures (1) the peak RSS of the ingest stage process (wait4), (2) its wall time and rows/s side by
side with a plain baseline on the same file in the same run (read lines, split, strip, write one
Parquet file: no cleaning, de-dup, rejects or resumability), as a ratio, and, for the largest size,
(3) a SIGKILL mid-ingest followed by a resume ends with exactly the rows of an uninterrupted run.

    .venv/bin/python bench/ingest_scale.py --lines 10000 1000000 3300000

Peak RSS is wait4's ``ru_maxrss``, which also counts the memory of the process that spawned the
child (it is inherited through vfork/exec): so this script stays small (no pyarrow here) and runs
the baseline and the table comparison in processes of their own. ``bench_peak_rss_mib`` shows it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = REPO.parent / "shared/data/hierarcaps/hierarcaps_test_expanded.csv.gz"


def coco_captions() -> list[tuple[str, str]]:
    with gzip.open(CAPTIONS, "rt", encoding="utf-8", newline="") as f:
        return [(r["positive"].split(" => ")[-1].strip(), r["image_url"]) for r in csv.DictReader(f)]


def make_tsv(path: Path, n: int, seed: int = 0) -> None:
    rng, pool, lines = random.Random(seed), coco_captions(), []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            k = rng.random()
            if k < 0.005:
                line = ""                                        # empty line
            elif k < 0.01:
                line = f"caption without its url {i}"            # wrong column count
            elif k < 0.02 and lines:
                line = rng.choice(lines)                         # exact duplicate of an earlier line
            else:
                cap, url = pool[i % len(pool)]
                line = f"{cap} {i}\t{url}"
                if len(lines) < 10_000:
                    lines.append(line)
                else:
                    lines[rng.randrange(len(lines))] = line
            f.write(line + "\n")


def stage_cmd(tsv: Path, root: Path, run: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "stage", "ingest", "--preset", "tiny", "--no-prefect",
            "--root", str(root), "--run", run, "--set", f"ingest.sources=[{{name: cc, path: {tsv}}}]",
            "--set", "ingest.unit_rows=50000"]


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB, via wait4 rusage) and stdout of a child process."""
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, cmd
    return time.time() - t0, ru.ru_maxrss / 1024, out


def baseline(tsv: Path, out: Path) -> float:
    """(In a process of its own.) Read lines, split, strip, write one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.time()
    caps, urls = [], []
    with open(tsv, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 2 and parts[0].strip():
                caps.append(parts[0].strip())
                urls.append(parts[1])
    pq.write_table(pa.table({"text": caps, "image_url": urls}), out)
    return time.time() - t0


def same_rows(root: Path) -> dict:
    """(In a process of its own.) The resumed run's tables against the uninterrupted run's, and counts."""
    sys.path.insert(0, str(REPO))
    from pipeline.store import RunStore

    ref, sd = RunStore(root, "ref").stage("ingest"), RunStore(root, "killed").stage("ingest")
    return {"same": ref.read().equals(sd.read()) and ref.read_rejects().equals(sd.read_rejects())}


def manifest(root: Path, run: str) -> dict:
    return json.loads((root / "runs" / run / "ingest" / "manifest.json").read_text())


def helper(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def kill_and_resume(tsv: Path, root: Path) -> dict:
    units = lambda: len(list((root / "runs" / "killed").glob("**/part-*.json")))    # noqa: E731
    p = subprocess.Popen(stage_cmd(tsv, root, "killed"), cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    while units() < 8 and p.poll() is None:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    units_at_kill = units()
    wall, rss, _ = run_measured(stage_cmd(tsv, root, "killed"))
    same = json.loads(run_measured(helper("--same", str(root)))[2])["same"]
    return {"units_done_at_kill": units_at_kill, "resume_wall_s": round(wall, 2),
            "resume_peak_rss_mib": round(rss, 1), "resumed_equals_uninterrupted": same}


def measure(n: int, td: Path, kill: bool) -> dict:
    tsv = td / f"cc_{n}.tsv"
    make_tsv(tsv, n)
    root = td / f"art_{n}"
    wall, rss, _ = run_measured(stage_cmd(tsv, root, "ref"))
    _, base_rss, out = run_measured(helper("--baseline", str(tsv), str(td / "base.parquet")))
    base = float(out)
    m = manifest(root, "ref")
    res = {"lines": n, "file_mib": round(tsv.stat().st_size / 2**20, 1),
           "stage_wall_s": round(wall, 2), "stage_rows_per_s": round(n / wall), "stage_peak_rss_mib": round(rss, 1),
           "baseline_wall_s": round(base, 2), "baseline_rows_per_s": round(n / base),
           "baseline_peak_rss_mib": round(base_rss, 1), "stage_vs_baseline_time_ratio": round(wall / base, 2),
           "rows_in": m["rows_in"], "rows_out": m["rows_out"], "rows_rejected": m["rows_rejected"]}
    if kill:
        res.update(kill_and_resume(tsv, root))
    tsv.unlink()
    return res


def table(results: list[dict]) -> str:
    head = ("| lines | file MiB | stage wall s | baseline wall s | ratio | stage rows/s | peak RSS MiB | rows out "
            "| rejected |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['lines']:,} | {r['file_mib']} | {r['stage_wall_s']} | {r['baseline_wall_s']} | "
        f"{r['stage_vs_baseline_time_ratio']} | {r['stage_rows_per_s']:,} | {r['stage_peak_rss_mib']} | "
        f"{r['rows_out']:,} | {r['rows_rejected']:,} |\n" for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, nargs="+", default=[10_000, 1_000_000, 3_300_000])
    ap.add_argument("--out", default=str(REPO / "bench/results/ingest_scale.json"))
    ap.add_argument("--baseline", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--same", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline:
        print(baseline(Path(args.baseline[0]), Path(args.baseline[1])))
        return
    if args.same:
        print(json.dumps(same_rows(Path(args.same))))
        return
    results = []
    with tempfile.TemporaryDirectory() as td:
        for n in args.lines:
            results.append(measure(n, Path(td), kill=n == max(args.lines) and n >= 500_000))
            print(json.dumps(results[-1]), flush=True)
    by = {r["lines"]: r for r in results}
    summary = {"bench_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if len(results) > 1:
        small, big = by[min(by)], by[max(by)]
        mid = by.get(1_000_000, results[-2])
        summary.update(rss_largest_over_1m=round(big["stage_peak_rss_mib"] / mid["stage_peak_rss_mib"], 3),
                       rss_largest_minus_smallest_mib=round(big["stage_peak_rss_mib"] - small["stage_peak_rss_mib"], 1))
    out = Path(args.out)
    out.write_text(json.dumps({"results": results, **summary}, indent=2))
    out.with_suffix(".md").write_text("# Ingest at scale\n\n" + table(results) + "\n" +
                                      "".join(f"- {k}: {v}\n" for k, v in summary.items()))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
