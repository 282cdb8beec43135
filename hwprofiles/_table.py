"""`LatencyTable`: measured per-layer kernel times, keyed by a layer's compute shape.

Serialized as `allocator.latency/1` JSON:

    {"format": "allocator.latency/1", "created": "...", "model": "minilm", "batch": 32,
     "repeats": 20, "device": {"cpu_model": ..., "isa_flags": [...], ...},
     "overhead_us": 1234.5,
     "entries": {"<shape signature>": {"kind": "linear", "macs": ..., "depthwise": false,
                 "layers": ["..."], "times": {"fp32": {"kernel": "fp32", "p50_us": ...,
                 "p90_us": ..., "samples": 20, "timestamp": "..."}, "8": {...}, ...}}}}

Entries are keyed by `LayerSpec.shape_signature` (weight shape, input shape, conv
geometry), not by layer name, so one table serves every model with the same shapes. Times
are per call of the layer; `lookup` multiplies by the layer's calls per forward pass.
A shape the table lacks is interpolated from measured shapes of the same kind by MACs.
`LatencyDocument` (at the end) is the file's pydantic model: `LatencyTable.from_dict` and
`load` validate through it.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple, Self, get_args

from pydantic import (
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine import (
    LAYER_KINDS,
    MAX_BITS,
    MIN_BITS,
    Document,
    InvalidSpecError,
    JsonFormat,
    LayerKind,
    LayerSpec,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    dataclass_default,
)
from hwprofiles._fingerprint import DeviceFingerprint, FingerprintMismatchWarning

LatencyFormat = Literal["allocator.latency/1"]
LATENCY_FORMAT: str = get_args(LatencyFormat)[0]
FP32 = "fp32"


def now_iso() -> str:
    """UTC time, ISO 8601 with seconds, as every timestamp in a table is written."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def bits_key(bits: int | str | None) -> str:
    """`8` -> `"8"`, `None`/`"fp32"` -> `"fp32"`; raises on anything else."""
    if bits is None or bits == FP32:
        return FP32
    if isinstance(bits, bool) or not isinstance(bits, int | str):
        raise InvalidSpecError(f"`bits` must be an integer {MIN_BITS}..{MAX_BITS} or 'fp32', "
                               f"got {bits!r}.")
    try:
        value = int(bits)
    except ValueError:
        raise InvalidSpecError(f"`bits` must be an integer {MIN_BITS}..{MAX_BITS} or 'fp32', "
                               f"got {bits!r}.") from None
    if not MIN_BITS <= value <= MAX_BITS or str(value) != str(bits).strip():
        raise InvalidSpecError(f"`bits` must be an integer {MIN_BITS}..{MAX_BITS} or 'fp32', "
                               f"got {bits!r}.")
    return str(value)


def call_macs(layer: LayerSpec) -> int:
    """MACs of one call of the layer (its traced MACs divided by its calls)."""
    return layer.macs // layer.calls if layer.calls else 0


