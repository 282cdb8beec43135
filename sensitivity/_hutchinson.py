"""Hutchinson estimator of per-layer Hessian traces (HAWQ-V2), and Ω in the HAWQ-V3 form.

Tr(H_l) = E[v_lᵀ (H v)_l] for Rademacher v. The gradient graph of one calibration batch is
built once and reused for every probe of that batch (double back-propagation), and one
probe over all layers yields every layer's sample at once. Each layer stops on its own
relative standard error; the probes after that carry v only on the layers still running,
which keeps the estimate unbiased (v_l·(H v)_l with v zero elsewhere has the same mean)
and drops the cross-layer noise of the finished ones.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

import engine
from sensitivity._base import BaseSensitivityEstimator, ProgressFn
from sensitivity._candidates import weight_only_config
from sensitivity._table import LayerSensitivity, SensitivityTable
from sensitivity._weight_error import weight_errors


@dataclass(frozen=True)
class HutchinsonConfig:
    """Settings of the Hutchinson estimator.

    Attributes:
        min_probes: Samples per layer before it may stop.
        max_probes: Samples per layer at most.
        rel_tol: A layer stops when std_error <= rel_tol * |trace|.
        probes_per_batch: Probes drawn per calibration batch (per built gradient graph).
        time_limit_s: Wall-clock limit of the trace estimation.
        rounding: Rounding whose weight error enters Ω ("rtn" or "gptq").
        group_size: Group size of the scales below 8 bits (None: per channel).
    """

    name: ClassVar[str] = "hutchinson"
    min_probes: int = 16
    max_probes: int = 256
    rel_tol: float = 0.1
    probes_per_batch: int = 8
    time_limit_s: float = 600.0
    rounding: str = "gptq"
    group_size: int | None = 128

    def __post_init__(self) -> None:
        if not 1 <= self.min_probes <= self.max_probes:
            raise engine.InvalidSpecError(
                f"need 1 <= `min_probes` <= `max_probes`, "
                f"got {self.min_probes}, {self.max_probes}.")
        if not self.rel_tol > 0:
            raise engine.InvalidSpecError(f"`rel_tol` must be positive, got {self.rel_tol}.")
        if self.probes_per_batch < 1:
            raise engine.InvalidSpecError(
                f"`probes_per_batch` must be >= 1, got {self.probes_per_batch}.")
        if not self.time_limit_s > 0:
            raise engine.InvalidSpecError(
                f"`time_limit_s` must be positive, got {self.time_limit_s}.")
        weight_only_config({}, rounding=self.rounding, group_size=self.group_size)


def math_attention() -> contextlib.AbstractContextManager[None]:
    """A context where attention runs on the math kernel: the default CPU flash attention
    has no double backward, which Hessian-vector products need."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # older torch
        return contextlib.nullcontext()


@dataclass
class _Samples:
    values: list[float]

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def std_error(self) -> float:
        n = len(self.values)
        if n < 2:
            return math.inf
        m = self.mean
        var = math.fsum((v - m) ** 2 for v in self.values) / (n - 1)
        return math.sqrt(var / n)


def hessian_traces(spec: Any, names: list[str], config: HutchinsonConfig, seed: int,
                   progress: ProgressFn | None = None) -> dict[str, tuple[_Samples, str]]:
    """Layer -> (trace samples, stop reason)."""
    model = spec.build()
    modules = engine.quantizable_modules(model)
    weights = {n: modules[n].weight for n in names}
    for w in weights.values():
        w.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    samples = {n: _Samples([]) for n in names}
    reasons: dict[str, str] = {}
    batches = spec.calibration_batches()
    deadline = time.monotonic() + config.time_limit_s
    step = 0
    try:
        while len(reasons) < len(names):
            batch = batches[step % len(batches)]
            step += 1
            active = [n for n in names if n not in reasons]
            params = [weights[n] for n in active]
            with math_attention():
                loss = spec.loss(model, batch)
                grads = torch.autograd.grad(loss, params, create_graph=True)
                for _ in range(config.probes_per_batch):
                    vs = [torch.randint(0, 2, p.shape, generator=gen).mul_(2).sub_(1).to(p.dtype)
                          for p in params]
                    hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
                    for n, v, hv in zip(active, vs, hvs, strict=True):
                        samples[n].values.append(float((v * hv).sum()))
                    if progress is not None:
                        progress(len(active))
            del grads, loss
            for n in active:
                s = samples[n]
                if len(s.values) >= config.min_probes and \
                        s.std_error <= config.rel_tol * abs(s.mean):
                    reasons[n] = "converged"
                elif len(s.values) >= config.max_probes:
                    reasons[n] = "max_probes"
            if time.monotonic() > deadline:
                for n in names:
                    reasons.setdefault(n, "time_limit")
    finally:
        for w in weights.values():
            w.requires_grad_(False)
            w.grad = None
    return {n: (samples[n], reasons[n]) for n in names}


class HutchinsonEstimator(BaseSensitivityEstimator):
    """Ω_l(b) = Tr(H_l)/n_l · weight_error_l(b): each layer's Hessian trace from Hutchinson
    probes, times how far the engine's rounding moves its weight at b bits."""

    config_cls = HutchinsonConfig
    progress_unit = "layer-probes"
    config: HutchinsonConfig

    def progress_total(self, spec: Any, bits: Sequence[int]) -> int:
        return len(spec.layers()) * self.config.max_probes

    def estimate(self, spec: Any, bits: Sequence[int], *, seed: int,
                 progress: ProgressFn | None = None) -> SensitivityTable:
        start = time.perf_counter()
        config = self.config
        bits = list(bits)
        layers = spec.layers()
        names = [x.name for x in layers]
        traces = hessian_traces(spec, names, config, seed, progress)
        inputs = [b.inputs for b in spec.calibration_batches()]
        errors = weight_errors(spec.build(), names, inputs, bits, rounding=config.rounding,
                               group_size=config.group_size)
        out = {}
        for x in layers:
            s, reason = traces[x.name]
            trace, se = s.mean, s.std_error
            flags = []
            if not math.isfinite(trace):
                flags.append("nonfinite_trace")
            elif trace < 0:
                flags.append("negative_trace")
            # Ω >= 0 for the solvers: a negative or non-finite trace counts as 0 (flagged)
            per_param = max(trace, 0.0) / max(x.params, 1) if math.isfinite(trace) else 0.0
            out[x.name] = LayerSensitivity(
                omega={b: per_param * errors[x.name][b] for b in bits}, trace=trace,
                std_error=se if math.isfinite(se) else None, probes=len(s.values),
                stop_reason=reason, params=x.params, flags=tuple(flags))
        return SensitivityTable(out, tuple(bits), self.name, seed, spec.name, asdict(config),
                                time.perf_counter() - start)


def exact_traces(loss_fn, params: list[torch.Tensor]) -> list[float]:
    """Exact Hessian traces per parameter tensor (float64, torch.func; tiny models only)."""
    from torch.func import hessian

    out = []
    for i, p in enumerate(params):
        def f(flat, i=i, shape=p.shape):
            ps = list(params)
            ps[i] = flat.reshape(shape)
            return loss_fn(ps)
        h = hessian(f)(p.detach().reshape(-1))
        out.append(float(torch.diagonal(h).sum().detach()))
    return out

