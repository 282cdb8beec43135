"""The model zoo: real models with calibration data, evaluation data and metrics, offline.

`get_model(name)` returns a `ModelSpec`; `MODELS` lists the registered ones. A name of the
form `package.module:factory` builds a user model (see `UserModelSpec`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

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


__all__ = ["MODELS", "Batch", "ModelSpec", "UserModelSpec", "get_model"]
