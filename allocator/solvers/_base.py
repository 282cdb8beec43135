"""The solver contract, the solution type and the registry of solvers by name."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from allocator._budget import Budget
from allocator._problem import Problem, Unit
from engine import BitConfig, InvalidSpecError, Registry

STATUSES = ("optimal", "feasible", "infeasible")


@dataclass(frozen=True)
class Solution:
    """A solver's answer.

    Attributes:
        bits: Layer name -> bits (for an infeasible problem: the least-cost assignment).
        status: "optimal", "feasible" (a solution, optimality not proven) or "infeasible".
        objective: Sum of Ω of the assignment.
        cost: Cost summary (avg_bits, size_bytes, bops, latency_us when known).
        solver: Solver name.
        solve_seconds: Wall time of the solve.
        diagnosis: For infeasible problems: budget text -> the smallest value of that budget
            that can be met (given the others), in the budget's own unit.
        extra: Solver-specific facts (backend, episodes, gap, ...).
    """

    bits: dict[str, int]
    status: str
    objective: float
    cost: dict[str, float]
    solver: str
    solve_seconds: float
    diagnosis: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bitconfig(self, problem: Problem, budgets: Sequence[Budget],
                     **kwargs: Any) -> BitConfig:
        extra = dict(self.extra)
        if self.diagnosis:
            extra["infeasible_budgets"] = self.diagnosis
        return BitConfig(bits=self.bits, activation_bits=problem.activation_bits,
                         model=problem.model, solver=self.solver, status=self.status,
                         objective=self.objective, solve_seconds=self.solve_seconds,
                         budgets=tuple(b.text for b in budgets),
                         cost=self.cost, extra=extra, **kwargs)


class BaseSolver(ABC):
    """Chooses one bit-width per layer that minimizes the summed Ω under the budgets.

    Contract (checked for every registered solver by `tests/solvers/test_contract.py`):
        - one bit-width per layer, from that layer's allowed choices; tied layers share it;
        - every budget holds whenever the status is "optimal" or "feasible";
        - "infeasible" is returned, not raised, when no assignment meets the budgets;
        - the result is the same for the same `seed`;
        - the problem is not modified; `time_limit_s` is honoured.
    """

    name: ClassVar[str]
    exact: ClassVar[bool] = False
    max_budgets: ClassVar[int | None] = None  # None: any number of budgets

    @abstractmethod
    def solve_units(self, units: list[Unit], rhs: list[tuple[Budget, float]], *, seed: int,
                    time_limit_s: float) -> tuple[list[int] | None, str, dict[str, Any]]:
        """Choice per unit (None if none found), status, extra facts."""

    def solve(self, problem: Problem, budgets: Sequence[Budget], *, seed: int = 0,
              time_limit_s: float = 60.0) -> Solution:
        if time_limit_s <= 0:
            raise InvalidSpecError(f"`time_limit_s` must be positive, got {time_limit_s}.")
        units = problem.units(budgets)
        rhs = [(b, problem.budget_rhs(b)) for b in budgets]
        start = time.perf_counter()
        picks, status, extra = self.solve_units(units, rhs, seed=seed, time_limit_s=time_limit_s)
        diagnosis: dict[str, str] = {}
        if picks is None or not feasible(units, rhs, picks):
            picks = least_cost(units, rhs)
            status = "infeasible"
            diagnosis = diagnose(problem, units, budgets)
        seconds = time.perf_counter() - start
        bits = {n: b for u, b in zip(units, picks, strict=True) for n in u.names}
        bits = {x.name: bits[x.name] for x in problem.layers}  # model order
        objective, cost = problem.evaluate(bits)
        return Solution(bits, status, objective, cost, self.name, seconds, diagnosis, extra)


def unit_cost(units: list[Unit], kind: str, picks: Sequence[int]) -> float:
    return sum(u.costs[kind][b] for u, b in zip(units, picks, strict=True))


def feasible(units: list[Unit], rhs: list[tuple[Budget, float]], picks: Sequence[int]) -> bool:
    for budget, limit in rhs:
        total = unit_cost(units, budget.kind, picks)
        if total > limit + 1e-6 * abs(limit) + 1e-12:
            return False
    return True


def least_cost(units: list[Unit], rhs: list[tuple[Budget, float]]) -> list[int]:
    """Per unit the choice with the least normalized budgeted cost (lowest bits if none)."""
    def key(u: Unit, b: int) -> tuple[float, int]:
        return (sum(u.costs[bud.kind][b] / max(lim, 1e-12) for bud, lim in rhs), b)
    return [min(u.choices, key=lambda b, u=u: key(u, b)) for u in units]


def diagnose(problem: Problem, units: list[Unit], budgets: Sequence[Budget]) -> dict[str, str]:
    """Per budget: its smallest value that can be met while the other budgets hold (or on
    its own, when the others cannot hold either)."""
    out = {}
    for budget in budgets:
        others = [(b, problem.budget_rhs(b)) for b in budgets if b is not budget]
        best = min_cost_subject_to(units, budget.kind, others)
        if best is None:
            best = sum(min(u.costs[budget.kind].values()) for u in units)
        if budget.kind == "bits":
            value = best / max(problem.total_params, 1)
        elif budget.kind == "latency":
            value = best + problem.latency_offset_us
        else:
            value = best
        out[budget.text] = budget.format_value(value)
    return out


def min_cost_subject_to(units: list[Unit], kind: str,
                        rhs: list[tuple[Budget, float]]) -> float | None:
    """The least total `kind` cost meeting `rhs`, by ILP where PuLP is installed."""
    if not rhs:
        return sum(min(u.costs[kind].values()) for u in units)
    try:
        from allocator.solvers._ilp import solve_ilp
    except ImportError:
        return None
    objective = [{b: u.costs[kind][b] for b in u.choices} for u in units]
    picks, status, _ = solve_ilp(units, rhs, objective, time_limit_s=30.0, backend="auto")
    if picks is None or status == "infeasible":
        return None
    return unit_cost(units, kind, picks)


SOLVERS: Registry[type[BaseSolver]] = Registry("solver")


def get_solver(name: str, **options: Any) -> BaseSolver:
    """A solver instance by registered name (options go to its constructor)."""
    cls = SOLVERS.get(name)
    try:
        return cls(**options)
    except TypeError as e:
        raise InvalidSpecError(f"solver {name!r}: bad option(s) {sorted(options)}: {e}") from e


def solve(problem: Problem, budgets: Sequence[Budget], solver: str = "ilp", *, seed: int = 0,
          time_limit_s: float = 60.0, **options: Any) -> Solution:
    """Solves `problem` under `budgets` with the named solver."""
    return get_solver(solver, **options).solve(problem, budgets, seed=seed,
                                               time_limit_s=time_limit_s)

