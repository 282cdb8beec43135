"""`estimate`: run a registered estimator with a progress bar, through the table cache.

Tables are cached as JSON under `ALLOCATOR_DATA_DIR/sensitivity/`, keyed by hashes of the
model weights, the calibration data, the estimator and its config, the seed, the bits and
the engine version, so the pipeline and the service reuse them. A corrupt cache file is
rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

import engine
from engine import InvalidSpecError, Registry
from sensitivity._fracbits import FracBitsConfig, fracbits
from sensitivity._hutchinson import HutchinsonConfig, hutchinson
from sensitivity._measured import MeasuredConfig, measured
from sensitivity._table import SensitivityTable

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)
ESTIMATORS: Registry[tuple[type, Any]] = Registry("estimator")
ESTIMATORS.register("hutchinson", (HutchinsonConfig, hutchinson),
                    description="Hessian trace by Hutchinson probes x weight error (HAWQ-V3)")
ESTIMATORS.register("measured", (MeasuredConfig, measured),
                    description="loss change with one layer quantized on the engine")
ESTIMATORS.register("fracbits", (FracBitsConfig, fracbits),
                    description="learned fractional bits under a mean-bits budget (FracBits)")


def _hash_tensors(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        for k in sorted(obj):
            h.update(str(k).encode())
            _hash_tensors(h, obj[k])
    elif isinstance(obj, list | tuple):
        for v in obj:
            _hash_tensors(h, v)
    else:
        h.update(repr(obj).encode())


def cache_key(spec, estimator: str, config: Any, seed: int, bits: Sequence[int]) -> str:
    h = hashlib.sha256()
    _hash_tensors(h, dict(spec.build().state_dict()))
    _hash_tensors(h, [(b.inputs, b.target) for b in spec.calibration_batches()])
    h.update(json.dumps({"estimator": estimator, "config": asdict(config), "seed": seed,
                         "bits": list(bits), "engine": engine.ENGINE_VERSION},
                        sort_keys=True).encode())
    return h.hexdigest()[:20]


def make_config(estimator: str, options: Mapping[str, Any] | None = None):
    config_cls, _ = ESTIMATORS.get(estimator)
    options = dict(options or {})
    known = {f.name for f in fields(config_cls)}
    unknown = set(options) - known
    if unknown:
        raise InvalidSpecError(f"estimator {estimator!r} has no option(s) {sorted(unknown)}; "
                               f"options: {sorted(known)}.")
    return config_cls(**options)


def estimate(spec, estimator: str = "hutchinson", *, bits: Sequence[int] = DEFAULT_BITS,
             seed: int = 0, options: Mapping[str, Any] | None = None, use_cache: bool = True,
             progress: bool = False) -> SensitivityTable:
    """Ω for every layer of `spec` x `bits` with the named estimator (cached)."""
    config = make_config(estimator, options)
    _, fn = ESTIMATORS.get(estimator)
    bits = sorted({engine._types.check_bits(b, where="bits") for b in bits})
    path = None
    if use_cache:
        key = cache_key(spec, estimator, config, seed, bits)
        name = f"{spec.name.replace(':', '_')}-{estimator}-{key}.json"
        path = engine.data_dir() / "sensitivity" / name
        if path.is_file():
            try:
                return SensitivityTable.load(path)
            except InvalidSpecError as e:
                warnings.warn(f"sensitivity cache {path} is corrupt ({e}); recomputing.",
                              stacklevel=2)
    table = _run(spec, estimator, fn, bits, config, seed, progress)
    if path is not None:
        table.save(path)
    return table


def _run(spec, estimator, fn, bits, config, seed, show: bool) -> SensitivityTable:
    if not show:
        return fn(spec, list(bits), config, seed)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    layers = len(spec.layers())
    if estimator == "hutchinson":
        total, unit = layers * config.max_probes, "layer-probes"
    elif estimator == "fracbits":
        total, unit = config.steps, "steps"
    else:
        total, unit = layers * len(bits), "layer x bits"
    with Progress(TextColumn(f"{estimator} on {spec.name}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} " + unit), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("", total=total)
        return fn(spec, list(bits), config, seed,
                  progress=lambda n=1: bar.advance(task, n))


def load_table(path: str | Path) -> SensitivityTable:
    return SensitivityTable.load(path)
