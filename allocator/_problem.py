"""The allocation problem (`allocator.problem/1`): layers, candidate bits, Ω and costs.

Solvers see it through `units()`: a tie group (layers that must share a bit-width) is one
unit whose Ω and costs are the sums over its members; a fixed layer is a unit with one
choice. Every budget is a linear constraint over the units' choices.

`ProblemDocument` is the file's pydantic model (validation and JSON schema, shared by the
CLI, the API and the job runner); `Problem.from_dict` validates through it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import AfterValidator, ConfigDict, Field, Strict, WithJsonSchema
from pydantic_core import PydanticCustomError

from allocator._budget import COST_KEYS, Budget
from engine import (
    MAX_BITS,
    MIN_BITS,
    Document,
    Integer,
    InvalidSpecError,
    JsonFormat,
    LayerSpec,
    NonEmptyStr,
    dataclass_default,
    integer,
)

# The per-bit cost tables a layer may carry, one per cost axis but mean bits.
COST_FIELDS = ("size_bytes", "bops", "latency_us")
# What a layer's bits cost counts: `params` x bits (the engine's mean bits), or its stored
# `size_bytes` x 8 (a deployment target's bits per weight, scales and zero points included).
BitsCost = Literal["params", "size_bytes"]
ProblemFormat = Literal["allocator.problem/1"]
PROBLEM_FORMAT: str = get_args(ProblemFormat)[0]
# Largest Ω, per-bit cost and latency offset a problem may hold, and largest parameter and
# MAC count of a layer: far above any model's (a layer's BOPs are ~1e15), and low enough that
# no sum over layers, ratio to a budget or default cost (macs x 8 x 32) leaves the float range
# or float precision for counts.
MAX_TABLE_VALUE = 1e30
MAX_COUNT = 2**53


@dataclass(frozen=True)
class ProblemLayer:
    """One layer of a problem: its Ω per bit-width and its costs.

    Attributes:
        name: Layer name (FQN).
        params: Weight parameters (for mean bits and default sizes).
        macs: Multiply-accumulates (for default BOPs).
        omega: Bits -> predicted loss increase when this layer alone is quantized.
        allowed_bits: Restricts the problem's candidate bits for this layer.
        fixed_bits: The layer must take this bit-width.
        size_bytes, bops, latency_us: Explicit per-bit costs (defaults: params*bits/8,
            macs*bits*activation_bits, none).
    """

    name: str
    params: int
    macs: int
    omega: Mapping[int, float]
    allowed_bits: tuple[int, ...] | None = None
    fixed_bits: int | None = None
    size_bytes: Mapping[int, float] | None = None
    bops: Mapping[int, float] | None = None
    latency_us: Mapping[int, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "params": self.params, "macs": self.macs,
                               "omega": {str(b): v for b, v in sorted(self.omega.items())}}
        if self.allowed_bits is not None:
            out["allowed_bits"] = list(self.allowed_bits)
        if self.fixed_bits is not None:
            out["fixed_bits"] = self.fixed_bits
        for f in COST_FIELDS:
            table = getattr(self, f)
            if table is not None:
                out[f] = {str(b): v for b, v in sorted(table.items())}
        return out


@dataclass(frozen=True)
class Unit:
    """Layers that take one bit-width together, with summed Ω and costs per choice."""

    names: tuple[str, ...]
    choices: tuple[int, ...]
    omega: dict[int, float]
    params: int
    costs: dict[str, dict[int, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem(JsonFormat):
    """A bit-allocation problem; `ProblemDocument` (below) is its `allocator.problem/1` form.

    Built from a document, it checks what spans fields: unique layer names, ties that name
    known layers once each, a usable bit-width for every layer.
    """

    document_name = "problem"

    layers: tuple[ProblemLayer, ...]
    bits: tuple[int, ...]
    activation_bits: int = 8
    ties: tuple[tuple[str, ...], ...] = ()
    model: str | None = None
    latency_offset_us: float = 0.0
    bits_cost: BitsCost = "params"

    def __post_init__(self) -> None:
        if not self.layers:
            raise InvalidSpecError("`layers` must not be empty.")
        if not self.bits:
            raise InvalidSpecError("`bits` (the candidate bit-widths) must not be empty.")
        for b in self.bits:
            if not MIN_BITS <= b <= MAX_BITS:
                raise InvalidSpecError(f"`bits` has {b}, outside {MIN_BITS}..{MAX_BITS}.")
        names = Counter(x.name for x in self.layers)
        if len(names) != len(self.layers):
            dup = sorted(n for n, count in names.items() if count > 1)
            more = f" and {len(dup) - 5} more" if len(dup) > 5 else ""
            raise InvalidSpecError(f"`layers` has duplicate names {dup[:5]}{more}.")
        _check_ranges(self)
        seen: set[str] = set()
        for group in self.ties:
            if not group:
                raise InvalidSpecError("`ties` has an empty group.")
            for n in group:
                if n not in names:
                    raise InvalidSpecError(f"`ties` names unknown layer {n!r}.")
                if n in seen:
                    raise InvalidSpecError(f"`ties`: layer {n!r} is in more than one group.")
                seen.add(n)
        for layer in self.layers:
            if not self.layer_choices(layer):
                raise InvalidSpecError(
                    f"`layers[{layer.name!r}]` has no usable bit-width: "
                    f"candidates {list(self.bits)}, "
                    f"allowed {layer.allowed_bits}, fixed {layer.fixed_bits}, "
                    f"omega given for {sorted(layer.omega)}.")

    # -- serialization ------------------------------------------------------------------------

    @classmethod
    def from_document(cls, doc: ProblemDocument) -> Problem:
        """The problem of a validated document (checks across fields happen here)."""
        layers = tuple(
            ProblemLayer(name=x.name, params=x.params, macs=x.macs, omega=dict(x.omega),
                         allowed_bits=(None if x.allowed_bits is None
                                       else tuple(sorted(set(x.allowed_bits)))),
                         fixed_bits=x.fixed_bits,
                         **{f: _copy(getattr(x, f)) for f in COST_FIELDS})
            for x in doc.layers)
        return cls(layers=layers, bits=tuple(sorted(set(doc.bits))),
                   activation_bits=doc.activation_bits, ties=tuple(tuple(g) for g in doc.ties),
                   model=doc.model, latency_offset_us=doc.latency_offset_us,
                   bits_cost=doc.bits_cost)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": PROBLEM_FORMAT, "model": self.model,
                               "bits": list(self.bits), "activation_bits": self.activation_bits,
                               "layers": [x.to_dict() for x in self.layers]}
        if self.ties:
            out["ties"] = [list(g) for g in self.ties]
        if self.latency_offset_us:
            out["latency_offset_us"] = self.latency_offset_us
        if self.bits_cost != "params":
            out["bits_cost"] = self.bits_cost
        return out

    @classmethod
    def from_tables(cls, layers: Sequence[LayerSpec], omega: Mapping[str, Mapping[int, float]],
                    bits: Sequence[int], **kwargs: Any) -> Problem:
        """A problem from discovered layers and a sensitivity table (`omega[name][bits]`)."""
        costs = kwargs.pop("costs", {})
        rows = []
        for spec in layers:
            extra = {f: costs[f][spec.name] for f in COST_FIELDS if spec.name in costs.get(f, {})}
            rows.append(ProblemLayer(spec.name, spec.params, spec.macs,
                                     {int(b): float(v) for b, v in omega[spec.name].items()},
                                     **extra))
        return cls(layers=tuple(rows), bits=tuple(sorted(set(bits))), **kwargs)

    # -- the view solvers use -----------------------------------------------------------------

    def with_bits(self, bits: Sequence[int]) -> Problem:
        """The same problem with other candidate bit-widths."""
        import dataclasses

        return dataclasses.replace(self, bits=tuple(sorted(set(bits))))

    def layer_choices(self, layer: ProblemLayer) -> tuple[int, ...]:
        if layer.fixed_bits is not None:
            return (layer.fixed_bits,) if layer.fixed_bits in layer.omega else ()
        allowed = set(self.bits) & set(layer.omega)
        if layer.allowed_bits is not None:
            allowed &= set(layer.allowed_bits)
        return tuple(sorted(allowed))

    def layer_cost(self, layer: ProblemLayer, kind: str, bits: int) -> float | None:
        """Cost of one layer at `bits` for a budget kind (None where it is unknown)."""
        if kind == "bits":
            if self.bits_cost == "size_bytes" and layer.size_bytes:
                size = layer.size_bytes.get(bits)
                return None if size is None else 8.0 * size
            return float(layer.params * bits)
        if kind == "size":
            return layer.size_bytes.get(bits) if layer.size_bytes else layer.params * bits / 8.0
        if kind == "bops":
            if layer.bops:
                return layer.bops.get(bits)
            return float(layer.macs * bits * self.activation_bits)
        if kind == "latency":
            return layer.latency_us.get(bits) if layer.latency_us else None
        raise InvalidSpecError(f"unknown cost kind {kind!r}.")

    @property
    def total_params(self) -> int:
        return sum(x.params for x in self.layers)

    def units(self, budgets: Sequence[Budget] = ()) -> list[Unit]:
        """Solver units; choices are limited to bits whose budgeted costs are known.

        Raises:
            InvalidSpecError: A budgeted cost is missing for every choice of a layer.
        """
        by_name = {x.name: x for x in self.layers}
        grouped = {n for g in self.ties for n in g}
        groups = [list(g) for g in self.ties]
        groups += [[x.name] for x in self.layers if x.name not in grouped]
        order = {x.name: i for i, x in enumerate(self.layers)}
        groups.sort(key=lambda g: min(order[n] for n in g))
        budgeted = sorted({b.kind for b in budgets})
        kinds = sorted({*budgeted, "bits", "size", "bops"})
        units = []
        for g in groups:
            members = [by_name[n] for n in g]
            choices = set.intersection(*(set(self.layer_choices(m)) for m in members))
            for kind in budgeted:
                for m in members:
                    known = {b for b in choices if self.layer_cost(m, kind, b) is not None}
                    if not known:
                        raise InvalidSpecError(
                            f"a {kind} budget was given but `layers[{m.name!r}]."
                            f"{COST_KEYS[kind]}` "
                            f"has no value for its bit-widths {sorted(choices)}.")
                    choices &= known
            if not choices:
                shown = g if len(g) <= 5 else [*g[:5], f"... {len(g) - 5} more"]
                raise InvalidSpecError(f"tie group {shown} has no bit-width allowed for all "
                                       "members.")
            ch = tuple(sorted(choices))
            costs = {kind: {b: sum(self.layer_cost(m, kind, b) or 0.0 for m in members)
                            for b in ch} for kind in kinds}
            units.append(Unit(tuple(g), ch, {b: sum(m.omega[b] for m in members) for b in ch},
                              sum(m.params for m in members), costs))
        return units

    def budget_rhs(self, budget: Budget) -> float:
        """Right-hand side of a budget as a sum of unit costs."""
        if budget.kind == "bits":
            return budget.value * self.total_params
        if budget.kind == "latency":
            return budget.value - self.latency_offset_us
        return budget.value

    def budget_value(self, kind: str, total: float) -> float:
        """The inverse of `budget_rhs`: a sum of unit costs as the value of a `kind` budget
        (mean bits, bytes, BOPs, or microseconds with the non-layer latency)."""
        if kind == "bits":
            return total / max(self.total_params, 1)
        if kind == "latency":
            return total + self.latency_offset_us
        return total

    def evaluate(self, bits: Mapping[str, int]) -> tuple[float, dict[str, float]]:
        """Objective (sum of Ω) and the cost summary of a full assignment."""
        objective = math.fsum(x.omega[bits[x.name]] for x in self.layers)
        total = self.total_params
        cost: dict[str, float] = {
            "avg_bits": math.fsum(self.layer_cost(x, "bits", bits[x.name]) or 0.0
                                  for x in self.layers) / max(total, 1),
            "size_bytes": math.fsum(self.layer_cost(x, "size", bits[x.name]) or 0.0
                                    for x in self.layers),
            "bops": math.fsum(self.layer_cost(x, "bops", bits[x.name]) or 0.0
                              for x in self.layers),
        }
        lat = [self.layer_cost(x, "latency", bits[x.name]) for x in self.layers]
        known = [v for v in lat if v is not None]
        if len(known) == len(lat):
            cost["latency_us"] = math.fsum(known) + self.latency_offset_us
        return objective, cost

    def cost_of(self, budget: Budget, cost: Mapping[str, float]) -> float | None:
        return cost.get(budget.cost_key)


def _copy(table: Mapping[int, float] | None) -> dict[int, float] | None:
    return None if table is None else dict(table)


def _check_ranges(problem: Problem) -> None:
    """Every number of the problem in range (`MAX_TABLE_VALUE`, `MAX_COUNT`), however it
    was built (a document checks this too, for its JSON schema): a solver never meets a sum
    that overflows. Linear in the problem's size."""
    if not (isinstance(problem.latency_offset_us, int | float)
            and 0 <= problem.latency_offset_us <= MAX_TABLE_VALUE):
        raise InvalidSpecError(f"`latency_offset_us` is {problem.latency_offset_us!r}: it "
                               f"must be a number in 0..{MAX_TABLE_VALUE:g}.")
    for i, x in enumerate(problem.layers):
        if not isinstance(x.name, str) or not x.name:
            raise InvalidSpecError(f"`layers[{i}].name` is {x.name!r}: it must be a "
                                   "non-empty string.")
        for count in ("params", "macs"):
            value = getattr(x, count)
            if (isinstance(value, bool) or not isinstance(value, int)
                    or not 0 <= value <= MAX_COUNT):
                raise InvalidSpecError(f"`layers[{i}].{count}` (layer {x.name!r}) is "
                                       f"{value!r}: it must be an integer in 0..2**53.")
        for table in ("omega", *COST_FIELDS):
            values = getattr(x, table)
            if values is None:
                continue
            for b, v in values.items():
                if not (isinstance(v, int | float) and not isinstance(v, bool)
                        and 0 <= v <= MAX_TABLE_VALUE):
                    raise InvalidSpecError(
                        f"`layers[{i}].{table}.{b}` (layer {x.name!r}) is {v!r}: it must be "
                        f"a finite number in 0..{MAX_TABLE_VALUE:g}.")


