"""`ModelSpec`: a model with its calibration data, evaluation data, loss and metrics."""

from __future__ import annotations

import fnmatch
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

import engine
from engine import LayerSpec


@dataclass(frozen=True)
class Batch:
    """One batch: `inputs` in `engine.call_model` form, and the target the loss needs."""

    inputs: Any
    target: Any = None
    size: int = 0


LATENCY_BUDGET_S = 15.0
LATENCY_REL_CI = 0.02  # the median's 95 % confidence half-width, relative
# Calibration references at least this large are let go after the sensitivity stage.
RELEASE_REFERENCE_BYTES = 64 << 20


class ModelSpec(ABC):
    """A real model plus everything needed to quantize and judge it, all offline.

    Subclasses say how to build the float model and where its data comes from; this base
    caches the model, the batches and the FP32 baseline, so the pipeline, the benchmarks
    and the tests all evaluate with the same code.

    Contract:
        - `build()` returns the float model in eval mode; the same object on every call.
        - `calibration_batches()` and `evaluation_batches()` are disjoint, deterministic
          lists of `Batch`.
        - `loss(model, batch)` is a differentiable scalar whose Hessian at the FP32
          weights is what sensitivity estimators measure.
        - `evaluate(model)` returns metrics; `primary_metric` names the one solvers and
          reports compare, with `higher_is_better`.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    skip_layers: ClassVar[tuple[str, ...]] = ()
    # What the pipeline uses when the caller does not say: the sensitivity estimator and
    # whether 8-bit layers quantize their activations (W8A8) or keep them float.
    default_estimator: ClassVar[str] = "hutchinson"
    default_activation_bits: ClassVar[int | None] = 8
    # Scale group size below 8 bits when the caller does not say (None: per channel).
    default_group_size: ClassVar[int | None] = 128
    # The evaluation batches' targets are the float model's outputs (see `baseline`).
    targets_are_float_outputs: ClassVar[bool] = False

    def __init__(self) -> None:
        self._model: nn.Module | None = None
        self._calibration: list[Any] | None = None
        self._evaluation: list[Any] | None = None
        self._baseline: dict[str, float] | None = None
        self._layers: list[LayerSpec] | None = None

    # -- what subclasses provide -------------------------------------------------------------

    @abstractmethod
    def _build(self) -> nn.Module: ...

    @abstractmethod
    def _calibration_batches(self) -> list[Batch]: ...

    @abstractmethod
    def _evaluation_batches(self) -> list[Batch]: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    # -- cached accessors --------------------------------------------------------------------

    def build(self) -> nn.Module:
        if self._model is None:
            model = self._build().eval()
            for p in model.parameters():
                p.requires_grad_(False)
            self._model = model
        return self._model

    def calibration_batches(self) -> list[Batch]:
        if self._calibration is None:
            self._calibration = self._calibration_batches()
        return self._calibration

    def evaluation_batches(self) -> list[Batch]:
        if self._evaluation is None:
            self._evaluation = self._evaluation_batches()
        return self._evaluation

    def calibration_inputs(self) -> list[Any]:
        """The calibration batches' inputs (what reports digest), without making their
        reference outputs where a spec can avoid it."""
        return [b.inputs for b in self.calibration_batches()]

    def release_references(self) -> int:
        """Forgets the calibration batches once the sensitivity stage is done, when their
        FP32 reference outputs are large (`RELEASE_REFERENCE_BYTES`; an LLM's take 200 MB),
        so that they do not sit beside the measured models; made again if asked for.
        Returns the bytes let go."""
        held = sum(t.numel() * t.element_size() for b in self._calibration or []
                   if isinstance(t := b.target, torch.Tensor))
        if held < RELEASE_REFERENCE_BYTES:
            return 0
        self._calibration = None
        return held

    def example_inputs(self) -> Any:
        """Inputs of one evaluation batch: what layer discovery traces (MACs are per batch)."""
        return self.evaluation_batches()[0].inputs

    def layers(self) -> list[LayerSpec]:
        if self._layers is None:
            self._layers = engine.discover_layers(self.build(), self.example_inputs(),
                                                  skip=self.skip_layers)
        return self._layers

    def skip_reason(self, name: str, module: nn.Module) -> str:
        """Why the weight module `name` is left float (it is not in `layers()`)."""
        if isinstance(module, nn.Embedding):
            return "embedding table: a lookup, not a matrix product; kept float"
        if type(module) not in engine.QUANTIZABLE_TYPES:
            return f"{type(module).__name__} has no engine kernel; kept float"
        if any(fnmatch.fnmatchcase(name, p) for p in self.skip_layers):
            return "left float by the model (skip_layers)"
        return "never ran on the example batch"

    def describe_layers(self) -> list[dict[str, Any]]:
        """Every module with a weight matrix: `name`, `kind`, `shape`, `params`,
        `quantized`, and the `reason` it is left float (None when quantized)."""
        model = self.build()
        quantized = {x.name for x in self.layers()}
        rows = []
        for name, m in model.named_modules():
            weight = getattr(m, "weight", None)
            if not name or not isinstance(weight, torch.Tensor) or weight.dim() < 2:
                continue
            rows.append({"name": name, "kind": type(m).__name__, "shape": list(weight.shape),
                         "params": weight.numel(), "quantized": name in quantized,
                         "reason": None if name in quantized else self.skip_reason(name, m)})
        return rows

    def baseline(self) -> dict[str, float]:
        """FP32 metrics (computed once). Where the evaluation targets are the float model's
        own outputs (`targets_are_float_outputs`), they are scored against themselves: the
        same numbers as another forward pass, without one."""
        if self._baseline is None:
            if self.targets_are_float_outputs:
                self._baseline = self.score([b.target for b in self.evaluation_batches()])
            else:
                self._baseline = self.evaluate(self.build())
        return self._baseline

    def score(self, outputs: Sequence[Any]) -> dict[str, float]:
        """Metrics of a model's outputs on the evaluation batches (specs whose `evaluate`
        is a function of those outputs)."""
        raise NotImplementedError(f"{type(self).__name__} scores only through `evaluate`.")

    def rounding_inputs(self) -> list[Any]:
        """Inputs the engine fits calibrated rounding (GPTQ, bias correction) and activation
        ranges to: the calibration batches' inputs, unless a model needs more of them than
        its losses do (a causal LM: `HfModelSpec`)."""
        return [b.inputs for b in self.calibration_batches()]

    def quantize(self, config: engine.BitConfig, *, kernel: str = "auto") -> nn.Module:
        """The engine's quantized copy of the model, activation ranges calibrated."""
        return engine.apply(self.build(), config, kernel=kernel,
                            calibration=self.rounding_inputs())

    def params(self) -> int:
        return sum(p.numel() for p in self.build().parameters())

    def latency_batch(self) -> Any:
        """Inputs used to time whole-model latency (the first evaluation batch)."""
        return self.evaluation_batches()[0].inputs

    def measure_latency_us(self, model: nn.Module, *, repeats: int = 10) -> float:
        """Median latency of the latency batch, over at most `repeats` calls: fewer (at least
        5) once the median is known within `LATENCY_REL_CI`; a model whose call takes
        seconds (an LLM on a CPU) is timed over about `LATENCY_BUDGET_S`, at least 3 calls."""
        batch = self.latency_batch()
        start = time.perf_counter()
        with torch.inference_mode():
            engine.call_model(model, batch)  # the first warm-up call, timed to size the rest
        first_s = time.perf_counter() - start
        if first_s * repeats > LATENCY_BUDGET_S:
            repeats = max(3, int(LATENCY_BUDGET_S / first_s))
        timing = engine.time_call(lambda _i: engine.call_model(model, batch), repeats=repeats,
                                  warmup=0, rel_ci=LATENCY_REL_CI)  # the first call warmed
        return timing.p50_us

    def outputs(self, model: nn.Module, batches: Sequence[Batch]) -> list[torch.Tensor]:
        """Model outputs on `batches`, without autograd."""
        with torch.inference_mode():
            return [engine.call_model(model, b.inputs) for b in batches]

    def timed_evaluate(self, model: nn.Module) -> tuple[dict[str, float], float]:
        start = time.perf_counter()
        metrics = self.evaluate(model)
        return metrics, time.perf_counter() - start


def batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
