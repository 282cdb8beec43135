"""`export_gguf`: an engine-quantized Llama-family causal LM as one GGUF file for llama.cpp.

Each quantized Linear becomes one ggml block type holding the engine's own codes (blocks of
32 weights along the input, one fp16 scale `d` each):

    Q4_0 / Q5_0   symmetric:  w = (q - 2**(bits-1)) * d   (the engine's codes 1..qmax as is)
    Q4_1 / Q5_1   asymmetric: w = q * d + m, with m = -zero * scale in fp16
    Q8_0          symmetric:  w = int8(q - 128) * d

so the file dequantizes to the engine's weights up to fp16 rounding of `d` and `m`. Float
matrices (embeddings, the head, float layers) are F16 (or F32), norms F32. Tensor names are
llama.cpp's (`blk.N.attn_q.weight`, ...), taken from the `gguf` package's name map, and the
q/k projections are permuted as llama.cpp's converter does (its rotary embedding pairs
dimensions within a head differently from transformers'). The metadata holds the
`llama.*` hyper-parameters and, when the model's folder has a byte-level BPE
`tokenizer.json`, the `tokenizer.ggml.*` vocabulary, merges and special tokens.

Before the file is published it is read back with `gguf.GGUFReader`, every tensor is
dequantized with `gguf.quants.dequantize`, un-permuted and compared with what the engine
computed (quantized layers) or the float model holds (the rest).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import engine
from allocator.export._common import (
    FP16_ABS,
    FP16_REL,
    ExportCheckError,
    ExportReport,
    LayerExport,
    UnsupportedExportError,
    atomic_output,
    compare_weight,
    quantized_layers_of,
    tree_size_bytes,
)
from allocator.export._targets import GGUF_BLOCK, GgufTarget, LayerScheme
from engine import BitConfig, LayerSpec, MissingDependencyError

FORMAT = "gguf"
FLOAT_TYPES = ("f16", "f32")
_TARGET = GgufTarget()


@dataclass
class _Tensor:
    """One tensor as written: its data, ggml type, and how to compare it on read-back."""

    gguf_name: str
    hf_name: str
    data: np.ndarray
    ggml_type: Any
    permute_heads: int | None
    layer: Any = None  # the engine's quantized layer, for quantized weights
    codes: torch.Tensor | None = None  # its (N, K) codes, unpacked once for writing and check
    reference: torch.Tensor | None = None  # the float tensor otherwise


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as e:
        raise MissingDependencyError(
            "GGUF export needs the `gguf` package (the `export` extra: pip install "
            "'allocator[export]').") from e
    return gguf


def _llama(model: nn.Module) -> Any:
    """The transformers config of a Llama-family causal LM, or a clear refusal."""
    config = getattr(model, "config", None)
    if (config is None or getattr(config, "model_type", None) != "llama"
            or not isinstance(getattr(model, "lm_head", None), nn.Linear)):
        kind = getattr(config, "model_type", None) or type(model).__name__
        raise UnsupportedExportError(
            f"GGUF export writes Llama-family causal LMs (a transformers LlamaForCausalLM, "
            f"e.g. smollm2-135m); this model is {kind!r}.")
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None)
    rope_type = (rope or {}).get("rope_type", (rope or {}).get("type", "default"))
    if rope_type not in (None, "default"):
        raise UnsupportedExportError(
            f"rope scaling {rope_type!r} is not written by this GGUF export (llama.cpp needs "
            "its frequency factors); only plain RoPE models are supported.")
    return config


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _head_dim(config: Any) -> int:
    return int(getattr(config, "head_dim", None)
               or config.hidden_size // config.num_attention_heads)


def _permutation(rows: int, heads: int) -> np.ndarray:
    """Row order of llama.cpp's q/k layout: within each head, the two rotary halves are
    interleaved (new row i is old row perm[i])."""
    if rows % (2 * heads):
        raise UnsupportedExportError(f"{rows} q/k rows do not split into {heads} heads of "
                                     "two rotary halves.")
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


def _heads_of(gguf_name: str, heads: int, heads_kv: int) -> int | None:
    """Heads of a q (all) or k (key/value heads) tensor, whose rows llama.cpp permutes."""
    if ".attn_q." in gguf_name:
        return heads
    return heads_kv if ".attn_k." in gguf_name else None


def _fp16_bytes(values: torch.Tensor) -> np.ndarray:
    return values.to(torch.float16).numpy().view(np.uint8).reshape(*values.shape, 2)


def encode_blocks(layer: Any, codes: torch.Tensor | None = None) -> tuple[np.ndarray, str]:
    """The engine layer's codes (its (N, K) uint8 codes, unpacked here when not given) and
    scales as ggml blocks: (N, K/32 * block bytes) uint8, and the ggml type's name."""
    scheme = layer.scheme
    type_name, block_bytes = _TARGET.ggml_type("?", LayerScheme(scheme.bits, scheme.symmetric,
                                                               scheme.group_size))
    if codes is None:
        codes = layer.quantized_weight().codes()
    n, k = codes.shape
    blocks = codes.to(torch.uint8).reshape(n, k // GGUF_BLOCK, GGUF_BLOCK).numpy()
    scales = layer.scales.float()
    parts = [_fp16_bytes(scales)]
    if not scheme.symmetric:  # stored minimum m = -zero * scale
        parts.append(_fp16_bytes(-layer.zeros.float() * scales))
    if scheme.bits == 8:
        qs = (blocks.astype(np.int16) - scheme.offset).astype(np.int8).view(np.uint8)
    else:
        low = blocks & 0x0F
        qs = low[..., :16] | (low[..., 16:] << 4)
        if scheme.bits == 5:  # the 5th bit of weight j at bit j of a little-endian uint32
            parts.append(np.packbits((blocks >> 4) & 1, axis=-1, bitorder="little"))
    parts.append(qs)
    data = np.concatenate(parts, axis=-1)
    assert data.shape[-1] == block_bytes
    return np.ascontiguousarray(data.reshape(n, -1)), type_name


def _tokenizer_folder(config: Any, given: str | Path | None) -> Path | None:
    if given is not None:
        return Path(given)
    origin = getattr(config, "_name_or_path", "") or ""
    return Path(origin) if origin and Path(origin).is_dir() else None


def _add_tokenizer(writer: Any, gguf: Any, folder: Path | None, n_vocab: int,
                   pre: str | None) -> str:
    """Writes the `tokenizer.ggml.*` keys of a byte-level BPE tokenizer ("gpt2" in
    llama.cpp's terms); "no_vocab" when the folder has no tokenizer."""
    path = folder / "tokenizer.json" if folder is not None else None
    if path is None or not path.is_file():
        writer.add_tokenizer_model("no_vocab")
        return "no_vocab"
    doc = json.loads(path.read_text(encoding="utf-8"))
    model = doc.get("model") or {}
    decoder = (doc.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder != "ByteLevel":
        raise UnsupportedExportError(
            f"`{path}` is a {model.get('type')!r} tokenizer (decoder {decoder!r}); this GGUF "
            "export writes byte-level BPE vocabularies only.")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {int(t["id"]): t for t in doc.get("added_tokens") or []}
    for tid, t in added.items():
        vocab[t["content"]] = tid
    by_id = {tid: tok for tok, tid in vocab.items()}
    if by_id and max(by_id) >= n_vocab:
        raise UnsupportedExportError(f"the tokenizer has token id {max(by_id)} but the model "
                                     f"embeds {n_vocab} tokens.")
    tokens, types = [], []
    for tid in range(n_vocab):
        if tid not in by_id:
            tokens.append(f"[PAD{tid}]")
            types.append(gguf.TokenType.UNUSED)
        elif tid in added:
            tokens.append(by_id[tid])
            types.append(gguf.TokenType.CONTROL if added[tid].get("special")
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[tid])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
    return "gpt2"


def _add_hparams(writer: Any, config: Any, name: str, file_type: int) -> None:
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    heads_kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    writer.add_head_count_kv(int(heads_kv))
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(file_type)


def _plan(model: nn.Module, config: Any, layers: Mapping[str, Any], float_type: str,
          gguf: Any) -> list[_Tensor]:
    """Every tensor to write, in the float model's order, with its ggml name and type."""
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(config.num_hidden_layers))
    heads = int(config.num_attention_heads)
    heads_kv = int(getattr(config, "num_key_value_heads", None) or heads)
    f_type = gguf.GGMLQuantizationType.F16 if float_type == "f16" else \
        gguf.GGMLQuantizationType.F32
    tied = (bool(getattr(config, "tie_word_embeddings", False)) and "lm_head" not in layers)
    out: list[_Tensor] = []
    for hf_name, value in model.state_dict().items():
        module_name, _, leaf = hf_name.rpartition(".")
        if tied and module_name == "lm_head":
            continue  # llama.cpp uses token_embd for a missing output
        gguf_name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedExportError(f"tensor {hf_name!r} has no llama.cpp name; this "
                                         "model is not a plain Llama.")
        heads_of = _heads_of(gguf_name, heads, heads_kv)
        layer = layers.get(module_name)
        if layer is not None and leaf == "weight":
            codes = layer.quantized_weight().codes()
            data, type_name = encode_blocks(layer, codes)
            out.append(_Tensor(gguf_name, hf_name, data, gguf.GGMLQuantizationType[type_name],
                               heads_of, layer=layer, codes=codes))
        else:
            tensor = value.detach().float().cpu()
            if layer is not None and leaf == "bias":
                if layer.bias is None:
                    continue
                tensor = layer.bias.detach().float().cpu()
            kind = f_type if tensor.dim() >= 2 else gguf.GGMLQuantizationType.F32
            dtype = np.float16 if kind == gguf.GGMLQuantizationType.F16 else np.float32
            out.append(_Tensor(gguf_name, hf_name, tensor.numpy().astype(dtype), kind,
                               heads_of, reference=tensor))
    names = {t.hf_name for t in out}
    for name, layer in layers.items():  # biases bias correction added to bias-free layers
        if layer.bias is not None and f"{name}.bias" not in names:
            gguf_name = tmap.get_name(f"{name}.bias", try_suffixes=(".bias",))
            if gguf_name is None:
                raise UnsupportedExportError(f"layer {name!r} has no llama.cpp bias name.")
            heads_of = _heads_of(gguf_name, heads, heads_kv)
            tensor = layer.bias.detach().float().cpu()
            out.append(_Tensor(gguf_name, f"{name}.bias", tensor.numpy().astype(np.float32),
                               gguf.GGMLQuantizationType.F32, heads_of, reference=tensor))
    for t in out:
        if t.permute_heads is not None:
            t.data = np.ascontiguousarray(t.data[_permutation(t.data.shape[0],
                                                              t.permute_heads)])
    return out


def _file_type(tensors: list[_Tensor], gguf: Any, float_type: str) -> int:
    """`general.file_type`: the ggml type most of the quantized weights use."""
    counts: dict[str, int] = {}
    for t in tensors:
        if t.layer is not None:
            counts[t.ggml_type.name] = counts.get(t.ggml_type.name, 0) + t.layer.scales.numel()
    if not counts:
        return int(gguf.LlamaFileType.MOSTLY_F16 if float_type == "f16"
                   else gguf.LlamaFileType.ALL_F32)
    top = max(counts, key=lambda k: counts[k])
    return int(gguf.LlamaFileType[f"MOSTLY_{top}"])


def _check(path: Path, tensors: list[_Tensor], config: Any, gguf: Any) -> dict[str, Any]:
    """Reads the file back with gguf's reader and dequantizer and compares every tensor."""
    reader = gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    blocks = reader.fields["llama.block_count"].contents()
    if arch != "llama" or int(blocks) != int(config.num_hidden_layers):
        raise ExportCheckError(f"the file reads back as architecture {arch!r} with {blocks} "
                               "blocks.")
    written = {t.name: t for t in reader.tensors}
    if set(written) != {t.gguf_name for t in tensors}:
        missing = sorted({t.gguf_name for t in tensors} - set(written))
        raise ExportCheckError(f"the file reads back without tensor(s) {missing[:5]}.")
    max_diff = max_ratio = float_diff = 0.0
    for t in tensors:
        got = written[t.gguf_name]
        what = f"tensor {t.gguf_name!r} (layer {t.hf_name!r})"
        if got.tensor_type != t.ggml_type:
            raise ExportCheckError(f"{what} reads back as {got.tensor_type.name}, written as "
                                   f"{t.ggml_type.name}.")
        values = np.asarray(gguf.quants.dequantize(got.data, got.tensor_type), dtype=np.float32)
        if t.permute_heads is not None:
            inverse = np.argsort(_permutation(values.shape[0], t.permute_heads))
            values = values[inverse]
        decoded = torch.from_numpy(np.array(values, dtype=np.float32, copy=True))
        if t.layer is not None:
            layer = t.layer
            reference = None if t.codes is None else engine.dequantize_codes(
                t.codes, layer.scales, layer.zeros, layer.scheme)  # = dequantized_weight()
            diff, ratio = compare_weight(what, decoded, layer, reference)
            max_diff = max(max_diff, diff)
        else:
            assert t.reference is not None
            reference = t.reference
            decoded = decoded.reshape(reference.shape)
            err = (decoded - reference).abs()
            tol = reference.abs() * FP16_REL + FP16_ABS
            if t.ggml_type == gguf.GGMLQuantizationType.F32:
                tol = torch.zeros_like(tol)
            ratio = float((err / tol.clamp(min=1e-30)).max()) if err.numel() else 0.0
            diff = float(err.max()) if err.numel() else 0.0
            if not bool((err <= tol).all()):
                raise ExportCheckError(f"{what} reads back off by {diff:.3g}, more than "
                                       f"{t.ggml_type.name} rounding allows.")
            float_diff = max(float_diff, diff)
        max_ratio = max(max_ratio, min(ratio, 1.0))
    return {"library": f"gguf {_version('gguf')}", "passed": True,
            "tensors_checked": len(tensors),
            "layers_checked": sum(t.layer is not None for t in tensors),
            "max_abs_diff": max_diff, "float_max_abs_diff": float_diff,
            "max_tolerance_ratio": max_ratio}


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def export_gguf(
    model: nn.Module,
    qmodel: nn.Module,
    config: BitConfig,
    out: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    tokenizer_pre: str | None = None,
    float_type: str = "f16",
    name: str | None = None,
) -> ExportReport:
    """Writes an engine-quantized Llama-family causal LM as one GGUF file for llama.cpp and
    checks it with the `gguf` package's reader before publishing it.

    Args:
        model: The float `LlamaForCausalLM` (transformers).
        qmodel: `engine.apply(model, config, ...)`, quantized with the gguf target's
            settings (`target_settings("gguf", ...)`: blocks of 32, 8-bit symmetric).
        config: The BitConfig `qmodel` was quantized with (4, 5 and 8 bits only).
        out: The `.gguf` file to write (replaced atomically if it exists).
        tokenizer_dir: Folder with the model's `tokenizer.json` (byte-level BPE); defaults
            to the model config's `_name_or_path` when that is a folder. Without one the
            file says "no_vocab" (loadable, but llama-cli cannot tokenize text).
        tokenizer_pre: llama.cpp's pre-tokenizer name (`tokenizer.ggml.pre`, e.g. "smollm"
            for SmolLM2); left out when None (llama.cpp then uses its default).
        float_type: "f16" (default) or "f32" for float matrices; norms are always F32.
        name: `general.name`; the model config's name when None.

    Returns:
        The `ExportReport` (per-layer ggml types and bytes, the check's figures).

    Raises:
        UnsupportedExportError: Not a plain Llama causal LM, or a layer whose width, scheme
            or shape no ggml block type holds exactly (nothing written).
        UnknownLayerError: `config` names a layer `qmodel` did not quantize.
        ExportCheckError: A tensor reads back differently from the engine's (named).

    Example:
        >>> settings = target_settings("gguf", BitConfig(bits=bits))
        >>> export_gguf(model, engine.apply(model, settings), settings, "model.gguf")
    """
    start = time.perf_counter()
    gguf = _gguf()
    if float_type not in FLOAT_TYPES:
        raise UnsupportedExportError(f"`float_type` must be one of {FLOAT_TYPES}, got "
                                     f"{float_type!r}.")
    hf_config = _llama(model)
    layers = quantized_layers_of(qmodel, config)
    for lname, layer in layers.items():
        kind = "linear" if isinstance(layer, engine.QuantLinear) else "conv2d"
        spec = LayerSpec(lname, kind, tuple(layer.weight_shape),
                         int(layer.out_features * layer.reduction_size), 0)
        _TARGET.check_layer(spec, layer.bits, config)
        s = layer.scheme
        _TARGET.ggml_type(lname, LayerScheme(s.bits, s.symmetric, s.group_size))
        if getattr(layer, "act_smoothing", None) is not None:
            raise UnsupportedExportError(f"layer {lname!r} carries SmoothQuant factors, which "
                                         "GGUF cannot hold; quantize weight-only.")
    tensors = _plan(model, hf_config, layers, float_type, gguf)
    file_type = _file_type(tensors, gguf, float_type)
    title = name or str(getattr(hf_config, "_name_or_path", "") or "model").rstrip("/")
    title = Path(title).name or "model"
    with atomic_output(out, folder=False) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        try:
            _add_hparams(writer, hf_config, title, file_type)
            vocab = _add_tokenizer(writer, gguf, _tokenizer_folder(hf_config, tokenizer_dir),
                                   int(hf_config.vocab_size), tokenizer_pre)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            for t in tensors:
                writer.add_tensor(t.gguf_name, t.data, raw_dtype=t.ggml_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        check = _check(tmp, tensors, hf_config, gguf)
        size = tree_size_bytes(tmp)
    report_layers = {
        t.hf_name.rpartition(".")[0]: LayerExport(t.layer.bits, t.layer.scheme.label,
                                                  t.ggml_type.name, int(t.data.nbytes))
        for t in tensors if t.layer is not None}
    notes = []
    if vocab == "no_vocab":
        notes.append("no tokenizer.json was found (pass `tokenizer_dir`): the file has no "
                     "vocabulary, so llama-cli cannot tokenize text with it.")
    elif tokenizer_pre is None:
        notes.append("`tokenizer.ggml.pre` not written: llama.cpp uses its default "
                     "pre-tokenizer (pass `tokenizer_pre`, e.g. 'smollm').")
    return ExportReport(FORMAT, Path(out), size, report_layers, check, tuple(notes),
                        {"tokenizer": vocab, "file_type": file_type,
                         "tensors": len(tensors), "export_s": time.perf_counter() - start})
