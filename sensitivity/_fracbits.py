"""FracBits: fractional per-layer bit-widths learned by distillation under a cost budget.

Each layer's weight is taken at the two candidate bit-widths around its fractional bit-width
b and linearly interpolated, W(b) = Q_lo + t (Q_hi - Q_lo) with t = (b - lo) / (hi - lo), so
the distillation loss to the FP32 model is differentiable in b. The expected cost of every
budget is the same interpolation of each layer's cost table.

The paper adds a penalty on the expected cost to the loss. Here the budget is a constraint
kept by projection instead: each step moves the bits along the loss saved per unit of budget
(the smoothed loss gradient per bit divided by each layer's cost per bit, normalized so the
steepest layer moves `lr` bits), then shifts all bits by one common amount so the tightest
budget is met exactly. A multiplier on a penalty had to be tuned to each loss's scale, and
with dual ascent it swung the expected cost between 0.7 and 1.45 of the budget on
digits-cnn, where near-FP32 losses are flat and the batch gradients noisy; the projection
needs no scale and ends on the budget. After a few hundred steps on calibration batches (no
training run) the caller rounds the bits so the budget holds exactly.

The candidate weights are the engine's own (`CandidateWeights`: each candidate bit-width
applied uniformly with the pipeline's rounding, weights only, and read back).

As an estimator, the learned bits give Ω too: the loss gradient per bit g_l at the learned
point, averaged over the second half of the steps, fixes the scale κ_l of the quantization
noise law Ω_l(b) = κ_l (4^-b - 4^-b_max), whose slope at b_l equals -g_l.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

import engine
from sensitivity._base import BaseSensitivityEstimator, ProgressFn
from sensitivity._candidates import CandidateWeights, Swapped, weight_only_config
from sensitivity._table import LayerSensitivity, SensitivityTable


@dataclass(frozen=True)
class FracBitsConfig:
    """Settings of the FracBits relaxation.

    Attributes:
        budget_bits: Mean weight bits the estimator learns under (None: the middle of the
            candidate range). The solver takes its budgets from the problem instead.
        steps: Adam steps (one calibration batch each).
        lr: Adam learning rate, in bits per step.
        momentum: Momentum of the smoothed loss gradient (calibration batches are noisy).
        rounding: Rounding of the candidate weights ("gptq" or "rtn").
        group_size: Group size of the scales below 8 bits (None: per channel).
        time_limit_s: Wall-clock limit of the optimization (it stops early, marked).
    """

    name: ClassVar[str] = "fracbits"
    budget_bits: float | None = None
    steps: int = 300
    lr: float = 0.05
    momentum: float = 0.9
    rounding: str = "gptq"
    group_size: int | None = 128
    time_limit_s: float = 600.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise engine.InvalidSpecError(f"`steps` must be >= 1, got {self.steps}.")
        if not self.lr > 0:
            raise engine.InvalidSpecError(f"`lr` must be positive, got {self.lr}.")
        if not self.time_limit_s > 0:
            raise engine.InvalidSpecError(
                f"`time_limit_s` must be positive, got {self.time_limit_s}.")
        if not 0 <= self.momentum < 1:
            raise engine.InvalidSpecError(f"`momentum` must be in [0, 1), got {self.momentum}.")
        weight_only_config({}, rounding=self.rounding, group_size=self.group_size)
        if self.budget_bits is not None and not self.budget_bits > 0:
            raise engine.InvalidSpecError(
                f"`budget_bits` must be positive, got {self.budget_bits}.")


@dataclass(frozen=True)
class CostConstraint:
    """One budget: per group a cost per candidate bit-width, and the limit of their sum."""

    name: str
    tables: Sequence[dict[int, float]]
    limit: float


@dataclass
class Relaxation:
    """What the optimization learned, per group of layers that share a bit-width."""

    bits: list[float]
    loss_gradient_per_bit: list[float]
    steps: int
    stop_reason: str
    elapsed_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def _segment(choices: tuple[int, ...], b: float) -> tuple[int, int]:
    """Indices (lo, hi) of the candidates around b (equal at the ends)."""
    if b <= choices[0]:
        return 0, 0
    for i in range(len(choices) - 1):
        if b <= choices[i + 1]:
            return i, i + 1
    return len(choices) - 1, len(choices) - 1


def _interp(values: dict[int, float] | dict[int, torch.Tensor], choices: tuple[int, ...],
            b: torch.Tensor):
    lo, hi = _segment(choices, float(b.detach()))
    if lo == hi:
        return values[choices[lo]] + 0.0 * b
    t = (b - choices[lo]) / (choices[hi] - choices[lo])
    return values[choices[lo]] + t * (values[choices[hi]] - values[choices[lo]])


def _interpolated(cands: CandidateWeights, groups: Sequence[Sequence[str]],
                  choices: list[tuple[int, ...]], b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter name -> each layer's weight (and bias) at its group's fractional bits."""
    out: dict[str, torch.Tensor] = {}
    for gi, group in enumerate(groups):
        for n in group:
            out[f"{n}.weight"] = _interp(cands.weights[n], choices[gi], b[gi]).float()
            if cands.biases[n]:
                out[f"{n}.bias"] = _interp(cands.biases[n], choices[gi], b[gi]).float()
    return out


