"""The model zoo: real models with calibration data, evaluation data and metrics, offline.

`get_model(name)` returns a `ModelSpec`; `MODELS` lists the built-in ones. Other names:

- `hf:<folder or repo id>`: a Hugging Face checkpoint (`HfModelSpec`);
- a name registered by an operator (`ALLOCATOR_MODELS_FILE`) or uploaded to the service
  (`allocator._registered`): the checkpoint it names, with its data and defaults;
- `package.module:factory`: a user model built by the user's code (`UserModelSpec`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from engine import Registry
from zoo._base import Batch, ModelSpec
from zoo._digits import DigitsCNNSpec, DigitsMLPSpec
from zoo._hf import HfModelSpec
from zoo._hf_checkpoint import HF_PREFIX
from zoo._minilm import MiniLMSpec, minilm_available
from zoo._mobilenet import MobileNetV2Spec, mobilenet_available
from zoo._smollm2 import SMOLLM2_NAME, smollm2_available
from zoo._smollm2_spec import SmolLM2Spec
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
MODELS.register(SMOLLM2_NAME, SmolLM2Spec, available=smollm2_available, extra="models",
                description=SmolLM2Spec.description)

_INSTANCES: dict[tuple[str | None, ...], ModelSpec] = {}


def get_model(
    name: str, *, data: str | Path | None = None, weights: str | Path | None = None,
    device: str = "auto",
) -> ModelSpec:
    """The spec of `name`, one shared instance per process and (name, data, weights).

    Args:
        name: A built-in model, `hf:<folder or repo id>`, a registered or uploaded model's
            name, or `package.module:factory`.
        data: The data file of an `hf:` or user model (required for user models).
        weights: A user model's safetensors weights.
        device: Where a Hugging Face model runs: "auto" (CUDA when present), "cpu" or
            "cuda"; the other models run on the CPU ("cuda" is refused for them).

    Raises:
        UnknownComponentError: `name` is none of these.
        InvalidSpecError: A bad data file, checkpoint or factory.
    """
    from engine import InvalidSpecError

    key = (name, None if data is None else str(data), None if weights is None else str(weights),
           device)
    if key in _INSTANCES:
        return _INSTANCES[key]
    if name.startswith(HF_PREFIX):
        if weights is not None:
            raise InvalidSpecError(f"`weights` applies to user models; {name!r} brings its "
                                   f"own safetensors.")
        spec: ModelSpec = HfModelSpec(name, data=data, device=device)
    elif ":" in name:
        if data is None:
            raise InvalidSpecError(
                f"user model {name!r} needs `data` (a .pt or .npy file of inputs).")
        _cpu_only(name, device)
        return UserModelSpec(name, data, weights)  # user code: built anew every time
    elif name in MODELS.names():
        cls = MODELS.get(name)
        if issubclass(cls, HfModelSpec):
            spec = cls(device=device)  # type: ignore[call-arg]
        else:
            _cpu_only(name, device)
            spec = cls()
    else:
        from allocator._registered import find_registered

        reg = find_registered(name)
        if reg is None:
            MODELS.get(name)  # unknown: the registry's error lists the known names
            raise AssertionError("unreachable")
        # A registered name may be re-uploaded or edited: its content keys the instance.
        key = (name, reg.sha256 or reg.source, reg.data, device)
        if key in _INSTANCES:
            return _INSTANCES[key]
        spec = HfModelSpec(reg.source, data=reg.data, name=reg.name, metric=reg.metric,
                           estimator=reg.estimator, description=reg.description, device=device)
    _INSTANCES[key] = spec
    return spec


def forget_model(spec: ModelSpec) -> None:
    """Drops `spec` from the per-process instances `get_model` keeps, so that its memory
    can go once the caller lets go of it too (a worker bounding the models it holds)."""
    for key in [k for k, v in _INSTANCES.items() if v is spec]:
        del _INSTANCES[key]


def _cpu_only(name: str, device: str) -> None:
    from engine import InvalidSpecError

    if device not in ("auto", "cpu"):
        raise InvalidSpecError(f"`device` {device!r} applies to Hugging Face models; "
                               f"{name!r} runs on the CPU.")


def describe_layers(name: str, *, data: str | Path | None = None) -> list[dict[str, Any]]:
    """Every weight module of a model with whether it is quantized and, if not, why
    (`ModelSpec.describe_layers`)."""
    return get_model(name, data=data).describe_layers()


def describe_models(*, details: bool = False) -> list[dict[str, Any]]:
    """One row per registered model, for listings (`allocator models`, the API catalog).

    Each row has `name`, `available` and `description`, and `missing` (the extra to
    install) when the model is not available here. Registered and uploaded checkpoints
    follow the built-ins with their `origin` and `source` (never loaded for details).

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
    from allocator._registered import registered_models

    for reg in registered_models().values():  # the operator's and uploaded checkpoints
        rows.append({"name": reg.name, "available": True,
                     "description": reg.description or f"registered checkpoint {reg.source}",
                     "origin": reg.origin, "source": reg.source})
    return rows


__all__ = ["MODELS", "Batch", "HfModelSpec", "ModelSpec", "UserModelSpec", "describe_layers",
           "describe_models", "forget_model", "get_model"]
