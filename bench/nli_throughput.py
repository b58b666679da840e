"""NLI scoring throughput: NliScorer vs a naive per-pair ``pipeline("text-classification")`` loop vs
the raw batched forward pass (same model, same pairs, same batch size), reported as ratios.

The model is a random BERT-shaped classifier (``--shape``: small = 4 layers, hidden 256; base =
12 x 768, the size of the common base NLI cross-encoders; large = 24 x 1024, roberta-large-mnli's
size) with a WordPiece tokenizer trained locally; pairs are (specific tier => general tier) links
read at run time from ../shared/data/hierarcaps/hierarcaps_test_expanded.csv.gz (synthetic pairs
when absent, as on the device machine, which gets the repository only).

    python bench/nli_throughput.py [--pairs 2048] [--workload sample|chains] [--batch-size 64]
                                   [--shape small|base|large] [--threads 1] [--device auto]

`sample` draws links at random from the whole file (2% repeats at 2048); `chains` takes every link
of the first chains in file order, as nli_filter sees them (the scorer scores a repeated link once,
the baselines do not). Writes bench/results/nli_throughput[_chains][_<shape>][_<device>].json
(no suffix: sample, small, CPU) and prints a table.
Timing-only: never a test.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "hierarcaps" / "hierarcaps_test_expanded.csv.gz"


def load_pairs(n: int, workload: str = "sample", seed: int = 0) -> tuple[list[str], list[str], str]:
    """`sample`: n links drawn at random from the whole file (few repeats); `chains`: every link of
    the file's first chains, in order, until n links -- what nli_filter scores, repeats included."""
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    if DATA.exists():
        with gzip.open(DATA, "rt", newline="") as f:
            for row in csv.DictReader(f):
                for col in ("positive", "negative"):
                    tiers = [t.strip() for t in (row.get(col) or "").split("=>") if t.strip()]
                    pairs += [(tiers[k + 1], tiers[k]) for k in range(len(tiers) - 1)]
                if workload == "chains" and len(pairs) >= n:
                    break
        source = f"{DATA} ({workload})"
    else:
        words = "a man woman dog cat bird blue red sitting running on the of in near street beach branch".split()
        for _ in range(n):
            p = " ".join(rng.choice(words) for _ in range(rng.randint(4, 20)))
            pairs.append((p, " ".join(p.split()[: rng.randint(1, 4)])))
        source = "synthetic"
    if workload == "sample":
        rng.shuffle(pairs)
    pairs = pairs[:n]
    return [p for p, _ in pairs], [h for _, h in pairs], source


