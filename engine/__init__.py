"""The quantized-execution engine and the vocabulary shared by every package.

Turns a PyTorch model plus a per-layer `BitConfig` into a model that runs on integer
kernels (int8 and int4 where the device has them; packed dequant otherwise).

The vocabulary (errors, `BitConfig`, `LayerSpec`, registry, paths, the checksummed cache
files of `engine._cache`) imports without torch, so the job service's API process can use
it; everything that runs tensors is imported on first use of its name. Importing changes no
process-wide state: `configure_runtime()` does (heap thresholds for the kernels), called by
`apply`, `quantize`, `discover_layers` and `time_call`.
"""

from __future__ import annotations

import importlib
from typing import Any

from engine._cache import (
    CacheError,
    CacheQuarantineWarning,
    canonical_key,
    load_cached,
    quarantine,
    sidecar_path,
    store_cached,
    verify_sidecar,
)
from engine._errors import (
    AllocatorError,
    CLIUsageError,
    DuplicateJobError,
    FinishedJobError,
    InvalidSpecError,
    JobNotFoundError,
    KernelUnavailableError,
    MissingDependencyError,
    StoreError,
    UnknownComponentError,
    UnknownLayerError,
    UnsupportedBitWidthError,
)
from engine._formats import (
    JSON_FAULT_KINDS,
    MAX_JSON_DEPTH,
    Document,
    FiniteFloat,
    Integer,
    JsonFormat,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    dataclass_default,
    decode_json,
    integer,
    json_fault,
    load_json_file,
    parse_document,
)
from engine._paths import atomic_write_bytes, content_hash, data_dir, file_lock
from engine._platform import configure_runtime, cpu_flags, cpu_model, release_free_memory
from engine._registry import Registry
from engine._types import (
    BITCONFIG_FORMAT,
    DEFAULT_BITS,
    LAYER_KINDS,
    MAX_BITS,
    MIN_BITS,
    BitConfig,
    BitConfigDocument,
    LayerKind,
    LayerSpec,
    check_bits,
)

ENGINE_VERSION = "2"

_TORCH_NAMES: dict[str, tuple[str, ...]] = {
    "engine._apply": (
        "apply", "calibrate", "kernel_counts", "kernel_report", "load_quantized",
        "model_size_bytes", "quantize_candidates", "quantized_layers", "retain_rounded",
        "save_quantized", "scheme_for", "smoothing_factors",
    ),
    "engine._digest": ("feed_digest", "hash_tensors"),
    "engine._gptq": ("gptq",),
    "engine._kernels": ("KernelPath",),
    "engine._layers": (
        "QUANTIZABLE_TYPES", "call_model", "discover_layers", "mean_bits", "model_state",
        "quantizable_modules", "total_params",
    ),
    "engine._modules": ("QuantConv2d", "QuantizedLayer", "QuantLinear"),
    "engine._packing": ("pack_codes", "packed_nbytes", "unpack_codes"),
    "engine._quantizer": (
        "QuantizedWeight", "QuantScheme", "compute_qparams", "dequantize_codes",
        "packed_weight_bytes", "quantize", "quantize_codes", "sqnr_db",
    ),
    "engine._stats": ("ConvGeometry", "InputStats", "collect_input_stats"),
    "engine._timing": ("Timing", "time_call"),
}
_LAZY = {name: module for module, names in _TORCH_NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Tensor-running parts of the engine, imported on first use of their names."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "LAYER_KINDS", "BitConfigDocument", "Document", "FiniteFloat", "Integer", "NonEmptyStr",
    "NonNegativeFloat", "NonNegativeInt", "PositiveInt", "dataclass_default", "integer",
    "JSON_FAULT_KINDS", "MAX_JSON_DEPTH", "JsonFormat", "decode_json", "json_fault",
    "load_json_file", "parse_document", "LayerKind",
    "BITCONFIG_FORMAT", "DEFAULT_BITS", "ENGINE_VERSION", "MAX_BITS", "MIN_BITS",
    "AllocatorError", "BitConfig", "CLIUsageError", "CacheError", "CacheQuarantineWarning",
    "canonical_key", "load_cached", "quarantine", "sidecar_path", "store_cached",
    "verify_sidecar", "DuplicateJobError", "FinishedJobError",
    "InvalidSpecError", "JobNotFoundError", "KernelUnavailableError", "LayerSpec",
    "MissingDependencyError", "Registry", "StoreError", "UnknownComponentError",
    "UnknownLayerError", "UnsupportedBitWidthError", "atomic_write_bytes", "content_hash",
    "check_bits", "configure_runtime", "cpu_flags", "cpu_model", "data_dir", "file_lock",
    "release_free_memory", *_LAZY,
]
