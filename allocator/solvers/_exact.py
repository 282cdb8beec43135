"""`brute` and `dp`: exact oracles for small problems (used to check the ILP)."""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import ClassVar

from allocator._budget import REL_TOL
from allocator._problem import Unit
from allocator.solvers._base import (
    Answer,
    BaseSolver,
    SolverConfig,
    SolverTimeoutError,
    register_solver,
)
from allocator.solvers._feasibility import Rhs, feasible
from engine import InvalidSpecError

# Assignments enumerated (brute) or states visited (dp) between two looks at the clock.
_CLOCK_EVERY = 1 << 12



@dataclass(frozen=True)
class BruteForceConfig(SolverConfig):
    """Settings of the `brute` solver.

    Attributes:
        max_assignments: The most assignments it enumerates; larger problems are refused.
    """

    name: ClassVar[str] = "brute"
    positive_ints: ClassVar[tuple[str, ...]] = ("max_assignments",)
    max_assignments: int = 2_000_000


@register_solver(BruteForceConfig)
class BruteForceSolver(BaseSolver):
    """Exhaustive oracle (small problems).

    Enumerates every assignment (up to `max_assignments`); out of time, the best one seen
    is "feasible" (`SolverTimeoutError` when none was)."""

    exact = True
    config: BruteForceConfig

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        deadline = time.monotonic() + time_limit_s
        combos = math.prod(len(u.choices) for u in units)
        if combos > self.config.max_assignments:
            raise InvalidSpecError(
                f"solver 'brute' enumerates {combos:,} assignments (limit "
                f"{self.config.max_assignments:,}); use 'ilp'.")
        best, best_obj = None, math.inf
        for i, picks in enumerate(itertools.product(*(u.choices for u in units))):
            if i % _CLOCK_EVERY == 0 and i and time.monotonic() > deadline:
                if best is None:
                    raise SolverTimeoutError(self.name, time_limit_s)
                return best, "feasible", {"time_limit_reached": True}
            obj = math.fsum(u.omega[c] for u, c in zip(units, picks, strict=True))
            if obj < best_obj - 1e-15 and feasible(units, rhs, picks):
                best, best_obj = list(picks), obj
        return (best, "optimal", {}) if best is not None else (None, "infeasible", {})


@dataclass(frozen=True)
class DynamicProgrammingConfig(SolverConfig):
    """Settings of the `dp` solver.

    Attributes:
        max_states: The most DP states (units x budget slack); larger problems are refused.
    """

    name: ClassVar[str] = "dp"
    positive_ints: ClassVar[tuple[str, ...]] = ("max_states",)
    max_states: int = 5_000_000


@register_solver(DynamicProgrammingConfig)
class DynamicProgrammingSolver(BaseSolver):
    """Knapsack DP oracle (one budget, integer costs).

    Knapsack dynamic programming for one budget whose unit costs are integers (mean
    bits: params x bits; sizes in whole bytes). Exact on such problems; out of time it has
    no answer (`SolverTimeoutError`)."""

    exact = True
    max_budgets = 1
    config: DynamicProgrammingConfig

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        deadline = time.monotonic() + time_limit_s
        if len(rhs) != 1:
            raise InvalidSpecError(f"solver 'dp' takes exactly one budget, got {len(rhs)}.")
        budget, limit = rhs[0]
        costs = [{c: u.costs[budget.kind][c] for c in u.choices} for u in units]
        if any(v != int(v) for cs in costs for v in cs.values()):
            raise InvalidSpecError(
                "solver 'dp' needs integer costs (mean bits, bytes); use 'ilp'.")
        cap = int(math.floor(limit + REL_TOL * abs(limit)))
        if cap < 0:
            return None, "infeasible", {}
        min_total = sum(min(cs.values()) for cs in costs)
        if min_total > cap:
            return None, "infeasible", {}
        # states: offset above each unit's minimum cost, bounded by the slack
        slack = cap - int(min_total)
        if slack * len(units) > self.config.max_states:
            raise InvalidSpecError("problem too large for solver 'dp'; use 'ilp'.")
        inf = math.inf
        best = [0.0] + [inf] * slack  # best[s]: least Ω using exactly s slack so far
        choice_log: list[list[int]] = []
        for u, cs in zip(units, costs, strict=True):
            if time.monotonic() > deadline:
                raise SolverTimeoutError(self.name, time_limit_s)
            base = min(cs.values())
            nxt = [inf] * (slack + 1)
            arg = [-1] * (slack + 1)
            for s, val in enumerate(best):
                if s % _CLOCK_EVERY == 0 and s and time.monotonic() > deadline:
                    raise SolverTimeoutError(self.name, time_limit_s)
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
