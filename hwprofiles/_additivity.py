"""Whole-model latency from a table, and the check of that prediction against measurement.

The plain additive model predicts a quantized model's time as the sum of its layers' table
times (quantized layers at their bits, the others at FP32) plus the model's non-layer time,
measured once as whole FP32 time minus the sum of FP32 layer times.

What we found (2 threads, torch 2.13, Xeon with AVX-512 VNNI and AMX; `benchmarks/
latency.py`): on MiniLM (linears only, 32 x 128 tokens) the plain sum holds to within
about 10% for uniform 8, uniform 4 and mixed 4/8. On the digits CNN (batch 256) it was off
by +71..95% for all-int8 and +33..55% for mixed 4/8, while all-4-bit (no int8 conv) was
within 1%: the non-layer time is not a constant. fbgemm's static int8 conv works in
channels-last and hands its output on in that layout; every later op then runs on
channels-last tensors, and `max_pool2d` on 256x64x8x8 took 0.48 ms channels-last against
6.1 ms contiguous (one thread). Later convs change cost too: an int8 conv on a contiguous
input pays the conversion (2.6 ms vs 1.9 ms for conv2, one thread), and a float conv on a
channels-last input runs channels-last (and keeps that layout).

So the prediction follows the layout through the calls in execution order: the state turns
channels-last after a conv that ran an int8 kernel and stays so through later convs (a
float conv on a channels-last input returns channels-last); a linear's output is a plain
matrix again. Each conv is charged its table time for the input layout it gets (the
profiler times convs on both layouts: `TableEntry.transition`), and each non-layer gap
after a call its time in the layout left behind (`LatencyTable.gaps`: the profiler times
the float model's gaps from forward hooks, as it runs and with each conv output made
channels-last). The layout correction is the sum of those differences; with it the digits
CNN came within 0..7%. It treats the forward pass as a chain; a branch that joins tensors
of two layouts (a residual add) is charged as the later call left it.

Timing on a shared machine: other processes on the same cores inflate 2-thread times
several-fold and unevenly (one run under a load average of 4 read +100..+1200%), so the
check times the float and the quantized models in turn, call by call; the table's layer
times, taken earlier, still need a quiet machine to mean anything.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import engine
from engine import BitConfig, InvalidSpecError, LayerSpec
from hwprofiles._profiler import DEFAULT_REPEATS, measure_gaps
from hwprofiles._table import FP32, Gap, LatencyTable

# Kernels that leave a conv's output channels-last.
CHANNELS_LAST_KERNELS = frozenset({"fbgemm-int8-static", "onednn-int8"})


@dataclass(frozen=True)
class Prediction:
    """A table's prediction of one config's whole-model latency.

    Attributes:
        latency_us: The prediction: additive sum plus the layout correction.
        additive_us: Layer times (input as the float model lays it out) plus non-layer time.
        overhead_us: Non-layer time of the float model.
        layout_correction_us: What the layout an int8 conv leaves behind changes (layer and
            gap times); 0 for models without convs.
        kernels: Kernel path -> layers predicted to run it.
        interpolated: Layers whose shape the table had to interpolate.
    """

    latency_us: float
    additive_us: float
    overhead_us: float
    layout_correction_us: float
    kernels: Mapping[str, int] = field(default_factory=dict)
    interpolated: tuple[str, ...] = ()


def predict_latency(
    table: LatencyTable,
    layers: Sequence[LayerSpec],
    config: BitConfig | Mapping[str, int],
    *,
    overhead_us: float | None = None,
    gaps: Sequence[Gap] | None = None,
) -> Prediction:
    """Predicts a config's whole-model latency from the table (see the module docstring).

    Args:
        table: Measured layer times.
        layers: The model's layers (traced at the table's batch size).
        config: Layer name -> bits; layers not named stay FP32.
        overhead_us, gaps: The model's non-layer time and its split by call (default: the
            table's, when it was profiled on this model). Without gaps, no layout correction.
    """
    bits = config.bits if isinstance(config, BitConfig) else dict(config)
    overhead = table.overhead_us if overhead_us is None else overhead_us
    if overhead is None:
        raise InvalidSpecError("the model's non-layer time is unknown: pass `overhead_us` or "
                               "profile the model into the table (its `overhead_us`).")
    gap_list = list(table.gaps if gaps is None else gaps)
    by_name = {x.name: x for x in layers}
    if any(g.layer not in by_name for g in gap_list):
        gap_list = []  # gaps of another model: no correction
    plain = 0.0
    kernels: dict[str, int] = {}
    interpolated = []
    for x in layers:
        hit = table.lookup(x, bits.get(x.name))
        plain += hit.latency_us
        if x.calls:
            kernels[hit.kernel] = kernels.get(hit.kernel, 0) + 1
        if hit.interpolated:
            interpolated.append(x.name)
    correction = 0.0
    if gap_list:
        correction = _layout_correction(table, by_name, bits, gap_list)
    additive = plain + overhead
    return Prediction(latency_us=additive + correction, additive_us=additive,
                      overhead_us=overhead, layout_correction_us=correction,
                      kernels=kernels, interpolated=tuple(interpolated))


def _walk(table: LatencyTable, by_name: Mapping[str, LayerSpec], bits: Mapping[str, int],
          gaps: Sequence[Gap]):
    """Yields (layer, bits, input channels-last?, output channels-last?, gap) per call."""
    cl = False
    for gap in gaps:
        x = by_name[gap.layer]
        b = bits.get(x.name)
        cl_in = cl
        if x.kind == "conv2d":
            kernel = table.lookup(x, b).kernel
            cl = cl_in or kernel in CHANNELS_LAST_KERNELS
        else:
            cl = False
        yield x, b, cl_in, cl, gap


def _per_call(table: LatencyTable, x: LayerSpec, b: int | None, channels_last: bool) -> float:
    return table.lookup(x, b, channels_last=channels_last).latency_us / max(x.calls, 1)


def _layout_correction(table, by_name, bits, gaps) -> float:
    total = 0.0
    for x, b, cl_in, cl_out, gap in _walk(table, by_name, bits, gaps):
        if cl_in and x.kind == "conv2d":
            total += _per_call(table, x, b, True) - _per_call(table, x, b, False)
        if cl_out:
            total += gap.cl_us - gap.native_us
    return total


@dataclass(frozen=True)
class AdditivityRow:
    """Predicted vs measured whole-model latency of one config."""

    config: str
    predicted_us: float
    additive_us: float
    measured_us: float
    layout_correction_us: float
    overhead_us: float
    kernels: Mapping[str, int]
    measured_kernels: Mapping[str, int]  # kernel -> layers that ran it in the quantized model
    interpolated: int
    # Half the spread between the 10th and 90th percentile of the measured calls, over their
    # median: how far the measurement itself moves run to run (None where not sampled).
    noise_rel: float | None = None

    @property
    def rel_err(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted_us - self.measured_us) / self.measured_us

    @property
    def additive_rel_err(self) -> float:
        """The same for the plain additive sum (no layout correction)."""
        return (self.additive_us - self.measured_us) / self.measured_us

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "predicted_us": self.predicted_us,
                "additive_us": self.additive_us, "measured_us": self.measured_us,
                "rel_err": self.rel_err, "additive_rel_err": self.additive_rel_err,
                "layout_correction_us": self.layout_correction_us,
                "overhead_us": self.overhead_us, "kernels": dict(self.kernels),
                "measured_kernels": dict(self.measured_kernels),
                "interpolated_layers": self.interpolated, "noise_rel": self.noise_rel}


def additivity(
    spec_or_model: Any,
    table: LatencyTable,
    configs: Mapping[str, BitConfig] | Sequence[BitConfig],
    *,
    inputs: Any = None,
    layers: Sequence[LayerSpec] | None = None,
    calibration: Sequence[Any] | None = None,
    repeats: int = DEFAULT_REPEATS,
) -> list[AdditivityRow]:
    """Checks the table's whole-model predictions against measured quantized models.

    Each config is quantized with the engine (`spec.quantize(config)` for a zoo
    `ModelSpec`, `engine.apply` with `calibration` for a plain module). The float model and
    the quantized ones are then timed on the same batch, one call each in turn, so load
    that comes and goes on the machine hits them alike. The model's non-layer time is
    measured once: the float model's time minus the table's FP32 layer times (and its split
    by call for the layout correction).

    Args:
        spec_or_model: A zoo `ModelSpec`, or a float `nn.Module` (then `inputs` is needed).
        table: Latency table measured at the batch of `inputs`.
        configs: Label -> config, or configs (labelled `config0`, ...).
        inputs: Batch to time (default: the spec's latency batch).
        layers: The model's layers on `inputs` (default: discovered on them).
        calibration: Calibration batches for a plain module (default: `[inputs]`).
        repeats: Timed calls per model.
    """
    if not isinstance(configs, Mapping):
        configs = {f"config{i}": c for i, c in enumerate(configs)}
    spec = None if isinstance(spec_or_model, nn.Module) else spec_or_model
    if spec is not None:
        model = spec.build()
        inputs = spec.latency_batch() if inputs is None else inputs
        skip = getattr(spec, "skip_layers", ())
    else:
        model, skip = spec_or_model, ()
        if inputs is None:
            raise InvalidSpecError("`inputs` is needed to check a plain module.")
    if layers is None:
        layers = engine.discover_layers(model, inputs, skip=skip)
    active = [x for x in layers if x.calls > 0]
    gaps = measure_gaps(model, active, inputs, repeats=repeats)
    qmodels = {}
    for label, config in configs.items():
        if spec is not None:
            qmodels[label] = spec.quantize(config)
        else:
            qmodels[label] = engine.apply(model, config, calibration=calibration or [inputs])
    samples = _interleaved_us([model, *qmodels.values()], inputs, repeats=repeats)
    fp32_us = statistics.median(samples[0])
    overhead = max(0.0, fp32_us - sum(table.lookup(x, FP32).latency_us for x in active))
    rows = []
    for (label, config), qmodel, times in zip(configs.items(), qmodels.values(), samples[1:],
                                              strict=True):
        pred = predict_latency(table, layers, config, overhead_us=overhead, gaps=gaps)
        used = {x.name: FP32 for x in active}
        used |= {n: r["last_kernel"] for n, r in engine.kernel_report(qmodel).items()}
        rows.append(AdditivityRow(label, pred.latency_us, pred.additive_us,
                                  statistics.median(times), pred.layout_correction_us,
                                  overhead, pred.kernels, dict(Counter(used.values())),
                                  len(pred.interpolated), noise_band(times)))
    return rows


def noise_band(times: Sequence[float]) -> float:
    """Half the 10th-90th percentile spread of `times` over their median."""
    if len(times) < 2:
        return 0.0
    deciles = statistics.quantiles(times, n=10)
    return (deciles[-1] - deciles[0]) / 2.0 / statistics.median(times)


@torch.inference_mode()
def _interleaved_us(models: Sequence[nn.Module], inputs: Any, *, repeats: int,
                    warmup: int = 2) -> list[list[float]]:
    """Per model, `repeats` call times in microseconds, the models called in turn."""
    out: list[list[float]] = [[] for _ in models]
    for i in range(warmup + repeats):
        for times, m in zip(out, models, strict=True):
            t0 = time.perf_counter()
            engine.call_model(m, inputs)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e6)
    return out
