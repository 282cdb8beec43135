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

import engine
from engine import InvalidSpecError
from sensitivity._base import BaseSensitivityEstimator, ProgressFn
from sensitivity._candidates import calibration_loss, rounding_inputs, weight_only_config
from sensitivity._table import LayerSensitivity, SensitivityTable


@dataclass(frozen=True)
class MeasuredConfig:
    """Settings of the measured estimator.

    Attributes:
        rounding: "rtn" or "gptq" (with bias correction and clipping search).
        group_size: Group size of the scales below 8 bits (None: per channel).
    """

    name: ClassVar[str] = "measured"
    rounding: str = "gptq"
    group_size: int | None = 128

    def __post_init__(self) -> None:
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
        config = self.config
        by_name = {x.name: x for x in spec.layers()}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InvalidSpecError(f"`names` {unknown[:5]} are not layers of {spec.name}.")
        model = spec.build()
        base = calibration_loss(spec, model)
        calibrated = config.rounding == "gptq"
        inputs = rounding_inputs(spec) if calibrated else None
        out = {}
        for name in names:
            x = by_name[name]
            omega, raw = {}, {}
            for b in bits:
                cfg = weight_only_config({x.name: b}, rounding=config.rounding,
                                         group_size=config.group_size)
                qmodel = engine.apply(model, cfg, calibration=inputs)
                raw[b] = calibration_loss(spec, qmodel) - base
                omega[b] = max(raw[b], 0.0)
                if progress is not None:
                    progress(1)
            flags = ("negative_delta_loss",) if any(v < 0 for v in raw.values()) else ()
            out[x.name] = LayerSensitivity(
                omega, probes=len(bits), stop_reason="measured", params=x.params, flags=flags,
                extra={"delta_loss": {str(k): v for k, v in raw.items()}, "base_loss": base})
        return out
