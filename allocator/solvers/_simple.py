"""`greedy` and `uniform`: fast baselines."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from allocator._problem import Unit
from allocator.solvers._base import (
    Answer,
    BaseSolver,
    SolverConfig,
    SolverTimeoutError,
    register_solver,
)
from allocator.solvers._feasibility import Rhs, feasible, uniform_picks
from allocator.solvers._repair import lower_until_feasible


@dataclass(frozen=True)
class GreedyConfig(SolverConfig):
    """Settings of the `greedy` solver (it has none)."""

    name: ClassVar[str] = "greedy"


@register_solver(GreedyConfig)
class GreedySolver(BaseSolver):
    """Lowers the cheapest-Ω-per-cost layer first.

    Starts at the highest bits and repeatedly lowers the layer that loses the least Ω per
    unit of budgeted cost saved, until every budget holds (a heap of moves: O(log n) per
    step). It has no answer before the budgets hold, so out of time it raises
    `SolverTimeoutError`."""

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        deadline = time.monotonic() + time_limit_s
        picks = lower_until_feasible(units, rhs, [max(u.choices) for u in units],
                                     deadline=deadline)
        return (None, "infeasible", {}) if picks is None else (picks, "feasible", {})


@dataclass(frozen=True)
class UniformConfig(SolverConfig):
    """Settings of the `uniform` solver (it has none)."""

    name: ClassVar[str] = "uniform"


@register_solver(UniformConfig)
class UniformSolver(BaseSolver):
    """Best feasible single bit-width.

    The best feasible single bit-width for every layer (`uniform_choice` where a layer
    cannot take it). Out of time, the best width tried so far is "feasible" with
    `time_limit_reached`."""

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        deadline = time.monotonic() + time_limit_s
        best = None
        for target in sorted({c for u in units for c in u.choices}, reverse=True):
            if time.monotonic() > deadline:
                if best is None:
                    raise SolverTimeoutError(self.name, time_limit_s)
                return best[1], "feasible", {"uniform_bits": best[2], "time_limit_reached": True}
            picks = uniform_picks(units, target)
            if feasible(units, rhs, picks):
                obj = sum(u.omega[c] for u, c in zip(units, picks, strict=True))
                if best is None or obj < best[0]:
                    best = (obj, picks, target)
        if best is None:
            return None, "infeasible", {}
        return best[1], "feasible", {"uniform_bits": best[2]}
