"""Budgets parsed from text, one grammar for the CLI and the API.

    4.5bits          parameter-weighted mean weight bits
    12MB 3.5MiB 800KB 123456B    total weight size (decimal or binary prefixes)
    1.2GBOPs 950MBOPs 10BOPs     bit operations (MACs x weight bits x activation bits)
    2.5ms 800us                  latency on a hardware profile

A budget holds when the cost is <= its value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from engine import InvalidSpecError

KINDS = ("bits", "size", "bops", "latency")
# Budget kind -> the key of its cost in a cost summary (`Problem.evaluate`, BitConfig.cost).
COST_KEYS = {"bits": "avg_bits", "size": "size_bytes", "bops": "bops", "latency": "latency_us"}
# A total meets a limit up to this relative (and absolute) slack: float sums of per-layer
# costs land a few ulps above a budget that an assignment meets exactly.
REL_TOL = 1e-6
ABS_TOL = 1e-12

_UNITS: dict[str, tuple[str, float]] = {
    "bits": ("bits", 1.0), "bit": ("bits", 1.0),
    "B": ("size", 1.0), "KB": ("size", 1e3), "MB": ("size", 1e6), "GB": ("size", 1e9),
    "KiB": ("size", 2.0**10), "MiB": ("size", 2.0**20), "GiB": ("size", 2.0**30),
    "BOPs": ("bops", 1.0), "KBOPs": ("bops", 1e3), "MBOPs": ("bops", 1e6),
    "GBOPs": ("bops", 1e9), "TBOPs": ("bops", 1e12),
    "us": ("latency", 1.0), "µs": ("latency", 1.0), "ms": ("latency", 1e3), "s": ("latency", 1e6),
}
# Budget kind -> the unit of its base values (mean bits, bytes, BOPs, microseconds).
BASE_UNITS = {kind: next(u for u, (k, scale) in _UNITS.items() if k == kind and scale == 1.0)
              for kind in KINDS}
_PATTERN = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-zµ]+)\s*$")
# Longest budget text: `1.2GBOPs` needs 8 characters; a long text is refused before parsing.
MAX_BUDGET_CHARS = 64


@dataclass(frozen=True)
class Budget:
    """One limit on one cost.

    Attributes:
        kind: "bits", "size", "bops" or "latency".
        value: In base units: mean bits, bytes, BOPs, microseconds.
        text: The text it was parsed from.
    """

    kind: str
    value: float
    text: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidSpecError(f"budget kind must be one of {KINDS}, got {self.kind!r}.")
        if not math.isfinite(self.value) or self.value <= 0:
            raise InvalidSpecError(f"budget {self.text!r} must be a positive finite value.")

    @property
    def cost_key(self) -> str:
        """The key of this budget's cost in a BitConfig's `cost` summary."""
        return COST_KEYS[self.kind]

    def holds(self, cost: float) -> bool:
        """Whether a cost of this kind (in base units) meets the budget (`within`)."""
        return within(cost, self.value)

    def format_value(self, value: float) -> str:
        """A cost of this kind as budget text (the unit the budget was written in)."""
        m = _PATTERN.match(self.text)
        unit = m.group(3) if m else ""
        _, scale = _UNITS.get(unit, (self.kind, 1.0))
        return f"{value / scale:.6g}{unit}"


def within(total: float, limit: float) -> bool:
    """Whether `total` meets `limit`: the one tolerance every budget check uses."""
    return total <= limit + REL_TOL * abs(limit) + ABS_TOL


def parse_budget(text: str) -> Budget:
    """Parses one budget; raises InvalidSpecError naming the text and the valid units."""
    if not isinstance(text, str):
        raise InvalidSpecError(f"`budget` must be text such as '4.5bits', got {text!r}.")
    if len(text) > MAX_BUDGET_CHARS:
        raise InvalidSpecError(f"`budget` {text[:20]!r}... has {len(text)} characters; a "
                               f"budget has at most {MAX_BUDGET_CHARS}.")
    odd = next((c for c in text if not c.isascii() and c != "µ"), None)
    if odd is not None:  # Arabic-Indic or fullwidth digits, other spaces, another mu
        raise InvalidSpecError(f"`budget` {text!r} has the character {odd!r} "
                               f"(U+{ord(odd):04X}); write budgets in ASCII digits and "
                               "letters, e.g. 4.5bits (µs may be written us).")
    m = _PATTERN.match(text)
    unit = m.group(3) if m else None
    if unit is not None and unit not in _UNITS:
        lowered = {u.lower(): u for u in _UNITS
                   if u.lower() in ("bits", "bit", "bops", "us", "ms")}
        unit = lowered.get(unit.lower(), unit)
    if m is None or unit not in _UNITS:
        raise InvalidSpecError(
            f"`budget` {text!r} is not understood; write a number and a unit, e.g. 4.5bits, "
            f"12MB, 3.5MiB, 1.2GBOPs, 2.5ms (units: {', '.join(_UNITS)}).")
    # One float conversion of the whole number: an exponent past the float range gives inf
    # (refused below) instead of overflowing a power.
    number = float(f"{m.group(1)}e{m.group(2) or 0}")
    kind, scale = _UNITS[unit]
    if number <= 0:
        raise InvalidSpecError(f"`budget` {text!r} must be positive.")
    if not math.isfinite(number * scale):
        raise InvalidSpecError(f"`budget` {text!r} is too large to be a number.")
    return Budget(kind, number * scale, text.strip())


def parse_budgets(texts: list[str] | tuple[str, ...]) -> list[Budget]:
    """Parses several budgets; at most one per kind."""
    budgets = [parse_budget(t) for t in texts]
    kinds = [b.kind for b in budgets]
    for k in set(kinds):
        if kinds.count(k) > 1:
            raise InvalidSpecError(f"`budget`: more than one {k} budget given ({texts}).")
    return budgets
