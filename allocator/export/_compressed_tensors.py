"""`export_compressed_tensors`: an engine-quantized Hugging Face model as a compressed-tensors
checkpoint folder, the format vLLM and SGLang load per-layer mixed precision from.

The folder holds `config.json` (the model's own config plus a `quantization_config` whose
`config_groups` each name one scheme and the exact layers that use it, and `ignore` for the
float Linear layers), `model.safetensors` and the source's tokenizer files. Layers are
stored with the engine's own integers, scales and zero points (nothing is re-quantized):

- weight-only 4- and 8-bit layers as `pack-quantized`: `weight_packed` (the unsigned codes
  as a dense little-endian bit stream, 32 codes per `bits` int32 words, along K),
  `weight_scale` (float16, one per group or channel), `weight_zero_point` (asymmetric
  only: the unsigned zero points packed the same way along N) and `weight_shape`;
- 8-bit layers of W8A8 configs as `int-quantized`: the int8 weight, a float16 scale per
  channel, and dynamic per-token int8 input activations (the engine's W8A8 arithmetic).

The library's signed grid is the engine's unsigned one shifted by 2**(bits-1) (its packer
adds that offset back), so codes and zero points are stored as they are. Before the folder
is published the `compressed-tensors` library parses its `quantization_config` and
decompresses every quantized layer from the written file; each must equal the engine's
dequantized weight to fp16 rounding.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

import engine
from allocator.export._common import (
    ExportCheckError,
    ExportReport,
    LayerExport,
    UnsupportedExportError,
    atomic_output,
    check_float_bias,
    compare_weight,
    quantized_layers_of,
    tree_size_bytes,
)
from allocator.export._targets import CompressedTensorsTarget
from engine import BitConfig, LayerSpec, MissingDependencyError

FORMAT = "compressed-tensors"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Projections a runtime fuses into one matmul (vLLM's packed modules), which then need one
# scheme: q/k/v (Llama, BERT names) and gate/up.
FUSED: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"),
                                      ("gate_proj", "up_proj"))
_TARGET = CompressedTensorsTarget()


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes (R, C) -> int32 words (R, ceil(C * bits / 32)): code i of a row sits
    at bit i * bits of the row's little-endian bit stream, 32 codes filling `bits` words."""
    rows, cols = codes.shape
    padded = -(-cols // 32) * 32
    if bits in (4, 8) and sys.byteorder == "little":  # whole bytes: reinterpret, no shifts
        raw = torch.zeros(rows, padded, dtype=torch.uint8)
        raw[:, :cols] = codes.to(torch.uint8)
        if bits == 4:  # code 2j in the low nibble of byte j, code 2j+1 in the high one
            raw = raw[:, 0::2] | (raw[:, 1::2] << 4)
        words = raw.contiguous().view(torch.int32)
        return words[:, : -(-cols * bits // 32)].contiguous()
    values = torch.zeros(rows, padded, dtype=torch.int64)
    values[:, :cols] = codes.to(torch.int64)
    values = values.reshape(rows, padded // 32, 32)
    words = torch.zeros(rows, padded // 32, bits, dtype=torch.int64)
    for i in range(32):
        start = i * bits
        word, shift = divmod(start, 32)
        words[:, :, word] |= (values[:, :, i] << shift) & 0xFFFFFFFF
        if shift + bits > 32:  # the code straddles two words
            words[:, :, word + 1] |= values[:, :, i] >> (32 - shift)
    flat = words.reshape(rows, -1)[:, : -(-cols * bits // 32)]
    flat = torch.where(flat >= 2**31, flat - 2**32, flat)  # two's complement int32
    return flat.to(torch.int32).contiguous()


def _hf_root(model: nn.Module) -> tuple[nn.Module, str]:
    """The transformers model inside `model` (itself, or one unique submodule) and the
    name prefix of its modules in `model`."""
    try:
        from transformers import PreTrainedModel
    except ImportError as e:
        raise MissingDependencyError(
            "compressed-tensors export needs transformers (the `models` extra).") from e
    if isinstance(model, PreTrainedModel):
        return model, ""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, PreTrainedModel)]
    outer = [(n, m) for n, m in found
             if not any(n != o and n.startswith(o + ".") for o, _ in found)]
    if len(outer) != 1:
        what = ("has no Hugging Face transformers model inside" if not outer
                else f"holds {len(outer)} transformers models ({[n for n, _ in outer]})")
        raise UnsupportedExportError(
            f"a compressed-tensors checkpoint is a Hugging Face model folder whose config.json "
            f"names its architecture; this model ({type(model).__name__}) {what}, so no "
            "runtime could load it. Export it as ONNX instead.")
    return outer[0][1], outer[0][0] + "."


def _group_key(layer: Any, w8a8: bool) -> tuple[Any, ...]:
    s = layer.scheme
    return ("int-quantized" if w8a8 else "pack-quantized", s.bits, s.symmetric, s.group_size)


def _scheme_dict(key: tuple[Any, ...], targets: list[str]) -> dict[str, Any]:
    fmt, bits, symmetric, group = key
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric,
               "strategy": "channel" if group is None else "group", "group_size": group,
               "dynamic": False, "actorder": None, "block_structure": None,
               "observer": "minmax", "observer_kwargs": {}}
    inputs = None
    if fmt == "int-quantized":  # the engine's W8A8: per-row (token) dynamic symmetric int8
        inputs = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                  "group_size": None, "dynamic": True, "actorder": None,
                  "block_structure": None, "observer": None, "observer_kwargs": {}}
    return {"targets": targets, "weights": weights, "input_activations": inputs,
            "output_activations": None, "format": fmt}


def _layer_tensors(local: str, layer: Any, w8a8: bool) -> dict[str, torch.Tensor]:
    """The stored tensors of one quantized layer (names relative to the HF root)."""
    qweight = layer.quantized_weight()
    codes = qweight.codes()
    scheme = layer.scheme
    scales = layer.scales.to(torch.float16).contiguous()
    if w8a8:
        weight = (codes.to(torch.int16) - scheme.offset).to(torch.int8)
        return {f"{local}.weight": weight.contiguous(), f"{local}.weight_scale": scales}
    out = {f"{local}.weight_packed": pack_int32(codes, scheme.bits),
           f"{local}.weight_scale": scales,
           f"{local}.weight_shape": torch.tensor(list(codes.shape), dtype=torch.int64)}
    if not scheme.symmetric:
        zeros = layer.zeros.to(torch.int64)  # (N, G) unsigned zero points, packed along N
        out[f"{local}.weight_zero_point"] = pack_int32(zeros.t(), scheme.bits).t().contiguous()
    return out


def _float_state(root: nn.Module, skip: set[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The float tensors of the root, tied copies stored once, in the export's dtype."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in root.state_dict().items():
        if key in skip:
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset())
        if ident in seen and value.numel() > 0:
            continue
        seen.add(ident)
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[key] = tensor.contiguous().clone()
    return out


def _fused_notes(groups: Mapping[str, str]) -> list[str]:
    """Fused projections (one matmul in vLLM) whose members got different schemes."""
    notes = []
    parents: dict[tuple[str, tuple[str, ...]], dict[str, str]] = defaultdict(dict)
    for name, group in groups.items():
        parent, _, leaf = name.rpartition(".")
        for family in FUSED:
            if leaf in family:
                parents[(parent, family)][leaf] = group
    for (parent, family), members in parents.items():
        schemes = {members.get(leaf, "float") for leaf in family}
        if len(schemes) > 1:
            notes.append(f"{parent}.{{{','.join(family)}}} are fused in vLLM but got different "
                         f"schemes ({', '.join(sorted(schemes))}); tie them in the solve.")
    return notes


def _copy_tokenizer(source: Path | None, out: Path) -> list[str]:
    if source is None or not source.is_dir():
        return []
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
            copied.append(name)
    return copied


def _source_dir(root: nn.Module, given: str | Path | None) -> Path | None:
    if given is not None:
        return Path(given)
    origin = getattr(getattr(root, "config", None), "_name_or_path", "") or ""
    return Path(origin) if origin and Path(origin).is_dir() else None


def _library() -> Any:
    """The compressed-tensors package, which reads the checkpoint back."""
    try:
        import compressed_tensors
    except ImportError as e:
        raise MissingDependencyError(
            "compressed-tensors export checks its folder with the `compressed-tensors` "
            "package (the `export` extra: pip install 'allocator[export]').") from e
    return compressed_tensors


def _check_layers(model: nn.Module, layers: Mapping[str, Any], prefix: str,
                  config: BitConfig) -> None:
    """Refuses, before anything is written, a layer the checkpoint cannot hold."""
    float_modules = engine.quantizable_modules(model)
    for name, layer in layers.items():
        if not name.startswith(prefix):
            raise UnsupportedExportError(
                f"layer {name!r} is outside the transformers model `{prefix[:-1]}`, so its "
                "checkpoint cannot hold it.")
        kind = "conv2d" if isinstance(layer, engine.QuantConv2d) else "linear"
        spec = LayerSpec(name, kind, tuple(layer.weight_shape),
                         int(layer.out_features * layer.reduction_size), 0)
        _TARGET.check_layer(spec, layer.bits, config)
        group = layer.scheme.group_size
        if group is not None and layer.reduction_size % group:
            raise UnsupportedExportError(f"layer {name!r}: its {layer.reduction_size} inputs "
                                         f"are not whole groups of {group}.")
        if getattr(layer, "act_smoothing", None) is not None:
            raise UnsupportedExportError(
                f"layer {name!r} carries SmoothQuant factors, which a compressed-tensors "
                "scheme cannot hold; quantize with `smoothing_alpha` null "
                "(`target_settings('compressed-tensors', ...)`).")
        check_float_bias(name, float_modules[name], layer, FORMAT)


def _check(folder: Path, layers: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Reads the folder back with the compressed-tensors library and compares every
    quantized layer's decompressed weight with the engine's."""
    compressed_tensors = _library()
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    doc = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    qconfig = QuantizationConfig.model_validate(doc["quantization_config"])
    state = load_file(str(folder / WEIGHTS_FILE))
    owners: dict[str, Any] = {}
    for group, scheme in qconfig.config_groups.items():
        for target in getattr(scheme, "targets", []):
            if target in owners:
                raise ExportCheckError(f"layer {target!r} is a target of two config groups.")
            owners[target] = (group, scheme)
    max_diff = max_ratio = 0.0
    for name, layer in layers.items():
        local = name[len(prefix):]
        if local not in owners:
            raise ExportCheckError(f"layer {name!r}: no config group of the written "
                                   "quantization_config targets it.")
        if local in (qconfig.ignore or []):
            raise ExportCheckError(f"layer {name!r} is both quantized and ignored.")
        _, scheme = owners[local]
        compressor = BaseCompressor.get_value_from_registry(scheme.format)
        part = {k[len(local) + 1:]: v for k, v in state.items() if k.startswith(local + ".")}
        decoded = compressor.decompress(part, scheme)["weight"]
        diff, ratio = compare_weight(f"layer {name!r} ({scheme.format})", decoded, layer)
        max_diff, max_ratio = max(max_diff, diff), max(max_ratio, ratio)
    extra = sorted(set(owners) - {n[len(prefix):] for n in layers})
    if extra:
        raise ExportCheckError(f"the quantization_config targets layers that were not "
                               f"quantized: {extra[:5]}.")
    return {"library": f"compressed-tensors {compressed_tensors.__version__}", "passed": True,
            "layers_checked": len(layers), "max_abs_diff": max_diff,
            "max_tolerance_ratio": max_ratio}


def export_compressed_tensors(
    model: nn.Module,
    qmodel: nn.Module,
    config: BitConfig,
    out: str | Path,
    *,
    source_dir: str | Path | None = None,
    dtype: str = "float16",
) -> ExportReport:
    """Writes an engine-quantized transformers model as a compressed-tensors checkpoint
    folder and checks it with the compressed-tensors library before publishing it.

    Args:
        model: The float model (a transformers `PreTrainedModel`, or a module holding one,
            such as the zoo's sentence encoder; layer names are taken relative to it).
        qmodel: `engine.apply(model, config, ...)`: its integers, scales, zero points and
            (bias-corrected) biases are what is written.
        config: The BitConfig `qmodel` was quantized with.
        out: A new (or empty) folder; written in a temporary sibling and renamed.
        source_dir: The checkpoint folder to copy tokenizer files from; defaults to the
            model config's `_name_or_path` when that is a folder.
        dtype: Dtype of the float tensors (embeddings, norms, float layers, biases):
            "float16" (default, what vLLM's int4/int8 kernels run), "bfloat16" or
            "float32". Scales are always float16.

    Returns:
        The `ExportReport` (per-layer formats and bytes, the check's figures).

    Raises:
        UnsupportedExportError: Not a transformers model; a conv layer, a width other than
            4 or 8, groups that do not divide a layer's inputs, SmoothQuant factors or a
            bias the architecture has no slot for (nothing written).
        UnknownLayerError: `config` names a layer `qmodel` did not quantize.
        ExportCheckError: The library decompresses a layer differently (named).

    Example:
        >>> qmodel = engine.apply(model, config)
        >>> export_compressed_tensors(model, qmodel, config, "out/llama-ct")
    """
    start = time.perf_counter()
    if dtype not in DTYPES:
        raise UnsupportedExportError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}.")
    _library()  # before any work: the check needs it
    root, prefix = _hf_root(model)
    layers = quantized_layers_of(qmodel, config)
    _check_layers(model, layers, prefix, config)
    torch_dtype = DTYPES[dtype]
    groups: dict[tuple[Any, ...], list[str]] = defaultdict(list)
    tensors: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    layer_group: dict[str, str] = {}
    sizes: dict[str, int] = {}
    formats_of: dict[str, str] = {}
    for name, layer in layers.items():
        local = name[len(prefix):]
        w8a8 = layer.bits == 8 and bool(layer.quantize_activations)
        key = _group_key(layer, w8a8)
        formats_of[name] = key[0]
        groups[key].append(local)
        part = _layer_tensors(local, layer, w8a8)
        sizes[name] = sum(t.numel() * t.element_size() for t in part.values())
        tensors.update(part)
        if layer.bias is not None:
            tensors[f"{local}.bias"] = layer.bias.detach().cpu().to(torch_dtype).contiguous()
        skip |= {f"{local}.weight", f"{local}.bias"}
    named_groups = {f"group_{i}": (key, sorted(names))
                    for i, (key, names) in enumerate(sorted(groups.items(), key=str))}
    for key, names in named_groups.values():
        for n in names:
            layer_group[n] = f"{key[0]} int{key[1]}"
    tensors = _float_state(root, skip, torch_dtype) | tensors
    quantized_local = {n[len(prefix):] for n in layers}
    ignore = sorted(n for n, m in root.named_modules()
                    if isinstance(m, nn.Linear) and n not in quantized_local)
    formats = sorted({key[0] for key, _ in named_groups.values()})
    qconfig: dict[str, Any] = {
        "quant_method": "compressed-tensors",
        "format": formats[0] if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": {g: _scheme_dict(key, names) for g, (key, names) in
                          named_groups.items()},
        "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None,
        "sparsity_config": {}, "transform_config": {},
    }
    qconfig["version"] = _library().__version__
    hf_config: dict[str, Any] = cast(Any, root).config.to_dict()
    hf_config["quantization_config"] = qconfig
    for dtype_key in ("torch_dtype", "dtype"):
        if dtype_key in hf_config:
            hf_config[dtype_key] = dtype
    from safetensors.torch import save_file

    with atomic_output(out, folder=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")
        copied = _copy_tokenizer(_source_dir(root, source_dir), tmp)
        check = _check(tmp, layers, prefix)
        size = tree_size_bytes(tmp)
    report_layers = {
        n: LayerExport(layer.bits, layer.scheme.label, formats_of[n], sizes[n])
        for n, layer in layers.items()}
    notes = _fused_notes(layer_group)
    if not copied:
        notes.append("no tokenizer files were found to copy (pass `source_dir`).")
    return ExportReport(FORMAT, Path(out), size, report_layers, check, tuple(notes),
                        {"tokenizer_files": copied, "dtype": dtype,
                         "export_s": time.perf_counter() - start})
