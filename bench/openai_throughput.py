"""The ``openai`` engine (a ``vllm serve`` on loopback) side by side with the offline vLLM engine on
the same 128 seed prompts: throughput as a ratio, and whether the texts are identical.

Both run the same model with the same engine settings (tests/_vllm_serve.py's: float32, eager,
256 MiB KV cache, no chunked prefill, the worker in the engine core) and the tiny preset's seed
sampling (n=4, temperature 0.8, top_p 0.95, 40 tokens, a hashed seed per request), one after the
other so they never share the CPU. Each engine is warmed with one call, then timed over
``--repeats`` calls of all prompts (the median counts; the caller's CPU time beside it). The server is timed at several
``max_concurrency`` values; what it costs over the offline engine is the HTTP + JSON path and the
API server's detokenising, on the same scheduler.

    python bench/openai_throughput.py [--requests 128] [--repeats 5] [--concurrency 8,32,128]
                                      [--model PATH] [--out bench/results/openai_throughput]

Writes <out>.json and <out>.md. Timing only: never a test. ``main(argv)`` returns the result
(bench/scale_out.py calls it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SERVED = "bench/llm"
KV = {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": True, "distributed_executor_backend": "uni"}


def prompts(k: int):
    """k seed-stage requests (the chain prompt with its exemplars) over examples/captions.tsv."""
    from pipeline.backends.generation import GenRequest, SamplingConfig
    from pipeline.prompts import load_exemplars, load_prompt, render_seed_chain
    from pipeline.stages.common import request_seed

    lines = [ln.split("\t")[0] for ln in (ROOT / "examples" / "captions.tsv").read_text().splitlines() if "\t" in ln]
    caps = [lines[i % len(lines)] + ("" if i < len(lines) else f" ({i})") for i in range(k)]
    prompt, exemplars = load_prompt("seed_chain"), load_exemplars()
    reqs = [GenRequest(messages=render_seed_chain(c, exemplars, 4, template=prompt), seed=request_seed(0, str(i)))
            for i, c in enumerate(caps)]
    sampling = SamplingConfig(n=4, temperature=0.8, top_p=0.95, max_tokens=40, stop=list(prompt.stop))
    return reqs, sampling


def timed(gen, reqs, sampling, repeats: int) -> tuple[list[float], list[float], list[list[str]]]:
    """Wall times and this process's CPU times (the caller's side: prompt rendering, or the HTTP
    client and JSON) of ``repeats`` calls, and the last call's texts."""
    gen.generate(reqs[:4], sampling)                      # warm-up
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = gen.generate(reqs, sampling)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return times, cpu, out


def row(name: str, timing: tuple, n_req: int, out: list[list[str]], **extra) -> dict:
    times, cpu = timing
    med = statistics.median(times)
    chars = sum(len(t) for o in out for t in o)
    return {"engine": name, **extra, "wall_s": [round(t, 3) for t in times], "median_s": round(med, 3),
            "caller_cpu_s": round(statistics.median(cpu), 3),
            "requests_per_s": round(n_req / med, 2), "completions_per_s": round(n_req * len(out[0]) / med, 2),
            "output_chars_per_s": round(chars / med, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrency", default="8,32,128", help="max_concurrency values for the openai engine")
    ap.add_argument("--model", default=None, help="model folder (default: the tiny Llama, built offline)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "openai_throughput"))
    args = ap.parse_args(argv)

    from _vllm_serve import VllmServer

    from pipeline.backends.generation import GeneratorConfig
    from pipeline.backends.openai_engine import OpenAIGenerator
    from pipeline.backends.vllm_engine import VllmGenerator
    from pipeline.models import resolve_model

    model = args.model or resolve_model("tiny/llama-chat", os.environ.get("HIERARCAPS_CACHE", ROOT / ".cache" / "tiny"))
    reqs, sampling = prompts(args.requests)
    results = []

    t = time.perf_counter()
    offline = VllmGenerator(GeneratorConfig(engine="vllm", model=str(model), dtype="float32", max_model_len=512,
                                            engine_args=KV))
    load_s = time.perf_counter() - t
    try:
        *timing, ref = timed(offline, reqs, sampling, args.repeats)
    finally:
        offline.close()
    results.append(row("vllm (offline)", timing, len(reqs), ref, start_s=round(load_s, 1)))
    print(json.dumps(results[-1]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        server = VllmServer(str(model), SERVED, Path(tmp) / "serve.log")
        t = time.perf_counter()
        server.start()
        start_s = time.perf_counter() - t
        try:
            for c in [int(x) for x in args.concurrency.split(",")]:
                gen = OpenAIGenerator(GeneratorConfig(engine="openai", model=SERVED, base_url=server.base_url,
                                                      max_concurrency=c))
                *timing, out = timed(gen, reqs, sampling, args.repeats)
                results.append(row("openai (vllm serve)", timing, len(reqs), out, max_concurrency=c,
                                   start_s=round(start_s, 1), identical_to_offline=out == ref))
                print(json.dumps(results[-1]), flush=True)
        finally:
            server.stop()

    base = results[0]["requests_per_s"]
    for r in results:
        r["ratio_vs_offline"] = round(r["requests_per_s"] / base, 3)
    import torch

    result = {"requests": len(reqs), "sampling": sampling.model_dump(exclude={"stop"}), "model": str(model),
              "device": "cuda" if torch.cuda.is_available() else "cpu", "cpus": os.cpu_count(),
              "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "results": results}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# openai engine vs offline vLLM: {len(reqs)} seed prompts, n={sampling.n}, "
             f"{sampling.max_tokens} tokens, {result['device']} ({result['cpus']} cores, "
             f"1-min load {result['load_avg_1m_at_end']} at the end)", "",
             "| engine | max_concurrency | median s | caller CPU s | requests/s | completions/s | ratio vs offline "
             "| identical texts |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['engine']} | {r.get('max_concurrency', '-')} | {r['median_s']} | {r['caller_cpu_s']} | "
                     f"{r['requests_per_s']} | {r['completions_per_s']} | {r['ratio_vs_offline']} | "
                     f"{r.get('identical_to_offline', '-')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
