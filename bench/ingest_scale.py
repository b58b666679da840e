"""Ingest at scale: a 1M-line Conceptual-Captions-style TSV.

Measures (1) peak RSS of the ingest stage process, (2) a SIGKILL mid-ingest followed by a resume
ends with exactly the rows of an uninterrupted run, (3) rows/s of the stage side by side with a
plain baseline (read lines, split, strip, write one Parquet file: no cleaning, de-dup, rejects or
resumability), as a ratio.

    .venv/bin/python bench/ingest_scale.py --lines 1000000 --out bench/results/ingest_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pipeline.store import RunStore  # noqa: E402
WORDS = ("man woman dog cat bird red blue green small large old young sitting standing running on in "
         "near the a of with street beach park table kitchen car bike boat tree house field water snow "
         "holding playing riding eating looking wooden white black two three people child photo view").split()


def make_tsv(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            if i and i % 97 == 0:
                f.write("\n")                                   # some empty lines
            words = rng.choices(WORDS, k=rng.randint(5, 16))
            f.write(f"{' '.join(words).capitalize()}.\thttps://example.org/img/{i}.jpg\n")


def stage_cmd(tsv: Path, root: Path, run: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "stage", "ingest", "--preset", "tiny", "--no-prefect",
            "--root", str(root), "--run", run, "--set", f"ingest.sources=[{{name: cc, path: {tsv}}}]",
            "--set", "ingest.unit_rows=50000"]


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a child process (via wait4 rusage)."""
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, cmd
    return time.time() - t0, ru.ru_maxrss / 1024


def baseline(tsv: Path, out: Path) -> float:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--out", default=str(REPO / "bench/results/ingest_scale.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        tsv = td / "cc.tsv"
        make_tsv(tsv, args.lines)
        size_mb = tsv.stat().st_size / 2**20
        wall, rss = run_measured(stage_cmd(tsv, td / "art", "ref"))
        base = baseline(tsv, td / "base.parquet")
        # kill mid-ingest, then resume
        killed = RunStore(td / "art", "killed")
        p = subprocess.Popen(stage_cmd(tsv, td / "art", "killed"), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        while len(getattr(killed.working("ingest"), "data_files", list)()) < 8:
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        units_at_kill = len(killed.working("ingest").data_files())
        wall_resume, rss_resume = run_measured(stage_cmd(tsv, td / "art", "killed"))
        ref = RunStore(td / "art", "ref").stage("ingest")
        sd = killed.stage("ingest")
        same = ref.read().equals(sd.read()) and ref.read_rejects().equals(sd.read_rejects())
        m = sd.manifest()
        res = {
            "lines": args.lines, "file_mib": round(size_mb, 1),
            "stage_wall_s": round(wall, 2), "stage_rows_per_s": round(args.lines / wall),
            "stage_peak_rss_mib": round(rss, 1),
            "baseline_wall_s": round(base, 2), "baseline_rows_per_s": round(args.lines / base),
            "stage_vs_baseline_time_ratio": round(wall / base, 2),
            "units_done_at_kill": units_at_kill, "resume_wall_s": round(wall_resume, 2),
            "resume_peak_rss_mib": round(rss_resume, 1), "resumed_equals_uninterrupted": same,
            "rows_in": m["rows_in"], "rows_out": m["rows_out"], "rows_rejected": m["rows_rejected"],
        }
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
