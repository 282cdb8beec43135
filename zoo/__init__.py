"""The model zoo: real models with calibration data, evaluation data and metrics, offline.

`get_model(name)` returns a `ModelSpec`; `MODELS` lists the registered ones. A name of the
form `package.module:factory` builds a user model (see `UserModelSpec`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from engine import Registry
from zoo._base import Batch, ModelSpec
from zoo._digits import DigitsCNNSpec, DigitsMLPSpec
from zoo._minilm import MiniLMSpec, minilm_available
from zoo._mobilenet import MobileNetV2Spec, mobilenet_available
from zoo._user import UserModelSpec


def _sklearn_available() -> bool:
    return importlib.util.find_spec("sklearn") is not None


MODELS: Registry[type[ModelSpec]] = Registry("model")
MODELS.register("digits-mlp", DigitsMLPSpec, available=_sklearn_available, extra="models",
                description=DigitsMLPSpec.description)
MODELS.register("digits-cnn", DigitsCNNSpec, available=_sklearn_available, extra="models",
                description=DigitsCNNSpec.description)
MODELS.register("minilm", MiniLMSpec, available=minilm_available, extra="models",
                description=MiniLMSpec.description)
MODELS.register("mobilenetv2", MobileNetV2Spec, available=mobilenet_available, extra="models",
                description=MobileNetV2Spec.description)

_INSTANCES: dict[str, ModelSpec] = {}


def get_model(
    name: str, *, data: str | Path | None = None, weights: str | Path | None = None
) -> ModelSpec:
    """The `ModelSpec` registered as `name` (one shared instance per process), or a user
    model when `name` is `package.module:factory` (then `data` is required)."""
    if ":" in name:
        from engine import InvalidSpecError

        if data is None:
            raise InvalidSpecError(
                f"user model {name!r} needs `data` (a .pt or .npy file of inputs).")
        return UserModelSpec(name, data, weights)
    if name not in _INSTANCES:
        _INSTANCES[name] = MODELS.get(name)()
    return _INSTANCES[name]


def describe_models(*, details: bool = False) -> list[dict[str, Any]]:
    """One row per registered model, for listings (`allocator models`, the API catalog).

    Each row has `name`, `available` and `description`, and `missing` (the extra to
    install) when the model is not available here.

    Args:
        details: Also load each available model and add `params`, `quantizable_layers`,
            `quantizable_params` and `metric` (its primary metric) to its row.
    """
    rows = []
    for entry in MODELS:
        row: dict[str, Any] = {"name": entry.name, "available": bool(entry.available()),
                               "description": entry.description}
        if not row["available"]:
            if entry.extra:
                row["missing"] = f"install the `{entry.extra}` extra"
        elif details:
            spec = get_model(entry.name)
            layers = spec.layers()
            row |= {"params": spec.params(), "quantizable_layers": len(layers),
                    "quantizable_params": sum(x.params for x in layers),
                    "metric": spec.primary_metric}
        rows.append(row)
    return rows


__all__ = ["MODELS", "Batch", "ModelSpec", "UserModelSpec", "describe_models", "get_model"]
