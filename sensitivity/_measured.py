"""Measured Δloss: quantize one layer at a time on the real engine and measure the loss.

The ground truth the other estimators are checked against, and a cheap baseline on small
models. Weights only (activations float), with the rounding the pipeline applies. Each
layer's Ω depends on that layer alone and uses no random numbers, so the estimator is
`layer_parallel`: any split of its layers, computed anywhere, merges into the same table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

import engine
from engine import InvalidSpecError
from sensitivity._base import BaseSensitivityEstimator, ProgressFn
from sensitivity._candidates import (
    CandidateWeights,
    calibration_loss,
    rounding_inputs,
    weight_only_config,
)
from sensitivity._suffix import SuffixLosses
from sensitivity._table import LayerSensitivity, SensitivityTable


@dataclass(frozen=True)
class MeasuredConfig:
    """Settings of the measured estimator.

    Attributes:
        rounding: "rtn" or "gptq" (with bias correction and clipping search).
        group_size: Group size of the scales below 8 bits (None: per channel).
        samples: Δloss over the first calibration batches that hold at least this many
            samples (None: all of them); calibrated rounding still fits on all.
    """

    name: ClassVar[str] = "measured"
    # not in the table cache's key when None (all samples, as before the field existed)
    added_fields: ClassVar[tuple[str, ...]] = ("samples",)
    rounding: str = "gptq"
    group_size: int | None = 128
    samples: int | None = None

    def __post_init__(self) -> None:
        if self.samples is not None and (isinstance(self.samples, bool)
                                         or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise InvalidSpecError(f"`samples` must be an integer >= 1 or null, got "
                                   f"{self.samples!r}.")
        weight_only_config({}, rounding=self.rounding, group_size=self.group_size)


class MeasuredEstimator(BaseSensitivityEstimator):
    """Ω_l(b) = the calibration loss with layer l alone at b bits minus the FP32 loss
    (clamped at 0; a negative raw change flags the layer)."""

    config_cls = MeasuredConfig
    progress_unit = "layer x bits"
    layer_parallel = True
    config: MeasuredConfig

    def progress_total(self, spec: Any, bits: Sequence[int]) -> int:
        return len(spec.layers()) * len(bits)

    def estimate(self, spec: Any, bits: Sequence[int], *, seed: int,
                 progress: ProgressFn | None = None) -> SensitivityTable:
        start = time.perf_counter()
        names = [x.name for x in spec.layers()]
        out = self.estimate_layers(spec, bits, names, seed=seed, progress=progress)
        return self.make_table(spec, bits, seed, out, time.perf_counter() - start)

    def estimate_layers(self, spec: Any, bits: Sequence[int], names: Sequence[str], *,
                        seed: int, progress: ProgressFn | None = None
                        ) -> dict[str, LayerSensitivity]:
        by_name = {x.name: x for x in spec.layers()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InvalidSpecError(f"`names` {unknown[:5]} are not layers of {spec.name}.")
        model = spec.build()
        suffixes = SuffixLosses.build(spec, model)
        if suffixes is None:
            base, losses = self._whole_model_losses(spec, model, bits, names, progress)
        else:
            base, losses = self._suffix_losses(spec, model, suffixes, bits, names, progress)
        out = {}
        for name in names:
            raw = {b: losses[name][b] - base for b in bits}
            flags = ("negative_delta_loss",) if any(v < 0 for v in raw.values()) else ()
            out[name] = LayerSensitivity(
                {b: max(v, 0.0) for b, v in raw.items()}, probes=len(bits),
                stop_reason="measured", params=by_name[name].params, flags=flags,
                extra={"delta_loss": {str(k): v for k, v in raw.items()}, "base_loss": base})
        return out

    def _batches(self, spec: Any) -> list[Any]:
        """The calibration batches Δloss is measured on (`samples`)."""
        batches = list(spec.calibration_batches())
        if self.config.samples is None:
            return batches
        out, seen = [], 0
        for b in batches:
            if seen >= self.config.samples:
                break
            out.append(b)
            seen += b.size
        return out

    def _suffix_losses(self, spec: Any, model: Any, suffixes: SuffixLosses,
                       bits: Sequence[int], names: Sequence[str], progress: ProgressFn | None
                       ) -> tuple[float, dict[str, dict[int, float]]]:
        """Each layer's candidates (rounded once, as `engine.apply` rounds a lone layer)
        swapped into the float graph at that layer, the float prefix shared."""
        config = self.config
        candidates = CandidateWeights(spec, bits, names, rounding=config.rounding,
                                      group_size=config.group_size)
        modules = dict(model.named_modules())
        changes = {n: {b: _swapped_call(modules[n], candidates.layer_params(n, b)) for b in bits}
                   for n in names}
        batches = self._batches(spec)
        done = [0]

        def per_batch(_n: int) -> None:  # one unit per (layer, bits) over all batches
            done[0] += 1
            if progress is not None and done[0] % len(batches) == 0:
                progress(1)

        return suffixes.losses(changes, progress=per_batch, batches=batches)

    def _whole_model_losses(self, spec: Any, model: Any, bits: Sequence[int],
                            names: Sequence[str], progress: ProgressFn | None
                            ) -> tuple[float, dict[str, dict[int, float]]]:
        """Each (layer, bits) applied alone on the engine and the whole model evaluated."""
        config = self.config
        batches = self._batches(spec)
        base = calibration_loss(spec, model, batches)
        inputs = rounding_inputs(spec) if config.rounding == "gptq" else None
        losses: dict[str, dict[int, float]] = {}
        for name in names:
            losses[name] = {}
            for b in bits:
                cfg = weight_only_config({name: b}, rounding=config.rounding,
                                         group_size=config.group_size)
                losses[name][b] = calibration_loss(
                    spec, engine.apply(model, cfg, calibration=inputs), batches)
                if progress is not None:
                    progress(1)
        return base, losses


def _swapped_call(module: nn.Module, params: dict[str, torch.Tensor]):
    """`module` called with `params` (its own names) in place of its parameters."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return functional_call(module, params, args, kwargs)

    return call
