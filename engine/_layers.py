"""Layer discovery: every `nn.Linear` and `nn.Conv2d`, measured by one traced forward."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from engine._errors import InvalidSpecError
from engine._platform import configure_runtime
from engine._types import LayerSpec

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Calls `model` on one batch: a tensor, a tuple/list of positional args, or a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def quantizable_modules(
    model: nn.Module, skip: Sequence[str] = ()
) -> dict[str, nn.Linear | nn.Conv2d]:
    """FQN -> module for every Linear/Conv2d whose name matches no `skip` glob pattern."""
    return {
        name: m
        for name, m in model.named_modules()
        if type(m) in QUANTIZABLE_TYPES and name and not _matches(name, skip)
    }


def _macs(module: nn.Linear | nn.Conv2d, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        rows = out.numel() // module.out_features
        return rows * module.in_features * module.out_features
    per_output = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
    return out.numel() * per_output


@torch.no_grad()
def discover_layers(
    model: nn.Module, example_inputs: Any, *, skip: Sequence[str] = ()
) -> list[LayerSpec]:
    """Finds the quantizable layers and measures them with one forward pass.

    Args:
        model: The float model (left unchanged; run in eval mode).
        example_inputs: One batch as `call_model` takes it; MACs are for this batch.
        skip: Glob patterns of FQNs to leave out (e.g. `["classifier", "*.head"]`).

    Returns:
        LayerSpecs in the order the layers first ran (model order for layers never run).
    """
    configure_runtime()
    modules = quantizable_modules(model, skip)
    seen: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    hooks = []

    def hook_for(name: str) -> Callable[[nn.Linear | nn.Conv2d, tuple, Any], None]:
        def hook(module: nn.Linear | nn.Conv2d, args: tuple, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                return
            rec = seen.get(name)
            if rec is None:
                order.append(name)
                seen[name] = {"macs": _macs(module, out), "calls": 1,
                              "input_shape": tuple(args[0].shape),
                              "output_shape": tuple(out.shape)}
            else:
                rec["macs"] += _macs(module, out)
                rec["calls"] += 1
        return hook

    for name, m in modules.items():
        hooks.append(m.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        call_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    names = order + [n for n in modules if n not in seen]
    specs = []
    for name in names:
        m = modules[name]
        rec = seen.get(name, {"macs": 0, "calls": 0, "input_shape": (), "output_shape": ()})
        common = dict(name=name, weight_shape=tuple(m.weight.shape), params=m.weight.numel(),
                      macs=int(rec["macs"]), calls=int(rec["calls"]),
                      input_shape=rec["input_shape"], output_shape=rec["output_shape"])
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str):
                raise InvalidSpecError(
                    f"layer {name!r}: string padding {m.padding!r} is not supported.")
            specs.append(LayerSpec(kind="conv2d", groups=m.groups, stride=int_pair(m.stride),
                                   padding=int_pair(m.padding), dilation=int_pair(m.dilation),
                                   **common))
        else:
            specs.append(LayerSpec(kind="linear", **common))
    return specs


def int_pair(value: Sequence[int] | str) -> tuple[int, int]:
    """A conv's (height, width) setting as two ints.

    Raises:
        InvalidSpecError: `value` is a string (`padding="same"`): not supported.
    """
    if isinstance(value, str):
        raise InvalidSpecError(f"conv padding {value!r} is not supported; use numbers.")
    first, second = value
    return int(first), int(second)


def model_state(model: nn.Module) -> tuple:
    """Identity and in-place version of every parameter and buffer of `model`: changes when
    the model is edited in place or a tensor is replaced (what caches keyed by a model
    check before reusing what they computed from it)."""
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


def total_params(layers: Iterable[LayerSpec]) -> int:
    return sum(x.params for x in layers)


def mean_bits(layers: Sequence[LayerSpec], bits: Mapping[str, int]) -> float:
    """Parameter-weighted mean weight bits (layers missing from `bits` count as 32)."""
    n = total_params(layers)
    return math.fsum(x.params * bits.get(x.name, 32) for x in layers) / n if n else 0.0
