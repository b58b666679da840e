"""Seed-stage parse rejects with and without structured output (vLLM, the prompt's ``regex``).

Runs ingest + seed twice on the same captions with ``engine=vllm``: once free-running, once with
``seed.sampling.structured=true``, and reports rows out / rejected and the reject reasons side by
side. The default is the tiny preset (the tiny Llama on vLLM's CPU build); pass ``--preset`` /
``--set`` for a real model on a GPU.

    python bench/structured_output.py [--captions 64] [--strategy chain|tier] [--set key=value ...]

Writes bench/results/structured_output[_<strategy>].json. Quality, not timing: never a test.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(preset: str, overrides: list[str], structured: bool, root: Path) -> dict:
    from pipeline.config import load_config
    from pipeline.runner import run_stages
    from pipeline.store import RunStore

    cfg = load_config(preset, overrides=[*overrides, f"run.root={root}",
                                         f"seed.sampling.structured={str(structured).lower()}"])
    store = RunStore(cfg.run.root, "structured" if structured else "free")
    seed = run_stages(cfg, store, ["ingest", "seed"])[-1]
    reasons = collections.Counter(r["reason"][:70] for r in store.stage("seed").read_rejects().to_pylist())
    return {"rows_in": seed["rows_in"], "rows_out": seed["rows_out"], "rows_rejected": seed["rows_rejected"],
            "parsed_share": seed["rows_out"] / max(seed["rows_in"], 1), "wall_s": seed["wall_s"],
            "engine": seed["stats"].get("engines", {}).get("gen"), "reject_reasons": dict(reasons.most_common(8))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--captions", type=int, default=64)
    ap.add_argument("--strategy", choices=("chain", "tier"), default="chain")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra key=value overrides")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    overrides = ["models.generator.engine=vllm", f"seed.max_captions={args.captions}",
                 f"seed.strategy={args.strategy}", *args.overrides]
    if args.preset == "tiny":  # vLLM's CPU build: a small share of RAM for the KV cache, fp32
        overrides = ["models.generator.gpu_memory_utilization=0.1", "models.generator.dtype=float32", *overrides]
    tmp = Path(tempfile.mkdtemp(prefix="structured_bench_"))
    result = {"preset": args.preset, "overrides": overrides,
              "free": run(args.preset, overrides, False, tmp),
              "structured": run(args.preset, overrides, True, tmp)}
    result["parsed_ratio_structured_vs_free"] = (
        result["structured"]["parsed_share"] / max(result["free"]["parsed_share"], 1e-9))
    suffix = "" if args.strategy == "chain" else f"_{args.strategy}"
    out = Path(args.out or ROOT / "bench" / "results" / f"structured_output{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for mode in ("free", "structured"):
        r = result[mode]
        print(f"{mode:<11} parsed {r['rows_out']}/{r['rows_in']} ({r['parsed_share']:.0%}), "
              f"rejected {r['rows_rejected']}: {r['reject_reasons']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
