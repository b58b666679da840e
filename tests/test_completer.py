"""Completer H: pair formats, training (loss, save/load, exact resume after SIGKILL, LoRA) and
batched generation (order restored under length bucketing). Tiny random T5 built offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pipeline.models.tokenizers import T5_SPECIALS, t5_tokenizer, train_bpe  # noqa: E402
from pipeline.chain import split_tiers  # noqa: E402
from pipeline.completer import (  # noqa: E402
    Completer,
    GenConfig,
    PairFormat,
    TrainConfig,
    make_training_pairs,
    train_completer,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

COLORS = ["red", "blue", "green", "black", "white", "small"]
THINGS = [("animal", "bird", "sitting on a branch"), ("animal", "dog", "running on the grass"),
          ("vehicle", "car", "parked on the street"), ("vehicle", "bus", "driving down a road"),
          ("food", "pizza", "on a wooden table"), ("furniture", "chair", "next to a window")]


def synthetic_chains() -> list[list[str]]:
    out = []
    for c in COLORS:
        for cat, noun, clause in THINGS:
            out.append([cat, f"{c} {noun}", f"{c} {noun} {clause}",
                        f"A {c} {noun} {clause} in the afternoon."])
    return out


def build_tiny_t5(path: Path, texts: list[str]) -> Path:
    """Random tiny T5 + a BPE tokenizer trained on ``texts``, saved with save_pretrained."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = t5_tokenizer(train_bpe(texts, 300, T5_SPECIALS, pre="metaspace", unk_token="<unk>"))
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1
    torch.manual_seed(0)
    cfg = T5Config(d_model=64, d_ff=128, d_kv=32, num_layers=2, num_heads=2,
                   vocab_size=len(tok), pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    chains = synthetic_chains()
    texts = [s + " " + t for s, t in make_training_pairs(chains)]
    return build_tiny_t5(tmp_path_factory.mktemp("tiny_t5"), texts)


@pytest.fixture(autouse=True)
def _one_thread():
    # deterministic and comparable across the parent and the subprocess
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def state_hash(model_dir: Path) -> str:
    from transformers import AutoModelForSeq2SeqLM

    m = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    h = hashlib.sha256()
    for k, v in sorted(m.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


SEED = 3
GEN = GenConfig(max_new_tokens=24, batch_size=4, device="cpu")


def small_cfg(**kw) -> TrainConfig:
    base = dict(lr=3e-3, max_steps=12, batch_size=8, grad_accum=2, warmup_ratio=0.17,
                save_every_steps=4, max_source_len=48, max_target_len=48)
    base.update(kw)
    return TrainConfig(**base)


def train(pairs, model: Path, cfg: TrainConfig, out, **kw) -> dict:
    """Train on ``pairs`` with the pairs of every 9th synthetic chain held out (split by chain)."""
    return train_completer(pairs, str(model), cfg, out, eval_pairs=HELD, seed=SEED, **kw)


HELD = make_training_pairs(synthetic_chains()[::9])
TRAIN = make_training_pairs([c for i, c in enumerate(synthetic_chains()) if i % 9])


# ----------------------------------------------------------------------------------------------
# pairs


def test_pairs_both_directions_and_root():
    chain = ["bird", "blue bird", "blue bird sitting on top of branch",
             "A blue bird sitting on the top of a branch."]
    pairs = make_training_pairs([chain])
    assert pairs == [
        ("generalize: A blue bird sitting on the top of a branch.",
         "bird => blue bird => blue bird sitting on top of branch"),
        ("specify: ", "bird"),
        ("specify: bird", "blue bird"),
        ("specify: blue bird", "blue bird sitting on top of branch"),
        ("specify: blue bird sitting on top of branch",
         "A blue bird sitting on the top of a branch."),
    ]
    assert split_tiers(pairs[0][1]) == chain[:3]
    no_cap = make_training_pairs([chain], PairFormat(include_caption_target=False,
                                                     include_root=False))
    assert [s for s, _ in no_cap] == ["generalize: A blue bird sitting on the top of a branch.",
                                      "specify: bird", "specify: blue bird"]
    custom = make_training_pairs([chain], PairFormat(generalize_prefix="up: ", specify_prefix="down: "))
    assert custom[0] == ("up: A blue bird sitting on the top of a branch.",
                         "bird => blue bird => blue bird sitting on top of branch")
    assert custom[1] == ("down: ", "bird")


def test_pairs_reject_bad_chain():
    with pytest.raises(ValueError, match="chain 1"):
        make_training_pairs([["a", "b", "c", "d"], ["a", "b", "c"]])
    with pytest.raises(ValueError, match="separator"):
        make_training_pairs([["a", "b => c", "c", "d"]])


def test_split_tiers():
    assert split_tiers(" a =>b  =>  c d ") == ["a", "b", "c d"]
    assert split_tiers("a => => b") == ["a", "", "b"]   # empty parts kept, so a check can name them
    assert split_tiers("") == [""]


# ----------------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="session")
def trained(tiny_t5, tmp_path_factory):
    pairs = TRAIN
    cfg = small_cfg(max_steps=40, save_every_steps=0)
    calls = []
    out = tmp_path_factory.mktemp("trained")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = train(pairs, tiny_t5, cfg, out, progress=lambda d, t: calls.append((d, t)))
    finally:
        torch.set_num_threads(n)
    return {"metrics": m, "calls": calls, "out": out, "cfg": cfg, "pairs": pairs}


def test_training_reduces_loss_and_saves(trained, tiny_t5):
    m, calls, pairs, cfg = trained["metrics"], trained["calls"], trained["pairs"], trained["cfg"]
    assert calls[-1] == (40, 40) and len(calls) == 40
    assert m["steps"] == 40
    assert (m["train_pairs"], m["eval_pairs"]) == (len(pairs), len(HELD)) and m["pairs"] == len(pairs) + len(HELD)
    assert m["eval_loss"] < m["eval_loss_initial"]
    assert m["train_loss_last"] < m["train_loss_first"]
    model_dir = trained["out"] / "model"
    card = (model_dir / "README.md").read_text()
    assert str(tiny_t5) in card and "optimizer steps | 40" in card
    assert json.loads((model_dir / "training_metrics.json").read_text())["steps"] == 40
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.pad_token_id == 0
    # rerun of a finished run returns the stored metrics without training
    again = train(pairs, tiny_t5, cfg, trained["out"])
    assert again["fingerprint"] == m["fingerprint"] and again["steps"] == 40


def _train_child(model: str, out: str, sleep: float) -> None:  # runs in a subprocess
    torch.set_num_threads(1)
    pairs = TRAIN

    def slow(done, total):
        time.sleep(sleep)

    train(pairs, Path(model), small_cfg(), out, progress=slow)


def test_resume_after_sigkill_matches_uninterrupted(tiny_t5, tmp_path):
    pairs = TRAIN
    cfg = small_cfg()  # 12 steps, checkpoint every 4, dropout on (RNG state matters)

    ref = train(pairs, tiny_t5, cfg, tmp_path / "ref")
    ref_hash = state_hash(tmp_path / "ref" / "model")

    run = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); sys.path.insert(0, {str(ROOT)!r});"
            f"from test_completer import _train_child;"
            f"_train_child({str(tiny_t5)!r}, {str(run)!r}, 0.4)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        ck = run / "checkpoints"
        while time.time() < deadline:
            if any(p.name.startswith("step-") for p in (ck.iterdir() if ck.is_dir() else [])):
                break
            if proc.poll() is not None:
                pytest.fail(f"training subprocess exited early with {proc.returncode}")
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared within 60 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model").exists()
    steps_done = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    assert 4 <= steps_done < 12
    other = tmp_path / "other"
    shutil.copytree(run / "checkpoints", other / "checkpoints")

    calls = []
    resumed = train(pairs, tiny_t5, cfg, run, progress=lambda d, t: calls.append(d))
    assert calls[0] == steps_done + 1  # really resumed, did not restart
    assert resumed["steps"] == 12
    assert state_hash(run / "model") == ref_hash
    assert resumed["eval_loss"] == pytest.approx(ref["eval_loss"], abs=0)

    assert not (run / "checkpoints").exists()            # a finished model needs no checkpoints
    # a checkpoint from other data is refused, not silently mixed in
    with pytest.raises(ValueError, match="fingerprint"):
        train(pairs[:-5], tiny_t5, cfg, other)


def test_lora_trains_and_saves_merged(tiny_t5, tmp_path):
    pairs = TRAIN
    cfg = small_cfg(lora=True, lora_r=4, lora_alpha=8, lr=1e-2, max_steps=15, save_every_steps=0)
    m = train(pairs, tiny_t5, cfg, tmp_path / "lora")
    assert m["eval_loss"] < m["eval_loss_initial"]
    model_dir = tmp_path / "lora" / "model"
    assert not (model_dir / "adapter_config.json").exists()
    from transformers import AutoModelForSeq2SeqLM

    merged = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5)
    sd_m, sd_b = merged.state_dict(), base.state_dict()
    assert set(sd_m) == set(sd_b)  # no lora_A / base_layer keys left
    changed = [k for k in sd_b if not torch.equal(sd_m[k], sd_b[k])]
    assert changed and all(k.endswith(("q.weight", "k.weight", "v.weight", "o.weight"))
                           for k in changed)


