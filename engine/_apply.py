"""`apply`: a float model + a `BitConfig` -> a model running on quantized kernels.

Also calibration of activation ranges, kernel reports, real byte counts, and save/load
of quantized models as safetensors + JSON (no pickle anywhere).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from engine._digest import hash_tensors
from engine._errors import InvalidSpecError, UnknownLayerError
from engine._gptq import bias_correction, gptq_many, group_qparams
from engine._layers import call_model, model_state, quantizable_modules
from engine._modules import QuantConv2d, QuantizedLayer, QuantLinear
from engine._platform import configure_runtime, release_free_memory
from engine._quantizer import QuantizedWeight, QuantScheme, quantize
from engine._stats import ConvGeometry, InputStats, collect_input_stats
from engine._types import BitConfig

# Float-model statistics are collected for several layers per forward pass, as many as fit
# this many bytes of x xᵀ sums (float64), so that a large model never holds them all
# (SmolLM2-135M: 1 GB in all, 4 passes at this size, next to its 0.5 GB of weights).
STATS_CHUNK_BYTES = 256 << 20
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "bitconfig.json"


def scheme_for(config: BitConfig, bits: int) -> QuantScheme:
    """The quantization scheme a config gives a layer of `bits` bits.

    8 bits is per channel unless `group_size_8bit` says otherwise, and symmetric in W8A8
    configs (the native int8 kernels' format); weight-only 8-bit layers run dequant, so they
    follow the config's `symmetric` (asymmetric scales fit skewed channels, such as depthwise
    filters, more finely) unless `symmetric_8bit` overrides it (export targets such as GGUF
    Q8_0). Narrower widths follow the config's `symmetric` and `group_size`.
    """
    if bits == 8:
        symmetric = (config.symmetric or config.activation_bits == 8
                     if config.symmetric_8bit is None else config.symmetric_8bit)
        return QuantScheme(8, symmetric=symmetric, group_size=config.group_size_8bit)
    return QuantScheme(bits, symmetric=config.symmetric, group_size=config.group_size)


def _check_names(model: nn.Module, config: BitConfig) -> None:
    modules = quantizable_modules(model)
    for name in config.bits:
        m = modules.get(name)
        if isinstance(m, nn.Conv2d) and (isinstance(m.padding, str) or m.padding_mode != "zeros"):
            raise UnknownLayerError(
                f"layer {name!r}: conv padding {m.padding!r} / mode {m.padding_mode!r} is not "
                "supported by the engine; use numeric zero padding.")
    unknown = [n for n in config.bits if n not in modules]
    if unknown:
        known = ", ".join(list(modules)[:8]) + (", ..." if len(modules) > 8 else "")
        raise UnknownLayerError(
            f"`bits` names layer(s) the model cannot quantize: {unknown[:5]}; "
            f"quantizable layers are: {known or 'none'}."
        )


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
        config: Layer name -> bits, the weight scheme and the rounding method.
        calibration: Batches (as `call_model` takes them). Needed for calibrated rounding
            (`gptq`, bias correction); also fixes int8 convs' activation ranges, which lets
            them run the static int8 kernel, and gives 8-bit linears their SmoothQuant
            factors.
        kernel: `"auto"` (fastest available per shape) or `"reference"` (dequant everywhere).
        inplace: Modify `model` itself instead of a copy.

    Returns:
        The quantized model in eval mode.

    Raises:
        UnknownLayerError: A name in `config.bits` is not a quantizable layer of `model`.
        InvalidSpecError: The config asks for something the engine cannot do, or for
            calibrated rounding without calibration data.

    Example:
        >>> qmodel = apply(model, BitConfig(bits={"fc1": 8, "fc2": 4}))
    """
    configure_runtime()
    _validate(config)
    _check_names(model, config)
    act_quant = config.activation_bits == 8
    batches, calibrated = _calibration_batches(config, calibration)
    target = model if inplace else _copy_around(model, list(config.bits))
    modules = quantizable_modules(target)
    smoothing = {}
    if batches and act_quant and config.smoothing_alpha is not None:
        int8_linears = [n for n, b in config.bits.items()
                        if b == 8 and isinstance(modules[n], nn.Linear)]
        smoothing = smoothing_factors(target, int8_linears, batches, config.smoothing_alpha)
    order = [n for n in modules if n in config.bits]  # model order
    sequential = config.calibration_inputs == "sequential"
    chunks = _stats_chunks(modules, order) if calibrated and not sequential else []
    # fp32 inputs come from the untouched float model; in place, from a float copy when the
    # statistics take more than one pass
    reference = (model if not inplace or len(chunks) <= 1 else copy.deepcopy(model))
    reference_modules = quantizable_modules(reference) if chunks else {}
    memo = (_MemoContext(reference, config, batches)
            if calibrated and not sequential and not act_quant else None)
    stats: dict[str, InputStats] = {}
    for name in order:
        if calibrated and sequential:
            # inputs as the partly quantized model produces them
            stats = collect_input_stats(target, {name: modules[name]}, batches, stop_early=True)
        elif chunks and name == chunks[0][0]:
            chunk = chunks.pop(0)
            need = [n for n in chunk
                    if memo is None or not memo.has(n, config.bits[n], reference_modules[n])]
            stats = {}  # the last chunk's sums go before the next ones are gathered
            release_free_memory()
            stats = collect_input_stats(reference, {n: reference_modules[n] for n in need},
                                        batches, stop_early=True) if need else {}
        q = _quantize_module(name, modules[name], config, config.bits[name], smoothing.get(name),
                             stats.pop(name, None), kernel, act_quant, memo)
        q.to(modules[name].weight.device)
        _set_submodule(target, name, q)
    target.eval()
    fuse_output_activations(target)
    needs_ranges = any(isinstance(m, QuantConv2d) and m._is_native_int8()
                       for m in target.modules())
    if batches and needs_ranges:
        calibrate(target, batches)
    return target


