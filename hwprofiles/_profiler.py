"""`profile_layers`: times every layer shape of a model at each bit-width on the engine.

Each layer is timed in isolation on its real input (captured from one float forward pass),
as the engine's own quantized module for that bit-width (`QuantLinear` / `QuantConv2d`, the
kernel path chosen exactly as in a quantized model, int8 convs calibrated so they run the
static kernel), and as the float module. To read weights from memory as a full model does
rather than from a hot cache, the timed call cycles through copies of the layer, so that
the bytes between two uses of one copy's weights (the copies' weights, inputs and outputs)
total about `WORKING_SET_BYTES` (at most `MAX_COPIES` copies). Each timing stops once its
median is known within `REL_CI` (`engine.time_call`).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import engine
from engine import BitConfig, InvalidSpecError, LayerSpec, check_bits
from hwprofiles._fingerprint import DeviceFingerprint
from hwprofiles._table import FP32, Gap, LatencyTable, Measurement, TableEntry, bits_key, call_macs

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)
WORKING_SET_BYTES = 64 << 20
MAX_COPIES = 16
DEFAULT_REPEATS = 20
# A timing stops once its median is known within 5 % (95 % confidence), after at least 5
# calls; `repeats` caps it. Steady kernels take a few calls, noisy ones up to the cap.
REL_CI = 0.05
# Whole-model passes that the per-layer gaps are medians of (after 2 warm-up passes).
GAP_PASSES = 7


def batch_size(inputs: Any) -> int:
    """Rows of a batch as `engine.call_model` takes it (first dim of its first tensor)."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    if isinstance(values, Iterable) and not isinstance(values, str | bytes):
        for v in values:
            if isinstance(v, torch.Tensor) and v.dim():
                return int(v.shape[0])
    raise InvalidSpecError(f"cannot tell the batch size of inputs of type "
                           f"{type(inputs).__name__}; pass a tensor, a tuple of tensors or a "
                           "dict of tensors.")


