"""User models: `package.module:factory` + optional safetensors weights + input data file.

Metrics compare the quantized model's outputs with the FP32 outputs on held-out inputs
(cosine, and top-1 agreement when the outputs are 2-D scores); the loss is the squared
distance to the FP32 outputs. Nothing is unpickled: `.pt` files load with
`weights_only=True`, `.npy` files with `allow_pickle=False`.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine import InvalidSpecError
from zoo._base import Batch, ModelSpec

BATCH = 32


def load_factory(ref: str):
    """Resolves `package.module:callable`."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidSpecError(f"`model` {ref!r} must look like 'package.module:factory'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InvalidSpecError(f"`model` {ref!r}: cannot import {module_name!r} ({e}).") from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise InvalidSpecError(f"`model` {ref!r}: {module_name!r} has no callable {attr!r}.")
    return factory


def load_inputs(path: str | Path) -> torch.Tensor:
    """Input tensor (N, ...) from a `.pt` tensor file or a `.npy` array."""
    p = Path(path)
    if not p.is_file():
        raise InvalidSpecError(f"`data` file {str(p)!r} does not exist.")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            data = torch.from_numpy(np.array(arr, copy=True))
        elif p.suffix in (".pt", ".pth"):
            data = torch.load(p, map_location="cpu", weights_only=True)
        else:
            raise InvalidSpecError(f"`data` {str(p)!r}: use a .pt tensor file or a .npy array.")
    except InvalidSpecError:
        raise
    except Exception as e:
        raise InvalidSpecError(f"`data` {str(p)!r} is not a readable {p.suffix} file: {e}") from e
    if not isinstance(data, torch.Tensor):
        raise InvalidSpecError(
            f"`data` {str(p)!r} must hold one tensor of inputs, got {type(data).__name__}.")
    if data.dim() < 1 or len(data) < 2:
        raise InvalidSpecError(
            f"`data` {str(p)!r} needs at least 2 samples, shape {tuple(data.shape)}.")
    return data.float() if data.is_floating_point() else data


class UserModelSpec(ModelSpec):
    """A model built by the user's own factory; calibration and evaluation split one file."""

    primary_metric = "cosine"

    def __init__(self, factory: str, data: str | Path, weights: str | Path | None = None,
                 eval_fraction: float = 0.5):
        super().__init__()
        self.name = factory
        self.description = f"user model {factory}"
        self._factory_ref, self._data_path, self._weights = factory, data, weights
        self._eval_fraction = eval_fraction
        self._inputs: torch.Tensor | None = None

    def _build(self) -> nn.Module:
        model = load_factory(self._factory_ref)()
        if not isinstance(model, nn.Module):
            raise InvalidSpecError(
                f"`model` {self._factory_ref!r} returned {type(model).__name__}, "
                f"not an nn.Module.")
        if self._weights is not None:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            wp = Path(self._weights)
            if not wp.is_file():
                raise InvalidSpecError(f"`weights` file {str(wp)!r} does not exist.")
            try:
                state = load_file(str(wp))
            except (SafetensorError, OSError) as e:
                raise InvalidSpecError(
                    f"`weights` {str(wp)!r} is not a safetensors file: {e}") from e
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise InvalidSpecError(
                    f"`weights` {str(wp)!r} do not fit the model: {str(e).splitlines()[0]} "
                    f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else ''}"
                ) from e
        return model

    def inputs(self) -> torch.Tensor:
        if self._inputs is None:
            self._inputs = load_inputs(self._data_path)
        return self._inputs

    def _split(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs()
        n_eval = max(1, int(round(len(x) * self._eval_fraction)))
        return x[: len(x) - n_eval], x[len(x) - n_eval :]

    def _batches(self, x: torch.Tensor) -> list[Batch]:
        model = self.build()
        out = []
        for chunk in x.split(BATCH):
            try:
                with torch.inference_mode():
                    target = model(chunk)
            except RuntimeError as e:
                raise InvalidSpecError(
                    f"`data` of shape {tuple(x.shape)} does not fit the model's input: "
                    f"{str(e).splitlines()[0]}") from e
            out.append(Batch(chunk, target, len(chunk)))
        return out

    def _calibration_batches(self) -> list[Batch]:
        return self._batches(self._split()[0])

    def _evaluation_batches(self) -> list[Batch]:
        return self._batches(self._split()[1])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return ((model(batch.inputs) - batch.target) ** 2).flatten(1).sum(-1).mean()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        batches = self.evaluation_batches()
        out = torch.cat(self.outputs(model, batches)).flatten(1).float()
        ref = torch.cat([b.target for b in batches]).flatten(1).float()
        metrics = {"cosine": float(F.cosine_similarity(out, ref, dim=-1).mean())}
        if out.shape[1] > 1:
            metrics["agreement"] = float((out.argmax(-1) == ref.argmax(-1)).float().mean())
        return metrics
