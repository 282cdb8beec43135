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
    "solve_problem": ("allocator._pipeline", "solve_problem"),
    "SolveReport": ("allocator._pipeline", "SolveReport"),
    "best_uniform": ("allocator._pipeline", "best_uniform"),
    "plot_front": ("allocator._pipeline", "plot_front"),
    "problem_for": ("allocator._pipeline", "problem_for"),
    "quantization_settings": ("allocator._pipeline", "quantization_settings"),
    "Evaluation": ("allocator._evaluate", "Evaluation"),
    "Measurement": ("allocator._evaluate", "Measurement"),
    "evaluate_config": ("allocator._evaluate", "evaluate_config"),
    "measure_config": ("allocator._evaluate", "measure_config"),
    "measure_model": ("allocator._evaluate", "measure_model"),
    "LatencyCosts": ("allocator._latency", "LatencyCosts"),
    "ProfileRun": ("allocator._latency", "ProfileRun"),
    "batch_inputs": ("allocator._latency", "batch_inputs"),
    "latency_costs": ("allocator._latency", "latency_costs"),
    "profile_model": ("allocator._latency", "profile_model"),
    "JobLimits": ("allocator._job", "JobLimits"),
    "JobResult": ("allocator._job", "JobResult"),
    "run_model_job": ("allocator._job", "run_model_job"),
    "front_measurements": ("allocator._job", "front_measurements"),
    "run_problem_job": ("allocator._job", "run_problem_job"),
    "uniform_points": ("allocator._job", "uniform_points"),
    "ModelSpecLike": ("allocator._spec", "ModelSpecLike"),
    "Budget": ("allocator._budget", "Budget"),
    "parse_budget": ("allocator._budget", "parse_budget"),
    "parse_budgets": ("allocator._budget", "parse_budgets"),
    "COST_KEYS": ("allocator._budget", "COST_KEYS"),
    "Problem": ("allocator._problem", "Problem"),
    "ProblemDocument": ("allocator._problem", "ProblemDocument"),
    "ProblemLayerDocument": ("allocator._problem", "ProblemLayerDocument"),
    "Rules": ("allocator._rules", "Rules"),
    "RulesCheck": ("allocator._rules", "RulesCheck"),
    "RuleError": ("allocator._rules", "RuleError"),
    "parse_rules": ("allocator._rules", "parse_rules"),
    "default_rules": ("allocator._rules", "default_rules"),
    "apply_rules": ("allocator._rules", "apply_rules"),
    "check_rules": ("allocator._rules", "check_rules"),
    "ParetoFront": ("allocator._pareto", "ParetoFront"),
    "pareto_front": ("allocator._pareto", "pareto_front"),
    "get_solver": ("allocator.solvers", "get_solver"),
    "Solution": ("allocator.solvers", "Solution"),
    "MAX_BUDGET_CHARS": ("allocator._budget", "MAX_BUDGET_CHARS"),
    "MAX_COUNT": ("allocator._problem", "MAX_COUNT"),
    "MAX_TABLE_VALUE": ("allocator._problem", "MAX_TABLE_VALUE"),
    "SolverTimeoutError": ("allocator.solvers", "SolverTimeoutError"),
}


def __getattr__(name: str):
    """The pipeline and solver entry points, imported on first use."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'allocator' has no attribute {name!r}")


__all__ = [
    "Evaluation",
    "JobLimits",
    "JobResult",
    "LatencyCosts",
    "Measurement",
    "ModelSpecLike",
    "ProfileRun",
    "SolveReport",
    "batch_inputs",
    "best_uniform",
    "evaluate_config",
    "front_measurements",
    "latency_costs",
    "measure_config",
    "measure_model",
    "plot_front",
    "problem_for",
    "profile_model",
    "quantization_settings",
    "run_model_job",
    "run_problem_job",
    "solve_problem",
    "uniform_points",
    "Budget",
    "COST_KEYS",
    "ParetoFront",
    "Problem",
    "ProblemDocument",
    "ProblemLayerDocument",
    "RuleError",
    "Rules",
    "RulesCheck",
    "Solution",
    "apply_rules",
    "check_rules",
    "default_rules",
    "parse_rules",
    "MAX_BUDGET_CHARS",
    "MAX_COUNT",
    "MAX_TABLE_VALUE",
    "SolverTimeoutError",
    "get_solver",
    "pareto",
    "pareto_front",
    "parse_budget",
    "parse_budgets",
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
