"""Pareto fronts: the ILP swept over one budget (its program built once for the sweep),
non-dominated (Ω, cost) points kept."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocator._budget import BASE_UNITS, COST_KEYS, Budget
from allocator._problem import Problem
from allocator.solvers import IlpSolver, Solution, SolverTimeoutError, get_solver
from engine import InvalidSpecError

PARETO_FORMAT = "allocator.pareto/1"


@dataclass(frozen=True)
class ParetoFront:
    """Non-dominated solutions, sorted by cost on `axis`."""

    axis: str
    points: tuple[Solution, ...]
    budgets: tuple[str, ...] = ()
    model: str | None = None
    #: The sweep stopped at its total time before every budget value was solved.
    time_limit_reached: bool = False

    def to_dict(self) -> dict[str, Any]:
        key = COST_KEYS[self.axis]
        return {
            "format": PARETO_FORMAT,
            "model": self.model,
            "axis": self.axis,
            "cost_key": key,
            "fixed_budgets": list(self.budgets),
            "points": [{"objective": p.objective, "cost": p.cost, "bits": p.bits,
                        "status": p.status, "solver": p.solver} for p in self.points],
            "time_limit_reached": self.time_limit_reached,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")


def non_dominated(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (objective, cost), both minimized; for equal
    points the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0], i))
    keep, best = [], float("inf")
    for i in order:
        if points[i][0] < best:
            keep.append(i)
            best = points[i][0]
    return keep


def pareto_front(problem: Problem, axis: str = "bits", points: int = 20, *,
                 budgets: Sequence[Budget] = (), solver: str = "ilp",
                 time_limit_s: float = 60.0, total_time_s: float | None = None,
                 reuse_program: bool = True) -> ParetoFront:
    """Sweeps a budget on `axis` over `points` values between the cheapest and the
    dearest assignment (other `budgets` held fixed) and keeps the non-dominated solutions.

    `time_limit_s` bounds each solve; `total_time_s` the whole sweep: past it the sweep
    stops with the points found so far and `time_limit_reached` set (a job's front must not
    outlive the job's limit). The `ilp` solver builds its program once for the whole sweep
    (`IlpSolver.sweep`), with the same answers as a solve per point;
    `reuse_program=False` solves each point from scratch, as every other solver does."""
    if axis not in COST_KEYS:
        raise InvalidSpecError(f"`axis` must be one of {sorted(COST_KEYS)}, got {axis!r}.")
    if points < 2:
        raise InvalidSpecError(f"`points` must be >= 2, got {points}.")
    if any(b.kind == axis for b in budgets):
        raise InvalidSpecError(f"a fixed {axis} budget cannot also be the swept axis.")
    runner = get_solver(solver)
    solve_at: Callable[[Budget, float], Solution]
    if reuse_program and isinstance(runner, IlpSolver):
        sweep = runner.sweep(problem, budgets, axis)
        units = sweep.units

        def solve_at(budget: Budget, limit_s: float) -> Solution:
            return sweep.solve(budget, time_limit_s=limit_s, diagnose_infeasible=False)
    else:
        units = problem.units(list(budgets) + [Budget(axis, 1.0, f"1{BASE_UNITS[axis]}")])

        def solve_at(budget: Budget, limit_s: float) -> Solution:
            return runner.solve(problem, [*budgets, budget], time_limit_s=limit_s)
    lo = sum(min(u.costs[axis].values()) for u in units)
    hi = sum(max(u.costs[axis].values()) for u in units)
    found: list[Solution] = []
    deadline = None if total_time_s is None else time.monotonic() + total_time_s
    cut_short = False
    for i in range(points):
        left_s = time_limit_s if deadline is None else min(time_limit_s,
                                                            deadline - time.monotonic())
        if left_s <= 0:
            cut_short = True
            break
        value = problem.budget_value(axis, lo + (hi - lo) * i / (points - 1))
        budget = Budget(axis, max(value, 1e-12), f"{value:.9g}{BASE_UNITS[axis]}")
        try:
            sol = solve_at(budget, left_s)
        except SolverTimeoutError:
            if deadline is None:
                raise
            cut_short = True
            break
        if sol.status != "infeasible":
            found.append(sol)
    key = COST_KEYS[axis]
    keep = non_dominated([(s.objective, s.cost[key]) for s in found])
    chosen = sorted((found[i] for i in keep), key=lambda s: s.cost[key])
    return ParetoFront(axis, tuple(chosen), tuple(b.text for b in budgets), problem.model,
                       time_limit_reached=cut_short)
