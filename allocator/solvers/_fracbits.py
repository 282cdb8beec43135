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

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from allocator._problem import Unit
from allocator.solvers._base import Answer, ModelSolver, SolverConfig, register_solver
from allocator.solvers._feasibility import Rhs, feasible
from allocator.solvers._repair import fill, lower_until_feasible
from engine import InvalidSpecError

if TYPE_CHECKING:
    from sensitivity import FracBitsConfig


def round_to_budget(units: list[Unit], rhs: Rhs, fractional: list[float]) -> list[int] | None:
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


@dataclass(frozen=True)
class FracBitsSolverConfig(SolverConfig):
    """Settings of the `fracbits` solver: the relaxation's (`sensitivity.FracBitsConfig`,
    which validates them and owns the defaults) and the quantization of the candidate
    weights. Its time limit is the solve's.

    Attributes:
        steps: Adam steps (None: the relaxation's default).
        lr: Adam learning rate, in bits per step (None: the relaxation's default).
        momentum: Momentum of the smoothed loss gradient (None: the relaxation's default).
        rounding: Rounding of the candidate weights ("gptq" or "rtn"), as the model is
            quantized (the pipeline passes its own).
        group_size: Group size of the scales below 8 bits (None: per channel).
    """

    name: ClassVar[str] = "fracbits"
    steps: int | None = None
    lr: float | None = None
    momentum: float | None = None
    rounding: str = "gptq"
    group_size: int | None = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        self.relaxation()

    def relaxation(self, time_limit_s: float | None = None) -> FracBitsConfig:
        """The relaxation's config (`time_limit_s` None: its default)."""
        from sensitivity import FracBitsConfig

        unset = {"steps", "lr", "momentum"}
        options = {k: v for k, v in dataclasses.asdict(self).items()
                   if v is not None or k not in unset}
        if time_limit_s is not None:
            options["time_limit_s"] = time_limit_s
        return FracBitsConfig(**options)


@register_solver(FracBitsSolverConfig)
class FracBitsSolver(ModelSolver):
    """FracBits: bits learned on the model (needs --model), rounded to fit.

    The model is the one given at construction; see the module docstring."""

    needs_model = True
    config: FracBitsSolverConfig

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        from sensitivity import CostConstraint, relax

        if self.model is None:
            raise InvalidSpecError(
                "solver 'fracbits' learns bit-widths on the model itself: run it through the "
                "pipeline (`allocator solve --model M --solver fracbits`) or pass `model=`.")
        constraints = [CostConstraint(b.text, [u.costs[b.kind] for u in units], limit)
                       for b, limit in rhs]
        relaxed = relax(self.model, [u.names for u in units], [u.choices for u in units],
                        constraints, self.config.relaxation(time_limit_s), seed)
        picks = round_to_budget(units, rhs, relaxed.bits)
        learned = zip(units, relaxed.bits, strict=True)
        extra: dict[str, Any] = {
            "fractional_bits": {n: round(b, 4) for u, b in learned for n in u.names},
            "relaxation_steps": relaxed.steps, "relaxation_stop": relaxed.stop_reason,
            "relaxation_s": round(relaxed.elapsed_s, 3)}
        if relaxed.stop_reason == "time_limit":
            extra["time_limit_reached"] = True
        return (None, "infeasible", extra) if picks is None else (picks, "feasible", extra)
