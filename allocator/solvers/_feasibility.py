"""Assignments of a problem's units and what they cost: totals, feasibility under the
budgets, the least-cost assignment and the uniform one. Every solver builds on these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from allocator._budget import Budget, within
from allocator._problem import Problem, Unit

# A budget with its right-hand side as a sum of unit costs (`Problem.budget_rhs`).
Rhs = list[tuple[Budget, float]]


def unit_cost(units: list[Unit], kind: str, picks: Sequence[int]) -> float:
    """The total `kind` cost of one choice per unit."""
    return sum(u.costs[kind][b] for u, b in zip(units, picks, strict=True))


def feasible(units: list[Unit], rhs: Rhs, picks: Sequence[int]) -> bool:
    """Whether one choice per unit meets every budget (`allocator._budget.within`)."""
    return all(within(unit_cost(units, budget.kind, picks), limit) for budget, limit in rhs)


def fitting_choices(units: list[Unit], rhs: Rhs) -> list[Unit] | None:
    """The units with only the choices whose own cost meets every budget (costs are >= 0,
    so a choice over a budget alone is in no feasible assignment); None when a unit has no
    such choice (the problem is infeasible). The same list when nothing is dropped."""
    out, dropped = [], False
    for u in units:
        keep = tuple(b for b in u.choices
                     if all(within(u.costs[budget.kind][b], limit) for budget, limit in rhs))
        if not keep:
            return None
        if len(keep) < len(u.choices):
            dropped = True
            u = replace(u, choices=keep, omega={b: u.omega[b] for b in keep},
                        costs={k: {b: c[b] for b in keep} for k, c in u.costs.items()})
        out.append(u)
    return out if dropped else units


def least_cost(units: list[Unit], rhs: Rhs) -> list[int]:
    """Per unit the choice with the least normalized budgeted cost (lowest bits if none)."""
    def key(u: Unit, b: int) -> tuple[float, int]:
        return (sum(u.costs[bud.kind][b] / max(lim, 1e-12) for bud, lim in rhs), b)
    return [min(key(u, b) for b in u.choices)[1] for u in units]


def uniform_choice(choices: Sequence[int], bits: int) -> int:
    """`bits` when allowed, else the nearest allowed width below it, else the smallest."""
    return max([c for c in choices if c <= bits] or [min(choices)])


def uniform_picks(units: list[Unit], bits: int) -> list[int]:
    """Every unit at `bits` (`uniform_choice`)."""
    return [uniform_choice(u.choices, bits) for u in units]


def uniform_assignment(problem: Problem, bits: int) -> dict[str, int]:
    """Layer name -> bits with every layer at `bits` where it can take it, else at its
    nearest allowed width below, else at its smallest; tied layers share their group's
    choice and fixed or allowed bits are kept (`Problem.units`). In model order."""
    units = problem.units()
    picked = {n: b for u, b in zip(units, uniform_picks(units, bits), strict=True)
              for n in u.names}
    return {x.name: picked[x.name] for x in problem.layers}
