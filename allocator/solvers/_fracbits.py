"""`fracbits`: bit-widths learned on the model itself (FracBits), rounded onto the budgets.

Unlike the other solvers it needs the model and its calibration data, not only the problem's
tables: `get_solver("fracbits", model=spec)`, which the pipeline does. The relaxation
(`sensitivity.relax`) learns one fractional bit-width per unit with the distillation loss;
rounding then meets every budget exactly: a threshold τ on each unit's position between its
two candidates (up when at or above τ) is bisected to the smallest τ whose rounding fits,
and a greedy fix-up lowers bits where even rounding everything down does not fit, then
spends what is left, most Ω saved per unit of budget first.
"""

from __future__ import annotations

from typing import Any, ClassVar

from allocator._problem import Unit
from allocator.solvers._base import BaseSolver, feasible
from allocator.solvers._repair import fill, lower_until_feasible
from engine import InvalidSpecError


def round_to_budget(units: list[Unit], rhs, fractional: list[float]) -> list[int] | None:
    """Integer choices from fractional bits that meet every budget (None: none can)."""
    lows, highs, position = [], [], []
    for u, b in zip(units, fractional, strict=True):
        below = [c for c in u.choices if c <= b + 1e-9] or [u.choices[0]]
        above = [c for c in u.choices if c >= b - 1e-9] or [u.choices[-1]]
        lo, hi = max(below), min(above)
        lows.append(lo)
        highs.append(hi)
        position.append(1.0 if hi == lo else (b - lo) / (hi - lo))

    def rounded(tau: float) -> list[int]:
        return [hi if t >= tau else lo for lo, hi, t in zip(lows, highs, position, strict=True)]

    thresholds = sorted(set(position) | {1.0 + 1e-9})  # the last one rounds everything down
    if not feasible(units, rhs, rounded(thresholds[-1])):
        picks = lower_until_feasible(units, rhs, rounded(thresholds[-1]))
        return None if picks is None else fill(units, rhs, picks)
    lo_i, hi_i = 0, len(thresholds) - 1  # feasibility only grows with τ
    while lo_i < hi_i:
        mid = (lo_i + hi_i) // 2
        if feasible(units, rhs, rounded(thresholds[mid])):
            hi_i = mid
        else:
            lo_i = mid + 1
    return fill(units, rhs, rounded(thresholds[lo_i]))


class FracBitsSolver(BaseSolver):
    """FracBits on the model given at construction (see the module docstring)."""

    name = "fracbits"
    needs_model: ClassVar[bool] = True
    model_options: ClassVar[bool] = True

    def __init__(self, model: Any = None, **options: Any) -> None:
        from sensitivity import FracBitsConfig

        self.model = model
        self.options = options
        FracBitsConfig(**options)  # validate now, with the caller's names

    def solve_units(self, units, rhs, *, seed, time_limit_s):
        from sensitivity import CostConstraint, FracBitsConfig, relax

        if self.model is None:
            raise InvalidSpecError(
                "solver 'fracbits' learns bit-widths on the model itself: run it through the "
                "pipeline (`allocator solve --model M --solver fracbits`) or pass `model=`.")
        config = FracBitsConfig(**({"time_limit_s": time_limit_s} | self.options))
        constraints = [CostConstraint(b.text, [u.costs[b.kind] for u in units], limit)
                       for b, limit in rhs]
        relaxed = relax(self.model, [u.names for u in units], [u.choices for u in units],
                        constraints, config, seed)
        picks = round_to_budget(units, rhs, relaxed.bits)
        learned = zip(units, relaxed.bits, strict=True)
        extra = {"fractional_bits": {n: round(b, 4) for u, b in learned for n in u.names},
                 "relaxation_steps": relaxed.steps, "relaxation_stop": relaxed.stop_reason,
                 "relaxation_seconds": round(relaxed.seconds, 3)}
        return (None, "infeasible", extra) if picks is None else (picks, "feasible", extra)
