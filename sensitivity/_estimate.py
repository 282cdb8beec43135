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
from dataclasses import asdict
from typing import Any

import torch

import engine
from engine import DEFAULT_BITS, InvalidSpecError
from sensitivity._base import ESTIMATORS, BaseSensitivityEstimator, make_config
from sensitivity._table import SensitivityTable


def _feed(h: Any, obj: Any) -> None:
    """Adds `obj` to the hash: tensors by dtype, shape and bytes; mappings by sorted key;
    sequences in order; anything else by its repr."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        for k in sorted(obj):
            h.update(str(k).encode())
            _feed(h, obj[k])
    elif isinstance(obj, list | tuple):
        for v in obj:
            _feed(h, v)
    else:
        h.update(repr(obj).encode())


def hash_tensors(obj: Any) -> str:
    """SHA-256 (hex) of tensors nested in mappings, lists and tuples: the digest the cache
    key and the pipeline's reproducibility record give model weights and calibration data.

    Args:
        obj: A tensor, or mappings / lists / tuples of them (other leaves hash by repr).
    """
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def cache_key(spec: Any, estimator: str, config: Any, seed: int, bits: Sequence[int]) -> str:
    """The table cache's key: model weights, calibration batches, estimator, config, seed,
    bits and engine version (the config enters as `asdict`, so renaming a config field
    invalidates the cache)."""
    h = hashlib.sha256()
    _feed(h, dict(spec.build().state_dict()))
    _feed(h, [(b.inputs, b.target) for b in spec.calibration_batches()])
    h.update(json.dumps({"estimator": estimator, "config": asdict(config), "seed": seed,
                         "bits": list(bits), "engine": engine.ENGINE_VERSION},
                        sort_keys=True).encode())
    return h.hexdigest()[:20]


def estimate(spec: Any, estimator: str = "hutchinson", *, bits: Sequence[int] = DEFAULT_BITS,
             seed: int = 0, options: Mapping[str, Any] | None = None, use_cache: bool = True,
             progress: bool = False) -> SensitivityTable:
    """Ω for every layer of `spec` x `bits` with the named estimator (cached).

    Args:
        spec: The model (a zoo spec: `name`, `build`, `layers`, `calibration_batches`,
            `loss`).
        estimator: A registered estimator name (`ESTIMATORS.names()`).
        bits: Candidate weight bit-widths (deduplicated and sorted).
        seed: Seed of the estimator's random choices.
        options: The estimator config's fields, by name (`make_config`).
        use_cache: Read and write the table cache under `engine.data_dir()`.
        progress: Show a progress bar on the terminal.

    Raises:
        UnknownComponentError: `estimator` is not registered.
        InvalidSpecError: A bad option or bit-width.
    """
    config = make_config(estimator, options)
    runner = ESTIMATORS.get(estimator)(config)
    bits = sorted({engine.check_bits(b, where="bits") for b in bits})
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
    table = _run(runner, spec, bits, seed, progress)
    if path is not None:
        table.save(path)
    return table


def _run(runner: BaseSensitivityEstimator, spec: Any, bits: list[int], seed: int,
         show: bool) -> SensitivityTable:
    if not show:
        return runner.estimate(spec, bits, seed=seed)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"{runner.name} on {spec.name}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} " + runner.progress_unit),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("", total=runner.progress_total(spec, bits))
        return runner.estimate(spec, bits, seed=seed,
                               progress=lambda n: bar.advance(task, n))
