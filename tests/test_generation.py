"""TransformersGenerator / make_generator / SubprocessGenerator on a tiny random Llama."""

from __future__ import annotations

import os
import re
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pipeline.backends.common import (  # noqa: E402
    SubprocessError,
    length_buckets,
    resolve_dtype,
    restore_order,
    run_in_subprocess,
)
from pipeline.models.tokenizers import train_bpe  # noqa: E402
from pipeline.backends.factory import make_generator  # noqa: E402
from pipeline.backends.generation import (  # noqa: E402
    GeneratorConfig,
    GenRequest,
    SamplingConfig,
    TextGenerator,
    render_prompts,
    truncate_at_stop,
)
from pipeline.backends.subprocess_engine import SubprocessGenerator  # noqa: E402
from pipeline.backends.transformers_engine import TransformersGenerator  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "bird => blue bird => blue bird sitting on top of branch",
    "A blue bird sitting on the top of a branch.",
    "dog => brown dog => brown dog running on the beach",
    "1. animal\n2. dog\n3. a dog running\n4. A dog running on the beach.",
    "Write four tiers, general to specific, for the caption:",
]


def build_tiny_causal_lm(path, chat_template=CHAT_TEMPLATE):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|system|>", "<|assistant|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(CORPUS * 5, 300, specials, unk_token="<unk>"),
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    )
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def gen(tiny_lm):
    g = make_generator(GeneratorConfig(model=tiny_lm, device="cpu", batch_size=3))
    yield g
    g.close()


def _reqs(k=7):
    return [
        GenRequest(messages=[{"role": "user", "content": "bird " * (1 + (i * 5) % 9) + f"row {i}"}])
        for i in range(k)
    ]


GREEDY = SamplingConfig(temperature=0.0, max_tokens=8)


def test_protocol_and_shapes(gen):
    assert isinstance(gen, TextGenerator)
    out = gen.generate(_reqs(5), SamplingConfig(n=3, temperature=1.0, max_tokens=6, random_seed=1))
    assert len(out) == 5 and all(len(o) == 3 and all(isinstance(t, str) for t in o) for o in out)
    assert gen.generate([], GREEDY) == []


def test_order_restored_under_bucketing(gen):
    reqs = _reqs(7)
    batched = gen.generate(reqs, GREEDY)
    single = [gen.generate([r], GREEDY)[0] for r in reqs]
    assert batched == single


def test_dict_requests_accepted(gen):
    r = _reqs(2)
    assert gen.generate([x.model_dump() for x in r], GREEDY) == gen.generate(r, GREEDY)


def test_stop_strings_truncate(gen):
    reqs = _reqs(4)
    free = gen.generate(reqs, SamplingConfig(temperature=0.0, max_tokens=16))
    texts = [o[0] for o in free]
    # pick a stop string that occurs mid-way in one output
    t = next(t for t in texts if len(t.strip()) >= 4)
    stop = t.strip()[2:4]
    stopped = gen.generate(reqs, SamplingConfig(temperature=0.0, max_tokens=16, stop=[stop]))
    for full, got in zip(texts, stopped):
        assert got[0] == truncate_at_stop(full, [stop])
        assert stop not in got[0]


def test_seeds_reproducible(gen):
    s = SamplingConfig(n=2, temperature=1.0, top_p=0.95, max_tokens=10)
    reqs = [r.model_copy(update={"seed": 100 + i}) for i, r in enumerate(_reqs(4))]
    a = gen.generate(reqs, s)
    b = gen.generate(reqs, s)
    assert a == b
    c = gen.generate([r.model_copy(update={"seed": r.seed + 1}) for r in reqs], s)
    assert c != a


def test_generate_kwargs(gen):
    kw = gen.generate_kwargs(SamplingConfig(n=2, temperature=0.8, top_p=0.9, max_tokens=5, stop=["\n"]))
    assert kw["do_sample"] and kw["num_return_sequences"] == 2 and kw["max_new_tokens"] == 5
    assert kw["stop_strings"] == ["\n"] and kw["tokenizer"] is gen.tokenizer
    assert "cache_implementation" not in kw
    kw = gen.generate_kwargs(GREEDY)
    assert kw["do_sample"] is False and "stop_strings" not in kw
    with pytest.raises(ValueError, match="identical"):
        gen.generate_kwargs(SamplingConfig(n=2, temperature=0.0))


def test_chat_template_left_padding(gen):
    reqs = [GenRequest(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "bird"}])]
    (p,) = render_prompts(gen.tokenizer, reqs)
    assert p == "<s><|system|>be brief\n<|user|>bird\n<|assistant|>"
    assert gen.tokenizer.padding_side == "left"


def test_no_chat_template_is_an_error(tmp_path):
    path = build_tiny_causal_lm(tmp_path / "nochat", chat_template=None)
    g = TransformersGenerator(GeneratorConfig(model=path, device="cpu"))
    with pytest.raises(ValueError, match="chat_template"):
        g.generate(_reqs(1), GREEDY)


