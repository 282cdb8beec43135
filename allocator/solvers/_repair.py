"""Moving an assignment onto the budgets: lower the cheapest bits first, then spend what is
left. Shared by the greedy solver and the DDPG agent's repair step."""

from __future__ import annotations

import math

from allocator._budget import REL_TOL
from allocator._problem import Unit
from allocator.solvers._feasibility import Rhs, feasible


def _totals(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[float]:
    return [sum(u.costs[b.kind][c] for u, c in zip(units, picks, strict=True)) / max(lim, 1e-12)
            for b, lim in rhs]


def _delta(u: Unit, rhs: Rhs, old: int, new: int) -> list[float]:
    return [(u.costs[b.kind][new] - u.costs[b.kind][old]) / max(lim, 1e-12) for b, lim in rhs]


def lower_until_feasible(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[int] | None:
    """Lowers bits, the layer losing the least Ω per unit of over-spent budget saved first,
    until every budget holds (None when even the lowest bits do not fit). Budget totals
    are kept incrementally, normalized to 1 = the limit."""
    picks = list(picks)
    totals = _totals(units, rhs, picks)
    while any(t > 1 + REL_TOL for t in totals):
        best, best_score = None, math.inf
        for i, u in enumerate(units):
            lower = [c for c in u.choices if c < picks[i]]
            if not lower:
                continue
            nxt = max(lower)
            d = _delta(u, rhs, picks[i], nxt)
            saved = -sum(di for di, t in zip(d, totals, strict=True) if t > 1 + REL_TOL)
            if saved > 0:
                score = (u.omega[nxt] - u.omega[picks[i]]) / saved
                if score < best_score:
                    best, best_score = (i, nxt, d), score
        if best is None:
            return None
        i, nxt, d = best
        picks[i] = nxt
        totals = [t + di for t, di in zip(totals, d, strict=True)]
    return picks


def fill(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[int]:
    """Raises bits, the most Ω saved per unit of budget used first, while every budget
    still holds."""
    picks = list(picks)
    totals = _totals(units, rhs, picks)
    while True:
        best, best_score = None, 0.0
        for i, u in enumerate(units):
            higher = [c for c in u.choices if c > picks[i]]
            if not higher:
                continue
            nxt = min(higher)
            gain = u.omega[picks[i]] - u.omega[nxt]
            if gain <= 0:
                continue
            d = _delta(u, rhs, picks[i], nxt)
            if any(t + di > 1 + REL_TOL for t, di in zip(totals, d, strict=True)):
                continue
            score = gain / max(sum(d), 1e-12)
            if score > best_score:
                best, best_score = (i, nxt, d), score
        if best is None:
            return picks
        i, nxt, d = best
        picks[i] = nxt
        totals = [t + di for t, di in zip(totals, d, strict=True)]


def repair(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[int] | None:
    """Meets the budgets (`lower_until_feasible`), then spends what is left (`fill`)."""
    lowered = lower_until_feasible(units, rhs, picks)
    if lowered is None:
        return None
    filled = fill(units, rhs, lowered)
    return filled if feasible(units, rhs, filled) else None