# -- the document ------------------------------------------------------------------------------

if TYPE_CHECKING:  # `integer` builds `Annotated` types at run time, which mypy cannot follow
    _Bits = int
    _AllowedBits = int
    _ActivationBits = int
    _Count = int
else:
    _Bits = integer(MIN_BITS, MAX_BITS, digits=True)  # `"4"` has always been read as 4
    _AllowedBits = integer(digits=True)  # not range-checked: a width no layer can take is unused
    _ActivationBits = integer(1, 32)
    _Count = integer(0, MAX_COUNT)
_BitKey = Annotated[_Bits, WithJsonSchema({"type": "string",
                                           "pattern": f"^[{MIN_BITS}-{MAX_BITS}]$"})]


def _at_most_max(value: float) -> float:
    # Pydantic's own `le` message would print 1e30 with all its digits.
    if value > MAX_TABLE_VALUE:
        raise PydanticCustomError("less_than_equal",
                                  f"Input should be at most {MAX_TABLE_VALUE:g}",
                                  {"le": MAX_TABLE_VALUE})
    return value


# A finite number in 0..MAX_TABLE_VALUE, kept as float.
_TableValue = Annotated[float, Strict(),
                        Field(ge=0, allow_inf_nan=False,
                              json_schema_extra={"maximum": MAX_TABLE_VALUE}),
                        AfterValidator(_at_most_max)]
