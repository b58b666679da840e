"""Fault injection: faults at random points of every stage, then a plain rerun; the result must be
exactly the rows of an uninterrupted run.

For each (stage, fault) trial a copy of a finished reference run loses that stage (and what follows),
the stage is run through the CLI with the fault injected, then rerun without it; the stage's
tables (rows and rejects) are compared with the reference's and its manifest identity too.

Faults: ``kill_group`` (SIGKILL of the CLI's whole process group at a random moment),
``kill_parent`` (SIGKILL of the CLI process only; the stage process must die with it),
``term_parent`` (SIGTERM of the CLI process only), ``disk_full`` (the run's writes fail with
EFBIG past a random file size, RLIMIT_FSIZE), ``damage`` (a byte of a finished unit flipped
after the stage finished), ``concurrent`` (two runs of the stage at once: one must be refused).

    .venv/bin/python bench/faults.py --out bench/results/faults.json     # ~40 faults, tens of minutes
    .venv/bin/python bench/faults.py --stages ingest export --faults kill_group --trials 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.registry import stage_names  # noqa: E402
from pipeline.runner import run_stages  # noqa: E402
from pipeline.store import RunStore  # noqa: E402

STAGES = ("ingest", "seed", "nli_filter", "distill", "bulk", "negatives", "export")
FAULTS = ("kill_group", "kill_parent", "term_parent", "disk_full", "damage", "concurrent")
OVERRIDES = ["seed.max_captions=16", "seed.unit_rows=4", "augment.max_captions=8", "augment.unit_rows=4",
             "distill.max_steps=40", "distill.save_every_steps=8", "bulk.max_captions=48", "bulk.unit_rows=6",
             "negatives.unit_rows=6", "ingest.unit_rows=2000", "nli_filter.unit_rows=4"]
WORDS = "a man woman dog cat red blue small old sitting running on in near the street beach park table".split()


def big_tsv(path: Path, n: int = 40_000) -> Path:
    """Enough lines that ingest runs for seconds (a fault can land inside it)."""
    rng = random.Random(1)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f"{' '.join(rng.choices(WORDS, k=rng.randint(5, 12))).capitalize()} {i}.\thttp://x/{i}.jpg\n")
    return path


def cli(root: Path, run: str, stage: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "stage", stage, "--no-prefect", "--root", str(root), "--run", run]


def downstream(stage: str) -> list[str]:
    order = stage_names()
    return [s for s in order[order.index(stage):] if s not in ("align", "bench")]


def prepare(ref: RunStore, root: Path, run: str, stage: str, keep_stage: bool = False) -> RunStore:
    store = RunStore(root, run)
    shutil.copytree(ref.path, store.path, symlinks=True)
    for s in downstream(stage)[(1 if keep_stage else 0):]:
        store.stage(s).clear()
    return store


def differences(ref: RunStore, store: RunStore, stage: str) -> list[str]:
    """What differs from the reference: rows, rejects, or the manifest's identity (key, sums...)."""
    from pipeline.store import manifest_identity

    a, b = ref.stage(stage), store.stage(stage)
    if b.manifest() is None:
        return ["no finished output"]
    out = [what for what, x, y in (("rows", a.read(), b.read()), ("rejects", a.read_rejects(), b.read_rejects()))
           if not x.equals(y)]
    ia, ib = manifest_identity(a.manifest()), manifest_identity(b.manifest())
    return out + [f"manifest {k}" for k in sorted(set(ia) | set(ib)) if ia.get(k) != ib.get(k)]


def same_as(ref: RunStore, store: RunStore, stage: str) -> tuple[bool, int]:
    """Equal to the reference (rows, rejects, manifest identity); rows lost (negative: extra)."""
    a, b = ref.stage(stage), store.stage(stage)
    if b.manifest() is None:
        return False, a.manifest()["rows_out"]
    return not differences(ref, store, stage), a.read().num_rows - b.read().num_rows


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, **kw)