def test_static_cache_matches_dynamic(tiny_lm, gen):
    reqs = _reqs(5)
    static = TransformersGenerator(
        GeneratorConfig(model=tiny_lm, device="cpu", batch_size=3, static_cache=True, pad_to_multiple_of=8)
    )
    kw = static.generate_kwargs(GREEDY)
    assert kw["cache_implementation"] == "static" and kw["disable_compile"] is True
    assert static.generate(reqs, GREEDY) == gen.generate(reqs, GREEDY)
    # compile flag: CompileConfig is passed; transformers only auto-compiles on accelerators, so on
    # CPU this checks the kwargs are accepted and results unchanged (the GPU path is benched)
    compiled = TransformersGenerator(
        GeneratorConfig(model=tiny_lm, device="cpu", batch_size=3, compile=True, pad_to_multiple_of=8)
    )
    kw = compiled.generate_kwargs(GREEDY)
    assert kw["cache_implementation"] == "static" and "compile_config" in kw and "disable_compile" not in kw
    assert compiled.generate(reqs[:3], GREEDY) == gen.generate(reqs[:3], GREEDY)


def test_config_validation():
    with pytest.raises(ValueError):
        SamplingConfig(max_tokens=0)
    with pytest.raises(ValueError):
        SamplingConfig(stop=[""])
    with pytest.raises(ValueError):
        GenRequest(messages=[{"content": "x"}])
    with pytest.raises(ValueError, match="engine"):
        GeneratorConfig(engine="tgi", model="m")  # type: ignore[arg-type]
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16


def test_length_buckets_roundtrip():
    lengths = [3, 9, 1, 9, 4, 7, 2]
    b = length_buckets(lengths, 3)
    assert sorted(i for x in b for i in x) == list(range(7))
    assert [lengths[i] for i in b[0]] == [9, 9, 7]
    assert restore_order(b, [[f"r{i}" for i in x] for x in b]) == [f"r{i}" for i in range(7)]


def test_vllm_engine_missing_is_clear(tiny_lm, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, installed or not
    with pytest.raises(ImportError, match="gpu"):
        make_generator(GeneratorConfig(engine="vllm", model=tiny_lm))


def test_run_in_subprocess():
    assert run_in_subprocess(os.getpid) != os.getpid()
    with pytest.raises(SubprocessError, match="ZeroDivisionError"):
        run_in_subprocess(divmod, 1, 0)


@pytest.mark.slow
def test_subprocess_generator_matches_inprocess(tiny_lm, gen, monkeypatch):
    reqs = _reqs(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = GeneratorConfig(model=tiny_lm, device="cpu", batch_size=3, subprocess=True)
    sub = make_generator(cfg)
    assert isinstance(sub, SubprocessGenerator)
    try:
        assert sub.generate(reqs, GREEDY) == gen.generate(reqs, GREEDY)
        assert sub.generate(reqs, GREEDY) == gen.generate(reqs, GREEDY)  # model stays loaded
    finally:
        sub.close()
    with pytest.raises(RuntimeError, match="closed"):
        sub.generate(reqs, GREEDY)
    with pytest.raises(SubprocessError, match="required"):
        SubprocessGenerator(GeneratorConfig(device="cpu"))


def test_stage_engine_gets_the_prompt_stop_strings(tiny_models):
    # a prompt template's `stop` ends generation where its answer format ends (vLLM and
    # transformers alike), on top of any stop strings the config adds
    from pipeline.config import load_config
    from pipeline.prompts import load_prompt
    from pipeline.stages.common import call_sampling

    cfg = load_config("tiny", overrides=['seed.sampling.stop=["###", "\\n"]', "run.random_seed=5"])
    sampling = call_sampling(cfg.seed.sampling, load_prompt("seed_tier"), cfg.run.random_seed)
    assert sampling.stop == ["###", "\n"] and sampling.random_seed == 5
    gen = TransformersGenerator(GeneratorConfig(model=tiny_models["llama"], device="cpu"))
    try:
        assert gen.generate_kwargs(sampling)["stop_strings"] == ["###", "\n"]
        assert sampling.regex is None  # structured output is opt-in
    finally:
        gen.close()


def test_structured_output_takes_the_prompt_regex(tiny_models, tmp_path):
    from pipeline.config import load_config
    from pipeline.prompts import PromptError, load_exemplars, load_prompt
    from pipeline.stage import StageError
    from pipeline.stages.common import call_sampling

    cfg = load_config("tiny", overrides=["seed.sampling.structured=true"])
    chain = load_prompt("seed_chain")
    assert call_sampling(cfg.seed.sampling, chain, 0).regex == chain.regex
    mine = cfg.seed.sampling.model_copy(update={"regex": "1\\. .+"})   # an explicit regex wins
    assert call_sampling(mine, chain, 0).regex == "1\\. .+"
    # every template's regex accepts its own answers to the hand-written exemplars
    for ex in load_exemplars():
        t1, t2, t3 = ex["positive"][:3]
        assert re.fullmatch(chain.regex, f"1. {t1}\n2. {t2}\n3. {t3}")
        assert re.fullmatch(load_prompt("augment").regex, f"{t1} => {t2} => {t3}")
        assert all(re.fullmatch(load_prompt("seed_tier").regex, t) for t in (t1, t2, t3))
    assert not re.fullmatch(chain.regex, "Sure! Here is the list:\n1. dog")
    bare = tmp_path / "bare.yaml"
    bare.write_text("id: bare\nsystem: s\nuser: '{caption}'\n")
    with pytest.raises(StageError, match="bare.yaml.*no 'regex'"):
        call_sampling(cfg.seed.sampling, load_prompt(str(bare)), 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: bad\nsystem: s\nuser: '{caption}'\nregex: '1\\. ['\n")
    with pytest.raises(PromptError, match="bad.yaml.*regex"):
        load_prompt(str(bad))