_BitsMap = dict[_BitKey, _TableValue]
_EXAMPLE: dict[str, Any] = {
    "format": PROBLEM_FORMAT, "model": "resnet18", "bits": [2, 3, 4, 5, 6, 8],
    "activation_bits": 8,
    "layers": [{"name": "layer1.0.conv1", "params": 36864, "macs": 115605504,
                "omega": {"2": 0.91, "3": 0.20, "4": 0.051, "5": 0.012, "6": 0.003,
                          "8": 0.0002},
                "latency_us": {"4": 41.0, "8": 55.0}}]}


def _layer_default(name: str) -> Any:
    return dataclass_default(ProblemLayer, name)


def _problem_default(name: str) -> Any:
    return dataclass_default(Problem, name)


class ProblemLayerDocument(Document):
    """One layer of an `allocator.problem/1` document (see `ProblemLayer`)."""

    model_config = ConfigDict(json_schema_extra={"examples": _EXAMPLE["layers"]})

    name: NonEmptyStr = Field(description="Layer name: the module's fully qualified name.")
    params: _Count = Field(
        0, description="Weight parameters (for mean bits and the default size).")
    macs: _Count = Field(0, description="Multiply-accumulates (for the default BOPs).")
    omega: _BitsMap = Field(
        min_length=1,
        description="Bits -> predicted loss increase when this layer alone is quantized.")
    allowed_bits: list[_AllowedBits] | None = Field(
        _layer_default("allowed_bits"), min_length=1,
        description="Restricts the problem's candidate bits for this layer.")
    fixed_bits: Integer | None = Field(_layer_default("fixed_bits"),
                                       description="The layer must take this bit-width.")
    size_bytes: _BitsMap | None = Field(
        _layer_default("size_bytes"), min_length=1,
        description="Bits -> weight size in bytes (default: params * bits / 8).")
    bops: _BitsMap | None = Field(
        _layer_default("bops"), min_length=1,
        description="Bits -> bit operations (default: macs * bits * activation_bits).")
    latency_us: _BitsMap | None = Field(
        _layer_default("latency_us"), min_length=1,
        description="Bits -> latency per forward pass in microseconds (needed by latency "
                    "budgets).")
    kind: Any = Field(None, description="Informational (the discovered layer's kind); ignored.")
    weight_shape: Any = Field(None, description="Informational; ignored.")
    trace: Any = Field(None, description="Informational (Hessian trace); ignored.")
    std_error: Any = Field(None, description="Informational (of the trace); ignored.")


