"""Evaluate a model from the zoo at a bit config: metrics, size and latency vs FP32."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import engine
from engine import BitConfig


@dataclass(frozen=True)
class Evaluation:
    """Measured quality, size and speed of one configuration next to FP32."""

    model: str
    config: BitConfig
    metrics: dict[str, float]
    fp32_metrics: dict[str, float]
    primary_metric: str
    size_bytes: int
    fp32_size_bytes: int
    latency_us: float
    fp32_latency_us: float
    evaluate_seconds: float
    fp32_evaluate_seconds: float
    avg_bits: float
    kernels: dict[str, int] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.fp32_latency_us / self.latency_us

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "primary_metric": self.primary_metric,
            "metrics": self.metrics,
            "fp32_metrics": self.fp32_metrics,
            "size_bytes": self.size_bytes,
            "fp32_size_bytes": self.fp32_size_bytes,
            "latency_us": self.latency_us,
            "fp32_latency_us": self.fp32_latency_us,
            "speedup_vs_fp32": self.speedup,
            "evaluate_seconds": self.evaluate_seconds,
            "fp32_evaluate_seconds": self.fp32_evaluate_seconds,
            "kernels": self.kernels,
            "avg_bits": self.avg_bits,
            "config": self.config.to_dict(),
        }


def evaluate_config(spec, config: BitConfig, *, repeats: int = 10) -> Evaluation:
    """Applies `config` to the spec's model on the engine and measures it next to FP32."""
    fp32 = spec.build()
    fp32_metrics, fp32_seconds = spec.timed_evaluate(fp32)
    qmodel = spec.quantize(config)
    metrics, seconds = spec.timed_evaluate(qmodel)
    fp32_us = spec.measure_latency_us(fp32, repeats=repeats)
    q_us = spec.measure_latency_us(qmodel, repeats=repeats)
    kernels = engine.kernel_counts(qmodel)
    return Evaluation(spec.name, config, metrics, fp32_metrics, spec.primary_metric,
                      engine.model_size_bytes(qmodel), engine.model_size_bytes(fp32), q_us,
                      fp32_us, seconds, fp32_seconds,
                      engine.mean_bits(spec.layers(), config.bits), kernels)
