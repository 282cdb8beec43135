"""Moving an assignment onto the budgets: lower the cheapest bits first, then spend what is
left. Shared by the greedy solver, FracBits' rounding and the DDPG agent's repair step.

Both passes pick, step after step, the best single move (one unit one bit-width down, or
up) by a score. A unit's score depends only on its own choice and on which budgets are
over (lowering) or on nothing else (raising), so the candidate moves live in a heap that is
updated for the moved unit only: O(log n) per step instead of a scan of every unit. The
heap is rebuilt when the set of over-spent budgets changes, and in `fill` moves that did not
fit are set aside until some total falls. Ties go to the first unit, as a scan would.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable

from allocator._budget import REL_TOL
from allocator._problem import Unit
from allocator.solvers._feasibility import Rhs, feasible

# Moves made between two looks at the clock.
_CLOCK_EVERY = 256


class RepairTimeout(Exception):
    """The deadline passed before the lowering pass met the budgets (internal: solvers turn
    it into their named timeout)."""


def _totals(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[float]:
    return [sum(u.costs[b.kind][c] for u, c in zip(units, picks, strict=True)) / max(lim, 1e-12)
            for b, lim in rhs]


def _delta(u: Unit, rhs: Rhs, old: int, new: int) -> list[float]:
    return [(u.costs[b.kind][new] - u.costs[b.kind][old]) / max(lim, 1e-12) for b, lim in rhs]


def _neighbour(u: Unit, pick: int, *, up: bool) -> int | None:
    """The next allowed bit-width above (or below) `pick`, None at the end."""
    options = [c for c in u.choices if (c > pick if up else c < pick)]
    if not options:
        return None
    return min(options) if up else max(options)


# A heap entry: score, unit index, the unit's choice when scored, its next choice, deltas.
_Entry = tuple[float, int, int, int, list[float]]
# Scores a move: (unit, old, new, delta) -> score; None (or not finite) is no move.
Score = Callable[[Unit, int, int, list[float]], float | None]


def _entry(units: list[Unit], rhs: Rhs, picks: list[int], i: int, *, up: bool,
           score: Score) -> _Entry | None:
    u = units[i]
    nxt = _neighbour(u, picks[i], up=up)
    if nxt is None:
        return None
    d = _delta(u, rhs, picks[i], nxt)
    value = score(u, picks[i], nxt, d)
    if value is None or math.isnan(value) or value == math.inf:  # a scan never picks these
        return None
    return (value, i, picks[i], nxt, d)


def _heap(units: list[Unit], rhs: Rhs, picks: list[int], *, up: bool,
          score: Score) -> list[_Entry]:
    entries = [e for i in range(len(units))
               if (e := _entry(units, rhs, picks, i, up=up, score=score)) is not None]
    heapq.heapify(entries)
    return entries


def _over(totals: list[float]) -> tuple[bool, ...]:
    return tuple(t > 1 + REL_TOL for t in totals)


def _check_clock(step: int, deadline: float | None) -> bool:
    return (deadline is not None and step % _CLOCK_EVERY == 0
            and time.monotonic() > deadline)


def lower_until_feasible(units: list[Unit], rhs: Rhs, picks: list[int], *,
                         deadline: float | None = None) -> list[int] | None:
    """Lowers bits, the layer losing the least Ω per unit of over-spent budget saved first,
    until every budget holds (None when even the lowest bits do not fit). Budget totals
    are kept incrementally, normalized to 1 = the limit.

    Raises:
        RepairTimeout: `deadline` (a `time.monotonic()` value) passed first.
    """
    picks = list(picks)
    totals = _totals(units, rhs, picks)
    over = _over(totals)

    def loss_per_saving(u: Unit, old: int, new: int, d: list[float]) -> float | None:
        saved = -sum(di for di, o in zip(d, over, strict=True) if o)
        return (u.omega[new] - u.omega[old]) / saved if saved > 0 else None

    heap = _heap(units, rhs, picks, up=False, score=loss_per_saving)
    step = 0
    while any(over):
        step += 1
        if _check_clock(step, deadline):
            raise RepairTimeout
        if not heap:
            return None
        _, i, old, nxt, d = heapq.heappop(heap)
        if picks[i] != old:  # stale: the unit moved since it was scored
            continue
        picks[i] = nxt
        totals = [t + di for t, di in zip(totals, d, strict=True)]
        if _over(totals) != over:
            over = _over(totals)
            heap = _heap(units, rhs, picks, up=False, score=loss_per_saving)
        elif (e := _entry(units, rhs, picks, i, up=False, score=loss_per_saving)) is not None:
            heapq.heappush(heap, e)
    return picks


def fill(units: list[Unit], rhs: Rhs, picks: list[int], *,
         deadline: float | None = None) -> list[int]:
    """Raises bits, the most Ω saved per unit of budget used first, while every budget
    still holds. Past `deadline` it stops and returns what it has (still feasible)."""
    picks = list(picks)
    totals = _totals(units, rhs, picks)

    def minus_gain_per_cost(u: Unit, old: int, new: int, d: list[float]) -> float | None:
        gain = u.omega[old] - u.omega[new]
        return None if gain <= 0 else -gain / max(sum(d), 1e-12)

    heap = _heap(units, rhs, picks, up=True, score=minus_gain_per_cost)
    waiting: list[_Entry] = []  # moves that did not fit the totals when popped
    step = 0
    while heap:
        step += 1
        if _check_clock(step, deadline):
            break
        entry = heapq.heappop(heap)
        _, i, old, nxt, d = entry
        if picks[i] != old:
            continue
        if any(t + di > 1 + REL_TOL for t, di in zip(totals, d, strict=True)):
            waiting.append(entry)
            continue
        picks[i] = nxt
        totals = [t + di for t, di in zip(totals, d, strict=True)]
        if any(di < 0 for di in d) and waiting:  # some total fell: set-aside moves may fit
            for w in waiting:
                heapq.heappush(heap, w)
            waiting.clear()
        if (e := _entry(units, rhs, picks, i, up=True, score=minus_gain_per_cost)) is not None:
            heapq.heappush(heap, e)
    return picks


def repair(units: list[Unit], rhs: Rhs, picks: list[int], *,
           deadline: float | None = None) -> list[int] | None:
    """Meets the budgets (`lower_until_feasible`), then spends what is left (`fill`)."""
    lowered = lower_until_feasible(units, rhs, picks, deadline=deadline)
    if lowered is None:
        return None
    filled = fill(units, rhs, lowered, deadline=deadline)
    return filled if feasible(units, rhs, filled) else None
