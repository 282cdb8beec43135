"""This machine's per-layer latency tables for a model: profiled once, stored, reused.

`profile_model` measures a model's layers at each candidate bit-width on the engine's real
kernels and stores the table in the `hwprofiles` registry (named by model, batch and
device); with `reuse` it keeps what a stored table already holds and measures only what is
missing. An interrupted run resumes from its partial file. `latency_costs` is the
pipeline's latency stage: the per-layer costs the solver budgets, taken at the batch the
pipeline times whole models on (`spec.latency_batch()`), so predicted and measured latency
describe the same call.

The stored table is a trusted cache (`engine._cache`): `hwprofiles/<name>.json` with a
checksum sidecar `<name>.json.sha256` recording the key it was profiled for (model, batch,
activation mode, `"origin": "profiled"`) or that it was imported on purpose. A table with
no sidecar, another checksum or key, another batch, or one that does not validate is moved
to `<data dir>/quarantine/` (logged and warned about) and profiled anew; so is an unusable
partial file `hwprofiles/.<name>.partial` of an interrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import engine
from engine import BitConfig, InvalidSpecError, UnknownComponentError

if TYPE_CHECKING:
    from allocator._spec import ModelSpecLike
    from hwprofiles import LatencyTable

ENGINE_RUNTIME = "engine"
ORT_RUNTIME = "onnxruntime"
# Whose kernels a latency table times.
RUNTIMES = (ENGINE_RUNTIME, ORT_RUNTIME)


@dataclass(frozen=True)
class ProfileRun:
    """A stored latency table and how it was obtained.

    Attributes:
        table: The table (`allocator.latency/1`).
        name: Its name in the profile registry.
        path: Where it is stored.
        profile_s: Seconds spent measuring now (0 when the stored table was complete).
        profiled_now: Whether anything was measured now.
        layers: The model's layers as traced on the timed batch.
    """

    table: LatencyTable
    name: str
    path: Path
    profile_s: float
    profiled_now: bool
    layers: tuple[engine.LayerSpec, ...] = ()


@dataclass(frozen=True)
class LatencyCosts:
    """Per layer and bit-width latency (µs per forward pass) and the non-layer time."""

    latency_us: dict[str, dict[int, float]]
    offset_us: float
    profile: str
    profiled_now: bool


# Timed runs per model when a solve measures its result in ONNX Runtime.
ORT_MEASURE_REPEATS = 10


def batch_inputs(spec: ModelSpecLike, batch: int | None) -> Any:
    """The spec's example batch, rebuilt at `batch` rows where the spec allows.

    Text models: the first `batch` evaluation sentences, tokenized (cycled when fewer exist);
    tensor inputs: evaluation inputs sliced or repeated to `batch` rows.
    """
    import torch

    if batch is None:
        return spec.example_inputs()
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidSpecError(f"`batch` must be an integer >= 1, got {batch!r}.")
    if hasattr(spec, "encode") and hasattr(spec, "texts"):
        texts = list(spec.texts()["eval"])
        return spec.encode([texts[i % len(texts)] for i in range(batch)])
    batches = [b.inputs for b in spec.evaluation_batches()]
    first = batches[0]
    if isinstance(first, torch.Tensor):
        pool = torch.cat([b for b in batches if isinstance(b, torch.Tensor)])
        return pool[torch.arange(batch) % pool.shape[0]]
    if isinstance(first, dict) and all(isinstance(v, torch.Tensor) for v in first.values()):
        rows = next(iter(first.values())).shape[0]
        idx = torch.arange(batch) % rows
        return {k: v[idx] for k, v in first.items()}
    raise InvalidSpecError(f"`batch` is not supported for model {spec.name!r} "
                           "(its inputs cannot be resized); leave it out.")


def profile_model(spec: ModelSpecLike, bits: Sequence[int], *, inputs: Any = None,
                  batch: int | None = None, repeats: int | None = None,
                  weight_only: bool = False, reuse: bool = False,
                  progress: bool = False, runtime: str = ENGINE_RUNTIME,
                  settings: BitConfig | None = None) -> ProfileRun:
    """Measures `spec`'s layers at each of `bits` on this machine and stores the table.

    Args:
        spec: The model.
        bits: Candidate weight bit-widths (FP32 is always measured too).
        inputs: The batch to time (default: the example batch at `batch` rows).
        batch: Rows of the example batch (default: the model's evaluation batch).
        repeats: Timed calls per measurement (default: the profiler's).
        weight_only: Time 8-bit layers weight-only (float activations) instead of W8A8;
            stored under its own name.
        reuse: Keep the stored table's measurements and measure only what is missing
            (nothing when it is complete); without it every shape is measured anew.
        progress: Show a progress bar on stderr.
        runtime: Whose kernels are timed: "engine", or "onnxruntime" (the ops the ONNX
            export writes, `hwprofiles.profile_onnxruntime`; stored under its own name, its
            fingerprint naming the ONNX Runtime version).
        settings: The schemes the layers are timed with (default: the engine's); an ONNX
            Runtime table times the ONNX target's (`allocator.export.target_settings`).

    Returns:
        The stored table with its name and path.
    """
    from hwprofiles import (
        DeviceFingerprint,
        batch_size,
        load_profile,
        profile_layers,
        profile_name,
        profiles_dir,
        save_profile,
    )

    inputs = batch_inputs(spec, batch) if inputs is None else inputs
    fp32 = spec.build()
    layers = engine.discover_layers(fp32, inputs, skip=spec.skip_layers)
    if runtime not in RUNTIMES:
        raise InvalidSpecError(f"`runtime` must be one of {RUNTIMES}, got {runtime!r}.")
    ort = runtime == ORT_RUNTIME
    rows = batch_size(inputs)
    device = DeviceFingerprint.current(ORT_RUNTIME if ort else None)
    name = profile_name(spec.name, rows, device)
    if weight_only:
        name += "-weight-only"
    # The device is part of what a profiled table was made for: one measured on another CPU
    # (model or ISA flags: an AVX2-only EPYC and an AVX-512 one share a name), torch, thread
    # count, engine version or int8 kernel paths is moved aside and profiled anew, never
    # used. A table imported on purpose (`allocator profile --import`) is used, with a
    # warning when its device differs.
    key = {"cache": "latency", "origin": "profiled", "name": name, "model": spec.name,
           "batch": rows, "weight_only": weight_only, "device": device.identity()}
    if ort:  # the name says the runtime (`DeviceFingerprint.short_name`)
        key["runtime"] = ORT_RUNTIME
    stored = profiles_dir() / f"{name}.json"
    table = None
    if reuse:
        try:
            table = load_profile(name, key=key, check=lambda t: _check_table(t, rows, ort))
        except UnknownComponentError:
            table = None  # none stored, or it failed verification and was moved aside
    active = [x for x in layers if x.calls > 0]
    if table is not None and table.overhead_us is not None and all(
            table.has(x.shape_signature, b) for x in active for b in bits):
        return ProfileRun(table, name, stored, 0.0, False, tuple(layers))
    partial = profiles_dir() / f".{name}.partial"  # resumes an interrupted run
    if table is None and not ort:
        _check_partial(partial, rows)
    options: dict[str, Any] = {} if repeats is None else {"repeats": repeats}
    config = dataclasses.replace(settings or BitConfig(bits={}), bits={},
                                 activation_bits=None if weight_only else 8)
    start = time.perf_counter()
    if ort:
        table = _profile_onnxruntime(spec, fp32, layers, inputs, bits, config, table, options)
    else:
        # weight-only convs keep their input's layout: no channels-last transitions to time
        table = profile_layers(fp32, layers, inputs, bits, table=table, progress=progress,
                               resume_path=partial if table is None else None, config=config,
                               model_name=spec.name, transitions=not weight_only, **options)
    seconds = time.perf_counter() - start
    path = save_profile(table, name, key=key)
    partial.unlink(missing_ok=True)
    return ProfileRun(table, name, path, seconds, True, tuple(layers))


def _profile_onnxruntime(spec: ModelSpecLike, fp32: Any, layers: Sequence[engine.LayerSpec],
                         inputs: Any, bits: Sequence[int], config: BitConfig,
                         table: LatencyTable | None, options: dict[str, Any]) -> LatencyTable:
    """The ONNX Runtime table of `spec`'s layers, its non-layer time from the float model
    exported to ONNX and run whole (what `overhead_us` means for the engine's tables)."""
    from allocator.export._onnx import float_onnx
    from hwprofiles import profile_onnxruntime

    fp32_model = float_onnx(fp32, inputs) if table is None or table.overhead_us is None else None
    return profile_onnxruntime(fp32, layers, inputs, bits, config=config, fp32_model=fp32_model,
                               table=table, model_name=spec.name, **options)


def _check_table(table: LatencyTable, rows: int, ort: bool) -> None:
    """A stored table fits: its batch, and for ONNX Runtime this installed version (a table
    of another version is moved aside and profiled anew, never used)."""
    _check_batch(table, rows)
    if ort:
        from hwprofiles import check_onnxruntime_table

        check_onnxruntime_table(table)


def _check_batch(table: LatencyTable, rows: int) -> None:
    if table.batch != rows:
        raise InvalidSpecError(f"`batch` is {table.batch}, the profile's name says {rows}.")


def _check_partial(partial: Path, rows: int) -> None:
    """Moves an unusable partial table of an interrupted run (unreadable, not a file, or
    of another batch) to quarantine, so the run starts afresh instead of failing on it."""
    from hwprofiles import LatencyTable

    if not partial.exists() and not partial.is_symlink():
        return
    try:
        if not partial.is_file():
            raise InvalidSpecError("it is not a regular file")
        _check_batch(LatencyTable.load(partial), rows)
    except InvalidSpecError as e:
        engine.quarantine(partial, "invalid", str(e), what="partial latency table",
                          action="profiling from the start")


def latency_costs(spec: ModelSpecLike, bits: Sequence[int], *, weight_only: bool = False,
                  progress: bool = False, runtime: str = ENGINE_RUNTIME,
                  settings: BitConfig | None = None) -> LatencyCosts:
    """This machine's latency costs of `spec`'s layers at each of `bits` in `runtime` (a
    stored table when it is complete, else the missing measurements taken now)."""
    inputs = spec.latency_batch()
    run = profile_model(spec, bits, inputs=inputs, weight_only=weight_only, reuse=True,
                        progress=progress, runtime=runtime, settings=settings)
    by_name = {x.name: x for x in run.layers}
    missing = [x.name for x in spec.layers() if x.name not in by_name]
    if missing:
        raise InvalidSpecError(f"layers {missing[:3]} of {spec.name!r} did not run on its "
                               "latency batch; latency cannot be budgeted for them.")
    per_layer = run.table.layer_latency_us([by_name[x.name] for x in spec.layers()], bits)
    costs = {n: {int(b): float(v) for b, v in row.items()} for n, row in per_layer.items()}
    return LatencyCosts(costs, float(run.table.overhead_us or 0.0), run.name, run.profiled_now)


def onnxruntime_graph(spec: ModelSpecLike, config: BitConfig, quantized_model: Any) -> Any:
    """The ONNX model the export writes for `config` (`build_onnx`, unchecked: the export
    command checks), traced on the batch ONNX Runtime tables are profiled at."""
    from allocator.export._onnx import build_onnx

    return build_onnx(spec.build(), quantized_model, config, batch_inputs(spec, None))[0]


def onnxruntime_latencies_us(spec: ModelSpecLike, graphs: Sequence[Any], *,
                             repeats: int = ORT_MEASURE_REPEATS) -> tuple[float, list[float]]:
    """Whole-model ONNX Runtime time (median us) of the FP32 export and of each graph
    (`onnxruntime_graph`), on the batch ONNX Runtime tables are profiled at, all run in
    turn: what `--target onnx` latency predictions are compared with."""
    from allocator.export._onnx import float_onnx
    from hwprofiles import time_in_turn

    inputs = batch_inputs(spec, None)
    times = time_in_turn([float_onnx(spec.build(), inputs), *graphs], inputs, repeats=repeats)
    return times[0], times[1:]
