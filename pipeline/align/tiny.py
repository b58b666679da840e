"""A tiny random CLIP built offline (tests only): small dims, a BPE tokenizer trained on the fly,
default CLIP image preprocessing at 32 px. No hub access."""

from __future__ import annotations

import torch

from pipeline.align.encoders import ClipEncoder

_CORPUS = ["a photo of a bird", "blue bird sitting on a branch", "a table with plates and food",
           "man and woman holding utensils", "animal", "dog running on the grass", "a red car",
           "vehicle parked in front of a house", "people playing a sport", "cat sleeping on a sofa"]


def build_tiny_clip(seed: int = 0, corpus: list[str] | None = None) -> ClipEncoder:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]  # ids 0..3
    tok.train_from_iterator(corpus or _CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=specials,
                                                                   show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>", model_max_length=32)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return ClipEncoder(model, hf_tok, ip, max_length=32)