SHAPES = {  # BERT sizes: layers, hidden, heads (ffn = 4 x hidden)
    "small": (4, 256, 4),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


def build_model(path: Path, texts: list[str], shape: str = "small") -> str:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from pipeline.models.tokenizers import bert_tokenizer, train_wordpiece

    tok = bert_tokenizer(train_wordpiece(texts, vocab_size=8000))
    torch.manual_seed(0)
    id2label = {0: "contradiction", 1: "neutral", 2: "entailment"}  # roberta-large-mnli order
    layers, hidden, heads = SHAPES[shape]
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=512, num_labels=3,
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def timed(fn, repeats: int) -> float:
    """Best-of-``repeats`` wall time (seconds); best-of is the least noisy on a shared machine."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2048)
    ap.add_argument("--workload", choices=("sample", "chains"), default="sample")
    ap.add_argument("--naive-pairs", type=int, default=256, help="subset timed for the slow per-pair loop")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="default: bench/results/nli_throughput[_chains][_<shape>][_<device>].json")
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from pipeline.backends.common import resolve_device, resolve_dtype
    from pipeline.backends.nli import NliConfig, NliScorer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    premises, hypotheses, source = load_pairs(args.pairs, args.workload)
    n = len(premises)
    tmp = Path(tempfile.mkdtemp(prefix="nli_bench_"))
    model_path = build_model(tmp / "model", premises + hypotheses, args.shape)
    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device, half="float16")
    suffix = "".join(f"_{x}" for x in (args.workload != "sample" and args.workload,
                                       args.shape != "small" and args.shape,
                                       device.type != "cpu" and device.type) if x)
    args.out = args.out or str(ROOT / "bench" / "results" / f"nli_throughput{suffix}.json")
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)

    # -- NliScorer ------------------------------------------------------------------------------
    scorer = NliScorer(
        NliConfig(model=model_path, batch_size=args.batch_size, max_length=args.max_length, device=str(device))
    )

    def run_scorer():
        scorer.score(premises, hypotheses)
        sync()

    # -- raw batched forward (input order, padding to the batch max, same tokenizer / model) --
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=dtype).to(device).eval()

    def run_raw():
        outs = []
        with torch.inference_mode():
            for i in range(0, n, args.batch_size):
                enc = tok(
                    premises[i : i + args.batch_size], hypotheses[i : i + args.batch_size],
                    padding=True, truncation=True, max_length=args.max_length, return_tensors="pt",
                ).to(device)
                outs.append(torch.softmax(model(**enc).logits.float(), -1))
        sync()
        return torch.cat(outs).cpu().numpy()

    # -- raw batched forward over the scorer's own length-sorted batches: pure model compute plus
    # tokenization, i.e. the floor for the scorer's bookkeeping overhead
    from pipeline.backends.common import length_buckets

    enc_all = tok(premises, hypotheses, truncation=True, max_length=args.max_length)
    sorted_batches = length_buckets([len(x) for x in enc_all["input_ids"]], args.batch_size)

    def run_raw_sorted():
        with torch.inference_mode():
            for idx in sorted_batches:
                enc = tok(
                    [premises[i] for i in idx], [hypotheses[i] for i in idx],
                    padding=True, truncation=True, max_length=args.max_length, return_tensors="pt",
                ).to(device)
                torch.softmax(model(**enc).logits.float(), -1).cpu()
        sync()

    # -- naive per-pair pipeline loop -------------------------------------------------------------
    pipe = pipeline("text-classification", model=model, tokenizer=tok, device=device, top_k=None)
    k = min(args.naive_pairs, n)

    def run_naive():
        for p, h in zip(premises[:k], hypotheses[:k]):
            pipe({"text": p, "text_pair": h}, truncation=True, max_length=args.max_length)
        sync()

    # sanity: the scorer's columns are the raw probabilities re-ordered (entail, neutral, contra)
    got = scorer.score(premises[:256], hypotheses[:256])
    ref = run_raw()[:256][:, [2, 1, 0]] if n <= 256 else None
    if ref is None:
        with torch.inference_mode():
            enc = tok(premises[:256], hypotheses[:256], padding=True, truncation=True,
                      max_length=args.max_length, return_tensors="pt").to(device)
            ref = torch.softmax(model(**enc).logits.float(), -1).cpu().numpy()[:, [2, 1, 0]]
    max_abs_diff = float(np.abs(got - ref).max())

    for fn in (run_scorer, run_raw, run_raw_sorted, run_naive):  # warm-up
        fn()
    t_scorer = timed(run_scorer, args.repeats)
    t_raw = timed(run_raw, args.repeats)
    t_raw_sorted = timed(run_raw_sorted, args.repeats)
    t_naive = timed(run_naive, max(1, args.repeats - 1))

    lens = [len(x) for x in tok(premises, hypotheses, truncation=True, max_length=args.max_length)["input_ids"]]
    rows = {
        "naive_pipeline_loop": k / t_naive,
        "raw_batched_forward": n / t_raw,
        "raw_forward_length_sorted": n / t_raw_sorted,
        "nli_scorer": n / t_scorer,
    }
    result = {
        "pairs": n,
        "naive_pairs_timed": k,
        "pair_source": source,
        "workload": args.workload,
        "distinct_pairs": len(set(zip(premises, hypotheses))),
        "tokens_per_pair": {"mean": statistics.mean(lens), "max": max(lens), "min": min(lens)},
        "model": "random BertForSequenceClassification, {} layers, hidden {}, {} heads, ffn 4 x hidden, "
                 "vocab 8000".format(*SHAPES[args.shape]),
        "shape": args.shape,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "device": str(device),
        "dtype": str(dtype),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "pairs_per_s": rows,
        "ratios": {
            "scorer_vs_naive": rows["nli_scorer"] / rows["naive_pipeline_loop"],
            "scorer_vs_raw": rows["nli_scorer"] / rows["raw_batched_forward"],
            "scorer_vs_raw_length_sorted": rows["nli_scorer"] / rows["raw_forward_length_sorted"],
            "raw_vs_naive": rows["raw_batched_forward"] / rows["naive_pipeline_loop"],
        },
        "targets": {"scorer_vs_naive_min": 10.0, "scorer_vs_raw_min": 0.85},
        "scorer_vs_raw_max_abs_prob_diff": max_abs_diff,
    }
    result["targets_met"] = (
        result["ratios"]["scorer_vs_naive"] >= 10.0 and result["ratios"]["scorer_vs_raw"] >= 0.85
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"NLI throughput: {n} pairs ({source}), batch {args.batch_size}, {device} {dtype}, "
          f"{result['torch_threads']} thread(s), load {result['loadavg_1m']:.1f}")
    print(f"{'method':<27}{'pairs/s':>10}{'vs naive':>10}{'vs raw':>9}")
    for name, v in rows.items():
        print(f"{name:<27}{v:>10.1f}{v / rows['naive_pipeline_loop']:>9.1f}x{v / rows['raw_batched_forward']:>8.2f}x")
    print(f"targets (>=10x naive, >=0.85x raw): {'MET' if result['targets_met'] else 'NOT MET'}; "
          f"max |p_scorer - p_raw| = {max_abs_diff:.2e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
