"""Solvers by name (`get_solver("ilp")`), all behind `BaseSolver`'s contract."""

from __future__ import annotations

import importlib.util

from allocator.solvers._base import (
    SOLVERS,
    BaseSolver,
    Solution,
    diagnose,
    get_solver,
    solve,
)
from allocator.solvers._exact import BruteForceSolver, DynamicProgrammingSolver
from allocator.solvers._fracbits import FracBitsSolver, round_to_budget
from allocator.solvers._ilp import IlpSolver, available_backends
from allocator.solvers._simple import GreedySolver, UniformSolver


def _rl_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("stable_baselines3", "gymnasium"))


SOLVERS.register("ilp", IlpSolver, available=lambda: bool(available_backends()), extra="solvers",
                 description="exact integer linear program (PuLP: HiGHS or CBC)")
SOLVERS.register("greedy", GreedySolver, description="lower the cheapest-Ω-per-cost layer first")
SOLVERS.register("uniform", UniformSolver, description="best feasible single bit-width")
SOLVERS.register("brute", BruteForceSolver, description="exhaustive oracle (small problems)")
SOLVERS.register("dp", DynamicProgrammingSolver,
                 description="knapsack DP oracle (one budget, integer costs)")
SOLVERS.register("fracbits", FracBitsSolver,
                 description="FracBits: bits learned on the model (needs --model), rounded to fit")
from allocator.solvers._ddpg import DdpgSolver  # noqa: E402  (imports SB3 only when solving)

SOLVERS.register("ddpg", DdpgSolver, available=_rl_available, extra="rl",
                 description="HAQ-style DDPG agent (stable-baselines3), Ω proxy reward")


__all__ = ["SOLVERS", "BaseSolver", "FracBitsSolver", "Solution", "available_backends",
           "diagnose", "get_solver", "round_to_budget", "solve"]
