"""The GPU paths: the transformers engine (bf16, static cache + compile, its own process), the NLI
scorer in half precision, the completer H, and the model stages end to end on CUDA.

Skipped without a CUDA device (CI, the 2-core machines). On a lent GPU,
``bash bench/device_check.sh`` runs this file first. Each test compares the GPU result with the
CPU float32 one or checks that memory really went back, so a broken GPU path fails here.
"""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from pipeline import prompts as P  # noqa: E402
from pipeline.backends.factory import make_generator  # noqa: E402
from pipeline.backends.generation import GeneratorConfig, SamplingConfig  # noqa: E402
from pipeline.backends.transformers_engine import TransformersGenerator  # noqa: E402

from _shared import UNSEEN  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CAPTIONS = UNSEEN[:8]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=32)


def _requests():
    ex = P.load_exemplars()
    return [{"messages": P.render_seed_chain(c, ex)} for c in CAPTIONS]


def _greedy(model: str, **kw) -> list[str]:
    gen = TransformersGenerator(GeneratorConfig(model=model, **kw))
    try:
        return [o[0] for o in gen.generate(_requests(), GREEDY)]
    finally:
        gen.close()


def _agreement(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def test_transformers_engine_cuda_matches_cpu(tiny_models):
    cpu = _greedy(tiny_models["llama"], device="cpu", dtype="float32")
    gpu = _greedy(tiny_models["llama"], device="cuda", dtype="float32")
    # the same greedy decode on another device: equal but for rare near-ties in the logits
    assert _agreement(cpu, gpu) >= 0.75, list(zip(cpu, gpu))
    bf16 = _greedy(tiny_models["llama"], device="cuda", dtype="auto")
    assert all(isinstance(t, str) for t in bf16) and any(t.strip() for t in bf16)


def test_static_cache_and_compile_match_plain_on_cuda(tiny_models):
    plain = _greedy(tiny_models["llama"], device="cuda", dtype="float32", batch_size=4)
    static = _greedy(tiny_models["llama"], device="cuda", dtype="float32", batch_size=4, static_cache=True)
    compiled = _greedy(tiny_models["llama"], device="cuda", dtype="float32", batch_size=4, static_cache=True,
                       compile=True, pad_to_multiple_of=16)
    assert _agreement(plain, static) >= 0.75, list(zip(plain, static))
    assert _agreement(plain, compiled) >= 0.75, list(zip(plain, compiled))


def test_sampling_n_and_seeds_on_cuda(tiny_models):
    gen = TransformersGenerator(GeneratorConfig(model=tiny_models["llama"], device="cuda"))
    try:
        samp = SamplingConfig(n=3, temperature=0.8, top_p=0.95, max_tokens=24, random_seed=7)
        a = gen.generate(_requests(), samp)
        b = gen.generate(_requests(), samp)
    finally:
        gen.close()
    assert [len(o) for o in a] == [3] * len(CAPTIONS)
    assert a == b  # same requests, same seeds, same batches: the same samples


def test_engine_process_gives_gpu_memory_back(tiny_models):
    torch.cuda.init()
    free0, _ = torch.cuda.mem_get_info()
    gen = make_generator(GeneratorConfig(model=tiny_models["llama"], device="cuda", subprocess=True))
    try:
        out = gen.generate(_requests()[:2], GREEDY)
        held = free0 - torch.cuda.mem_get_info()[0]
    finally:
        gen.close()
    deadline = time.time() + 10  # the driver frees a dead process's memory promptly, not instantly
    while (released := torch.cuda.mem_get_info()[0] - (free0 - held)) < held - 16 * 2**20:
        if time.time() > deadline:
            break
        time.sleep(0.2)
    assert len(out) == 2
    assert held > 64 * 2**20, f"the engine process held only {held / 2**20:.0f} MiB of GPU memory"
    assert released >= held - 16 * 2**20, f"held {held / 2**20:.0f} MiB, released {released / 2**20:.0f} MiB"


def test_nli_scorer_half_precision_matches_cpu(tiny_models):
    from pipeline.backends.nli import NliConfig, NliScorer

    ex = P.load_exemplars()
    prem = [e["positive"][k + 1] for e in ex for k in range(3)] + [e["positive"][k] for e in ex for k in range(4)]
    hyp = [e["positive"][k] for e in ex for k in range(3)] + [e["negative"][k] for e in ex for k in range(4)]
    cpu = NliScorer(NliConfig(model=tiny_models["nli"], device="cpu"))
    gpu = NliScorer(NliConfig(model=tiny_models["nli"], device="cuda"))  # auto: float16 on CUDA
    assert gpu.dtype == torch.float16 and gpu.device.type == "cuda"
    a, b = cpu.score(prem, hyp), gpu.score(prem, hyp)
    gpu.close()
    assert abs(a - b).max() < 2e-2
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.98


def test_completer_cuda_matches_cpu(tiny_models):
    from pipeline.completer import Completer, GenConfig

    cpu = Completer(tiny_models["t5"], GenConfig(max_new_tokens=40, device="cpu")).generalize(CAPTIONS)
    h = Completer(tiny_models["t5"], GenConfig(max_new_tokens=40, device="cuda", dtype="float32"))
    gpu = h.generalize(CAPTIONS)
    h.close()
    assert _agreement(cpu, gpu) >= 0.75, list(zip(cpu, gpu))


def test_model_stages_end_to_end_on_cuda(tmp_path):
    """seed -> nli_filter -> augment -> distill -> bulk -> negatives -> export, every engine on CUDA."""
    from pipeline.config import load_config
    from pipeline.runner import run_stages
    from pipeline.store import RunStore

    cfg = load_config("tiny", overrides=[
        f"run.root={tmp_path}", "models.generator.device=cuda", "models.nli.device=cuda",
        "seed.max_captions=24", "augment.max_captions=16",
    ])
    store = RunStore(cfg.run.root, "gpu")
    manifests = {m["stage"]: m for m in run_stages(cfg, store)}
    for name in ("ingest", "seed", "nli_filter", "bulk"):
        m = manifests[name]
        assert m["rows_in"] == m["rows_out"] + m["rows_rejected"], m
    assert manifests["negatives"]["rows_out"] == manifests["bulk"]["rows_out"]   # one item per bulk chain
    for name in ("seed", "nli_filter", "augment", "bulk", "negatives"):
        engines = manifests[name]["stats"]["engines"]
        assert engines and all(e["device"].startswith("cuda") for e in engines.values()), (name, engines)
    assert manifests["distill"]["stats"]["training"]["device"].startswith("cuda")
    assert manifests["bulk"]["rows_out"] > 0


def test_stage_forked_from_the_forkserver_runs_on_cuda(tmp_path, monkeypatch):
    """``HIERARCAPS_STAGE_START=forkserver`` beside a GPU: the forkserver's imports touched no CUDA
    runtime (NVML answers availability there), so a forked stage process still gets CUDA."""
    from pipeline import startup
    from pipeline.config import load_config
    from pipeline.runner import run_stages
    from pipeline.store import RunStore

    monkeypatch.setenv("HIERARCAPS_STAGE_START", "forkserver")
    cfg = load_config("tiny", overrides=[f"run.root={tmp_path}", "models.generator.device=cuda",
                                         "models.nli.device=cuda", "seed.max_captions=8"])
    manifests = {m["stage"]: m for m in run_stages(cfg, RunStore(cfg.run.root, "fork"),
                                                    stages=["ingest", "seed", "nli_filter"])}
    for name in ("seed", "nli_filter"):
        engines = manifests[name]["stats"]["engines"]
        assert engines and all(e["device"].startswith("cuda") for e in engines.values()), (name, engines)
    assert startup._started_env["HIERARCAPS_STAGE_START"] == "forkserver"     # a forkserver started them