class ProblemDocument(Document):
    """The `allocator.problem/1` JSON document: an allocation problem a pipeline computed
    itself (layers, candidate bits, Ω and costs), to be solved under budgets."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    format: ProblemFormat = Field(description="Always `allocator.problem/1`.")
    model: str | None = Field(_problem_default("model"),
                              description="Name of the model the problem was made for.")
    bits: list[_Bits] = Field(min_length=1, description="Candidate weight bit-widths (2..8).")
    activation_bits: _ActivationBits = Field(_problem_default("activation_bits"),
                                             description="Activation bits (for BOPs).")
    layers: list[ProblemLayerDocument] = Field(min_length=1,
                                               description="The layers, in model order.")
    ties: list[list[str]] = Field(
        default_factory=list,
        description="Groups of layer names that must take one bit-width together.")
    latency_offset_us: _TableValue = Field(
        _problem_default("latency_offset_us"),
        description="Latency of everything that is not a listed layer, in microseconds.")
    bits_cost: BitsCost = Field(
        _problem_default("bits_cost"),
        description="What a bits budget counts: `params` (parameter-weighted mean bits) or "
                    "`size_bytes` (each layer's stored bytes x 8 per parameter: a deployment "
                    "target's bits per weight).")
    meta: Any = Field(None, description="Free-form; ignored.")


Problem.document_model = ProblemDocument
