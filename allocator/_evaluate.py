"""Measuring configurations on the engine: the one place a model is quantized and judged.

`measure_model` runs a (quantized or float) model through the spec's metrics, size and
optionally latency; `measure_config` applies a BitConfig first. The pipeline's measured
result, its uniform baseline, every measured front point and `allocator evaluate` all come
from here, so they are comparable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import engine
from engine import BitConfig

if TYPE_CHECKING:
    from torch import nn

    from allocator._spec import ModelSpecLike

LATENCY_REPEATS = 10


@dataclass(frozen=True)
class Measurement:
    """What one model measured on the engine.

    Attributes:
        metrics: The spec's metrics (deterministic).
        size_bytes: Weight bytes in memory, packed codes and scales included.
        kernels: Kernel path -> number of layers that ran on it.
        latency_us: Median whole-model latency on the spec's latency batch, if timed.
        evaluate_s: Seconds the metrics took.
    """

    metrics: dict[str, float]
    size_bytes: int
    kernels: dict[str, int]
    latency_us: float | None
    evaluate_s: float


def measure_model(spec: ModelSpecLike, model: nn.Module, *, latency: bool = True,
                  repeats: int = LATENCY_REPEATS) -> Measurement:
    """Metrics, size, kernels and (with `latency`) the median latency of `model`."""
    start = time.perf_counter()
    metrics = spec.evaluate(model)
    evaluate_s = time.perf_counter() - start
    latency_us = spec.measure_latency_us(model, repeats=repeats) if latency else None
    return Measurement(metrics, engine.model_size_bytes(model), dict(engine.kernel_counts(model)),
                       latency_us, evaluate_s)


def measure_config(spec: ModelSpecLike, config: BitConfig, *, latency: bool = True,
                   repeats: int = LATENCY_REPEATS) -> Measurement:
    """`measure_model` of the spec's model quantized with `config`."""
    return measure_model(spec, spec.quantize(config), latency=latency, repeats=repeats)


@dataclass(frozen=True)
class Evaluation:
    """Measured quality, size and speed of one configuration next to FP32."""

    model: str
    config: BitConfig
    primary_metric: str
    avg_bits: float
    quantized: Measurement
    fp32: Measurement
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return (self.fp32.latency_us or 0.0) / (self.quantized.latency_us or 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "primary_metric": self.primary_metric,
            "metrics": self.quantized.metrics,
            "fp32_metrics": self.fp32.metrics,
            "size_bytes": self.quantized.size_bytes,
            "fp32_size_bytes": self.fp32.size_bytes,
            "latency_us": self.quantized.latency_us,
            "fp32_latency_us": self.fp32.latency_us,
            "speedup_vs_fp32": self.speedup,
            "evaluate_s": self.quantized.evaluate_s,
            "fp32_evaluate_s": self.fp32.evaluate_s,
            "kernels": self.quantized.kernels,
            "avg_bits": self.avg_bits,
            "config": self.config.to_dict(),
        }


def evaluate_config(spec: ModelSpecLike, config: BitConfig, *,
                    repeats: int = LATENCY_REPEATS) -> Evaluation:
    """Applies `config` to the spec's model on the engine and measures it next to FP32.

    Example:
        >>> import zoo
        >>> from allocator import evaluate_config
        >>> spec = zoo.get_model("digits-mlp")
        >>> evaluate_config(spec, BitConfig.uniform(spec.layers(), 4)).quantized.metrics
    """
    fp32 = measure_model(spec, spec.build(), repeats=repeats)
    quantized = measure_config(spec, config, repeats=repeats)
    return Evaluation(spec.name, config, spec.primary_metric,
                      engine.mean_bits(spec.layers(), config.bits), quantized, fp32)
