"""`SensitivityTable`: Ω per layer and bit-width, with uncertainty and provenance.

JSON format `allocator.sensitivity/1`:

    {"format": "allocator.sensitivity/1", "model": "digits-cnn", "estimator": "hutchinson",
     "seed": 0, "config": {...}, "bits": [2, 3, 4, 5, 6, 8],
     "layers": {"conv1": {"omega": {"2": 0.91, ...}, "trace": 12.3, "std_error": 0.4,
                          "probes": 64, "stop_reason": "converged", "params": 288,
                          "flags": []}}}

`SensitivityDocument` (pydantic) is the format's one validator: it names the bad field and
refuses a missing `layers`, a NaN, infinite or negative Ω and unknown stop reasons; every
layer must have Ω at every bit-width of `bits`. Saving writes what was loaded, byte for byte.
`check_matches` is what a cached table must also pass before it is used: the same model,
estimator, seed, bits and config as asked, and exactly the model's layers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AliasChoices, Field

from engine import (
    MAX_BITS,
    MIN_BITS,
    Document,
    FiniteFloat,
    InvalidSpecError,
    JsonFormat,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    dataclass_default,
    integer,
)

SENSITIVITY_FORMAT = "allocator.sensitivity/1"
STOP_REASONS = ("converged", "max_probes", "time_limit", "measured", "learned")


@dataclass(frozen=True)
class LayerSensitivity:
    """Ω of one layer per bit-width, with what the estimate rests on.

    Attributes:
        omega: Bits -> expected loss increase when this layer alone is quantized.
        trace: Hessian trace estimate (Hutchinson), or None.
        std_error: Standard error of `trace` (or of Ω for measured tables), or None.
        probes: Probes (or evaluations) the estimate used.
        stop_reason: Why estimation stopped for this layer.
        params: Weight parameters of the layer.
        flags: Marks such as "negative_trace" or "nonfinite"; such values are kept and
            reported, never silently dropped.
        extra: Estimator-specific values (e.g. learned fractional bits).
    """

    omega: Mapping[int, float]
    trace: float | None = None
    std_error: float | None = None
    probes: int = 0
    stop_reason: str = "converged"
    params: int = 0
    flags: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def num(v: float | None):
            return None if v is None or not math.isfinite(v) else v

        return {"omega": {str(b): num(v) for b, v in sorted(self.omega.items())},
                "trace": num(self.trace), "std_error": num(self.std_error),
                "probes": self.probes, "stop_reason": self.stop_reason, "params": self.params,
                "flags": list(self.flags), **({"extra": dict(self.extra)} if self.extra else {})}


@dataclass(frozen=True)
class SensitivityTable(JsonFormat):
    """Ω for every layer x candidate bit-width, from one estimator run."""

    document_name = "sensitivity table"

    layers: Mapping[str, LayerSensitivity]
    bits: tuple[int, ...]
    estimator: str
    seed: int | None
    model: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    created: float = field(default_factory=time.time)

    def omega(self) -> dict[str, dict[int, float]]:
        """Layer -> bits -> Ω (the form `Problem.from_tables` takes)."""
        return {n: dict(s.omega) for n, s in self.layers.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": SENSITIVITY_FORMAT, "model": self.model, "estimator": self.estimator,
                "seed": self.seed, "config": dict(self.config), "bits": list(self.bits),
                "elapsed_s": self.elapsed_s, "created": self.created,
                "layers": {n: s.to_dict() for n, s in self.layers.items()}}

    def check_matches(self, *, model: str | None, estimator: str, seed: int | None,
                      bits: Sequence[int], config: Mapping[str, Any],
                      layers: Mapping[str, int] | None = None) -> None:
        """Checks that the table is the one asked for, as a cached table must be before it
        is used: the same model, estimator, seed, bits and config (compared as JSON), and,
        with `layers` (name -> weight parameters), exactly those layers, each with a finite
        Ω >= 0 at exactly `bits` and the same parameter count.

        Raises:
            InvalidSpecError: The first difference, naming the field and both values.
        """
        want = {"model": model, "estimator": estimator, "seed": seed,
                "bits": [int(b) for b in bits], "config": _as_json(config)}
        have = {"model": self.model, "estimator": self.estimator, "seed": self.seed,
                "bits": list(self.bits), "config": _as_json(self.config)}
        for name, value in want.items():
            if have[name] != value:
                raise InvalidSpecError(f"`{name}` is {_brief(have[name])}, expected "
                                       f"{_brief(value)}.")
        if layers is not None and set(self.layers) != set(layers):
            missing = sorted(set(layers) - set(self.layers))
            extra = sorted(set(self.layers) - set(layers))
            raise InvalidSpecError(f"`layers` do not match the model's: missing {missing[:5]}, "
                                   f"unexpected {extra[:5]}.")
        for name, x in self.layers.items():
            if sorted(x.omega) != sorted(want["bits"]):
                raise InvalidSpecError(f"`layers[{name!r}].omega` has bits {sorted(x.omega)}, "
                                       f"expected {want['bits']}.")
            for b, v in x.omega.items():
                if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) \
                        or v < 0:
                    raise InvalidSpecError(f"`layers[{name!r}].omega.{b}` is {v!r}: it must be "
                                           "a finite number >= 0.")
            if layers is not None and x.params != layers[name]:
                raise InvalidSpecError(f"`layers[{name!r}].params` is {x.params!r}, the model's "
                                       f"layer has {layers[name]}.")

    @classmethod
    def from_document(cls, doc: SensitivityDocument) -> SensitivityTable:
        """The table of a validated document; every layer must have Ω at every bit-width."""
        bits = tuple(doc.bits)
        layers = {}
        for name, x in doc.layers.items():
            missing = sorted(set(bits) - set(x.omega))
            if missing:
                raise InvalidSpecError(f"`layers[{name!r}].omega` has no value for bits "
                                       f"{missing}; the table's `bits` are {list(bits)}.")
            layers[name] = LayerSensitivity(
                omega=dict(x.omega), trace=x.trace, std_error=x.std_error, probes=x.probes,
                stop_reason=x.stop_reason, params=x.params, flags=tuple(x.flags),
                extra=dict(x.extra))
        return cls(layers=layers, bits=bits, estimator=doc.estimator, seed=doc.seed,
                   model=doc.model, config=dict(doc.config), elapsed_s=doc.elapsed_s,
                   created=doc.created)


def _as_json(value: Any) -> Any:
    """`value` as JSON reads it back (tuples as lists), for comparing configs."""
    return json.loads(json.dumps(value, sort_keys=True, default=repr))


def _brief(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the document ------------------------------------------------------------------------------

BitWidth = integer(MIN_BITS, MAX_BITS, digits=True)  # keys are strings of digits in JSON


def _layer_default(name: str) -> Any:
    return dataclass_default(LayerSensitivity, name)


def _table_default(name: str) -> Any:
    return dataclass_default(SensitivityTable, name)


class LayerSensitivityDocument(Document):
    """One layer of an `allocator.sensitivity/1` document (see `LayerSensitivity`)."""

    omega: dict[BitWidth, NonNegativeFloat] = Field(
        min_length=1, description="Bits -> expected loss increase (finite, >= 0).")
    trace: FiniteFloat | None = Field(_layer_default("trace"),
                                      description="Hessian trace estimate, if any.")
    std_error: NonNegativeFloat | None = Field(_layer_default("std_error"),
                                               description="Standard error of the trace.")
    probes: NonNegativeInt = Field(_layer_default("probes"),
                                   description="Probes or evaluations used.")
    stop_reason: Literal[STOP_REASONS] = Field(_layer_default("stop_reason"),
                                               description="Why estimation stopped.")
    params: NonNegativeInt = Field(_layer_default("params"),
                                   description="Weight parameters of the layer.")
    flags: list[str] = Field(default_factory=list,
                             description="Marks such as `negative_trace`.")
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="Estimator-specific values.")


class SensitivityDocument(Document):
    """The `allocator.sensitivity/1` JSON document: what `SensitivityTable.to_dict` writes."""

    format: Literal[SENSITIVITY_FORMAT] = Field(
        description="Always `allocator.sensitivity/1`.")
    model: str | None = Field(_table_default("model"), description="Model name.")
    estimator: NonEmptyStr = Field(description="Estimator that made the table.")
    seed: integer() | None = Field(description="Seed of the run.", default=None)
    config: dict[str, Any] = Field(default_factory=dict, description="Estimator settings.")
    bits: list[BitWidth] = Field(min_length=1, description="Candidate bit-widths.")
    elapsed_s: NonNegativeFloat = Field(
        _table_default("elapsed_s"), validation_alias=AliasChoices("elapsed_s", "seconds"),
        description="Wall time of the estimate, in seconds (`seconds` in older files).")
    created: FiniteFloat = Field(0.0, description="Unix time the table was made.")
    layers: dict[NonEmptyStr, LayerSensitivityDocument] = Field(
        min_length=1, description="Layer name -> its Ω and what the estimate rests on.")


SensitivityTable.document_model = SensitivityDocument