def quantize_candidates(
    model: nn.Module,
    config: BitConfig,
    widths: Sequence[int],
    *,
    calibration: Iterable[Any] | None = None,
    kernel: str = "auto",
) -> Iterator[tuple[str, dict[int, QuantizedLayer]]]:
    """Each layer `config.bits` names (model order), quantized at every one of `widths`
    with the config's scheme and rounding: what `apply` gives that layer in a model
    quantized uniformly at each width, with the calibration inputs' statistics gathered
    once for all widths instead of once per width. Weight-only; GPTQ's inputs are the
    float model's (`calibration_inputs` "fp32").

    Args:
        model: Float model; untouched.
        config: Names the layers (its `bits` values are ignored) and the rounding.
        widths: The bit-widths wanted for every layer.
        calibration: Batches, as `apply` takes them (needed for calibrated rounding).
        kernel: As in `apply`.

    Raises:
        InvalidSpecError: W8A8 or sequential calibration asked for, or calibrated
            rounding without calibration data.
    """
    configure_runtime()
    _validate(config)
    _check_names(model, config)
    if config.activation_bits is not None or config.calibration_inputs == "sequential":
        raise InvalidSpecError(
            "`quantize_candidates` is weight-only with float-model calibration inputs; got "
            f"`activation_bits` {config.activation_bits!r}, `calibration_inputs` "
            f"{config.calibration_inputs!r}.")
    batches, calibrated = _calibration_batches(config, calibration)
    modules = quantizable_modules(model)
    order = [n for n in modules if n in config.bits]
    chunks = _stats_chunks(modules, order) if calibrated else []
    memo = _MemoContext(model, config, batches) if calibrated else None
    stats: dict[str, InputStats] = {}
    for name in order:
        if chunks and name == chunks[0][0]:
            need = [n for n in chunks.pop(0)
                    if memo is None or not all(memo.has(n, b, modules[n]) for b in widths)]
            stats = {}  # the last chunk's sums go before the next ones are gathered
            release_free_memory()
            stats = collect_input_stats(model, {n: modules[n] for n in need},
                                        batches, stop_early=True) if need else {}
        module = modules[name]
        own = stats.pop(name, None)  # freed once the layer is rounded
        missing = [b for b in widths if memo is None or not memo.has(name, b, module)]
        fresh = _round(name, module, config, missing, None, own) if missing else {}
        out = {}
        for b in widths:
            if b in fresh and memo is not None:
                memo.put(name, b, module.weight, fresh[b])
            q = _quantize_module(name, module, config, b, None, own, kernel, False, memo,
                                 fresh.get(b))
            out[b] = q.to(module.weight.device)
        yield name, out


def _copy_around(model: nn.Module, names: list[str]) -> nn.Module:
    """A deep copy of `model` that shares (does not copy) the weight and bias of the layers
    about to be replaced by quantized ones: they are only read, and the model's peak memory
    stays one float model plus the quantized layers, not two float models."""
    modules = quantizable_modules(model)
    memo: dict[int, Any] = {}
    for name in names:
        for param in (modules[name].weight, modules[name].bias):
            if param is not None:
                memo[id(param)] = param
    return copy.deepcopy(model, memo)


