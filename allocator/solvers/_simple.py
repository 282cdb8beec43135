"""`greedy` and `uniform`: fast baselines."""

from __future__ import annotations

from allocator.solvers._base import BaseSolver, feasible


class GreedySolver(BaseSolver):
    """Starts at the highest bits and repeatedly lowers the layer that loses the least Ω per
    unit of budgeted cost saved, until every budget holds."""

    name = "greedy"

    def solve_units(self, units, rhs, *, seed, time_limit_s):
        picks = [max(u.choices) for u in units]

        def excess(p: list[int]) -> list[float]:
            return [sum(u.costs[b.kind][c] for u, c in zip(units, p, strict=True)) / max(lim, 1e-12)
                    - 1.0 for b, lim in rhs]

        while not feasible(units, rhs, picks):
            over = excess(picks)
            best, best_score = None, float("inf")
            for i, u in enumerate(units):
                lower = [c for c in u.choices if c < picks[i]]
                if not lower:
                    continue
                nxt = max(lower)
                saved = sum((u.costs[b.kind][picks[i]] - u.costs[b.kind][nxt]) / max(lim, 1e-12)
                            for (b, lim), o in zip(rhs, over, strict=True) if o > 0)
                if saved <= 0:
                    continue
                score = (u.omega[nxt] - u.omega[picks[i]]) / saved
                if score < best_score:
                    best, best_score = (i, nxt), score
            if best is None:
                return None, "infeasible", {}
            picks[best[0]] = best[1]
        return picks, "feasible", {}


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
