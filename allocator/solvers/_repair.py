"""Moving an assignment onto the budgets: lower the cheapest bits first, then spend what is
left. Shared by the greedy solver and the DDPG agent's repair step."""

from __future__ import annotations

import math
from collections.abc import Callable

from allocator._budget import REL_TOL
from allocator._problem import Unit
from allocator.solvers._feasibility import Rhs, feasible


def _totals(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[float]:
    return [sum(u.costs[b.kind][c] for u, c in zip(units, picks, strict=True)) / max(lim, 1e-12)
            for b, lim in rhs]


def _delta(u: Unit, rhs: Rhs, old: int, new: int) -> list[float]:
    return [(u.costs[b.kind][new] - u.costs[b.kind][old]) / max(lim, 1e-12) for b, lim in rhs]


Move = tuple[int, int, list[float]]
"""A unit's index, its new choice, and the change of each normalized budget total."""
Score = Callable[[Unit, int, int, list[float]], float | None]


def _best_move(units: list[Unit], rhs: Rhs, picks: list[int], *, up: bool,
               score: Score) -> Move | None:
    """Over every unit's neighbouring choice (the next bit-width up, or down), the move
    with the lowest `score(unit, old, new, delta)`; None scores are no move. Ties keep the
    first unit."""
    best, best_score = None, math.inf
    for i, u in enumerate(units):
        options = [c for c in u.choices if (c > picks[i] if up else c < picks[i])]
        if not options:
            continue
        nxt = min(options) if up else max(options)
        d = _delta(u, rhs, picks[i], nxt)
        value = score(u, picks[i], nxt, d)
        if value is not None and value < best_score:
            best, best_score = (i, nxt, d), value
    return best


def _moved(picks: list[int], totals: list[float], move: Move) -> list[float]:
    """Applies `move` to `picks` in place; returns the new budget totals."""
    i, nxt, d = move
    picks[i] = nxt
    return [t + di for t, di in zip(totals, d, strict=True)]


def lower_until_feasible(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[int] | None:
    """Lowers bits, the layer losing the least Ω per unit of over-spent budget saved first,
    until every budget holds (None when even the lowest bits do not fit). Budget totals
    are kept incrementally, normalized to 1 = the limit."""
    picks = list(picks)
    totals = _totals(units, rhs, picks)

    def loss_per_saving(u: Unit, old: int, new: int, d: list[float]) -> float | None:
        saved = -sum(di for di, t in zip(d, totals, strict=True) if t > 1 + REL_TOL)
        return (u.omega[new] - u.omega[old]) / saved if saved > 0 else None

    while any(t > 1 + REL_TOL for t in totals):
        move = _best_move(units, rhs, picks, up=False, score=loss_per_saving)
        if move is None:
            return None
        totals = _moved(picks, totals, move)
    return picks


def fill(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[int]:
    """Raises bits, the most Ω saved per unit of budget used first, while every budget
    still holds."""
    picks = list(picks)
    totals = _totals(units, rhs, picks)

    def minus_gain_per_cost(u: Unit, old: int, new: int, d: list[float]) -> float | None:
        gain = u.omega[old] - u.omega[new]
        if gain <= 0 or any(t + di > 1 + REL_TOL for t, di in zip(totals, d, strict=True)):
            return None
        return -gain / max(sum(d), 1e-12)

    while (move := _best_move(units, rhs, picks, up=True, score=minus_gain_per_cost)):
        totals = _moved(picks, totals, move)
    return picks


def repair(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[int] | None:
    """Meets the budgets (`lower_until_feasible`), then spends what is left (`fill`)."""
    lowered = lower_until_feasible(units, rhs, picks)
    if lowered is None:
        return None
    filled = fill(units, rhs, lowered)
    return filled if feasible(units, rhs, filled) else None
