"""Tokenizers trained locally (no hub): the tiny models, the tests' random models and the benches
all build theirs here, so a T5-, BERT- or Llama-style tokenizer is made one way."""

from __future__ import annotations

from typing import Literal, Sequence

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]


def train_bpe(texts: Sequence[str], vocab_size: int, special_tokens: list[str], *,
              pre: Literal["byte", "metaspace"] = "byte", unk_token: str | None = None, min_frequency: int = 0):
    """A raw `tokenizers.Tokenizer` with BPE trained on `texts` (byte-level: Llama/GPT style;
    metaspace: SentencePiece/T5 style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=unk_token))
    if pre == "byte":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def train_wordpiece(texts: Sequence[str], vocab_size: int):
    """A raw lower-casing BERT WordPiece tokenizer with the BERT specials."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(texts), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS,
                                                                   show_progress=False))
    return tok


def t5_tokenizer(raw, model_max_length: int = 512):
    """`raw` (with the T5 specials) as a T5-style fast tokenizer: `$A </s>`, pad 0 / eos 1 when trained so."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    raw.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                            special_tokens=[("</s>", raw.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)


def bert_tokenizer(raw, model_max_length: int = 512):
    """`raw` (with the BERT specials) as a cross-encoder tokenizer: `[CLS] premise [SEP] hypothesis [SEP]`."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    raw.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