@torch.no_grad()
def capture_inputs(model: nn.Module, names: Iterable[str], example_inputs: Any
                   ) -> dict[str, torch.Tensor]:
    """Layer name -> a copy of its input in the first call of one float forward pass."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            if name not in captured and args and isinstance(args[0], torch.Tensor):
                captured[name] = args[0].detach().clone()
        return hook

    hooks = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names if n in modules]
    was_training = model.training
    model.eval()
    try:
        engine.call_model(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return captured


def copies_for(module: nn.Linear | nn.Conv2d, *, call_bytes: int = 0,
               working_set_bytes: int = WORKING_SET_BYTES, max_copies: int = MAX_COPIES) -> int:
    """How many copies of a layer make the bytes one weight waits through before its next
    use (each call's FP32 weights plus its `call_bytes` of input and output) exceed the
    working set (capped): a conv whose activations are megabytes evicts its weights in a
    few calls, as in the full model, without cycling sixteen copies."""
    nbytes = module.weight.numel() * module.weight.element_size()
    per_call = max(nbytes + call_bytes, 1)
    return max(1, min(max_copies, math.ceil(working_set_bytes / per_call)))


def quantized_module(module: nn.Linear | nn.Conv2d, bits: int, config: BitConfig,
                     calibration_input: torch.Tensor | None = None) -> engine.QuantizedLayer:
    """The engine's module for `module` at `bits`, as `engine.apply` builds it under `config`
    with calibration data (RTN weights: rounding does not change kernel time).

    8-bit linears carry a SmoothQuant vector when the config smooths (calibrated models do,
    and the kernel then multiplies the input by it); convs are calibrated on
    `calibration_input` so int8 ones run the static kernel.
    """
    scheme = engine.scheme_for(config, bits)
    act_quant = config.activation_bits == 8
    weight = module.weight.detach().float()
    qweight = engine.quantize(weight, scheme)
    bias = None if module.bias is None else module.bias.detach().float()
    if isinstance(module, nn.Conv2d):
        q: engine.QuantizedLayer = engine.QuantConv2d(
            qweight, bias, tuple(module.stride), tuple(module.padding), tuple(module.dilation),
            module.groups, quantize_activations=act_quant)
        if calibration_input is not None and act_quant:
            q.calibrating = True
            try:
                with torch.no_grad():
                    q(calibration_input)
            finally:
                q.calibrating = False
            q.finish_calibration()
    else:
        smoothing = None
        if bits == 8 and act_quant and config.smoothing_alpha is not None:
            smoothing = torch.ones(weight.shape[1])
        q = engine.QuantLinear(qweight, bias, act_smoothing=smoothing,
                               quantize_activations=act_quant,
                               activation_grid=config.activation_grid)
    return q.to(module.weight.device).eval()


def time_modules(modules: Sequence[nn.Module], x: torch.Tensor, *, repeats: int
                 ) -> tuple[engine.Timing, str]:
    """Times `modules[i % n](x)`; every copy runs once in warm-up (kernel layouts prepared).

    Returns:
        (timing, kernel path the calls ran: `last_kernel`, or `"fp32"` for float modules).
    """
    n = len(modules)
    timing = engine.time_call(lambda i: modules[i % n](x), repeats=repeats, warmup=n + 2,
                              rel_ci=REL_CI)
    kernel = getattr(modules[0], "last_kernel", None) or FP32
    return timing, kernel


def measurement(timing: engine.Timing, kernel: str) -> Measurement:
    return Measurement(kernel=kernel, p50_us=timing.p50_us, p90_us=timing.p90_us,
                       samples=len(timing.samples_us))


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)


def profile_layers(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    example_inputs: Any,
    bits: Iterable[int] = DEFAULT_BITS,
    *,
    repeats: int = DEFAULT_REPEATS,
    progress: bool = True,
    table: LatencyTable | None = None,
    resume_path: str | Path | None = None,
    config: BitConfig | None = None,
    model_name: str | None = None,
    transitions: bool = True,
    working_set_bytes: int = WORKING_SET_BYTES,
    max_copies: int = MAX_COPIES,
) -> LatencyTable:
    """Measures every layer shape of `model` at each of `bits` and at FP32.

    Layers with the same `shape_signature` are measured once. Measurements already in
    `table` (or in the file at `resume_path`) are kept and not repeated.

    Args:
        model: The float model (left unchanged).
        layers: Its layers, as `engine.discover_layers(model, example_inputs)` gives them.
        example_inputs: One batch (`engine.call_model` form); its size is the table's batch.
        bits: Candidate weight bit-widths.
        repeats: Timed calls per measurement (p50 and p90 over them).
        progress: Show a progress bar on stderr.
        table: A table to add to (same batch size).
        resume_path: Where the partial table is saved after each shape (atomically), and
            read from when it exists, so an interrupted run picks up where it stopped.
        config: Whose schemes the quantized layers use (`engine.scheme_for`; default
            `BitConfig(bits={})`, the product's default scheme).
        model_name: Recorded in the table with the model's non-layer time.
        transitions: Also time convs on a channels-last input (the layout an int8 conv
            leaves behind), for the layout-transition correction of predictions.
        working_set_bytes, max_copies: Weight cycling (see module docstring).

    Returns:
        The table, with `overhead_us` (whole FP32 model time minus its FP32 layer times).
    """
    config = config or BitConfig(bits={})
    wanted = [FP32] + [bits_key(check_bits(b, where="bits")) for b in bits]
    wanted = list(dict.fromkeys(wanted))
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidSpecError(f"`repeats` must be an integer >= 1, got {repeats!r}.")
    batch = batch_size(example_inputs)
    resume = Path(resume_path) if resume_path is not None else None
    if table is None and resume is not None and resume.is_file():
        table = LatencyTable.load(resume)
    if table is None:
        table = LatencyTable(device=DeviceFingerprint.current(), batch=batch, repeats=repeats,
                             model=model_name)
    elif table.batch != batch:
        raise InvalidSpecError(f"`table` was measured at batch {table.batch}, but the example "
                               f"inputs have batch {batch}; profile into a new table.")
    else:
        table.check_fingerprint()

    inputs, groups = layers_by_shape(model, layers, example_inputs)
    active = [x for x in layers if x.calls > 0]
    modules = engine.quantizable_modules(model)

    todo: dict[str, list[str]] = {}
    for sig, members in groups.items():
        entry = table.entries.get(sig)
        keys = [k for k in wanted if entry is None or k not in entry.times]
        conv = members[0].kind == "conv2d"
        if transitions and conv:
            keys += [f"cl:{k}" for k in wanted if entry is None or k not in entry.transition]
        if keys:
            todo[sig] = keys
        elif entry is not None:  # already measured: just record the names
            table = table.with_entry(TableEntry(sig, entry.kind, entry.macs, {},
                                                layers=tuple(x.name for x in members)))
    with _progress(progress) as bar:
        task = bar.add_task("profiling", total=sum(len(k) for k in todo.values()))
        for sig, keys in todo.items():
            members = groups[sig]
            first = members[0]
            x = inputs[first.name]
            module = modules[first.name]
            times: dict[str, Measurement] = {}
            transition: dict[str, Measurement] = {}
            with torch.inference_mode():
                out_bytes = module(x).numel() * x.element_size()
            n = copies_for(module, call_bytes=x.numel() * x.element_size() + out_bytes,
                           working_set_bytes=working_set_bytes, max_copies=max_copies)
            x_cl = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
            built: dict[str, list[nn.Module]] = {}
            for key in keys:
                cl = key.startswith("cl:")
                base = key[3:] if cl else key
                bar.update(task, description=f"{first.name} {base}{' (cl)' if cl else ''}")
                mods = built.get(base)
                if mods is None:
                    if base == FP32:
                        one = copy.deepcopy(module).eval()
                    else:
                        one = quantized_module(module, int(base), config, x)
                    mods = built[base] = [one] + [copy.deepcopy(one) for _ in range(n - 1)]
                timing, kernel = time_modules(mods, x_cl if cl else x, repeats=repeats)
                (transition if cl else times)[base] = measurement(timing, kernel)
                bar.advance(task)
            del built
            table = table.with_entry(TableEntry(
                sig, first.kind, call_macs(first), times, depthwise=first.is_depthwise,
                layers=tuple(x.name for x in members), transition=transition))
            if resume is not None:
                table.save(resume)
    overhead, gaps = measure_overhead(model, active, example_inputs, table, repeats=repeats,
                                      channels_last=transitions)
    table = replace(table, overhead_us=overhead, gaps=gaps, model=model_name or table.model,
                    repeats=repeats)
    if resume is not None:
        table.save(resume)
    return table


def measure_overhead(model: nn.Module, layers: Sequence[LayerSpec], example_inputs: Any,
                     table: LatencyTable, *, repeats: int = DEFAULT_REPEATS,
                     channels_last: bool = True) -> tuple[float, tuple[Gap, ...]]:
    """The model's non-layer time, whole and split by layer call.

    Returns:
        (overhead_us, gaps): whole FP32 model time minus the sum of its FP32 layer times
        from `table` (clamped at 0), and `measure_gaps`; no gaps without `channels_last`
        (a weight-only table: no kernel changes the layout, so no correction uses them).
    """
    whole = engine.time_call(lambda _i: engine.call_model(model, example_inputs),
                             repeats=repeats, warmup=2, rel_ci=REL_CI).p50_us
    layer_sum = sum(table.lookup(x, FP32).latency_us for x in layers)
    if not channels_last:  # gaps only enter the correction for channels-last outputs
        return max(0.0, whole - layer_sum), ()
    return max(0.0, whole - layer_sum), measure_gaps(
        model, layers, example_inputs, repeats=min(repeats, GAP_PASSES))


def measure_gaps(model: nn.Module, layers: Sequence[LayerSpec], example_inputs: Any, *,
                 repeats: int = GAP_PASSES) -> tuple[Gap, ...]:
    """Per layer call, the time until the next layer call starts, with activations as the
    float model lays them out and with every conv output made channels-last (the layout
    an int8 conv leaves behind)."""
    native = _gap_times(model, layers, example_inputs, repeats=repeats, channels_last=False)
    cl = native  # without convs the layout never changes
    if any(x.kind == "conv2d" for x in layers):
        cl = _gap_times(model, layers, example_inputs, repeats=repeats, channels_last=True)
        if [n for n, _ in native] != [n for n, _ in cl]:  # data-dependent control flow
            cl = native
    return tuple(Gap(name, us, cl_us) for (name, us), (_, cl_us) in zip(native, cl, strict=True))


@torch.inference_mode()
def _gap_times(model: nn.Module, layers: Sequence[LayerSpec], example_inputs: Any, *,
               repeats: int, channels_last: bool) -> list[tuple[str, float]]:
    """Median time after each layer call until the next one starts (or the pass ends).

    Timestamps come from forward pre- and post-hooks (CPU work is synchronous); with
    `channels_last`, conv outputs are converted in the post-hook before its timestamp, so
    the conversion counts as layer time and the gap sees channels-last activations.
    """
    modules = dict(model.named_modules())
    events: list[tuple[str, str, float]] = []
    clock = time.perf_counter

    def pre(name: str):
        def hook(_m: nn.Module, _args: tuple) -> None:
            events.append(("start", name, clock()))
        return hook

    def post(name: str, conv: bool):
        def hook(_m: nn.Module, _args: tuple, out: Any) -> Any:
            if conv and isinstance(out, torch.Tensor) and out.dim() == 4:
                out = out.contiguous(memory_format=torch.channels_last)
            events.append(("end", name, clock()))
            return out if channels_last else None
        return hook

    hooks = []
    for x in layers:
        m = modules[x.name]
        hooks.append(m.register_forward_pre_hook(pre(x.name)))
        hooks.append(m.register_forward_hook(post(x.name, channels_last and x.kind == "conv2d")))
    runs: list[list[tuple[str, float]]] = []
    try:
        for i in range(repeats + 2):
            events.clear()
            engine.call_model(model, example_inputs)
            events.append(("start", "", clock()))  # the end of the pass closes the last gap
            if i < 2:
                continue  # warm-up
            gaps, last = [], None
            for kind, name, t in events:
                if kind == "end":
                    last = (name, t)
                elif last is not None:  # a start after an end: the gap between them
                    gaps.append((last[0], (t - last[1]) * 1e6))
                    last = None
            runs.append(gaps)
    finally:
        for h in hooks:
            h.remove()
    names = [n for n, _ in runs[0]]
    if any([n for n, _ in r] != names for r in runs):
        raise InvalidSpecError("the model's layer calls differ between runs on the same "
                               "inputs; its non-layer time cannot be split per layer.")
    return [(n, statistics.median(r[i][1] for r in runs)) for i, n in enumerate(names)]


def layers_by_shape(model: nn.Module, layers: Sequence[LayerSpec], example_inputs: Any
                    ) -> tuple[dict[str, Any], dict[str, list[LayerSpec]]]:
    """The inputs each layer that runs gets on `example_inputs`, and those layers grouped by
    shape signature (each distinct shape is timed once).

    Raises:
        UnknownLayerError: A layer is not in the model.
    """
    modules = engine.quantizable_modules(model)
    active = [x for x in layers if x.calls > 0]
    missing = [x.name for x in active if x.name not in modules]
    if missing:
        raise engine.UnknownLayerError(f"layers not in the model: {missing[:5]}.")
    inputs = capture_inputs(model, [x.name for x in active], example_inputs)
    groups: dict[str, list[LayerSpec]] = {}
    for layer in active:
        groups.setdefault(layer.shape_signature, []).append(layer)
    return inputs, groups
