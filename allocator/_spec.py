"""What the pipeline needs of a model: the `ModelSpecLike` protocol.

`zoo.ModelSpec` implements it for the registered models and user models; the pipeline,
the evaluation and the job logic depend on this protocol only, not on the zoo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch import nn

    from engine import BitConfig, LayerSpec


class ModelSpecLike(Protocol):
    """A float model with its data, loss and metrics (see `zoo.ModelSpec`'s contract)."""

    name: str
    primary_metric: str
    higher_is_better: bool
    skip_layers: tuple[str, ...]
    default_estimator: str
    default_activation_bits: int | None

    def build(self) -> nn.Module: ...

    def layers(self) -> list[LayerSpec]: ...

    def calibration_batches(self) -> Sequence[Any]: ...

    def evaluation_batches(self) -> Sequence[Any]: ...

    def example_inputs(self) -> Any: ...

    def latency_batch(self) -> Any: ...

    def quantize(self, config: BitConfig) -> nn.Module: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def baseline(self) -> dict[str, float]: ...

    def params(self) -> int: ...

    def measure_latency_us(self, model: nn.Module, *, repeats: int = 10) -> float: ...
