"""User models: `package.module:factory` + optional safetensors weights + input data file.

Metrics compare the quantized model's outputs with the FP32 outputs on held-out inputs
(cosine, and top-1 agreement when the outputs are 2-D scores); the loss is the squared
distance to the FP32 outputs. Nothing is unpickled: `.pt` files load with
`weights_only=True`, `.npy` files with `allow_pickle=False`.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine import InvalidSpecError
from zoo._base import Batch, ModelSpec

BATCH = 32
DATA_SUFFIXES = (".npy", ".pt", ".pth")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _check_factory(ref: str, factory: object) -> None:
    """Refuses what cannot be a model factory before it is called: a class that is not an
    `nn.Module`, a built-in function, anything that needs arguments (a factory is called
    with none)."""
    if inspect.isclass(factory):
        if not issubclass(factory, nn.Module):
            raise InvalidSpecError(f"`model` {ref!r} is the class {factory.__name__}, not an "
                                   f"nn.Module subclass or a function returning one.")
    elif inspect.isbuiltin(factory) or not callable(factory):
        raise InvalidSpecError(f"`model` {ref!r} is not a model factory (a Python function "
                               f"or nn.Module class called with no arguments).")
    try:
        inspect.signature(factory).bind()
    except TypeError:
        params = ", ".join(inspect.signature(factory).parameters)
        raise InvalidSpecError(f"`model` {ref!r} needs arguments ({params}); a model factory "
                               f"is called with none.") from None
    except ValueError:  # no signature to read: not a Python function or class
        raise InvalidSpecError(f"`model` {ref!r} is not a model factory (a Python function "
                               f"or nn.Module class called with no arguments).") from None


def load_factory(ref: str):
    """Resolves `package.module:callable` to a model factory, without calling it.

    The standard library holds no model factories (and importing some of it has effects),
    so its modules are refused before any import.
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidSpecError(f"`model` {ref!r} must look like 'package.module:factory'.")
    if module_name.split(".")[0] in sys.stdlib_module_names:
        raise InvalidSpecError(f"`model` {ref!r}: {module_name!r} is a standard-library "
                               f"module, not one holding a model factory.")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001  (ImportError, or the module's own code failing)
        raise InvalidSpecError(f"`model` {ref!r}: cannot import {module_name!r} "
                               f"({_first_line(e)}).") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise InvalidSpecError(f"`model` {ref!r}: {module_name!r} has no callable {attr!r}.")
    _check_factory(ref, factory)
    return factory


def check_files(data: str | Path, weights: str | Path | None) -> None:
    """Raises `InvalidSpecError` naming the file unless `data` (and `weights`, when given)
    exist, with a suffix this loader reads: checked before the model is built."""
    p = Path(data)
    if not p.is_file():
        raise InvalidSpecError(f"`data` file {str(p)!r} does not exist.")
    if p.suffix not in DATA_SUFFIXES:
        raise InvalidSpecError(f"`data` {str(p)!r}: use a .pt tensor file or a .npy array.")
    if weights is not None and not Path(weights).is_file():
        raise InvalidSpecError(f"`weights` file {str(weights)!r} does not exist.")


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
    except Exception as e:  # noqa: BLE001  (numpy/torch raise many kinds on a bad file)
        raise InvalidSpecError(f"`data` {str(p)!r} is not a readable {p.suffix} file: "
                               f"{_first_line(e)}") from None
    if not isinstance(data, torch.Tensor):
        raise InvalidSpecError(
            f"`data` {str(p)!r} must hold one tensor of inputs, got {type(data).__name__}.")
    if data.dim() < 1 or len(data) < 2:
        raise InvalidSpecError(
            f"`data` {str(p)!r} needs at least 2 samples, shape {tuple(data.shape)}.")
    if data.is_complex() or data.dtype == torch.bool:
        raise InvalidSpecError(f"`data` {str(p)!r} must hold real numbers, got {data.dtype}.")
    if data.is_floating_point() and not bool(torch.isfinite(data).all()):
        raise InvalidSpecError(f"`data` {str(p)!r} holds NaN or infinite values.")
    return data.float() if data.is_floating_point() else data


class UserModelSpec(ModelSpec):
    """A model built by the user's own factory; calibration and evaluation split one file."""

    primary_metric = "cosine"

    def __init__(self, factory: str, data: str | Path, weights: str | Path | None = None,
                 eval_fraction: float = 0.5):
        check_files(data, weights)
        super().__init__()
        self.name = factory
        self.description = f"user model {factory}"
        self._factory_ref, self._data_path, self._weights = factory, data, weights
        self._eval_fraction = eval_fraction
        self._inputs: torch.Tensor | None = None

    def _build(self) -> nn.Module:
        self.inputs()  # the data is read and checked before any user code runs
        factory = load_factory(self._factory_ref)
        try:
            model = factory()
        except Exception as e:  # noqa: BLE001  (the user's code: any failure is named)
            raise InvalidSpecError(f"`model` {self._factory_ref!r}: the factory raised "
                                   f"{_first_line(e)}") from None
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
            except Exception as e:  # noqa: BLE001  (the user's forward: any failure is named)
                raise InvalidSpecError(
                    f"`data` of shape {tuple(x.shape)} does not fit the model's input: "
                    f"{_first_line(e)}") from None
            if not isinstance(target, torch.Tensor) or not target.is_floating_point():
                raise InvalidSpecError(
                    f"`model` {self._factory_ref!r} must return a float tensor, got "
                    f"{type(target).__name__}.")
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
