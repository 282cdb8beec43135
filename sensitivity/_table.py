"""`SensitivityTable`: Ω per layer and bit-width, with uncertainty and provenance.

JSON format `allocator.sensitivity/1`:

    {"format": "allocator.sensitivity/1", "model": "digits-cnn", "estimator": "hutchinson",
     "seed": 0, "config": {...}, "bits": [2, 3, 4, 5, 6, 8],
     "layers": {"conv1": {"omega": {"2": 0.91, ...}, "trace": 12.3, "std_error": 0.4,
                          "probes": 64, "stop_reason": "converged", "params": 288,
                          "flags": []}}}
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import InvalidSpecError, atomic_write_bytes

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str) -> LayerSensitivity:
        try:
            omega = {int(b): (math.nan if v is None else float(v))
                     for b, v in data["omega"].items()}
            return cls(omega=omega, trace=data.get("trace"), std_error=data.get("std_error"),
                       probes=int(data.get("probes", 0)),
                       stop_reason=str(data.get("stop_reason", "converged")),
                       params=int(data.get("params", 0)), flags=tuple(data.get("flags", ())),
                       extra=dict(data.get("extra", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidSpecError(
                f"`layers[{name!r}]` of the sensitivity table is invalid: {e}") from e


@dataclass(frozen=True)
class SensitivityTable:
    """Ω for every layer x candidate bit-width, from one estimator run."""

    layers: Mapping[str, LayerSensitivity]
    bits: tuple[int, ...]
    estimator: str
    seed: int | None
    model: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    created: float = field(default_factory=time.time)

    def omega(self) -> dict[str, dict[int, float]]:
        """Layer -> bits -> Ω (the form `Problem.from_tables` takes)."""
        return {n: dict(s.omega) for n, s in self.layers.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": SENSITIVITY_FORMAT, "model": self.model, "estimator": self.estimator,
                "seed": self.seed, "config": dict(self.config), "bits": list(self.bits),
                "seconds": self.seconds, "created": self.created,
                "layers": {n: s.to_dict() for n, s in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SensitivityTable:
        if not isinstance(data, Mapping) or data.get("format") != SENSITIVITY_FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise InvalidSpecError(f"`format` must be {SENSITIVITY_FORMAT!r}, got {got!r}.")
        for key in ("layers", "bits", "estimator"):
            if key not in data:
                raise InvalidSpecError(f"`{key}` is missing from the sensitivity table.")
        layers = {n: LayerSensitivity.from_dict(v, n) for n, v in data["layers"].items()}
        return cls(layers=layers, bits=tuple(int(b) for b in data["bits"]),
                   estimator=str(data["estimator"]), seed=data.get("seed"),
                   model=data.get("model"), config=dict(data.get("config", {})),
                   seconds=float(data.get("seconds", 0.0)),
                   created=float(data.get("created", 0.0)))

    def save(self, path: str | Path) -> None:
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        atomic_write_bytes(Path(path), text.encode())

    @classmethod
    def load(cls, path: str | Path) -> SensitivityTable:
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except OSError as e:
            raise InvalidSpecError(f"cannot read sensitivity table `{p}`: {e.strerror}") from e
        except json.JSONDecodeError as e:
            raise InvalidSpecError(f"sensitivity table `{p}` is not valid JSON: {e}") from e
