"""`greedy` and `uniform`: fast baselines."""

from __future__ import annotations

from allocator.solvers._base import BaseSolver, feasible
from allocator.solvers._repair import lower_until_feasible


class GreedySolver(BaseSolver):
    """Starts at the highest bits and repeatedly lowers the layer that loses the least Ω per
    unit of budgeted cost saved, until every budget holds."""

    name = "greedy"

    def solve_units(self, units, rhs, *, seed, time_limit_s):
        picks = lower_until_feasible(units, rhs, [max(u.choices) for u in units])
        return (None, "infeasible", {}) if picks is None else (picks, "feasible", {})


class UniformSolver(BaseSolver):
    """The best feasible single bit-width for every layer (nearest allowed choice below it
    where a layer cannot take it)."""

    name = "uniform"

    def solve_units(self, units, rhs, *, seed, time_limit_s):
        candidates = sorted({c for u in units for c in u.choices}, reverse=True)
        best = None
        for target in candidates:
            picks = [max([c for c in u.choices if c <= target] or [min(u.choices)]) for u in units]
            if feasible(units, rhs, picks):
                obj = sum(u.omega[c] for u, c in zip(units, picks, strict=True))
                if best is None or obj < best[0]:
                    best = (obj, picks, target)
        if best is None:
            return None, "infeasible", {}
        return best[1], "feasible", {"uniform_bits": best[2]}
