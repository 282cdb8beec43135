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

_LAZY = {
    "solve": ("allocator._pipeline", "solve"),
    "pareto": ("allocator._pipeline", "pareto"),
    "Budget": ("allocator._budget", "Budget"),
    "parse_budget": ("allocator._budget", "parse_budget"),
    "Problem": ("allocator._problem", "Problem"),
    "ParetoFront": ("allocator._pareto", "ParetoFront"),
    "pareto_front": ("allocator._pareto", "pareto_front"),
    "get_solver": ("allocator.solvers", "get_solver"),
}


def __getattr__(name: str):
    """The pipeline and solver entry points, imported on first use."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'allocator' has no attribute {name!r}")


__all__ = [
    "Budget",
    "ParetoFront",
    "Problem",
    "get_solver",
    "pareto",
    "pareto_front",
    "parse_budget",
    "solve",
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
