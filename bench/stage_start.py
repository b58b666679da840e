"""Stage start-up: a stage process forked from the preloaded forkserver vs a plain spawned one.

Runs the tiny preset, ingest to export, in a fresh Python process per mode
(``HIERARCAPS_STAGE_START=forkserver`` / ``spawn``), the two modes interleaved ``--repeats``
times into the same folder (so the rows can be compared byte for byte); the fastest wall counts,
since this machine's cores are shared. Reported: per-stage and total wall, spawn / forkserver,
and whether every stage's rows are equal across the modes.

    python bench/stage_start.py                # results -> bench/results/stage_start.{json,md}
    python bench/stage_start.py --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODES = ("forkserver", "spawn")

ONE_RUN = r"""
import hashlib, json, shutil, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
from conftest import run_overrides, write_run_inputs
from pipeline.config import load_config
from pipeline.execute import run_stage
from pipeline.registry import default_stages, get_stage
from pipeline.store import RunStore

def main():
    folder = Path(sys.argv[1])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tsv, js, _ = write_run_inputs(folder)
    cfg = load_config("tiny", overrides=run_overrides(folder / "art", tsv, js))
    store = RunStore(cfg.run.root, "bench")
    walls, rows, t0 = {}, {}, time.perf_counter()
    for name in default_stages():
        t = time.perf_counter()
        run_stage(get_stage(name, cfg), store, model_cache=cfg.run.model_cache)
        walls[name] = round(time.perf_counter() - t, 2)
        rows[name] = hashlib.sha256(repr(store.stage(name).read().to_pylist()).encode()).hexdigest()[:16]
    print(json.dumps({"total_s": round(time.perf_counter() - t0, 2), "stages_s": walls, "rows": rows}))

if __name__ == "__main__":
    main()
"""


def one(mode: str, folder: Path) -> dict:
    env = {**os.environ, "HIERARCAPS_STAGE_START": mode, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", ONE_RUN, str(folder), str(ROOT)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stage_start_")) / "run"
    one("forkserver", folder)                      # builds the tiny models into the cache, untimed
    runs = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            runs[mode].append(one(mode, folder))
            print(mode, runs[mode][-1]["total_s"], "s", flush=True)
    best = {m: min(rs, key=lambda r: r["total_s"]) for m, rs in runs.items()}
    same = all(r["rows"] == best["forkserver"]["rows"] for rs in runs.values() for r in rs)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "repeats": args.repeats,
              "walls_s": {m: [r["total_s"] for r in rs] for m, rs in runs.items()},
              "best": best, "spawn_over_forkserver": round(best["spawn"]["total_s"] / best["forkserver"]["total_s"], 2),
              "rows_equal": same, "command": "python bench/stage_start.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stage_start.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Stage start-up: forkserver (preloaded) vs spawn, tiny preset ingest to export", "",
             f"`{result['command'].strip()}` on {result['machine']}; fastest of {args.repeats} interleaved runs.", "",
             "| stage | forkserver s | spawn s |", "|---|---|---|"]
    lines += [f"| {n} | {best['forkserver']['stages_s'][n]} | {best['spawn']['stages_s'][n]} |"
              for n in best["forkserver"]["stages_s"]]
    lines += [f"| **total** | **{best['forkserver']['total_s']}** | **{best['spawn']['total_s']}** |", "",
              f"spawn / forkserver: **{result['spawn_over_forkserver']}x**; rows equal across modes: {same}."]
    (RESULTS / "stage_start.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
