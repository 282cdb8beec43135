"""`estimate`: run a registered estimator with a progress bar, through the table cache.

Tables are cached under `ALLOCATOR_DATA_DIR/sensitivity/` (or the `cache_dir` given), so
the pipeline and the service reuse them:

    sensitivity/<model>-<estimator>-<key>.json          the table, `allocator.sensitivity/1`
    sensitivity/<model>-<estimator>-<key>.json.sha256   its sidecar: SHA-256 and the key

`<key>` is the start of a SHA-256 over the model weights, the calibration data, the
estimator and its config, the seed, the bits and the engine version; the sidecar records
the whole digest with the model, estimator, seed, bits, config and engine version in the
clear. A cached table is used only when its bytes match the sidecar's checksum, the
sidecar's key is the one computed now, and the table passes `SensitivityTable.from_dict`
and `check_matches` (the same model, estimator, seed, bits and config, exactly the model's
layers, every Ω finite and >= 0). Anything else (an edited, truncated or foreign file, no
sidecar, a directory at the path, a `.tmp` leftover) is moved to `<data dir>/quarantine/`,
logged and warned about (`engine.CacheQuarantineWarning`), and the table is recomputed;
what cannot be moved aside is an `engine.CacheError` (see `engine._cache`).

Where a chunk executor is installed (`use_chunk_executor`: the job service's Celery workers
install one) and the estimator is `layer_parallel`, a missing table is computed in chunks
of layers through that executor, merged, and cached the same way (`sensitivity._chunks`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import engine
from engine import DEFAULT_BITS, InvalidSpecError, feed_digest, hash_tensors
from sensitivity._base import ESTIMATORS, BaseSensitivityEstimator, make_config
from sensitivity._candidates import rounding_inputs
from sensitivity._chunks import ChunkedEstimate, ChunkExecutor, current_chunk_executor
from sensitivity._table import SensitivityTable

log = logging.getLogger(__name__)

CACHE_FOLDER = "sensitivity"
WHAT = "sensitivity table"
# Merges tried before giving up on chunks that keep failing their checks.
MERGE_ATTEMPTS = 3


# Per spec: its model's parameter identities and versions, and the key's hash state after
# the model and calibration data were fed (`_data_digest`).
_DATA_DIGESTS: weakref.WeakKeyDictionary[Any, tuple[tuple, Any]] = weakref.WeakKeyDictionary()


def _data_digest(spec: Any) -> Any:
    """A hash object fed the model weights, the calibration batches (inputs and targets)
    and, where they are more than the batches' inputs (a causal LM), the rounding inputs.

    Kept per spec while its model is unchanged (calibration batches are a deterministic
    function of the spec and its model), so that a warm solve neither hashes the weights
    again nor remakes calibration references a stage has let go (an LLM: 8 forward
    passes). Keys of other models stay as they were, so their cached tables still hit."""
    model = spec.build()
    state = engine.model_state(model)
    try:
        known = _DATA_DIGESTS.get(spec)
    except TypeError:  # a spec that cannot be weakly referenced: not kept
        known = None
    if known is not None and known[0] == state:
        return known[1].copy()
    h = hashlib.sha256()
    feed_digest(h, dict(model.state_dict()))
    batches = spec.calibration_batches()
    feed_digest(h, [(b.inputs, b.target) for b in batches])
    fitted = rounding_inputs(spec)
    if hash_tensors(fitted) != hash_tensors([b.inputs for b in batches]):
        feed_digest(h, fitted)
    try:
        _DATA_DIGESTS[spec] = (state, h.copy())
    except TypeError:
        pass
    return h


def _key_digest(spec: Any, estimator: str, config: Any, seed: int,
                bits: Sequence[int]) -> str:
    h = _data_digest(spec)
    # fields added to a config later stay out of the key at their old behaviour's value
    # (None), so tables made before them still hit
    later = getattr(config, "added_fields", ())
    fields = {k: v for k, v in asdict(config).items() if not (k in later and v is None)}
    h.update(json.dumps({"estimator": estimator, "config": fields, "seed": seed,
                         "bits": list(bits), "engine": engine.ENGINE_VERSION},
                        sort_keys=True).encode())
    return h.hexdigest()


def cache_key(spec: Any, estimator: str, config: Any, seed: int, bits: Sequence[int]) -> str:
    """The table cache's key: model weights, calibration batches and rounding inputs,
    estimator, config, seed, bits and engine version (the config enters as `asdict`, so
    renaming a config field invalidates the cache)."""
    return _key_digest(spec, estimator, config, seed, bits)[:20]


def estimate(spec: Any, estimator: str = "hutchinson", *, bits: Sequence[int] = DEFAULT_BITS,
             seed: int = 0, options: Mapping[str, Any] | None = None, use_cache: bool = True,
             progress: bool = False, cache_dir: str | Path | None = None) -> SensitivityTable:
    """Ω for every layer of `spec` x `bits` with the named estimator (cached).

    Args:
        spec: The model (a zoo spec: `name`, `build`, `layers`, `calibration_batches`,
            `loss`).
        estimator: A registered estimator name (`ESTIMATORS.names()`).
        bits: Candidate weight bit-widths (deduplicated and sorted).
        seed: Seed of the estimator's random choices.
        options: The estimator config's fields, by name (`make_config`), over the spec's
            own `estimator_options[estimator]` where it has them.
        use_cache: Read and write the table cache (see the module docstring).
        progress: Show a progress bar on the terminal.
        cache_dir: The cache folder (default `engine.data_dir() / "sensitivity"`); files
            that fail verification go to `quarantine/` beside it.

    Raises:
        UnknownComponentError: `estimator` is not registered.
        InvalidSpecError: A bad option or bit-width.
        CacheError: A cached table failed verification and cannot be moved aside.
    """
    # The model's own settings for this estimator first (e.g. a causal LM's Fisher form),
    # then the caller's.
    own = dict(getattr(spec, "estimator_options", {}).get(estimator, {}))
    config = make_config(estimator, own | dict(options or {}))
    runner = ESTIMATORS.get(estimator)(config)
    bits = sorted({engine.check_bits(b, where="bits") for b in bits})
    entry = None
    if use_cache:
        entry = _CacheEntry.of(spec, estimator, config, seed, bits, cache_dir)
        cached = entry.load()
        if cached is not None:
            return cached
    executor = current_chunk_executor()
    if (entry is not None and executor is not None and cache_dir is None
            and runner.layer_parallel and len(spec.layers()) > 1):
        return _fan_out(executor, entry, entry.chunked(runner, spec))
    table = _run(runner, spec, bits, seed, progress)
    engine.release_free_memory()  # the estimate's temporaries, before the next stage
    if entry is not None:
        entry.store(table)
    return table


def _fan_out(executor: ChunkExecutor, entry: _CacheEntry,
             work: ChunkedEstimate) -> SensitivityTable:
    """The table through the chunk executor: its chunks merged and cached, or the table
    another job of the same key cached meanwhile."""
    start = time.perf_counter()
    for _ in range(MERGE_ATTEMPTS):
        executor.run(work)
        if work.finished():
            cached = entry.load()
            if cached is not None:
                return cached
        t0 = time.perf_counter()
        table = work.merge(t0 - start)
        if table is not None:
            entry.store(table)
            work.clear()
            work.merge_s = time.perf_counter() - t0
            return table
    raise engine.CacheError(f"the chunks of {work.key} failed their checks "
                            f"{MERGE_ATTEMPTS} times in a row under `{work.folder}`.")


# Chunk messages' cache entries per spec (a weak reference: a model a worker drops is not
# kept alive here) and table: the digest hashes the model's weights once, not per chunk.
_ENTRIES: dict[tuple[Any, ...], tuple[weakref.ref[Any], _CacheEntry]] = {}
_ENTRIES_KEPT = 32


def chunked_estimate(spec: Any, message: Mapping[str, Any]) -> tuple[ChunkedEstimate, int]:
    """The chunk a message (`ChunkedEstimate.message`) asks for, on this process's `spec`:
    the work and the chunk index, checked against the table's digest and stored plan.

    The digest (a hash of the model's weights and calibration data) is kept per process
    and spec, so a worker hashes a model once, not per chunk.

    Raises:
        UnknownComponentError: The estimator is not registered here.
        InvalidSpecError: A bad message, or this worker's model, data or code differ from
            the job's (another digest), or the plan is not in this worker's data dir.
    """
    try:
        estimator = str(message["estimator"])
        config = make_config(estimator, dict(message["config"]))
        seed = int(message["seed"])
        bits = sorted({engine.check_bits(int(b), where="bits") for b in message["bits"]})
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InvalidSpecError):
            raise
        raise InvalidSpecError(f"bad chunk message: {type(e).__name__}: {e}") from None
    runner = ESTIMATORS.get(estimator)(config)
    ident = (id(spec), estimator, json.dumps(asdict(config), sort_keys=True), seed,
             tuple(bits))
    kept = _ENTRIES.get(ident)
    if kept is None or kept[0]() is not spec:
        kept = (weakref.ref(spec), _CacheEntry.of(spec, estimator, config, seed, bits, None))
        _ENTRIES[ident] = kept
        while len(_ENTRIES) > _ENTRIES_KEPT:
            _ENTRIES.pop(next(iter(_ENTRIES)))
    work = kept[1].chunked(runner, spec)
    return work, work.check_message(message)


@dataclass(frozen=True)
class _CacheEntry:
    """One table's place in the cache: its file, the key its sidecar must record, and what
    its content must match."""

    path: Path
    key: dict[str, Any]
    layers: dict[str, int] | None

    @classmethod
    def of(cls, spec: Any, estimator: str, config: Any, seed: int, bits: list[int],
           cache_dir: str | Path | None) -> _CacheEntry:
        digest = _key_digest(spec, estimator, config, seed, bits)
        folder = Path(cache_dir) if cache_dir is not None else engine.data_dir() / CACHE_FOLDER
        name = f"{str(spec.name).replace(':', '_').replace('/', '_')}-{estimator}-{digest[:20]}"
        key = {"cache": "sensitivity", "digest": digest, "model": spec.name,
               "estimator": estimator, "seed": seed, "bits": list(bits),
               "config": asdict(config), "engine": engine.ENGINE_VERSION}
        layers_of = getattr(spec, "layers", None)
        layers = {x.name: x.params for x in layers_of()} if callable(layers_of) else None
        return cls(folder / f"{name}.json", key, layers)

    def chunked(self, runner: BaseSensitivityEstimator, spec: Any) -> ChunkedEstimate:
        """This table's estimate as chunks of layers (`sensitivity._chunks`)."""
        k = self.key
        return ChunkedEstimate(runner, spec, k["bits"], k["seed"], self.path, k["digest"])

    def parse(self, data: bytes) -> SensitivityTable:
        """The cached table, validated like client input, then checked against the key."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidSpecError(f"not UTF-8 text: {e.reason} at byte {e.start}.") from None
        table = SensitivityTable.from_json(text)
        k = self.key
        table.check_matches(model=k["model"], estimator=k["estimator"], seed=k["seed"],
                            bits=k["bits"], config=k["config"], layers=self.layers)
        return table

    def load(self) -> SensitivityTable | None:
        return engine.load_cached(self.path, self.key, self.parse, what=WHAT)

    def store(self, table: SensitivityTable) -> None:
        """Caches a fresh table; a table that would not pass `parse` or a write that fails
        is logged and warned about, never an error (the answer itself is right)."""
        try:
            data = (table.to_json() + "\n").encode("utf-8")
            self.parse(data)
            engine.store_cached(self.path, data, self.key, what=WHAT)
        except (ValueError, engine.CacheError) as e:  # InvalidSpecError included
            message = f"{WHAT} not cached at `{self.path}`: {e}"
            log.warning(message)
            warnings.warn(message, stacklevel=3)


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
