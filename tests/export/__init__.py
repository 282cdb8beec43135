"""Tiny Hugging Face checkpoints for the export tests, built offline and seeded: a Llama
causal LM with a byte-level BPE tokenizer trained on a few sentences, and a BERT encoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VOCAB = 320
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = ["the quick brown fox jumps over the lazy dog and the cat",
        "hello world, this is a tiny tokenizer for tiny models", "mixed precision layers"] * 20


def save_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer (300 tokens, 3 special) saved as transformers files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=SPECIAL[0], bos_token=SPECIAL[1],
                            eos_token=SPECIAL[2]).save_pretrained(folder)


def tiny_llama(folder: Path, *, tie: bool = False, seed: int = 0) -> nn.Module:
    """A 2-block Llama (hidden 64, 4 heads, 2 k/v heads, vocab 320) saved to `folder`
    with its tokenizer, and loaded back from it (so its config names the folder)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                         max_position_embeddings=128, tie_word_embeddings=tie,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    save_tokenizer(folder)
    return LlamaForCausalLM.from_pretrained(folder).eval()


def tiny_bert(folder: Path, seed: int = 0) -> nn.Module:
    """A 2-layer BERT encoder (hidden 64, vocab 256) saved to `folder` and loaded back."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, vocab_size=256, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return BertModel.from_pretrained(folder).eval()


def linear_names(model: nn.Module, *, skip: tuple[str, ...] = ("lm_head",)) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip]


def mixed_bits(names: list[str], widths: tuple[int, ...], *, every_float: int = 4
               ) -> dict[str, int]:
    """Widths in turn, with every `every_float`-th layer left float."""
    return {n: widths[i % len(widths)] for i, n in enumerate(names)
            if (i + 1) % every_float}