def _number(value: Any, where: str, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidSpecError(f"`{where}` must be a finite number, got {value!r}.")
    if value < minimum:
        raise InvalidSpecError(f"`{where}` must be >= {minimum:g}, got {value!r}.")
    return float(value)


def _integer(value: Any, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSpecError(f"`{where}` must be an integer >= {minimum}, got {value!r}.")
    return value


@dataclass(frozen=True)
class Measurement:
    """Timed calls of one layer shape at one bit-width (or fp32), in microseconds.

    Attributes:
        kernel: Kernel path the calls ran (`module.last_kernel`, `"fp32"` for float).
        p50_us, p90_us: Median and 90th percentile of the per-call times.
        samples: Timed calls.
        timestamp: When it was measured (ISO 8601, UTC).
    """

    kernel: str
    p50_us: float
    p90_us: float
    samples: int
    timestamp: str = field(default_factory=now_iso)

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, str) or not self.kernel:
            raise InvalidSpecError(
                f"`measurement.kernel` must be a non-empty string, got {self.kernel!r}.")
        object.__setattr__(self, "p50_us", _number(self.p50_us, "measurement.p50_us"))
        object.__setattr__(self, "p90_us", _number(self.p90_us, "measurement.p90_us"))
        _integer(self.samples, "measurement.samples", minimum=1)
        if not isinstance(self.timestamp, str) or not self.timestamp:
            raise InvalidSpecError(f"`measurement.timestamp` must be an ISO 8601 string, "
                                   f"got {self.timestamp!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "p50_us": self.p50_us, "p90_us": self.p90_us,
                "samples": self.samples, "timestamp": self.timestamp}


@dataclass(frozen=True)
class TableEntry:
    """The measurements of one layer shape.

    Attributes:
        signature: `LayerSpec.shape_signature` of the shape.
        kind: `"linear"` or `"conv2d"`.
        macs: MACs of one call at this shape (the interpolation coordinate).
        depthwise: Whether the shape is a depthwise conv (interpolated separately).
        layers: Names of the layers profiled with this shape (informational).
        times: `"fp32"` and `"2"`..`"8"` -> `Measurement` with the input as the float
            model passes it.
        transition: `"fp32"`/bits -> `Measurement` of the same call when the input comes in
            the layout an int8 conv leaves behind (channels-last), for convs only; see
            `hwprofiles._additivity` for why it matters.
    """

    signature: str
    kind: str
    macs: int
    times: Mapping[str, Measurement]
    depthwise: bool = False
    layers: tuple[str, ...] = ()
    transition: Mapping[str, Measurement] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"entries[{self.signature!r}]"
        if not isinstance(self.signature, str) or not self.signature:
            raise InvalidSpecError(f"entry `signature` must be a non-empty string, "
                                   f"got {self.signature!r}.")
        if self.kind not in LAYER_KINDS:
            raise InvalidSpecError(f"`{where}.kind` must be one of {LAYER_KINDS}, "
                                   f"got {self.kind!r}.")
        _integer(self.macs, f"{where}.macs")
        if not isinstance(self.depthwise, bool):
            raise InvalidSpecError(f"`{where}.depthwise` must be true or false, "
                                   f"got {self.depthwise!r}.")
        for attr in ("times", "transition"):
            value = getattr(self, attr)
            if not isinstance(value, Mapping):
                raise InvalidSpecError(f"`{where}.{attr}` must be a JSON object, got {value!r}.")
            checked = {}
            for key, m in value.items():
                k = _checked_key(key, f"{where}.{attr}")
                if not isinstance(m, Measurement):
                    raise InvalidSpecError(f"`{where}.{attr}[{key!r}]` must be a Measurement.")
                checked[k] = m
            object.__setattr__(self, attr, dict(sorted(checked.items(), key=_key_order)))
        object.__setattr__(self, "layers", tuple(self.layers))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "macs": self.macs, "depthwise": self.depthwise,
                               "layers": list(self.layers),
                               "times": {k: m.to_dict() for k, m in self.times.items()}}
        if self.transition:
            out["transition"] = {k: m.to_dict() for k, m in self.transition.items()}
        return out

def _checked_key(key: Any, where: str) -> str:
    try:
        return bits_key(key)
    except InvalidSpecError:
        raise InvalidSpecError(
            f"`{where}` keys must be 'fp32' or '2'..'8', got {key!r}.") from None


def _key_order(item: tuple[str, Any]) -> tuple[int, int]:
    return (0, 0) if item[0] == FP32 else (1, int(item[0]))


@dataclass(frozen=True)
class Gap:
    """Non-layer time after one layer call of a model's forward pass, in microseconds.

    Attributes:
        layer: Name of the layer whose call the gap follows (calls in execution order).
        native_us: Median time from that call's end to the next layer call's start (or the
            end of the forward pass) in the float model, activations as it lays them out.
        cl_us: The same with the layer's output in channels-last layout, as an int8 conv
            leaves it (equal to `native_us` after a linear).
    """

    layer: str
    native_us: float
    cl_us: float

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer:
            raise InvalidSpecError(f"`gaps[].layer` must be a layer name, got {self.layer!r}.")
        object.__setattr__(self, "native_us", _number(self.native_us, "gaps[].native_us"))
        object.__setattr__(self, "cl_us", _number(self.cl_us, "gaps[].cl_us"))

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "native_us": self.native_us, "cl_us": self.cl_us}


