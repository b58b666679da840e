"""Bulk-generation throughput of the completer H: ``Completer.generalize`` vs raw ``model.generate``.

Measures, on the same inputs and batch size:
  * raw      : ``model.generate`` on pre-tokenized, pre-padded batches (no tokenize / decode)
  * completer: ``Completer.generalize`` (tokenize + length-bucket + generate + decode + reorder)
and both with length-bucketed and unsorted (input-order) batches. Reports items/s, the
completer's overhead over raw on identical batches (target < 10%) and the bucketing speed-up.

The model is a random T5 of a given shape built offline (no hub), with a BPE tokenizer trained on
the captions; output length is pinned (min = max new tokens) so every run decodes the same number
of tokens. Captions: tier 4 of ../shared/data/hierarcaps/hierarcaps_test_expanded.csv.gz, read at
run time (never copied here); examples/captions.tsv where that file is absent.

    python bench/bulk_throughput.py                       # CPU, t5-small shape
    python bench/bulk_throughput.py --device cuda --shape t5-base --batch 256 1024 --n 8192

Results are merged into bench/results/bulk_throughput.json under "<device>/<shape>/b<batch>".
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "hierarcaps" / "hierarcaps_test_expanded.csv.gz"
SHAPES = {
    "tiny": dict(d_model=64, d_ff=128, d_kv=32, num_layers=2, num_heads=2),
    "t5-small": dict(d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_heads=8),
    "t5-base": dict(d_model=768, d_ff=3072, d_kv=64, num_layers=12, num_heads=12),
}


EXAMPLES = ROOT / "examples" / "captions.tsv"


def load_captions(path: Path, n: int, seed: int) -> tuple[list[str], str]:
    caps = []
    if path.is_file():
        with gzip.open(path, "rt", newline="") as f:
            for row in csv.DictReader(f):
                parts = [p.strip() for p in (row.get("positive") or "").split("=>")]
                if len(parts) == 4 and parts[3]:
                    caps.append(parts[3])
    else:  # e.g. on the device machine, which gets the repository only
        print(f"{path} not found: using the captions of {EXAMPLES}")
        path = EXAMPLES
        caps = [line.split("\t")[0].strip() for line in EXAMPLES.read_text(encoding="utf-8").splitlines()]
        caps = [c for c in caps if c]
    if not caps:
        sys.exit(f"{path}: no 4-tier 'positive' chains found")
    rng = random.Random(seed)
    rng.shuffle(caps)
    while len(caps) < n:
        caps = caps + caps
    return caps[:n], str(path)


def build_model(path: Path, shape: str, texts: list[str], out_tokens: int):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from pipeline.models.tokenizers import T5_SPECIALS, t5_tokenizer, train_bpe

    tok = t5_tokenizer(train_bpe(texts, 16000, T5_SPECIALS, pre="metaspace", unk_token="<unk>"))
    torch.manual_seed(0)
    # vocab of the real T5 (the lm_head cost matters); rows beyond the tokenizer stay unused
    cfg = T5Config(**SHAPES[shape], vocab_size=32128, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    model = T5ForConditionalGeneration(cfg)
    # pin the output length so raw and completer decode exactly the same number of tokens
    model.generation_config.min_new_tokens = out_tokens
    model.generation_config.max_new_tokens = out_tokens
    model.save_pretrained(path)
    tok.save_pretrained(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="t5-small", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--n", type=int, default=256, help="captions per measurement")
    ap.add_argument("--out-tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0 = torch default; 1 is steadier on shared cores)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "bulk_throughput.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from pipeline.completer import Completer, GenConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    caps, caps_source = load_captions(args.data, args.n, args.seed)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    rows = []
    with tempfile.TemporaryDirectory() as td:
        mpath = Path(td) / "model"
        build_model(mpath, args.shape, caps, args.out_tokens)
        for bs in args.batch:
            comp = Completer(mpath, GenConfig(max_new_tokens=args.out_tokens, batch_size=bs, device=args.device),
                             max_source_len=64)
            tok, model = comp.tokenizer, comp.model
            inputs = [comp.format.generalize_input(c) for c in caps]
            enc = tok(inputs, truncation=True, max_length=comp.max_source_len)["input_ids"]
            in_tokens = sum(len(e) for e in enc) / len(enc)

            from pipeline.backends.common import length_buckets

            batch_sets = {
                "bucketed": length_buckets([len(e) for e in enc], bs),
                "unsorted": [list(range(i, min(i + bs, len(enc)))) for i in range(0, len(enc), bs)],
            }
            pre = {k: [tok.pad({"input_ids": [enc[i] for i in b]}, return_tensors="pt")
                       for b in v] for k, v in batch_sets.items()}
            kw = dict(max_new_tokens=args.out_tokens, num_beams=1, do_sample=False)

            def raw(order):
                with torch.inference_mode():
                    for p in pre[order]:
                        model.generate(input_ids=p["input_ids"].to(comp.device),
                                       attention_mask=p["attention_mask"].to(comp.device), **kw)

            def completer(order):
                comp.generate(inputs, bucket=(order == "bucketed"))

            def timed(fn, order):
                best = float("inf")
                for _ in range(args.repeats):
                    sync()
                    t0 = time.perf_counter()
                    fn(order)
                    sync()
                    best = min(best, time.perf_counter() - t0)
                return best

            # warm-up (kernels, allocator)
            with torch.inference_mode():
                p = pre["unsorted"][0]
                model.generate(input_ids=p["input_ids"].to(comp.device),
                               attention_mask=p["attention_mask"].to(comp.device), **kw)
            t = {}
            for order in ("bucketed", "unsorted"):
                t[f"raw_{order}"] = timed(raw, order)
                t[f"completer_{order}"] = timed(completer, order)
            pad_frac = {k: 1 - sum(len(enc[i]) for b in v for i in b)
                        / sum(len(b) * max(len(enc[i]) for i in b) for b in v)
                        for k, v in batch_sets.items()}
            row = {
                "device": args.device, "shape": args.shape, "batch": bs, "n": len(caps), "captions": caps_source,
                "in_tokens_mean": round(in_tokens, 1), "out_tokens": args.out_tokens,
                **{f"{k}_items_s": round(len(caps) / v, 2) for k, v in t.items()},
                "overhead_bucketed": round(t["completer_bucketed"] / t["raw_bucketed"] - 1, 4),
                "overhead_unsorted": round(t["completer_unsorted"] / t["raw_unsorted"] - 1, 4),
                "bucketing_speedup": round(t["completer_unsorted"] / t["completer_bucketed"], 3),
                "pad_fraction_bucketed": round(pad_frac["bucketed"], 3),
                "pad_fraction_unsorted": round(pad_frac["unsorted"], 3),
            }
            rows.append(row)
            model = None
            comp.close()  # frees the GPU memory before the next batch size

    hdr = ["batch", "raw_b it/s", "comp_b it/s", "raw_u it/s", "comp_u it/s", "overhead_b",
           "overhead_u", "bucket x", "pad_b", "pad_u"]
    print(f"\nbulk throughput: device={args.device} shape={args.shape} n={len(caps)} "
          f"in≈{rows[0]['in_tokens_mean']} tok out={args.out_tokens} tok "
          f"threads={torch.get_num_threads()}")
    print(" | ".join(f"{h:>11}" for h in hdr))
    for r in rows:
        vals = [r["batch"], r["raw_bucketed_items_s"], r["completer_bucketed_items_s"],
                r["raw_unsorted_items_s"], r["completer_unsorted_items_s"],
                f"{r['overhead_bucketed']:+.1%}", f"{r['overhead_unsorted']:+.1%}",
                f"{r['bucketing_speedup']:.2f}", r["pad_fraction_bucketed"],
                r["pad_fraction_unsorted"]]
        print(" | ".join(f"{v:>11}" for v in vals))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    store = json.loads(args.out.read_text()) if args.out.is_file() else {}
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": torch.get_num_threads(),
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for r in rows:
        store[f"{r['device']}/{r['shape']}/b{r['batch']}"] = {**r, "env": env}
    args.out.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
