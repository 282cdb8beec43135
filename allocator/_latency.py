"""The pipeline's latency stage: this machine's measured per-layer latency table for a model.

A stored profile (`hwprofiles` registry, named by model, batch and device) is reused when it
holds every layer at every candidate bit-width; otherwise the missing measurements are taken
now (resumable: an interrupted run keeps what it measured) and the profile is stored.
Tables are taken at the batch the pipeline times whole models on (`spec.latency_batch()`),
so predicted and measured latency describe the same call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import engine
from engine import BitConfig, InvalidSpecError


@dataclass(frozen=True)
class LatencyCosts:
    """Per layer and bit-width latency (µs per forward pass) and the non-layer time."""

    latency_us: dict[str, dict[int, float]]
    offset_us: float
    profile: str
    profiled_now: bool


def latency_costs(spec: Any, bits: Sequence[int], *, weight_only: bool = False,
                  progress: bool = False) -> LatencyCosts:
    """This machine's latency costs of `spec`'s layers at each of `bits`."""
    from hwprofiles import (
        DeviceFingerprint,
        batch_size,
        load_profile,
        profile_layers,
        profile_name,
        profiles_dir,
        save_profile,
    )

    inputs = spec.latency_batch()
    fp32 = spec.build()
    layers = engine.discover_layers(fp32, inputs, skip=getattr(spec, "skip_layers", ()))
    name = profile_name(spec.name, batch_size(inputs), DeviceFingerprint.current())
    if weight_only:
        name += "-weight-only"
    table = None
    if (profiles_dir() / f"{name}.json").is_file():
        try:
            table = load_profile(name)
        except InvalidSpecError:
            table = None  # unreadable: profiled anew below and overwritten
    active = [x for x in layers if x.calls > 0]
    complete = table is not None and table.overhead_us is not None and all(
        table.has(x.shape_signature, b) for x in active for b in bits)
    if not complete:
        partial = profiles_dir() / f".{name}.partial"
        config = BitConfig(bits={}, activation_bits=None if weight_only else 8)
        table = profile_layers(fp32, layers, inputs, bits, table=table, progress=progress,
                               resume_path=partial if table is None else None, config=config,
                               model_name=spec.name)
        save_profile(table, name)
        partial.unlink(missing_ok=True)
    by_name = {x.name: x for x in layers}
    missing = [x.name for x in spec.layers() if x.name not in by_name]
    if missing:
        raise InvalidSpecError(f"layers {missing[:3]} of {spec.name!r} did not run on its "
                               "latency batch; latency cannot be budgeted for them.")
    per_layer = table.layer_latency_us([by_name[x.name] for x in spec.layers()], bits)
    costs = {n: {int(b): float(v) for b, v in row.items()} for n, row in per_layer.items()}
    return LatencyCosts(costs, float(table.overhead_us or 0.0), name, not complete)