def _stats_chunks(modules: Mapping[str, nn.Linear | nn.Conv2d],
                  order: list[str]) -> list[list[str]]:
    """Consecutive layers whose x xᵀ sums together fit `STATS_CHUNK_BYTES`."""
    chunks: list[list[str]] = []
    used = STATS_CHUNK_BYTES
    for name in order:
        w = modules[name].weight
        groups = getattr(modules[name], "groups", 1)
        k = w[0].numel()  # inputs per group (in_features, or in_channels/groups * kh * kw)
        need = groups * k * k * 8
        if chunks and used + need <= STATS_CHUNK_BYTES:
            chunks[-1].append(name)
            used += need
        else:
            chunks.append([name])
            used = need
    return chunks


class _RoundingMemo:
    """Weights this process already rounded: (quantized weight, bias) by layer, scheme,
    rounding settings and calibration inputs, so that a model quantized again the same way
    (the estimator's uniform candidates, then the solve's measured configs; calibrated
    rounding of an LLM takes minutes per width) reuses them. Only for float-model inputs
    (`calibration_inputs` "fp32") and weight-only layers, where a layer's rounding depends
    on nothing else. An entry holds weak references to the float model and the layer's
    weight and is used only while both are the same objects, no parameter of the model was
    modified or replaced since, and the calibration inputs hash the same. Oldest entries
    go first beyond `MEMO_BYTES`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[Any, ...]] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple, model: nn.Module, state: tuple, weight: torch.Tensor) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        model_ref, weight_ref, saved_state, value, _ = entry
        if model_ref() is not model or weight_ref() is not weight or saved_state != state:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: tuple, model: nn.Module, state: tuple, weight: torch.Tensor,
            value: tuple[QuantizedWeight, torch.Tensor | None], nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return
        self._drop(key)
        self._entries[key] = (weakref.ref(model), weakref.ref(weight), state, value, nbytes)
        self._bytes += nbytes
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[-1]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def retain(self, keep: set[tuple[str, int]]) -> int:
        """Drops every entry whose (layer, bits) is not in `keep`; returns bytes freed."""
        before = self._bytes
        for key in [k for k in self._entries if (k[0], k[1]) not in keep]:
            self._drop(key)
        return before - self._bytes


# Rounded weights kept per process (SmolLM2-135M: ~60 MB per width at 4 bits).
MEMO_BYTES = 768 << 20
_MEMO = _RoundingMemo(MEMO_BYTES)


def retain_rounded(configs: Iterable[BitConfig]) -> int:
    """Keeps only the remembered roundings that `configs` will use (a layer at a width) and
    forgets the rest, so that candidates a sensitivity estimate rounded do not stay in
    memory while the chosen configurations are applied. Returns the bytes let go.

    Example:
        >>> retain_rounded([mixed_config, uniform_config])  # before measuring both
    """
    keep = {(name, bits) for config in configs for name, bits in config.bits.items()}
    freed = _MEMO.retain(keep)
    if freed:
        release_free_memory()
    return freed


# The config fields a weight-only layer's rounding depends on (besides its width and the
# calibration inputs): a solved config's model, budgets, cost and extra must not miss.
ROUNDING_FIELDS = ("group_size", "symmetric", "rounding", "bias_correction", "clip_search",
                   "calibration_inputs", "activation_bits")


class _MemoContext:
    """The rounding memo as one `apply` call sees it: its float model, settings and
    calibration inputs."""

    def __init__(self, model: nn.Module, config: BitConfig, batches: Sequence[Any]) -> None:
        self.model = model
        self.state = model_state(model)
        settings = tuple((f, repr(getattr(config, f))) for f in ROUNDING_FIELDS)
        self.base = (settings, hash_tensors(list(batches)))

    def _key(self, name: str, bits: int) -> tuple:
        return (name, bits, *self.base)

    def has(self, name: str, bits: int, module: nn.Module) -> bool:
        return self.get(name, bits, cast(torch.Tensor, module.weight)) is not None

    def get(self, name: str, bits: int,
            weight: torch.Tensor) -> tuple[QuantizedWeight, torch.Tensor | None] | None:
        return _MEMO.get(self._key(name, bits), self.model, self.state, weight)

    def put(self, name: str, bits: int, weight: torch.Tensor,
            value: tuple[QuantizedWeight, torch.Tensor | None]) -> None:
        qweight, bias = value
        nbytes = qweight.nbytes + (0 if bias is None else bias.numel() * bias.element_size())
        _MEMO.put(self._key(name, bits), self.model, self.state, weight, value, nbytes)


def _calibration_batches(config: BitConfig,
                         calibration: Iterable[Any] | None) -> tuple[list[Any], bool]:
    """The batches as a list, and whether the config's rounding is calibrated (which then
    needs them)."""
    batches = [] if calibration is None else list(calibration)
    calibrated = config.rounding != "rtn" or config.bias_correction
    if calibrated and not batches:
        raise InvalidSpecError(
            f"`rounding` {config.rounding!r} / `bias_correction` need calibration data; "
            "pass `calibration=` batches (or use rounding 'rtn' without bias correction).")
    return batches, calibrated


def _validate(config: BitConfig) -> None:
    if config.activation_bits not in (None, 8):
        raise InvalidSpecError(
            f"`activation_bits` must be 8 (W8A8 kernels) or null (float activations) to run "
            f"on the engine, got {config.activation_bits!r}.")


def _quantize_module(
    name: str, module: nn.Linear | nn.Conv2d, config: BitConfig, bits: int,
    factors: torch.Tensor | None, stats: InputStats | None, kernel: str, act_quant: bool,
    memo: _MemoContext | None = None,
    rounded: tuple[QuantizedWeight, torch.Tensor | None] | None = None,
) -> QuantizedLayer:
    """One float layer -> its quantized module, with the config's rounding method (its
    rounded weight given as `rounded`, or from `memo` when this process rounded it the
    same way before)."""
    conv = ConvGeometry.of(module)
    if rounded is None and memo is not None:
        rounded = memo.get(name, bits, module.weight)
    if rounded is None:
        rounded = _round(name, module, config, [bits], factors, stats)[bits]
        if memo is not None:
            memo.put(name, bits, module.weight, rounded)
    qweight, bias = rounded
    if conv is not None:
        return QuantConv2d(qweight, bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                           kernel, act_quant)
    act = None if factors is None else 1.0 / factors
    return QuantLinear(qweight, bias, kernel, act, act_quant, config.activation_grid)


def _round(
    name: str, module: nn.Linear | nn.Conv2d, config: BitConfig, widths: Sequence[int],
    factors: torch.Tensor | None, stats: InputStats | None,
) -> dict[int, tuple[QuantizedWeight, torch.Tensor | None]]:
    """A float layer's quantized weight and (bias-corrected) bias at each of `widths` (GPTQ
    rounds every width in one pass: `gptq_many`)."""
    schemes = {b: scheme_for(config, b) for b in widths}
    weight = module.weight.detach().float()
    conv = ConvGeometry.of(module)
    if factors is not None:  # SmoothQuant: work in the smoothed domain x' = x / s, W' = W s
        weight = weight * factors[None, :]
    n_groups = 1 if conv is None else conv.groups
    w3 = weight.reshape(n_groups, weight.shape[0] // n_groups, -1)
    hessian = mean = None
    if stats is not None:
        hessian, mean = stats.hessian, stats.mean
        if factors is not None:
            inv = (1.0 / factors).double()
            hessian = hessian * inv[None, :, None] * inv[None, None, :]
            mean = mean * inv[None, :]
    rounded: dict[int, tuple[Any, Any, Any]] = dict.fromkeys(widths, (None, None, None))
    if config.rounding == "gptq":
        many = gptq_many(w3, _calibrated(name, hessian), list(schemes.values()),
                         clip_search=config.clip_search)
        rounded = {b: (s, z, c) for b, (c, s, z) in zip(widths, many, strict=True)}
    elif config.clip_search:
        col_weight = None if hessian is None else hessian.diagonal(dim1=1, dim2=2).mean(0)
        if n_groups > 1:
            col_weight = None  # per-group Hessians differ; plain MSE
        rounded = {b: (*group_qparams(weight.reshape(weight.shape[0], -1), scheme,
                                      clip_search=True, col_weight=col_weight), None)
                   for b, scheme in schemes.items()}
    out = {}
    for b, (scales, zeros, codes) in rounded.items():
        qweight = quantize(weight, schemes[b], scales=scales, zeros=zeros, codes=codes)
        bias = module.bias.detach().float() if module.bias is not None else None
        if config.bias_correction:
            delta = (qweight.dequantize() - weight).reshape(w3.shape)
            shift = bias_correction(delta, _calibrated(name, mean)).float()
            bias = -shift if bias is None else bias - shift
        out[b] = (qweight, bias)
    return out


def _calibrated(name: str, stat: torch.Tensor | None) -> torch.Tensor:
    """A statistic of layer `name`'s inputs, which calibrated rounding cannot do without."""
    if stat is None:
        raise InvalidSpecError(
            f"layer {name!r} never ran on the calibration batches, so `rounding` 'gptq' / "
            "`bias_correction` have no inputs to fit it to; give batches that reach it or "
            "leave it out of `bits`.")
    return stat


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

    def hook_for(name: str) -> Callable[[nn.Module, tuple, Any], None]:
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