@contextlib.contextmanager
def _frozen(model: torch.nn.Module):
    """No parameter gradients while the bits are learned (the shared model is restored)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _costs(constraints: Sequence[CostConstraint], choices: list[tuple[int, ...]],
           bits: torch.Tensor) -> list[torch.Tensor]:
    """Each budget's interpolated total cost relative to its limit (1 = on the limit)."""
    return [sum(_interp(t, ch, bits[i]) for i, (t, ch) in
                enumerate(zip(con.tables, choices, strict=True))) / con.limit
            for con in constraints]


def _project(bits: torch.Tensor, choices: list[tuple[int, ...]],
             constraints: Sequence[CostConstraint]) -> torch.Tensor:
    """Shifts every bit-width by one common δ (clamped to each group's range) so that the
    tightest budget is met exactly, or as closely as the ranges allow."""
    lows = torch.tensor([c[0] for c in choices], dtype=bits.dtype)
    highs = torch.tensor([c[-1] for c in choices], dtype=bits.dtype)

    def worst(delta: float) -> float:
        return max(float(r) for r in _costs(constraints, choices,
                                              torch.clamp(bits - delta, lows, highs)))

    lo, hi = -float(highs.max() - lows.min()), float(highs.max() - lows.min())
    if worst(lo) <= 1.0:
        return torch.clamp(bits - lo, lows, highs)
    for _ in range(50):  # worst() falls as delta grows
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if worst(mid) <= 1.0 else (mid, hi)
    return torch.clamp(bits - hi, lows, highs)


