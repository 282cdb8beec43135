"""`brute` and `dp`: exact oracles for small problems (used to check the ILP)."""

from __future__ import annotations

import itertools
import math

from allocator.solvers._base import BaseSolver, feasible
from engine import InvalidSpecError

BRUTE_MAX_COMBINATIONS = 2_000_000
DP_MAX_STATES = 5_000_000


class BruteForceSolver(BaseSolver):
    """Enumerates every assignment (up to 2 million)."""

    name = "brute"
    exact = True

    def solve_units(self, units, rhs, *, seed, time_limit_s):
        combos = math.prod(len(u.choices) for u in units)
        if combos > BRUTE_MAX_COMBINATIONS:
            raise InvalidSpecError(
                f"solver 'brute' enumerates {combos:,} assignments (limit "
                f"{BRUTE_MAX_COMBINATIONS:,}); use 'ilp'.")
        best, best_obj = None, math.inf
        for picks in itertools.product(*(u.choices for u in units)):
            obj = math.fsum(u.omega[c] for u, c in zip(units, picks, strict=True))
            if obj < best_obj - 1e-15 and feasible(units, rhs, picks):
                best, best_obj = list(picks), obj
        return (best, "optimal", {}) if best is not None else (None, "infeasible", {})


class DynamicProgrammingSolver(BaseSolver):
    """Knapsack dynamic programming for one budget whose unit costs are integers (mean
    bits: params x bits; sizes in whole bytes). Exact on such problems."""

    name = "dp"
    exact = True
    max_budgets = 1

    def solve_units(self, units, rhs, *, seed, time_limit_s):
        if len(rhs) != 1:
            raise InvalidSpecError(f"solver 'dp' takes exactly one budget, got {len(rhs)}.")
        budget, limit = rhs[0]
        costs = [{c: u.costs[budget.kind][c] for c in u.choices} for u in units]
        if any(v != int(v) for cs in costs for v in cs.values()):
            raise InvalidSpecError(
                "solver 'dp' needs integer costs (mean bits, bytes); use 'ilp'.")
        cap = int(math.floor(limit + 1e-6 * abs(limit)))
        if cap < 0:
            return None, "infeasible", {}
        min_total = sum(min(cs.values()) for cs in costs)
        if min_total > cap:
            return None, "infeasible", {}
        # states: offset above each unit's minimum cost, bounded by the slack
        slack = cap - int(min_total)
        if slack * len(units) > DP_MAX_STATES:
            slack = DP_MAX_STATES // max(len(units), 1)
            raise InvalidSpecError("problem too large for solver 'dp'; use 'ilp'.")
        inf = math.inf
        best = [0.0] + [inf] * slack  # best[s]: least Ω using exactly s slack so far
        choice_log: list[list[int]] = []
        for u, cs in zip(units, costs, strict=True):
            base = min(cs.values())
            nxt = [inf] * (slack + 1)
            arg = [-1] * (slack + 1)
            for s, val in enumerate(best):
                if val == inf:
                    continue
                for c, cost in cs.items():
                    t = s + int(cost - base)
                    if t <= slack and val + u.omega[c] < nxt[t]:
                        nxt[t], arg[t] = val + u.omega[c], c
            best = nxt
            choice_log.append(arg)
        s = min(range(slack + 1), key=lambda i: best[i])
        if best[s] == inf:
            return None, "infeasible", {}
        picks = []
        for cs, arg in zip(reversed(costs), reversed(choice_log), strict=True):
            c = arg[s]
            picks.append(c)
            s -= int(cs[c] - min(cs.values()))
        picks.reverse()
        return picks, "optimal", {}
