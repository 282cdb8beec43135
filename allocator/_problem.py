"""The allocation problem (`allocator.problem/1`): layers, candidate bits, Ω and costs.

Solvers see it through `units()`: a tie group (layers that must share a bit-width) is one
unit whose Ω and costs are the sums over its members; a fixed layer is a unit with one
choice. Every budget is a linear constraint over the units' choices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocator._budget import Budget
from engine import MAX_BITS, MIN_BITS, InvalidSpecError, LayerSpec

PROBLEM_FORMAT = "allocator.problem/1"
COST_FIELDS = ("size_bytes", "bops", "latency_us")


def _bits_map(value: Any, where: str, *, allow_negative: bool = False) -> dict[int, float]:
    if not isinstance(value, Mapping) or not value:
        raise InvalidSpecError(f"`{where}` must map bit-widths to numbers, got {value!r}.")
    out: dict[int, float] = {}
    for k, v in value.items():
        try:
            b = int(k)
        except (TypeError, ValueError):
            raise InvalidSpecError(f"`{where}` has a non-integer bit-width key {k!r}.") from None
        if not MIN_BITS <= b <= MAX_BITS:
            raise InvalidSpecError(f"`{where}` has bit-width {b} outside {MIN_BITS}..{MAX_BITS}.")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise InvalidSpecError(f"`{where}[{b}]` must be a finite number, got {v!r}.")
        if v < 0 and not allow_negative:
            raise InvalidSpecError(f"`{where}[{b}]` must be >= 0, got {v!r}.")
        out[b] = float(v)
    return out


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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], index: int) -> ProblemLayer:
        if not isinstance(data, Mapping):
            raise InvalidSpecError(f"`layers[{index}]` must be an object, got {data!r}.")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidSpecError(f"`layers[{index}].name` must be a non-empty string.")
        where = f"layers[{name!r}]"
        known = {"name", "params", "macs", "omega", "allowed_bits", "fixed_bits", *COST_FIELDS,
                 "kind", "weight_shape", "trace", "std_error"}
        unknown = set(data) - known
        if unknown:
            raise InvalidSpecError(f"`{where}` has unknown field(s) {sorted(unknown)}.")
        if "omega" not in data:
            raise InvalidSpecError(f"`{where}.omega` is missing.")
        ints = {}
        for f in ("params", "macs"):
            v = data.get(f, 0)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v != int(v):
                raise InvalidSpecError(f"`{where}.{f}` must be a non-negative integer, got {v!r}.")
            ints[f] = int(v)
        allowed = data.get("allowed_bits")
        if allowed is not None:
            if not isinstance(allowed, list) or not allowed:
                raise InvalidSpecError(f"`{where}.allowed_bits` must be a non-empty list.")
            allowed = tuple(sorted({int(b) for b in allowed}))
        fixed = data.get("fixed_bits")
        if fixed is not None and (not isinstance(fixed, int) or isinstance(fixed, bool)):
            raise InvalidSpecError(f"`{where}.fixed_bits` must be an integer, got {fixed!r}.")
        costs = {f: _bits_map(data[f], f"{where}.{f}") if data.get(f) is not None else None
                 for f in COST_FIELDS}
        return cls(name=name, omega=_bits_map(data["omega"], f"{where}.omega"),
                   allowed_bits=allowed, fixed_bits=fixed, **ints, **costs)


@dataclass(frozen=True)
class Unit:
    """Layers that take one bit-width together, with summed Ω and costs per choice."""

    names: tuple[str, ...]
    choices: tuple[int, ...]
    omega: dict[int, float]
    params: int
    costs: dict[str, dict[int, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """A bit-allocation problem; see the module docstring and DESIGN.md for the format."""

    layers: tuple[ProblemLayer, ...]
    bits: tuple[int, ...]
    activation_bits: int = 8
    ties: tuple[tuple[str, ...], ...] = ()
    model: str | None = None
    latency_offset_us: float = 0.0

    def __post_init__(self) -> None:
        if not self.layers:
            raise InvalidSpecError("`layers` must not be empty.")
        if not self.bits:
            raise InvalidSpecError("`bits` (the candidate bit-widths) must not be empty.")
        for b in self.bits:
            if not MIN_BITS <= b <= MAX_BITS:
                raise InvalidSpecError(f"`bits` has {b}, outside {MIN_BITS}..{MAX_BITS}.")
        names = [x.name for x in self.layers]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InvalidSpecError(f"`layers` has duplicate names {dup}.")
        seen: set[str] = set()
        for group in self.ties:
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
    def from_dict(cls, data: Mapping[str, Any]) -> Problem:
        if not isinstance(data, Mapping):
            raise InvalidSpecError("a problem must be a JSON object.")
        if data.get("format") != PROBLEM_FORMAT:
            raise InvalidSpecError(
                f"`format` must be {PROBLEM_FORMAT!r}, got {data.get('format')!r}.")
        known = {"format", "model", "bits", "activation_bits", "layers", "ties",
                 "latency_offset_us", "meta"}
        unknown = set(data) - known
        if unknown:
            raise InvalidSpecError(f"unknown problem field(s) {sorted(unknown)}.")
        bits = data.get("bits")
        if not isinstance(bits, list) or not bits:
            raise InvalidSpecError("`bits` must be a non-empty list of bit-widths.")
        try:
            bits_t = tuple(sorted({int(b) for b in bits}))
        except (TypeError, ValueError):
            raise InvalidSpecError(f"`bits` must hold integers, got {bits!r}.") from None
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise InvalidSpecError("`layers` must be a list.")
        ties = data.get("ties", [])
        if not isinstance(ties, list) or not all(isinstance(g, list) for g in ties):
            raise InvalidSpecError("`ties` must be a list of lists of layer names.")
        act = data.get("activation_bits", 8)
        if not isinstance(act, int) or isinstance(act, bool) or not 1 <= act <= 32:
            raise InvalidSpecError(f"`activation_bits` must be an integer, got {act!r}.")
        offset = data.get("latency_offset_us", 0.0)
        if not isinstance(offset, int | float) or not math.isfinite(offset) or offset < 0:
            raise InvalidSpecError(f"`latency_offset_us` must be >= 0, got {offset!r}.")
        return cls(layers=tuple(ProblemLayer.from_dict(x, i) for i, x in enumerate(layers)),
                   bits=bits_t, activation_bits=act, ties=tuple(tuple(g) for g in ties),
                   model=data.get("model"), latency_offset_us=float(offset))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": PROBLEM_FORMAT, "model": self.model,
                               "bits": list(self.bits), "activation_bits": self.activation_bits,
                               "layers": [x.to_dict() for x in self.layers]}
        if self.ties:
            out["ties"] = [list(g) for g in self.ties]
        if self.latency_offset_us:
            out["latency_offset_us"] = self.latency_offset_us
        return out

    @classmethod
    def load(cls, path: str | Path) -> Problem:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise InvalidSpecError(f"cannot read problem file `{p}`: {e.strerror}") from e
        except json.JSONDecodeError as e:
            raise InvalidSpecError(f"problem file `{p}` is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

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
        kinds = sorted({b.kind for b in budgets} | {"bits", "size", "bops"})
        units = []
        for g in groups:
            members = [by_name[n] for n in g]
            choices = set.intersection(*(set(self.layer_choices(m)) for m in members))
            for kind in kinds:
                for m in members:
                    known = {b for b in choices if self.layer_cost(m, kind, b) is not None}
                    if not known and kind in {b.kind for b in budgets}:
                        field_name = {"latency": "latency_us", "size": "size_bytes",
                                      "bops": "bops"}.get(kind, kind)
                        raise InvalidSpecError(
                            f"a {kind} budget was given but `layers[{m.name!r}].{field_name}` "
                            f"has no value for its bit-widths {sorted(choices)}.")
                    if kind in {b.kind for b in budgets}:
                        choices &= known
            if not choices:
                raise InvalidSpecError(f"tie group {g} has no bit-width allowed for all members.")
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

    def evaluate(self, bits: Mapping[str, int]) -> tuple[float, dict[str, float]]:
        """Objective (sum of Ω) and the cost summary of a full assignment."""
        objective = math.fsum(x.omega[bits[x.name]] for x in self.layers)
        total = self.total_params
        cost: dict[str, float] = {
            "avg_bits": math.fsum(x.params * bits[x.name] for x in self.layers) / max(total, 1),
            "size_bytes": math.fsum(self.layer_cost(x, "size", bits[x.name]) or 0.0
                                    for x in self.layers),
            "bops": math.fsum(self.layer_cost(x, "bops", bits[x.name]) or 0.0
                              for x in self.layers),
        }
        lat = [self.layer_cost(x, "latency", bits[x.name]) for x in self.layers]
        if all(v is not None for v in lat):
            cost["latency_us"] = math.fsum(lat) + self.latency_offset_us
        return objective, cost

    def cost_of(self, budget: Budget, cost: Mapping[str, float]) -> float | None:
        return cost.get(budget.cost_key)