# Activations a static int8 conv's output grid may end at: what each keeps of its input.
_CLAMPS: dict[type[nn.Module], tuple[float, float]] = {
    nn.ReLU: (0.0, math.inf), nn.ReLU6: (0.0, 6.0)}


def fuse_output_activations(model: nn.Module) -> int:
    """Marks each quantized conv whose output goes straight into a ReLU or ReLU6 of the same
    Sequential (nothing else reads a Sequential child's output) with that activation's
    interval, so its calibrated output grid spans only what the activation keeps: the
    requantized output saturates below 0 and above 6 exactly as the activation would, with
    a finer grid (MobileNetV2: the conv outputs' negative tails ReLU6 discards). Identity
    modules between the two (folded batch norms) are skipped. Returns how many were marked."""
    marked = 0
    for seq in (m for m in model.modules() if isinstance(m, nn.Sequential)):
        children = [c for c in seq if not isinstance(c, nn.Identity)]
        for conv, nxt in zip(children, children[1:], strict=False):
            if isinstance(conv, QuantConv2d):
                conv.output_clamp = _CLAMPS.get(type(nxt))
                marked += conv.output_clamp is not None
    return marked


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any]) -> int:
    """Records activation ranges of the model's quantized convs over `batches`.

    Returns:
        Number of batches seen.
    """
    batches = list(batches)
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
    for m in convs:
        m.finish_calibration()
    if seen:
        _correct_activation_bias(model, convs, batches)
    return seen


