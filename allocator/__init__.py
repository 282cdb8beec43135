"""allocator: mixed-precision bit allocation for PyTorch models.

Everything a user needs is importable from here: the shared types and errors of the
engine, and (as they land) budgets, problems, solvers and the pipeline.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from engine import (
    AllocatorError,
    BitConfig,
    CLIUsageError,
    InvalidSpecError,
    LayerSpec,
    MissingDependencyError,
    UnknownComponentError,
    UnknownLayerError,
    UnsupportedBitWidthError,
)

try:
    __version__ = version("allocator")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "AllocatorError",
    "BitConfig",
    "CLIUsageError",
    "InvalidSpecError",
    "LayerSpec",
    "MissingDependencyError",
    "UnknownComponentError",
    "UnknownLayerError",
    "UnsupportedBitWidthError",
    "__version__",
]
