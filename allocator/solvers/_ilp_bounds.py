"""Lagrangian bounds for the allocation ILP: a lower bound, a feasible assignment to start
from, and the columns that no assignment as good as a known one can use (fixed at 0 before
the backend sees the program).

With the budget rows relaxed by multipliers λ >= 0, the best choice of each unit is
independent: L(λ) = Σ_i min_b (c_ib + λ·w_ib) - λ·W is a lower bound on the optimum for
every λ >= 0, and any assignment x that meets the budgets has
objective(x) >= L(λ) + Σ (reduced costs of its choices), the reduced cost of a choice being
its excess over its unit's minimum. A choice whose reduced cost exceeds UB - L(λ), UB the
objective of a feasible assignment, is in no assignment at least as good: fixing it at 0
keeps every optimum. On these problems that removes most columns, and the backend proves
the optimum on what is left in a fraction of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Subgradient steps; the step factor halves after this many steps without a better bound.
_STEPS, _PATIENCE = 60, 4


@dataclass(frozen=True)
class Columns:
    """The program's columns: objective and normalized budget rows, unit after unit.

    Attributes:
        objective: Per column, the value minimized.
        rows: Per budget, its coefficient per column (normalized: the limit is `limits`).
        limits: Per budget, its right-hand side.
        starts: Index of each unit's first column, and the number of columns last.
        upper: Per column 1, or 0 where it is fixed (it breaks a budget on its own).
        tolerance: The backend's feasibility tolerance on a row: an answer may overspend
            each limit by this much, and the fixing allows for it.
    """

    objective: np.ndarray
    rows: np.ndarray
    limits: np.ndarray
    starts: np.ndarray
    upper: np.ndarray
    tolerance: float

    def first_min(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per unit the least of `values` over its open columns, and a 0/1 column vector
        with the first column reaching it."""
        values = np.where(self.upper > 0, values, np.inf)
        heads, lengths = self.starts[:-1], np.diff(self.starts)
        mins = np.minimum.reduceat(values, heads)
        at_min = (values <= np.repeat(mins, lengths)).astype(np.int64)
        seen = np.cumsum(at_min)  # at_min's running count: 1 only at each unit's first
        before = np.repeat(np.concatenate([[0], seen[heads[1:] - 1]]), lengths)
        return mins, (at_min * (seen - before == 1)).astype(float)

    def meets(self, x: np.ndarray) -> bool:
        return bool(np.all(self.rows @ x <= self.limits))


@dataclass(frozen=True)
class Bound:
    """A Lagrangian bound: L(λ) with its multipliers and the assignment that reaches it
    (each unit at its least c + λ·w), and the best assignment meeting the budgets seen on
    the way (0/1 column vectors; None if none did)."""

    value: float
    multipliers: np.ndarray
    relaxed: np.ndarray
    feasible: np.ndarray | None


def lagrangian_bound(cols: Columns, upper_bound: float) -> Bound:
    """The best L(λ) found by projected subgradient steps (Polyak's step towards
    `upper_bound`, an estimate of the optimum from above)."""
    lam = np.zeros(len(cols.rows))
    best_value, best_lam, best_x = -np.inf, lam, np.zeros(0)
    feasible, feasible_value = None, np.inf
    factor, stale = 1.0, 0
    for _ in range(_STEPS):
        mins, x = cols.first_min(cols.objective + lam @ cols.rows)
        value = float(mins.sum() - lam @ cols.limits)
        if cols.meets(x) and float(cols.objective @ x) < feasible_value:
            feasible, feasible_value = x, float(cols.objective @ x)
            upper_bound = min(upper_bound, feasible_value)
        if value > best_value:
            best_value, best_lam, best_x, stale = value, lam, x, 0
        elif (stale := stale + 1) >= _PATIENCE:
            factor, stale = factor / 2, 0
        slope = cols.rows @ x - cols.limits
        gap = upper_bound - value
        if gap <= 0 or factor < 1e-4 or not np.any(slope):
            break
        step = np.maximum(lam + factor * gap / float(slope @ slope) * slope, 0.0)
        if np.array_equal(step, lam):
            break  # x meets the budgets where λ = 0: L(λ) is the relaxation's optimum
        lam = step
    return Bound(best_value, best_lam, best_x, feasible)


def fixable(cols: Columns, bound: Bound, upper_bound: float) -> np.ndarray:
    """0/1 per column: 1 where the column is in no assignment with an objective up to
    `upper_bound` (the objective of an assignment meeting the budgets), by its reduced
    cost under `bound`'s multipliers. Allows for the backend's feasibility tolerance and
    for rounding."""
    lam = bound.multipliers
    values = cols.objective + lam @ cols.rows
    mins, _ = cols.first_min(values)
    reduced = values - np.repeat(mins, np.diff(cols.starts))
    slack = (upper_bound - bound.value + float(lam.sum()) * cols.tolerance
             + 1e-9 * abs(upper_bound) + 1e-12 * float(np.max(np.abs(cols.objective))))
    return ((cols.upper > 0) & (reduced > slack)).astype(float)