def _correct_activation_bias(model: nn.Module, convs: Sequence[QuantConv2d],
                             batches: Iterable[Any]) -> None:
    """Bias correction through the quantized activations: one more pass over the batches
    on the int8 kernels, every conv summing how far its output lands from the float conv
    of the same (already quantized) input, then each bias moved back by the mean."""
    static = [m for m in convs if m.calibrated and m._is_native_int8()]
    for m in static:
        m.measuring_shift = True
    try:
        for batch in batches:
            call_model(model, batch)
    finally:
        for m in static:
            m.measuring_shift = False
    for m in static:
        m.correct_activation_bias()


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def kernel_report(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per quantized layer: bits, scheme, bytes, which kernel paths ran how often, and why
    each was chosen (the probe's verdict and timings)."""
    return {
        name: {
            "bits": m.bits,
            "scheme": m.scheme.label,
            "weight_bytes": m.weight_nbytes,
            "kernel_calls": dict(m.kernel_calls),
            "last_kernel": m.last_kernel,
            "kernel_reasons": dict(m.kernel_reasons),
        }
        for name, m in quantized_layers(model).items()
    }


def kernel_counts(model: nn.Module) -> dict[str, int]:
    """Kernel path -> calls, summed over the model's quantized layers."""
    counts: dict[str, int] = {}
    for layer in quantized_layers(model).values():
        for path, calls in layer.kernel_calls.items():
            counts[path] = counts.get(path, 0) + calls
    return counts


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
    config.save(out / CONFIG_FILE)
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
    config = BitConfig.load(src / CONFIG_FILE)
    try:
        state = load_file(str(src / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise InvalidSpecError(
            f"`{src / WEIGHTS_FILE}` is not a valid safetensors file: {e}") from e
    # The structure only: the stored tensors replace every quantized value below.
    structure = dataclasses.replace(config, rounding="rtn", bias_correction=False,
                                    clip_search=False)
    qmodel = apply(model, structure, kernel=kernel)
    for name, layer in quantized_layers(qmodel).items():
        prefix = f"{name}." if name else ""
        for buf in ("bias", "act_smoothing", "zeros"):  # optional tensors of a layer
            key = prefix + buf
            if key in state and getattr(layer, buf, None) is None:
                layer.register_buffer(buf, torch.empty_like(state[key]))
    try:
        qmodel.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InvalidSpecError(
            f"`{src / WEIGHTS_FILE}` does not fit this model: {str(e).splitlines()[0]}"
        ) from e
    return qmodel, config
