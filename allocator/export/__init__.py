"""Exports of a quantized model to the formats deployment runtimes load, and the targets
that make the solve measure and count what those formats ship.

Targets (`get_target`, `target_settings`, `target_costs`, `check_config`) and the shared
types import without torch; the exporters are imported on first use of their names.

Example:
    >>> from allocator.export import export_gguf, target_settings
"""

from __future__ import annotations

import importlib
from typing import Any

from allocator.export._common import (
    ExportCheckError,
    ExportError,
    ExportReport,
    LayerExport,
    TargetWidthError,
    UnsupportedExportError,
)
from allocator.export._targets import (
    TARGETS,
    BaseTarget,
    TargetCosts,
    check_config,
    get_target,
    target_costs,
    target_settings,
)

_LAZY = {
    "export_compressed_tensors": "allocator.export._compressed_tensors",
    "export_gguf": "allocator.export._gguf",
    # ONNX: `export_onnx` lives in `allocator/export/_onnx.py` (written by the ONNX work);
    # re-exported here once that module exists.
    "export_onnx": "allocator.export._onnx",
}


def __getattr__(name: str) -> Any:
    """The exporters (they import torch and their format's packages), on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'allocator.export' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "TARGETS", "BaseTarget", "ExportCheckError", "ExportError", "ExportReport", "LayerExport",
    "TargetCosts", "TargetWidthError", "UnsupportedExportError", "check_config",
    "export_compressed_tensors", "export_gguf", "export_onnx", "get_target", "target_costs",
    "target_settings",
]
