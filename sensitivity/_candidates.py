"""Every layer's weights as the engine rounds them at each candidate bit-width.

Each candidate bit-width is applied to the whole model once, uniformly, with the pipeline's
rounding (GPTQ + bias correction + clipping search, or RTN; weights only), and every
layer's dequantized weight and (corrected) bias are read back. Any mixed assignment can then
be scored by swapping those tensors into the float model (`torch.func.functional_call`)
instead of re-running the rounding: one forward pass per calibration batch. GPTQ's
quantized-prefix inputs are those of the uniform model, an approximation for mixed
assignments; the final configuration is always applied and measured on the engine itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

import engine


def weight_only_config(bits: Mapping[str, int], *, rounding: str,
                       group_size: int | None) -> engine.BitConfig:
    """The engine config every estimator quantizes with: weights only, and "gptq" meaning
    the engine's calibrated rounding (`BitConfig.calibrated`), "rtn" plain round-to-nearest.

    Raises:
        InvalidSpecError: `rounding` or `group_size` is not one the engine supports.
    """
    return engine.BitConfig.with_rounding(bits, rounding, activation_bits=None,
                                          group_size=group_size)


def rounding_inputs(spec: Any) -> list[Any]:
    """The inputs the engine's calibrated rounding is fitted to for `spec` (its
    `rounding_inputs`, else its calibration batches' inputs)."""
    own = getattr(spec, "rounding_inputs", None)
    return own() if callable(own) else [b.inputs for b in spec.calibration_batches()]


def calibration_loss(spec: Any, model: nn.Module, batches: Sequence[Any] | None = None
                     ) -> float:
    """The spec's loss of `model` over its calibration batches (or `batches`), weighted by
    batch size."""
    batches = spec.calibration_batches() if batches is None else batches
    with torch.inference_mode():
        total = math.fsum(float(spec.loss(model, b)) * b.size for b in batches)
    return total / sum(b.size for b in batches)


class Swapped(nn.Module):
    """The float model with some parameters replaced by given tensors."""

    def __init__(self, model: nn.Module, overrides: Mapping[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.overrides = dict(overrides)

    def forward(self, *args: Any, **kwargs: Any):
        return functional_call(self.model, self.overrides, args, kwargs, strict=False)


class CandidateWeights:
    """Per layer and candidate bit-width, the engine's dequantized weight and bias.

    Args:
        spec: The model (`build`, `calibration_batches`, `loss`).
        bits: Candidate bit-widths.
        names: Layers to quantize (default: all of `spec.layers()`).
        rounding: "gptq" (calibrated) or "rtn".
        group_size: Group size of the scales below 8 bits (None: per channel).
    """

    def __init__(self, spec: Any, bits: Sequence[int], names: Sequence[str] | None = None, *,
                 rounding: str = "gptq", group_size: int | None = 128) -> None:
        self.spec = spec
        self.names = list(names) if names is not None else [x.name for x in spec.layers()]
        self.bits = tuple(sorted(set(bits)))
        model = spec.build()
        calibrated = rounding == "gptq"
        inputs = rounding_inputs(spec) if calibrated else None
        wanted = set(self.names)
        shapes = {n: m.weight.shape for n, m in model.named_modules() if n in wanted}
        self.weights: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self.names}
        self.biases: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self.names}
        cfg = weight_only_config(dict.fromkeys(self.names, self.bits[0]), rounding=rounding,
                                 group_size=group_size)
        for n, layers in engine.quantize_candidates(model, cfg, self.bits, calibration=inputs):
            for b, layer in layers.items():
                self.weights[n][b] = layer.dequantized_weight().reshape(shapes[n]).detach()
                if layer.bias is not None:
                    self.biases[n][b] = layer.bias.detach().float().clone()

    def layer_params(self, name: str, bits: int) -> dict[str, torch.Tensor]:
        """The layer's own parameter names -> its rounded tensors at `bits`."""
        out = {"weight": self.weights[name][bits]}
        if bits in self.biases[name]:
            out["bias"] = self.biases[name][bits]
        return out

    def overrides(self, assignment: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """Parameter name -> tensor for a layer -> bits assignment (other layers stay float)."""
        return {f"{n}.{k}": v for n, b in assignment.items()
                for k, v in self.layer_params(n, b).items()}

    def loss(self, assignment: Mapping[str, int]) -> float:
        """The spec's calibration loss (distillation to FP32) of a mixed assignment."""
        return calibration_loss(self.spec, Swapped(self.spec.build(), self.overrides(assignment)))