class LatencyLookup(NamedTuple):
    """What `LatencyTable.lookup` returns."""

    latency_us: float
    kernel: str
    interpolated: bool


@dataclass(frozen=True)
class LatencyTable(JsonFormat):
    """Measured per-layer latencies of one device at one batch size.

    Attributes:
        device: Fingerprint of the device the times were measured on.
        batch: Batch size (rows of the model input) the shapes were measured at.
        entries: Shape signature -> `TableEntry`.
        repeats: Timed calls per measurement.
        model: Name of the model profiled, if any (the table is keyed by shape and serves
            any model with the same shapes).
        overhead_us: Time of everything in `model`'s forward pass that is not a quantizable
            layer (attention, norms, activations), measured as whole FP32 model time minus
            the sum of its FP32 layer times; None when unknown.
        gaps: `model`'s non-layer time split by the layer call it follows, in both
            activation layouts (see `Gap`); what the layout correction of predictions uses.
        created: When the table was started (ISO 8601, UTC).
    """

    document_name = "latency table"

    device: DeviceFingerprint
    batch: int
    entries: Mapping[str, TableEntry] = field(default_factory=dict)
    repeats: int = 20
    model: str | None = None
    overhead_us: float | None = None
    gaps: tuple[Gap, ...] = ()
    created: str = field(default_factory=now_iso)
    # Whether the fingerprint was checked (on first lookup); a list, as the table is frozen.
    _checked: list[bool] = field(default_factory=lambda: [False], init=False, repr=False,
                                 compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.device, DeviceFingerprint):
            raise InvalidSpecError(f"`device` must be a DeviceFingerprint, got {self.device!r}.")
        _integer(self.batch, "batch", minimum=1)
        _integer(self.repeats, "repeats", minimum=1)
        if self.model is not None and not isinstance(self.model, str):
            raise InvalidSpecError(f"`model` must be a string or null, got {self.model!r}.")
        if self.overhead_us is not None:
            object.__setattr__(self, "overhead_us", _number(self.overhead_us, "overhead_us"))
        if not isinstance(self.entries, Mapping):
            raise InvalidSpecError(f"`entries` must be a JSON object, got {self.entries!r}.")
        for sig, entry in self.entries.items():
            if not isinstance(entry, TableEntry) or entry.signature != sig:
                raise InvalidSpecError(f"`entries[{sig!r}]` must be a TableEntry of that "
                                       "signature.")
        object.__setattr__(self, "entries", dict(self.entries))
        object.__setattr__(self, "gaps", tuple(self.gaps))
        if not all(isinstance(g, Gap) for g in self.gaps):
            raise InvalidSpecError("`gaps` must be a list of Gap records.")

    # -- building ------------------------------------------------------------------------

    def with_entry(self, entry: TableEntry) -> LatencyTable:
        """A copy with `entry` added, merged into an existing entry of its signature."""
        old = self.entries.get(entry.signature)
        if old is not None:
            entry = replace(old, times={**old.times, **entry.times},
                            transition={**old.transition, **entry.transition},
                            layers=tuple(dict.fromkeys(old.layers + entry.layers)))
        return replace(self, entries={**self.entries, entry.signature: entry})

    def has(self, signature: str, bits: int | str | None) -> bool:
        entry = self.entries.get(signature)
        return entry is not None and bits_key(bits) in entry.times

    # -- using ---------------------------------------------------------------------------

    def check_fingerprint(self, device: DeviceFingerprint | None = None) -> list[str]:
        """Warns (`FingerprintMismatchWarning`) when `device` (default: this one, in the
        table's runtime) differs from the table's in CPU model, ISA flags, torch version,
        threads or GPU.

        Returns:
            The differences (empty when the devices match).

        Raises:
            RuntimeMismatchError: `device` is another runtime, or another version of the
                table's runtime (e.g. ONNX Runtime): refused, not warned about.
        """
        current = device or DeviceFingerprint.current(self.device.runtime)
        self.device.check_runtime(current)
        self._checked[0] = True
        diffs = self.device.differences(current)
        if diffs:
            warnings.warn("latency table was measured on another device; its times may not "
                          "hold here: " + "; ".join(diffs) + ".", FingerprintMismatchWarning,
                          stacklevel=2)
        return diffs

    def lookup(self, layer: LayerSpec, bits: int | str | None, *,
               channels_last: bool = False) -> LatencyLookup:
        """Latency of `layer` per forward pass (per-call time x calls) at `bits`.

        Args:
            layer: The layer; its `shape_signature` is the key.
            bits: 2..8, or `"fp32"`/None for the float layer.
            channels_last: The conv's input arrives channels-last (after an int8 conv); uses
                the entry's `transition` time where measured.

        Returns:
            (latency_us, kernel, interpolated): `interpolated` is True when the shape (or
            that bit-width of it) was not measured and the time comes from measured shapes
            of the same kind by MACs (see `interpolate`).

        Raises:
            InvalidSpecError: Bad `bits`, or no measured shape of the layer's kind has it.
        """
        if not self._checked[0]:
            self.check_fingerprint()
        key = bits_key(bits)
        if layer.calls == 0:
            return LatencyLookup(0.0, "none", False)
        entry = self.entries.get(layer.shape_signature)
        if entry is not None and key in entry.times:
            m = entry.transition.get(key, entry.times[key]) if channels_last else entry.times[key]
            return LatencyLookup(m.p50_us * layer.calls, m.kernel, False)
        per_call, kernel = self.interpolate(layer.kind, call_macs(layer), key,
                                            depthwise=layer.is_depthwise, name=layer.name)
        return LatencyLookup(per_call * layer.calls, kernel, True)

    def interpolate(self, kind: str, macs: int, bits: int | str | None, *,
                    depthwise: bool = False, name: str = "?") -> tuple[float, str]:
        """Per-call time of an unmeasured shape from measured ones of the same kind and bits.

        Measured (MACs, p50) points are made non-decreasing in MACs (pool-adjacent-violators),
        then read linearly between neighbours and scaled proportionally to MACs beyond the
        smallest and largest, so the result is monotone in MACs. Depthwise convs use only
        depthwise entries when there are any (their time per MAC differs many-fold).

        Returns:
            (latency_us, kernel of the nearest measured shape by MACs).
        """
        key = bits_key(bits)
        same = [e for e in self.entries.values() if e.kind == kind and key in e.times]
        pool = [e for e in same if e.depthwise == depthwise] or same
        pool = [e for e in pool if e.macs > 0]
        if not pool:
            raise InvalidSpecError(
                f"latency table has no measured {kind} shape at `bits` {key!r} to estimate "
                f"layer {name!r} from; profile it on this model first.")
        xs, ys = _isotonic([(e.macs, e.times[key].p50_us) for e in pool])
        nearest = min(pool, key=lambda e: abs(math.log(e.macs) - math.log(max(macs, 1))))
        return _piecewise(xs, ys, macs), nearest.times[key].kernel

    def layer_latency_us(self, layers: Sequence[LayerSpec], bits: Iterable[int | str]
                         ) -> dict[str, dict[int | str, float]]:
        """Layer name -> bits (as given) -> latency per forward pass: the `latency_us`
        costs of an `allocator.problem/1` (whose `latency_offset_us` is `overhead_us`).

        The layout correction of `hwprofiles.predict_latency` is left out: it depends on
        the neighbours' bit-widths, so it has no per-layer value.
        """
        return {x.name: {b: self.lookup(x, b).latency_us for b in bits} for x in layers}

    # -- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"format": LATENCY_FORMAT, "created": self.created, "model": self.model,
                "batch": self.batch, "repeats": self.repeats, "device": self.device.to_dict(),
                "overhead_us": self.overhead_us, "gaps": [g.to_dict() for g in self.gaps],
                "entries": {sig: e.to_dict() for sig, e in self.entries.items()}}

    @classmethod
    def from_document(cls, doc: LatencyDocument) -> LatencyTable:
        """The table of a validated document (a missing `created` reads as now)."""
        entries = {sig: TableEntry(sig, e.kind, e.macs, _measurements(e.times),
                                   depthwise=e.depthwise, layers=tuple(e.layers),
                                   transition=_measurements(e.transition))
                   for sig, e in doc.entries.items()}
        gaps = tuple(Gap(g.layer, g.native_us, g.cl_us) for g in doc.gaps or ())
        d = doc.device
        device = DeviceFingerprint(cpu_model=d.cpu_model, cores=d.cores,
                                   isa_flags=tuple(d.isa_flags), torch_version=d.torch_version,
                                   torch_threads=d.torch_threads, gpu=d.gpu,
                                   runtime=d.runtime, runtime_version=d.runtime_version,
                                   engine_version=d.engine_version,
                                   int8_paths=None if d.int8_paths is None
                                   else tuple(d.int8_paths.items()))
        return cls(device=device, batch=doc.batch, entries=entries, repeats=doc.repeats,
                   model=doc.model, overhead_us=doc.overhead_us, gaps=gaps,
                   created=doc.created or now_iso())


