"""Every preset loads, and the tokenizers its models need work on this machine: the small preset's
cross-encoder/nli-deberta-v3-xsmall, T5 and Llama 2 use sentencepiece models (and protobuf to turn
one into a fast tokenizer). The hub cannot be reached here, so a sentencepiece model is trained
locally and loaded through the same tokenizer classes."""

import pytest

from pipeline.config import list_presets, load_config

# model id (as in the presets) -> (tokenizer class from_pretrained picks, the vocab file its hub repo has)
TOKENIZERS = {
    "cross-encoder/nli-deberta-v3-xsmall": ("DebertaV2Tokenizer", "spm.model"),    # no tokenizer.json there
    "google/flan-t5-small": ("T5Tokenizer", "spiece.model"),
    "google/flan-t5-base": ("T5Tokenizer", "spiece.model"),
    "meta-llama/Llama-2-13b-chat-hf": ("LlamaTokenizer", "tokenizer.model"),
    "roberta-large-mnli": ("RobertaTokenizer", None),
    "Qwen/Qwen2.5-0.5B-Instruct": ("Qwen2Tokenizer", None),
}


def preset_models():
    out = set()
    for name in list_presets():
        m = load_config(name).models
        out |= {m.generator.model, m.nli.model, m.completer_base.model}
    return sorted(x for x in out if not x.startswith("tiny/"))


def test_every_preset_loads_and_its_models_are_known():
    assert {"tiny", "small", "paper"} <= set(list_presets())
    assert set(preset_models()) <= set(TOKENIZERS), set(preset_models()) - set(TOKENIZERS)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(f"a blue bird sitting on a branch number {i}" for i in range(200)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "m"), vocab_size=40,
                                   character_coverage=1.0)
    return d / "m.model"


@pytest.mark.parametrize("model", preset_models())
def test_tokenizer_classes_of_each_model_work(model, spm_model, tmp_path):
    import shutil

    import transformers

    name, vocab = TOKENIZERS[model]
    cls = getattr(transformers, name)              # importable, its backend present
    if vocab:                                      # loads the way the hub folder would (converted to fast)
        shutil.copy(spm_model, tmp_path / vocab)
        tok = cls.from_pretrained(str(tmp_path))
        assert tok.tokenize("a blue bird") and tok("a blue bird")["input_ids"], name
