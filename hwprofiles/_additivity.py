"""Whole-model latency from a table, and the check of that prediction against measurement.

The plain additive model predicts a quantized model's time as the sum of its layers' table
times (quantized layers at their bits, the others at FP32) plus the model's non-layer time,
measured once as whole FP32 time minus the sum of FP32 layer times.

What we found (2 cores, torch 2.13, sharing the machine): on MiniLM (linears only) the
plain sum holds to about 10%. On the digits CNN it was off by 2.6x for all-int8 (predicted
16.5 ms, measured 4.5 ms): the non-layer time is not a constant. fbgemm's static int8 conv
works in channels-last and hands its output on in that layout; every later op then runs on
channels-last tensors, and `max_pool2d` on 256x64x8x8 takes 0.48 ms channels-last against
6.1 ms contiguous. The following convs also change cost: they no longer convert their input
(an int8 conv on a contiguous input pays the conversion, 2.6 ms vs 1.9 ms here), and a
float conv on a channels-last input runs channels-last too (and keeps that layout).

So the prediction follows the layout through the calls in execution order: the state turns
channels-last after a conv that ran an int8 kernel and stays so through later convs (a
float conv on a channels-last input returns channels-last); a linear's output is a plain
matrix again. Each conv is charged its table time for the input layout it gets (the
profiler times convs on both layouts: `TableEntry.transition`), and each non-layer gap
after a call its time in the layout left behind (`LatencyTable.gaps`: the profiler times
the float model's gaps as it runs and with each conv output made channels-last). The
layout correction is the sum of those differences. It treats the forward pass as a chain;
a branch that joins tensors of two layouts (a residual add) is charged as the later call
left it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

import engine
from engine import BitConfig, InvalidSpecError, LayerSpec
from hwprofiles._profiler import DEFAULT_REPEATS, measure_overhead
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
                "interpolated_layers": self.interpolated}


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

    The model's non-layer time (and its split by call) is measured once here, on the float
    model; each config is then quantized with the engine (`spec.quantize(config)` for a
    zoo `ModelSpec`, `engine.apply` with `calibration` for a plain module) and timed on
    the same batch.

    Args:
        spec_or_model: A zoo `ModelSpec`, or a float `nn.Module` (then `inputs` is needed).
        table: Latency table measured at the batch of `inputs`.
        configs: Label -> config, or configs (labelled `config0`, ...).
        inputs: Batch to time (default: the spec's latency batch).
        layers: The model's layers on `inputs` (default: discovered on them).
        calibration: Calibration batches for a plain module (default: `[inputs]`).
        repeats: Timed calls per whole-model measurement.
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
    overhead, gaps = measure_overhead(model, active, inputs, table, repeats=repeats)
    rows = []
    for label, config in configs.items():
        pred = predict_latency(table, layers, config, overhead_us=overhead, gaps=gaps)
        if spec is not None:
            qmodel = spec.quantize(config)
        else:
            qmodel = engine.apply(model, config, calibration=calibration or [inputs])
        timing = engine.time_call(lambda _i, m=qmodel: engine.call_model(m, inputs),
                                  repeats=repeats, warmup=2)
        used = {x.name: FP32 for x in active}
        used |= {n: r["last_kernel"] for n, r in engine.kernel_report(qmodel).items()}
        measured_kernels = dict(Counter(used.values()))
        rows.append(AdditivityRow(label, pred.latency_us, pred.additive_us,
                                  statistics.median(timing.samples_us),
                                  pred.layout_correction_us, overhead, pred.kernels,
                                  measured_kernels,
                                  len(pred.interpolated)))
    return rows