# ----------------------------------------------------------------------------------------------
# generation


def test_generation_order_restored_under_bucketing(trained):
    comp = Completer(trained["out"] / "model", GenConfig(max_new_tokens=12, batch_size=3, device="cpu"))
    assert comp.max_source_len == 48 and comp.format == PairFormat()   # as distill saved them
    chains = synthetic_chains()
    caps = [c[3] for c in chains[::3]] + ["A dog.", "A red bus driving down a road", "bird"]
    batched = comp.generalize(caps)
    single = [comp.generalize([c], batch_size=1)[0] for c in caps]
    assert batched == single
    assert len(set(batched)) > 1  # the check is not vacuous

    tiers = ["", "animal", "red bird", "blue car parked on the street"]
    beams = comp.specify(tiers, n=2, sample=False)
    assert [len(b) for b in beams] == [2, 2, 2, 2]
    assert [comp.specify([t], n=2, sample=False, batch_size=1)[0] for t in tiers] == beams

    s1 = comp.specify(tiers, n=3, sample=True, seed=5)
    s2 = comp.specify(tiers, n=3, sample=True, seed=5)
    assert s1 == s2 and all(len(x) == 3 for x in s1)

    seen = []
    comp.generalize(caps, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(caps), len(caps)) and len(seen) == -(-len(caps) // 3)
    assert comp.generalize([]) == []
