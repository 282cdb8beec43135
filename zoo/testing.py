"""Tiny random Hugging Face checkpoints for tests and examples, made offline in seconds.

`tiny_checkpoint("llama", folder)` writes a randomly initialised model of that
architecture with `save_pretrained` (safetensors) and a small byte-level BPE tokenizer
trained here on the built-in text, so `hf:<folder>` loads like any downloaded checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHITECTURES = ("llama", "gpt2", "bert", "bert-classifier", "vit")
VOCAB = 384


def _tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from zoo._hf_data import builtin_texts

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, show_progress=False,
                                  special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(builtin_texts()[:200], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(folder))
    return fast


def tiny_checkpoint(arch: str, folder: str | Path, *, seed: int = 0) -> Path:
    """Writes a tiny random checkpoint of `arch` (one of `ARCHITECTURES`) into `folder`."""
    import torch
    import transformers as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    common = {"vocab_size": VOCAB, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 3}
    if arch == "llama":
        model: Any = tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
            **common))
    elif arch == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4,
                                                 n_positions=512, **common))
    elif arch in ("bert", "bert-classifier"):
        config = tf.BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=512,
                               num_labels=3, **common)
        model = (tf.BertForSequenceClassification(config) if arch == "bert-classifier"
                 else tf.BertModel(config, add_pooling_layer=False))
    elif arch == "vit":
        model = tf.ViTForImageClassification(tf.ViTConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, num_labels=5))
    else:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    model.eval().save_pretrained(str(folder), safe_serialization=True)
    if arch != "vit":
        _tokenizer(folder)
    return folder