def relax(spec: Any, groups: Sequence[Sequence[str]], choices: Sequence[Sequence[int]],
          constraints: Sequence[CostConstraint], config: FracBitsConfig, seed: int,
          progress: ProgressFn | None = None) -> Relaxation:
    """Learns fractional bit-widths per group of layers under the cost constraints.

    Each step: the distillation loss's gradient per bit on one calibration batch, smoothed
    by momentum, divided by each group's share of the budget per bit (loss saved per unit
    of budget), scaled so the most valuable group moves `lr` bits; then the projection back
    onto the budget.

    Args:
        spec: The model (its `build`, `calibration_batches` and distillation `loss`).
        groups: Layer names that share one bit-width (a layer alone is a group of one).
        choices: Sorted candidate bit-widths per group.
        constraints: Budgets as per-group cost tables and limits.
        config: Optimization settings.
        seed: Seed of the batch order.
    """
    start = time.perf_counter()
    choices = [tuple(sorted(c)) for c in choices]
    names = [n for g in groups for n in g]
    cands = CandidateWeights(spec, sorted({b for c in choices for b in c}), names,
                             rounding=config.rounding, group_size=config.group_size)
    model = spec.build()
    with _frozen(model):
        batches = spec.calibration_batches()
        top = torch.tensor([float(c[-1]) for c in choices], dtype=torch.float64)
        bits = _project(top.clone(), choices, constraints)
        gen = torch.Generator().manual_seed(seed)
        velocity = torch.zeros(len(groups), dtype=torch.float64)
        grad_sum = torch.zeros(len(groups), dtype=torch.float64)
        grad_count, step, stop = 0, 0, "max_steps"
        history: list[dict[str, float]] = []
        order: list[int] = []
        for step in range(1, config.steps + 1):
            if not order:
                order = torch.randperm(len(batches), generator=gen).tolist()
            batch = batches[order.pop()]
            b = bits.clone().requires_grad_(True)
            overrides = _interpolated(cands, groups, choices, b)
            task = spec.loss(Swapped(model, overrides), batch).double()
            (g_task,) = torch.autograd.grad(task, b)
            ratios = _costs(constraints, choices, b)
            (slope,) = torch.autograd.grad(sum(ratios), b)
            velocity = config.momentum * velocity + (1 - config.momentum) * g_task
            value = velocity / slope.clamp(min=1e-12)  # loss change per unit of budget
            with torch.no_grad():
                bits = _project(bits - config.lr * value / value.abs().max().clamp(min=1e-30),
                                choices, constraints)
            if step > config.steps // 2:
                grad_sum += g_task
                grad_count += 1
            if step % 10 == 0 or step == config.steps:
                history.append({"step": step, "loss": float(task.detach()),
                                **{c.name: float(r.detach())
                                   for c, r in zip(constraints, ratios, strict=True)}})
            if progress is not None:
                progress(1)
            if time.perf_counter() - start > config.time_limit_s:
                stop = "time_limit"
                break
    mean_grad = grad_sum / grad_count if grad_count else g_task
    return Relaxation([float(x) for x in bits], [float(g) for g in mean_grad], step, stop,
                      time.perf_counter() - start, history)


def noise_law_omega(b_learned: float, grad_per_bit: float,
                    bits: Sequence[int]) -> dict[int, float]:
    """Ω_l(b) = κ (4^-b - 4^-b_max) with its slope at the learned b equal to the loss gradient."""
    kappa = max(-grad_per_bit, 0.0) * 4.0 ** b_learned / (2.0 * math.log(2.0))
    top = max(bits)
    return {b: kappa * (4.0 ** -b - 4.0 ** -top) for b in bits}


class FracBitsEstimator(BaseSensitivityEstimator):
    """Bits learned by `relax` under a mean-bits budget, and Ω from the loss gradient per
    bit at the learned point (`noise_law_omega`)."""

    config_cls = FracBitsConfig
    progress_unit = "steps"
    config: FracBitsConfig

    def progress_total(self, spec: Any, bits: Sequence[int]) -> int:
        return self.config.steps

    def estimate(self, spec: Any, bits: Sequence[int], *, seed: int,
                 progress: ProgressFn | None = None) -> SensitivityTable:
        start = time.perf_counter()
        config = self.config
        layers = spec.layers()
        bits = sorted(bits)
        target = (config.budget_bits if config.budget_bits is not None
                  else (bits[0] + bits[-1]) / 2)
        total = sum(x.params for x in layers)
        con = CostConstraint("bits", [{b: float(x.params * b) for b in bits} for x in layers],
                             target * total)
        relaxed = relax(spec, [(x.name,) for x in layers], [tuple(bits)] * len(layers), [con],
                        config, seed, progress)
        out = {}
        for x, b, g in zip(layers, relaxed.bits, relaxed.loss_gradient_per_bit, strict=True):
            flags = ("nonnegative_gradient",) if g >= 0 else ()
            out[x.name] = LayerSensitivity(
                noise_law_omega(b, g, bits), probes=relaxed.steps, stop_reason="learned",
                params=x.params, flags=flags,
                extra={"fractional_bits": b, "loss_gradient_per_bit": g, "budget_bits": target,
                       "optimization_stop": relaxed.stop_reason})
        return SensitivityTable(out, tuple(bits), self.name, seed, spec.name, asdict(config),
                                time.perf_counter() - start)
