"""`apply`: a float model + a `BitConfig` -> a model running on quantized kernels.

Also calibration of activation ranges, kernel reports, real byte counts, and save/load
of quantized models as safetensors + JSON (no pickle anywhere).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine._errors import InvalidSpecError, UnknownLayerError
from engine._layers import call_model, quantizable_modules
from engine._modules import QuantConv2d, QuantizedLayer, QuantLinear
from engine._quantizer import QuantScheme, quantize
from engine._types import BitConfig

ROUNDINGS = ("rtn",)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "bitconfig.json"


def scheme_for(config: BitConfig, bits: int) -> QuantScheme:
    """The quantization scheme a config gives a layer of `bits` bits.

    8 bits is always symmetric per-channel (the native int8 kernels' format); narrower
    widths follow the config's `symmetric` and `group_size`.
    """
    if bits == 8:
        return QuantScheme(8, symmetric=True, group_size=None)
    return QuantScheme(bits, symmetric=config.symmetric, group_size=config.group_size)


def _check_names(model: nn.Module, config: BitConfig) -> dict[str, nn.Module]:
    modules = quantizable_modules(model)
    unknown = [n for n in config.bits if n not in modules]
    if unknown:
        known = ", ".join(list(modules)[:8]) + (", ..." if len(modules) > 8 else "")
        raise UnknownLayerError(
            f"`bits` names layer(s) the model cannot quantize: {unknown[:5]}; "
            f"quantizable layers are: {known or 'none'}."
        )
    return modules


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def apply(
    model: nn.Module,
    config: BitConfig,
    *,
    calibration: Iterable[Any] | None = None,
    kernel: str = "auto",
    inplace: bool = False,
) -> nn.Module:
    """Quantizes the layers a `BitConfig` names; all other layers stay in float.

    Args:
        model: Float model; left untouched unless `inplace`.
        config: Layer name -> bits, plus the weight scheme.
        calibration: Batches (as `call_model` takes them) used to fix int8 convs' activation
            ranges, which lets them run the static int8 kernel; without it they quantize
            activations per call.
        kernel: `"auto"` (fastest available per shape) or `"reference"` (dequant everywhere).
        inplace: Modify `model` itself instead of a copy.

    Returns:
        The quantized model in eval mode.

    Raises:
        UnknownLayerError: A name in `config.bits` is not a quantizable layer of `model`.
        InvalidSpecError: The config asks for something the engine cannot do.

    Example:
        >>> qmodel = apply(model, BitConfig(bits={"fc1": 8, "fc2": 4}))
    """
    if config.rounding not in ROUNDINGS:
        raise InvalidSpecError(
            f"`rounding` {config.rounding!r} is not available; choose one of {ROUNDINGS}.")
    if config.activation_bits not in (None, 8):
        raise InvalidSpecError(
            f"`activation_bits` must be 8 (W8A8 kernels) or null (float activations) to run "
            f"on the engine, got {config.activation_bits!r}.")
    _check_names(model, config)
    act_quant = config.activation_bits == 8
    batches = None if calibration is None else list(calibration)
    target = model if inplace else copy.deepcopy(model)
    modules = quantizable_modules(target)
    smoothing = {}
    if batches and act_quant and config.smoothing_alpha is not None:
        int8_linears = [n for n, b in config.bits.items()
                        if b == 8 and isinstance(modules[n], nn.Linear)]
        smoothing = smoothing_factors(target, int8_linears, batches, config.smoothing_alpha)
    for name, bits in config.bits.items():
        float_module = modules[name]
        weight = float_module.weight.detach()
        if isinstance(float_module, nn.Conv2d):
            qweight = quantize(weight, scheme_for(config, bits))
            q = QuantConv2d.from_float(float_module, qweight, kernel=kernel,
                                       quantize_activations=act_quant)
        else:
            factors = smoothing.get(name)
            if factors is not None:
                weight = weight * factors[None, :]
            qweight = quantize(weight, scheme_for(config, bits))
            act = None if factors is None else 1.0 / factors
            q = QuantLinear.from_float(float_module, qweight, kernel=kernel, act_smoothing=act,
                                       quantize_activations=act_quant)
        q.to(float_module.weight.device)
        _set_submodule(target, name, q)
    target.eval()
    if batches:
        calibrate(target, batches)
    return target


@torch.no_grad()
def smoothing_factors(
    model: nn.Module, names: list[str], batches: list[Any], alpha: float
) -> dict[str, torch.Tensor]:
    """SmoothQuant factors s_j = max|x_j|^alpha / max|w_j|^(1-alpha) per input channel.

    The weight's column j is multiplied by s_j and the input divided by it, which moves
    activation outliers into the (per-channel quantized) weight. Statistics come from the
    float model on the calibration batches.
    """
    if not names:
        return {}
    modules = quantizable_modules(model)
    absmax: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_m: nn.Module, args: tuple, _out: Any) -> None:
            x = args[0].detach()
            cur = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            absmax[name] = cur if name not in absmax else torch.maximum(absmax[name], cur)
        return hook

    hooks = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            call_model(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for name in names:
        if name not in absmax:
            continue  # never ran on the calibration data: nothing to balance
        w_max = modules[name].weight.detach().abs().amax(dim=0).float()
        x_max = absmax[name].to(w_max.device)
        factors = x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
        factors = torch.where((x_max > 0) & (w_max > 0), factors, torch.ones_like(factors))
        out[name] = factors.clamp(min=1e-5)
    return out


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any]) -> int:
    """Records activation ranges of the model's quantized convs over `batches`.

    Returns:
        Number of batches seen.
    """
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    for m in convs:
        m.input_range.fill_(float("nan"))
        m.output_range.fill_(float("nan"))
        m.calibrating = True
    seen = 0
    try:
        for batch in batches:
            call_model(model, batch)
            seen += 1
    finally:
        for m in convs:
            m.calibrating = False
    return seen


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def kernel_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per quantized layer: bits, scheme, bytes, and which kernel paths ran how often."""
    return {
        name: {
            "bits": m.bits,
            "scheme": m.scheme.label,
            "weight_bytes": m.weight_nbytes,
            "kernel_calls": dict(m.kernel_calls),
            "last_kernel": m.last_kernel,
        }
        for name, m in quantized_layers(model).items()
    }


def model_size_bytes(model: nn.Module) -> int:
    """Real bytes of every parameter and buffer (packed weights counted as stored)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:  # tied weights are stored once
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def save_quantized(model: nn.Module, config: BitConfig, directory: str | Path) -> Path:
    """Writes `model.safetensors` (packed weights and float rest) and `bitconfig.json`."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "allocator.quantized/1"})
    tmp.replace(out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(config.to_json() + "\n", encoding="utf-8")
    return out


def load_quantized(
    model: nn.Module, directory: str | Path, *, kernel: str = "auto"
) -> tuple[nn.Module, BitConfig]:
    """Rebuilds a quantized model saved by `save_quantized` on a float model of the same
    architecture (its weights are replaced by the stored ones).

    Raises:
        InvalidSpecError: A file is missing, is not what it claims, or does not fit `model`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    src = Path(directory)
    for fname in (WEIGHTS_FILE, CONFIG_FILE):
        if not (src / fname).is_file():
            raise InvalidSpecError(f"`{src / fname}` is missing: not a saved quantized model.")
    config = BitConfig.from_json((src / CONFIG_FILE).read_text(encoding="utf-8"))
    try:
        state = load_file(str(src / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise InvalidSpecError(f"`{src / WEIGHTS_FILE}` is not a valid safetensors file: {e}") from e
    qmodel = apply(model, config, kernel=kernel)
    try:
        qmodel.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InvalidSpecError(
            f"`{src / WEIGHTS_FILE}` does not fit this model: {str(e).splitlines()[0]}"
        ) from e
    return qmodel, config


def read_config(path: str | Path) -> BitConfig:
    """Loads an `allocator.bitconfig/1` JSON file with errors that name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidSpecError(f"cannot read bit config `{p}`: {e.strerror}") from e
    try:
        return BitConfig.from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise InvalidSpecError(f"bit config `{p}` is not valid JSON: {e}") from e
