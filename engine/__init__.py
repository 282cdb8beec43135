"""The quantized-execution engine and the vocabulary shared by every package.

Turns a PyTorch model plus a per-layer `BitConfig` into a model that runs on integer
kernels (int8 and int4 where the device has them; packed dequant otherwise).
"""

from __future__ import annotations

from engine._platform import configure_allocator, silence_torch_ao_deprecations

silence_torch_ao_deprecations()
configure_allocator()

from engine._apply import (  # noqa: E402
    apply,
    calibrate,
    kernel_counts,
    kernel_report,
    load_quantized,
    model_size_bytes,
    quantized_layers,
    read_config,
    save_quantized,
    scheme_for,
    smoothing_factors,
)
from engine._errors import (  # noqa: E402
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
from engine._kernels import KernelPath  # noqa: E402
from engine._layers import (  # noqa: E402
    call_model,
    discover_layers,
    mean_bits,
    quantizable_modules,
    total_params,
)
from engine._modules import QuantConv2d, QuantizedLayer, QuantLinear  # noqa: E402
from engine._packing import pack_codes, packed_nbytes, unpack_codes  # noqa: E402
from engine._paths import atomic_write_bytes, content_hash, data_dir  # noqa: E402
from engine._quantizer import (  # noqa: E402
    QuantizedWeight,
    QuantScheme,
    compute_qparams,
    dequantize_codes,
    packed_weight_bytes,
    quantize,
    quantize_codes,
    sqnr_db,
)
from engine._registry import Registry  # noqa: E402
from engine._timing import Timing, time_call  # noqa: E402
from engine._types import (  # noqa: E402
    BITCONFIG_FORMAT,
    MAX_BITS,
    MIN_BITS,
    BitConfig,
    LayerSpec,
)

ENGINE_VERSION = "1"

__all__ = [
    "BITCONFIG_FORMAT", "ENGINE_VERSION", "MAX_BITS", "MIN_BITS",
    "AllocatorError", "BitConfig", "CLIUsageError", "DuplicateJobError", "FinishedJobError",
    "InvalidSpecError", "JobNotFoundError", "KernelPath", "KernelUnavailableError", "LayerSpec",
    "MissingDependencyError", "QuantConv2d", "QuantLinear", "QuantScheme", "QuantizedLayer",
    "QuantizedWeight", "Registry", "atomic_write_bytes", "content_hash", "data_dir", "StoreError", "Timing", "time_call", "UnknownComponentError", "UnknownLayerError",
    "UnsupportedBitWidthError", "apply", "calibrate", "call_model", "compute_qparams",
    "dequantize_codes", "discover_layers", "kernel_counts", "kernel_report", "load_quantized", "mean_bits",
    "model_size_bytes", "pack_codes", "packed_weight_bytes", "smoothing_factors", "packed_nbytes", "quantizable_modules", "quantize",
    "quantize_codes", "quantized_layers", "read_config", "save_quantized", "scheme_for",
    "sqnr_db", "total_params", "unpack_codes",
]
