"""The weight-error factor of Ω: how far the engine's rounding moves each layer's weight.

HAWQ-V3 scores a layer at b bits as Tr(H)/n · ||Q_b(W) - W||², which assumes the rounding
is round-to-nearest. With calibrated rounding (GPTQ), ||Q(W) - W||² can even grow while the
layer's output error shrinks, since GPTQ trades weight error for output error. For that
rounding the factor is the output-aware error tr(ΔW Σ ΔWᵀ) / mean(diag Σ), Σ = E[x xᵀ] the
layer's input second moment: it equals ||ΔW||² when the inputs are white (Σ ∝ I), keeping
the HAWQ scale, and measures what the rounding actually changes in the layer's outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

import engine
from engine import ConvGeometry, InputStats, collect_input_stats
from engine._gptq import gptq_many
from sensitivity._candidates import weight_only_config


def _scheme(bits: int, group_size: int | None) -> engine.QuantScheme:
    # NOTE: a W8A8 config (default `activation_bits`), so 8 bits is symmetric here while
    # the weight-only configs of the other estimators make it asymmetric; kept so that
    # tables and cache keys stay as they were.
    return engine.scheme_for(engine.BitConfig(bits={}, group_size=group_size), bits)


def _grouped(module: nn.Module, w: torch.Tensor) -> torch.Tensor:
    geo = ConvGeometry.of(module)
    g = 1 if geo is None else geo.groups
    return w.reshape(g, w.shape[0] // g, -1)


@torch.no_grad()
def layer_weight_errors(
    module: nn.Module, bits: Sequence[int], *, rounding: str, group_size: int | None,
    stats: InputStats | None = None,
) -> dict[int, float]:
    """Bits -> weight-error factor of one layer under the given rounding."""
    clip_search = weight_only_config({}, rounding=rounding, group_size=group_size).clip_search
    w = module.weight.detach().float()
    schemes = {b: _scheme(b, group_size) for b in bits}
    if rounding == "rtn":
        return {b: float(((engine.quantize(w, sch).dequantize() - w) ** 2).sum())
                for b, sch in schemes.items()}
    assert stats is not None  # calibrated rounding: `weight_errors` gathers them
    w3 = _grouped(module, w)
    # every width in one GPTQ pass (shared factorization and column loop; each result the
    # same as rounding that width alone)
    rounded = gptq_many(w3, stats.hessian, list(schemes.values()), clip_search=clip_search)
    sigma = stats.xtx / max(stats.rows, 1)  # (G, Kg, Kg)
    white = sigma.diagonal(dim1=1, dim2=2).mean().clamp(min=1e-30)
    out = {}
    for (b, sch), (codes, scales, zeros) in zip(schemes.items(), rounded, strict=True):
        wq = engine.quantize(w, sch, scales=scales, zeros=zeros, codes=codes).dequantize()
        delta = (wq - w).reshape(w3.shape).double()
        energy = torch.einsum("grk,gkm,grm->", delta, sigma, delta)
        out[b] = float(energy / white)
    return out


def weight_errors(
    model: nn.Module, names: Sequence[str], inputs: Iterable[Any], bits: Sequence[int], *,
    rounding: str = "gptq", group_size: int | None = 128,
) -> dict[str, dict[int, float]]:
    """Layer -> bits -> weight-error factor for every named layer."""
    weight_only_config({}, rounding=rounding, group_size=group_size)
    modules = engine.quantizable_modules(model)
    stats = {}
    if rounding == "gptq":
        stats = collect_input_stats(model, {n: modules[n] for n in names}, list(inputs))
    out = {}
    for name in names:
        out[name] = layer_weight_errors(modules[name], bits, rounding=rounding,
                                        group_size=group_size, stats=stats.get(name))
    return out
