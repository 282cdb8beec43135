"""Solvers by name (`get_solver("ilp")`) or by config (`solver_for(IlpConfig())`), all
behind `BaseSolver`'s contract.

Importing this package registers the built-ins, in this order: ilp, greedy, uniform, brute,
dp, fracbits, ddpg. None of them imports torch before it solves.
"""

from __future__ import annotations

from allocator.solvers._base import (
    SOLVERS,
    BaseSolver,
    ModelSolver,
    Solution,
    SolverConfig,
    SolverTimeoutError,
    config_from_dict,
    get_solver,
    register_solver,
    solve,
    solver_for,
)
from allocator.solvers._diagnosis import diagnose
from allocator.solvers._feasibility import feasible, uniform_assignment
from allocator.solvers._ilp_program import available_backends

# The built-ins register themselves when imported: this order is the registry's.
# isort: off
from allocator.solvers._ilp import IlpConfig, IlpSolver
from allocator.solvers._simple import GreedyConfig, GreedySolver, UniformConfig, UniformSolver
from allocator.solvers._exact import (
    BruteForceConfig,
    BruteForceSolver,
    DynamicProgrammingConfig,
    DynamicProgrammingSolver,
)
from allocator.solvers._fracbits import FracBitsSolver, FracBitsSolverConfig, round_to_budget
from allocator.solvers._ddpg import DdpgConfig, DdpgSolver
# isort: on

__all__ = [
    "SOLVERS", "BaseSolver", "ModelSolver", "Solution", "SolverConfig", "SolverTimeoutError",
    "config_from_dict",
    "get_solver",
    "register_solver", "solve", "solver_for",
    "BruteForceConfig", "BruteForceSolver", "DdpgConfig", "DdpgSolver",
    "DynamicProgrammingConfig", "DynamicProgrammingSolver", "FracBitsSolver",
    "FracBitsSolverConfig", "GreedyConfig", "GreedySolver", "IlpConfig", "IlpSolver",
    "UniformConfig", "UniformSolver",
    "available_backends", "diagnose", "feasible", "round_to_budget", "uniform_assignment",
]
