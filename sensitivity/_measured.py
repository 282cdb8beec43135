"""Measured Δloss: quantize one layer at a time on the real engine and measure the loss.

The ground truth the other estimators are checked against, and a cheap baseline on small
models. Weights only (activations float), with the rounding the pipeline applies.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

import engine
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


def calibration_loss(spec, model) -> float:
    with torch.inference_mode():
        losses = [float(spec.loss(model, b)) * b.size for b in spec.calibration_batches()]
    return math.fsum(losses) / sum(b.size for b in spec.calibration_batches())


def measured(spec, bits: list[int], config: MeasuredConfig, seed: int,
             progress=None) -> SensitivityTable:
    start = time.perf_counter()
    model = spec.build()
    base = calibration_loss(spec, model)
    inputs = [b.inputs for b in spec.calibration_batches()]
    calibrated = config.rounding == "gptq"
    out = {}
    for x in spec.layers():
        omega, raw = {}, {}
        for b in bits:
            cfg = engine.BitConfig(bits={x.name: b}, group_size=config.group_size,
                                   activation_bits=None, rounding=config.rounding,
                                   bias_correction=calibrated, clip_search=calibrated)
            qmodel = engine.apply(model, cfg, calibration=inputs if calibrated else None)
            raw[b] = calibration_loss(spec, qmodel) - base
            omega[b] = max(raw[b], 0.0)
            if progress is not None:
                progress(1)
        flags = ("negative_delta_loss",) if any(v < 0 for v in raw.values()) else ()
        out[x.name] = LayerSensitivity(omega, probes=len(bits), stop_reason="measured",
                                       params=x.params, flags=flags,
                                       extra={"delta_loss": {str(k): v for k, v in raw.items()},
                                              "base_loss": base})
    return SensitivityTable(out, tuple(bits), "measured", seed, spec.name, asdict(config),
                            time.perf_counter() - start)
