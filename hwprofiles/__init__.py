"""Measured per-layer latency tables for hardware targets.

`profile_layers` times every layer shape of a model on this device at each bit-width (the
engine's real kernel paths) and at FP32, into a `LatencyTable` (`allocator.latency/1`
JSON, keyed by shape so one table serves every model with the same shapes).
`predict_latency` turns a table into a whole-model latency for a bit config, and
`additivity` checks that prediction against the measured quantized model. Stored tables
live under `engine.data_dir() / "hwprofiles"` (`list_profiles`, `load_profile`).

`profile_onnxruntime` measures the same kind of table in ONNX Runtime, on the ops the ONNX
export writes for each layer (`layer_ops`); its fingerprint names the runtime and version,
and such a table is refused anywhere else (`RuntimeMismatchError`).
"""

from __future__ import annotations

from hwprofiles._additivity import AdditivityRow, Prediction, additivity, predict_latency
from hwprofiles._fingerprint import (
    DeviceFingerprint,
    FingerprintMismatchWarning,
    RuntimeMismatchError,
)
from hwprofiles._onnxruntime import (
    LayerOps,
    LayerSite,
    OnnxInitializers,
    check_onnxruntime_table,
    float_layer_ops,
    int8_activation_path,
    layer_ops,
    onnxruntime_additivity,
    onnxruntime_feed,
    onnxruntime_session,
    profile_onnxruntime,
    require_onnxruntime,
    time_in_turn,
)
from hwprofiles._profiler import DEFAULT_BITS, batch_size, profile_layers
from hwprofiles._registry import (
    ProfileInfo,
    import_profile,
    list_profiles,
    load_profile,
    profile_name,
    profiles_dir,
    save_profile,
)
from hwprofiles._table import (
    LATENCY_FORMAT,
    Gap,
    LatencyDocument,
    LatencyLookup,
    LatencyTable,
    Measurement,
    TableEntry,
)

__all__ = [
    "DEFAULT_BITS", "LATENCY_FORMAT", "AdditivityRow", "DeviceFingerprint",
    "FingerprintMismatchWarning", "Gap", "LatencyDocument", "LatencyLookup", "LatencyTable",
    "LayerOps", "LayerSite", "Measurement", "OnnxInitializers", "Prediction", "ProfileInfo",
    "RuntimeMismatchError", "TableEntry", "additivity", "batch_size", "check_onnxruntime_table",
    "float_layer_ops",
    "import_profile", "int8_activation_path", "layer_ops", "onnxruntime_additivity",
    "onnxruntime_feed", "onnxruntime_session", "profile_onnxruntime", "require_onnxruntime",
    "list_profiles", "load_profile", "predict_latency", "profile_layers", "profile_name",
    "profiles_dir", "save_profile", "time_in_turn",
]