def inject(fault: str, store: RunStore, stage: str, root: Path, rng: random.Random, wall: float,
           limit: int | None = None, largest: int = 64 << 10) -> dict:
    """Run the stage with the fault; returns what happened (injected: the fault hit a running stage).
    ``wall``: how long the stage's command runs; ``limit``: the file size past which writes fail
    (disk_full; default random below ``largest``, the stage's largest file)."""
    cmd = cli(root, store.run_id, stage)
    if fault == "damage":
        units = sorted(store.stage(stage).done_units())
        target = store.stage(stage).unit_path(rng.choice(units))
        data = bytearray(target.read_bytes())
        data[rng.randrange(len(data))] ^= 0xFF
        target.write_bytes(bytes(data))
        return {"injected": True, "at": target.name}
    if fault == "disk_full":   # past a random size below the largest file the stage writes
        limit = limit or rng.randint(1 << 10, max(2 << 10, largest))

        def cap():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        done = run(cmd, preexec_fn=cap)
        one_line = [ln for ln in done.stderr.splitlines() if ln.startswith("hierarcaps: error:")]
        return {"injected": done.returncode != 0, "at": f"files > {limit} B", "exit": done.returncode,
                "clean_error": bool(one_line) and "Traceback" not in done.stderr}
    if fault == "concurrent":
        procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
        refused = [o for o in outs if o[0] == 2 and "in use by" in o[1]]
        return {"injected": True, "at": "two at once", "refused": len(refused), "exits": [o[0] for o in outs]}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    at = rng.uniform(0.1, 0.9) * wall
    try:
        proc.wait(timeout=at)
        return {"injected": False, "at": f"{at:.1f}s (finished first)"}
    except subprocess.TimeoutExpired:
        pass
    if fault == "kill_group":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL if fault == "kill_parent" else signal.SIGTERM)
    proc.wait()
    t_kill = time.time()
    while time.time() - t_kill < 10 and (stray := _group(proc.pid)):   # the stage process ends with its parent
        time.sleep(0.1)
    stray = _group(proc.pid)
    for pid in stray:
        os.kill(pid, signal.SIGKILL)
    return {"injected": True, "at": f"{at:.1f}s", "stray_processes": len(stray),
            "group_gone_after_s": round(time.time() - t_kill, 1)}


def _group(pgid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="*", default=list(STAGES))
    ap.add_argument("--faults", nargs="*", default=list(FAULTS))
    ap.add_argument("--trials", type=int, default=1, help="trials per (stage, fault)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "faults.json")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        root = Path(td) / "art"
        big = big_tsv(Path(td) / "big.tsv")
        sources = f"ingest.sources=[{{name: examples, path: {REPO / 'examples/captions.tsv'}}}, {{name: big, path: {big}}}]"
        cfg = load_config("tiny", overrides=[*OVERRIDES, sources, f"run.root={root}"])
        ref = RunStore(root, "ref")
        run_stages(cfg, ref)
        walls, largest = {}, {}
        for stage in args.stages:   # how long the stage's command runs (start-up included), its largest file
            store = prepare(ref, root, f"time-{stage}", stage)
            t0 = time.time()
            run(cli(root, store.run_id, stage))
            walls[stage] = time.time() - t0
            largest[stage] = max(p.stat().st_size for p in store.stage(stage).path.rglob("*") if p.is_file())
            shutil.rmtree(store.path, ignore_errors=True)
        n = 0
        for stage in args.stages:
            for fault in args.faults:
                for _ in range(args.trials):
                    n += 1
                    for attempt in range(3):        # a kill that came after the stage finished: draw again
                        store = prepare(ref, root, f"t{n}-{attempt}", stage, keep_stage=(fault == "damage"))
                        t0 = time.time()
                        what = inject(fault, store, stage, root, rng, walls[stage], largest=largest[stage])
                        if what["injected"] or attempt == 2:
                            break
                        shutil.rmtree(store.path, ignore_errors=True)
                    rerun = run(cli(root, store.run_id, stage))
                    equal, lost = same_as(ref, store, stage)
                    row = {"stage": stage, "fault": fault, **what, "rerun_exit": rerun.returncode,
                           "survived": rerun.returncode == 0 and equal, "rows_lost": lost,
                           "differs": [] if equal else differences(ref, store, stage),
                           "seconds": round(time.time() - t0, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    shutil.rmtree(store.path, ignore_errors=True)
    injected = [r for r in rows if r["injected"]]
    summary = {"trials": len(rows), "injected": len(injected), "survived": sum(r["survived"] for r in injected),
               "rows_lost": sum(abs(r["rows_lost"]) for r in injected),
               "by_fault": {f: {"injected": sum(r["fault"] == f for r in injected),
                                "survived": sum(r["survived"] for r in injected if r["fault"] == f),
                                "rows_lost": sum(abs(r["rows_lost"]) for r in injected if r["fault"] == f)}
                            for f in args.faults}}
    args.out.write_text(json.dumps({"summary": summary, "trials": rows, "overrides": OVERRIDES}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
