"""Why a problem is infeasible: per budget, the smallest value of it that can be met."""

from __future__ import annotations

import time
from collections.abc import Sequence

from allocator._budget import Budget
from allocator._problem import Problem, Unit
from allocator.solvers._feasibility import Rhs, unit_cost
from allocator.solvers._ilp_program import available_backends, solve_ilp


def min_cost_subject_to(units: list[Unit], kind: str, rhs: Rhs, *,
                        time_limit_s: float) -> float | None:
    """The least total `kind` cost meeting `rhs`, by ILP (None where no ILP backend is
    installed or none was found in `time_limit_s`)."""
    if not rhs:
        return sum(min(u.costs[kind].values()) for u in units)
    if time_limit_s <= 0 or not available_backends():
        return None
    objective = [{b: u.costs[kind][b] for b in u.choices} for u in units]
    picks, status, _ = solve_ilp(units, rhs, objective, time_limit_s=time_limit_s)
    if picks is None or status == "infeasible":
        return None
    return unit_cost(units, kind, picks)


def diagnose(problem: Problem, units: list[Unit], budgets: Sequence[Budget], *,
             time_limit_s: float) -> dict[str, str]:
    """Budget text -> its smallest value that can be met while the other budgets hold (or
    on its own, when the others cannot hold either or no answer came in `time_limit_s`)."""
    deadline = time.monotonic() + time_limit_s
    out = {}
    for budget in budgets:
        others = [(b, problem.budget_rhs(b)) for b in budgets if b is not budget]
        best = min_cost_subject_to(units, budget.kind, others,
                                   time_limit_s=deadline - time.monotonic())
        if best is None:
            best = sum(min(u.costs[budget.kind].values()) for u in units)
        out[budget.text] = budget.format_value(problem.budget_value(budget.kind, best))
    return out