def _isotonic(points: list[tuple[int, float]]) -> tuple[list[float], list[float]]:
    """Non-decreasing least-squares fit of y over sorted x (equal x averaged first)."""
    merged: dict[int, list[float]] = {}
    for x, y in points:
        merged.setdefault(x, []).append(y)
    xs = sorted(merged)
    blocks: list[list[float]] = []  # [mean, weight, count of xs]
    for x in xs:
        ys = merged[x]
        blocks.append([sum(ys) / len(ys), float(len(ys)), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2, n2 = blocks.pop()
            m1, w1, n1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    fitted = [b[0] for b in blocks for _ in range(int(b[2]))]
    return [float(x) for x in xs], fitted


def _piecewise(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0] * x / xs[0]
    if x >= xs[-1]:
        return ys[-1] * x / xs[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


# -- the document ------------------------------------------------------------------------------

def _time_key(key: Any) -> str:
    try:
        return bits_key(key)
    except InvalidSpecError:
        raise PydanticCustomError(
            "time_key", "Keys should be 'fp32' or '{low}'..'{high}'",
            {"low": MIN_BITS, "high": MAX_BITS}) from None


TimeKey = Annotated[str, PlainValidator(_time_key),
                    WithJsonSchema({"type": "string",
                                    "pattern": f"^({FP32}|[{MIN_BITS}-{MAX_BITS}])$"})]


class MeasurementDocument(Document):
    """Timed calls of one layer shape at one bit-width (see `Measurement`)."""

    kernel: NonEmptyStr = Field(description="Kernel path the calls ran (`fp32` for float).")
    p50_us: NonNegativeFloat = Field(description="Median time per call, in microseconds.")
    p90_us: NonNegativeFloat = Field(description="90th percentile per call, in microseconds.")
    samples: PositiveInt = Field(description="Timed calls.")
    timestamp: NonEmptyStr = Field(description="When it was measured (ISO 8601, UTC).")

    @model_validator(mode="after")
    def _p90_not_below_p50(self) -> Self:
        # A percentile below the median is no measurement: the file was edited or damaged.
        if self.p90_us < self.p50_us:
            raise PydanticCustomError("p90_below_p50", "p90_us ({p90}) is below p50_us ({p50})",
                                      {"p90": self.p90_us, "p50": self.p50_us})
        return self


class EntryDocument(Document):
    """The measurements of one layer shape (see `TableEntry`)."""

    kind: LayerKind = Field(description="The layer's kind.")
    macs: NonNegativeInt = Field(description="MACs of one call at this shape.")
    depthwise: StrictBool = Field(dataclass_default(TableEntry, "depthwise"),
                                  description="Whether the shape is a depthwise conv.")
    layers: list[str] = Field(default_factory=list,
                              description="Names of the layers profiled with this shape.")
    times: dict[TimeKey, MeasurementDocument] = Field(
        description="`fp32` and `2`..`8` -> the measurement, input as the float model has it.")
    transition: dict[TimeKey, MeasurementDocument] = Field(
        default_factory=dict,
        description="The same with a channels-last input, as an int8 conv leaves it (convs).")


class GapDocument(Document):
    """Non-layer time after one layer call (see `Gap`)."""

    layer: NonEmptyStr = Field(description="The layer whose call the gap follows.")
    native_us: NonNegativeFloat = Field(description="Gap in the float model, microseconds.")
    cl_us: NonNegativeFloat = Field(description="Gap after a channels-last output.")


class DeviceDocument(Document):
    """The device a table was measured on (see `DeviceFingerprint`)."""

    cpu_model: str = Field(description="CPU model name.")
    cores: PositiveInt = Field(description="Logical CPUs.")
    isa_flags: list[str] = Field(default_factory=list,
                                 description="ISA extensions that change kernel speed.")
    torch_version: str = Field(description="torch version that measured.")
    torch_threads: PositiveInt = Field(description="torch threads while measuring.")
    gpu: str | None = Field(dataclass_default(DeviceFingerprint, "gpu"),
                            description="CUDA device name, if any.")
    runtime: Literal["onnxruntime"] | None = Field(
        None, description="Runtime whose kernels were timed; null: the engine (PyTorch).")
    runtime_version: str | None = Field(None, description="That runtime's version.")
    engine_version: str | None = Field(
        None, description="The engine's version (engine tables; absent in older tables).")
    int8_paths: dict[str, bool | int | str] | None = Field(
        None, description="What the engine's int8 probes found on this CPU (VNNI, exact "
                          "activation ranges): they decide each int8 layer's kernel.")


class LatencyDocument(Document):
    """The `allocator.latency/1` JSON document: measured per-layer kernel times of one
    device at one batch size, keyed by layer shape (see `LatencyTable`)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "format": LATENCY_FORMAT, "created": "2026-01-01T00:00:00Z", "model": "minilm",
        "batch": 32, "repeats": 20,
        "device": {"cpu_model": "Intel Xeon", "cores": 2, "isa_flags": ["avx2", "fma"],
                   "torch_version": "2.13.0", "torch_threads": 2, "gpu": None},
        "overhead_us": 1234.5, "gaps": [],
        "entries": {"linear/w384x384/in32x384": {
            "kind": "linear", "macs": 4718592, "depthwise": False, "layers": ["fc"],
            "times": {"fp32": {"kernel": "fp32", "p50_us": 60.0, "p90_us": 66.0,
                               "samples": 20, "timestamp": "2026-01-01T00:00:00Z"}}}}}]})

    format: LatencyFormat = Field(description="Always `allocator.latency/1`.")
    created: str | None = Field(None, description="When the table was started (ISO 8601, "
                                                  "UTC); missing or empty reads as now.")
    model: str | None = Field(dataclass_default(LatencyTable, "model"),
                              description="Name of the model profiled, if any.")
    batch: PositiveInt = Field(description="Batch size the shapes were measured at.")
    repeats: PositiveInt = Field(1, description="Timed calls per measurement.")
    device: DeviceDocument = Field(description="The device the times were measured on.")
    overhead_us: NonNegativeFloat | None = Field(
        dataclass_default(LatencyTable, "overhead_us"),
        description="Non-layer time of the model's forward pass, in microseconds.")
    gaps: list[GapDocument] | None = Field(
        None, description="The non-layer time split by the layer call it follows.")
    entries: dict[str, EntryDocument] = Field(description="Shape signature -> its entry.")


LatencyTable.document_model = LatencyDocument


def _measurements(times: Mapping[str, MeasurementDocument]) -> dict[str, Measurement]:
    return {k: Measurement(m.kernel, m.p50_us, m.p90_us, m.samples, m.timestamp)
            for k, m in times.items()}
