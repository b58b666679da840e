"""Scale-out: bulk (H + the NLI judge) on the tiny preset, the local executor vs Ray actor pools.

Part 1 runs the tiny preset, with ``--extra`` more captions (real COCO captions from ../shared,
read at run time), to distill once (local), then bulk with ``--force`` under:
  * local : the stage's own process (one worker), torch on one thread
  * ray-1 : ``run.executor: ray``, one actor (1 CPU, so one torch thread: the same compute)
  * ray-2 : two actors (1 CPU each)
on a Ray cluster this script starts on the machine (``ray.init(num_cpus=2)``; its start-up is
timed apart, since a long-lived cluster pays it once). Each mode runs ``--repeats`` times,
interleaved, and the fastest wall counts (this machine's cores are shared). Every mode's rows are
checked equal to the local rows. Reported: ray-2 / ray-1 speed-up, and the Ray path's overhead
over local with one worker (ray-1 / local - 1; target under 10%).

Part 2 runs bench/openai_throughput.py (the ``openai`` engine against ``vllm serve`` vs the offline
vLLM engine) when that file exists, and folds its result in.

    python bench/scale_out.py                 # results -> bench/results/scale_out.{json,md}
    python bench/scale_out.py --repeats 1 --skip-openai
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
os.environ.setdefault("OMP_NUM_THREADS", "1")   # the local stage process: one thread, as a 1-CPU actor
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


SHARED = ROOT.parent / "shared" / "data" / "hierarcaps" / "hierarcaps_test_expanded.csv.gz"


def extra_captions(work: Path, n: int) -> Path:
    """A CC-format TSV of n more captions: real COCO captions from ../shared (the most specific
    tier of its chains), else the repo's examples with a counter; read here, never copied."""
    import csv
    import gzip

    caps: list[str] = []
    if SHARED.exists():
        with gzip.open(SHARED, "rt", encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                caps.append(row["positive"].split(" => ")[-1].strip())
                if len(set(caps)) >= n:
                    break
        caps = list(dict.fromkeys(caps))[:n]
    else:
        base = [ln.split("\t")[0] for ln in (ROOT / "examples" / "captions.tsv").read_text().splitlines() if ln]
        caps = [f"{base[i % len(base)]} {i}" for i in range(n)]
    path = work / "extra.tsv"
    path.write_text("".join(f"{c}\thttp://example.org/{i}.jpg\n" for i, c in enumerate(caps)), encoding="utf-8")
    return path


def prepare(work: Path, unit_rows: int, extra: int):
    from pipeline.config import load_config
    from pipeline.runner import default_run_id, run_stages
    from pipeline.store import RunStore

    work.mkdir(parents=True, exist_ok=True)
    sources = [{"name": "examples", "format": "cc_tsv", "split": "train", "path": str(ROOT / "examples" / "captions.tsv")}]
    if extra:
        sources.append({"name": "extra", "format": "cc_tsv", "split": "train", "path": str(extra_captions(work, extra))})
    cfg = load_config("tiny", overrides={"run": {"root": str(work / "art")}, "ingest": {"sources": sources},
                                         "bulk": {"unit_rows": unit_rows}})
    store = RunStore(cfg.run.root, default_run_id(cfg))
    t = time.time()
    run_stages(cfg, store, ["ingest", "seed", "nli_filter", "augment", "distill"])
    print(f"upstream stages ready in {time.time() - t:.1f}s ({store.path})", flush=True)
    return cfg, store


def with_executor(cfg, kind: str, address: str = "", workers: int = 1):
    from pipeline.config import load_config

    return load_config(base=cfg.model_dump(mode="json"),
                       overrides={"run": {"executor": kind, "ray": {"address": address, "num_workers": workers}}})


def run_bulk(cfg, store) -> tuple[float, dict]:
    from pipeline.runner import run_one

    t = time.perf_counter()
    m = run_one("bulk", cfg, store, force=True)
    return time.perf_counter() - t, m


def part1(args) -> dict:
    import ray

    work = Path(args.work or tempfile.mkdtemp(prefix="scale_out_"))
    cfg, store = prepare(work, args.unit_rows, args.extra)
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    cluster_start = time.perf_counter() - t
    address = ray.get_runtime_context().gcs_address
    modes = {"local": with_executor(cfg, "local"), "ray-1": with_executor(cfg, "ray", address, 1),
             "ray-2": with_executor(cfg, "ray", address, 2)}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    stage_walls: dict[str, list[float]] = {m: [] for m in modes}
    units_s: dict[str, list[float]] = {m: [] for m in modes}     # the units' own time (after setup)
    setup_s: dict[str, list[float]] = {m: [] for m in modes}     # Ray: the actors' setup, in parallel
    reference = None
    try:
        for rep in range(args.repeats):
            for name, mcfg in modes.items():
                wall, m = run_bulk(mcfg, store)
                rows = store.stage("bulk").read()
                if reference is None:
                    reference = (rows, store.stage("bulk").read_rejects())
                elif not (rows.equals(reference[0]) and store.stage("bulk").read_rejects().equals(reference[1])):
                    raise SystemExit(f"{name}: bulk rows differ from the first mode's")
                walls[name].append(round(wall, 2))
                stage_walls[name].append(m["wall_s"])
                units_s[name].append(m["stats"]["executor"]["units_s"])
                if "setup_s" in m["stats"]["executor"]:
                    setup_s[name].append(m["stats"]["executor"]["setup_s"])
                print(f"rep {rep} {name}: {wall:.1f}s (stage {m['wall_s']:.1f}s), captions {m['rows_in']}, "
                      f"units {m['units']}", flush=True)
    finally:
        ray.shutdown()
    best = {k: min(v) for k, v in walls.items()}
    units = {k: min(v) for k, v in units_s.items()}
    rows_in = m["rows_in"]
    return {
        "captions": rows_in, "units": m["units"], "unit_rows": args.unit_rows, "repeats": args.repeats,
        "ray_cluster_start_s": round(cluster_start, 2),
        "wall_s": walls, "stage_wall_s": stage_walls, "best_wall_s": best,
        "units_s": units_s, "best_units_s": units, "ray_setup_s": setup_s,
        "captions_per_s": {k: round(rows_in / v, 2) for k, v in best.items()},
        "unit_captions_per_s": {k: round(rows_in / v, 2) for k, v in units.items()},
        "speedup_ray2_vs_ray1": round(best["ray-1"] / best["ray-2"], 3),
        "overhead_ray1_vs_local": round(best["ray-1"] / best["local"] - 1, 3),
        "units_speedup_ray2_vs_ray1": round(units["ray-1"] / units["ray-2"], 3),
        "units_overhead_ray1_vs_local": round(units["ray-1"] / units["local"] - 1, 3),
        "rows_identical": True,
    }


def part2(args) -> dict | None:
    script = ROOT / "bench" / "openai_throughput.py"
    if args.skip_openai or not script.exists():
        return None
    t = time.perf_counter()
    prefix = RESULTS / "scale_out_openai"        # its own copy: openai_throughput.json stays that bench's
    cmd = [sys.executable, str(script), "--repeats", str(args.openai_repeats), "--concurrency", args.openai_concurrency,
           "--out", str(prefix)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = {"command": " ".join(cmd[1:]), "returncode": done.returncode, "wall_s": round(time.perf_counter() - t, 1)}
    if done.returncode:
        out["error"] = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
    res = prefix.with_suffix(".json")
    if res.exists():
        out["result"] = json.loads(res.read_text())
    return out


def markdown(r: dict) -> str:
    p = r["bulk"]
    lines = ["# Scale-out: bulk on the tiny preset, local vs Ray actor pools", "",
             f"{r['machine']}; {p['captions']} captions in {p['units']} units of {p['unit_rows']}; "
             f"best of {p['repeats']} interleaved runs. The cores were shared with other jobs while this ran: "
             "the ratios are what to read, not the seconds.", "",
             "Wall: the whole stage (process spawn, cluster connect, actors' start and setup, units, manifest); "
             "units: from the first unit sent to the last committed (the engines already open).", "",
             "| mode | best wall s | captions/s (wall) | best units s | captions/s (units) | Ray setup s | all walls | all units s |",
             "|---|---|---|---|---|---|---|---|"]
    for k in ("local", "ray-1", "ray-2"):
        lines.append(f"| {k} | {p['best_wall_s'][k]} | {p['captions_per_s'][k]} | {p['best_units_s'][k]} | "
                     f"{p['unit_captions_per_s'][k]} | {p['ray_setup_s'][k] or '-'} | {p['wall_s'][k]} | {p['units_s'][k]} |")
    lines += ["", f"- ray-2 vs ray-1 speed-up (2 actors on 2 cores): units **{p['units_speedup_ray2_vs_ray1']}x**, "
              f"whole stage {p['speedup_ray2_vs_ray1']}x",
              f"- Ray path overhead vs local, one worker: units **{p['units_overhead_ray1_vs_local'] * 100:.1f}%**, "
              f"whole stage {p['overhead_ray1_vs_local'] * 100:.1f}% (target under 10%)",
              f"- Ray cluster start (once per cluster, not per stage): {p['ray_cluster_start_s']} s",
              "- rows identical across the three modes: yes (checked)"]
    o = r.get("openai")
    if o:
        lines += ["", "## openai engine vs offline vLLM (bench/openai_throughput.py)", "",
                  f"return code {o['returncode']}, {o['wall_s']} s" + (f"; error: {o['error']}" if o.get("error") else ""),
                  "", "```json", json.dumps(o.get("result"), indent=1)[:3000], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="working folder (default: a new temporary one)")
    ap.add_argument("--unit-rows", type=int, default=24)
    ap.add_argument("--extra", type=int, default=480, help="captions added to the tiny preset's examples")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-openai", action="store_true")
    ap.add_argument("--openai-repeats", type=int, default=2)
    ap.add_argument("--openai-concurrency", default="128")
    args = ap.parse_args()
    import ray

    r = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                    f"ray {ray.__version__}, no GPU",
         "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bulk": part1(args)}
    r["openai"] = part2(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale_out.json").write_text(json.dumps(r, indent=2) + "\n")
    (RESULTS / "scale_out.md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
