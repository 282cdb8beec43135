"""A layer-parallel estimate in chunks of layers: the plan, each chunk's stored result,
computing one chunk in any process, and the merge into the very table one process makes.
`KeyedChunks` is the storage part on its own (a plan and checksummed chunk files under the
data dir), for any work split into named units (the job's front measurements use it too).

`estimate` hands a `ChunkedEstimate` to the chunk executor installed around it
(`use_chunk_executor`; the job service installs one that fans the chunks out over its
Celery workers), then merges the chunks and caches the table as the single-process path
does. Only `layer_parallel` estimators take this path (a layer's Ω depends on that layer
alone); the merged table equals the single-process one byte for byte but for `elapsed_s`
and `created`, given the same torch build and thread count in every process (how a float
sum is split across threads changes its last bits).

Chunks live beside the table cache, under the data dir (shared by every worker):

    sensitivity-chunks/<table file stem>.plan.json       the layers of each chunk
    sensitivity-chunks/<table file stem>.chunk-<i>.json  chunk i's layers as an
                                                         allocator.sensitivity/1 table,
                                                         with its .sha256 sidecar

The first run fixes the plan (its chunk count from the layers and the live workers then),
so a run restarted with more or fewer workers reuses every finished chunk. Chunk files are
trusted cache files (`engine.store_cached`): written atomically with a checksum and their
key (the table's digest, the chunk index and its layers), verified before the merge; one
that fails goes to the data dir's `quarantine/` and its chunk is computed again. A
table's chunk files go once the table is cached.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import engine
from engine import InvalidSpecError
from sensitivity._table import LayerSensitivity, SensitivityTable

if TYPE_CHECKING:
    from sensitivity._base import BaseSensitivityEstimator

log = logging.getLogger(__name__)

CHUNKS_FOLDER = "sensitivity-chunks"
PLAN_FORMAT = "allocator.sensitivity-plan/1"
WHAT = "sensitivity chunk"

StopFn = Callable[[], bool]
"""Asked between units of work; True stops the chunk (`ChunkStopped`)."""


class ChunkStopped(Exception):
    """Raised inside a chunk told to stop (its job was cancelled); nothing is stored."""


class ChunkExecutor(Protocol):
    """Gets every chunk of some keyed work (an estimate, a job's front measurements)
    computed and stored, wherever it likes."""

    def run(self, work: KeyedChunks) -> None:
        """Returns once every chunk of `work` is stored, or `work.finished()`; an exception
        aborts the work (a cancelled job)."""


_EXECUTOR: ContextVar[ChunkExecutor | None] = ContextVar("allocator_chunk_executor",
                                                         default=None)


@contextlib.contextmanager
def use_chunk_executor(executor: ChunkExecutor | None) -> Iterator[None]:
    """Within the block, `estimate` computes layer-parallel tables through `executor`
    (None: in this process, in one piece)."""
    token = _EXECUTOR.set(executor)
    try:
        yield
    finally:
        _EXECUTOR.reset(token)


def current_chunk_executor() -> ChunkExecutor | None:
    """The executor `use_chunk_executor` installed here, if any."""
    return _EXECUTOR.get()


def plan_chunks(names: Sequence[str], count: int) -> list[list[str]]:
    """`names` in order, cut into `count` (clipped to 1..len(names)) contiguous chunks
    whose sizes differ by at most one."""
    if not names:
        return []
    count = max(1, min(int(count), len(names)))
    size, extra = divmod(len(names), count)
    out, start = [], 0
    for i in range(count):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(names[start:stop]))
        start = stop
    return out


class KeyedChunks:
    """Work split into chunks of named units (layers, front points), each chunk's result
    a trusted cache file, so any process may compute a chunk and a stored one is never
    computed again; what a unit means and how it is computed is the subclass's.

    Files under `folder` (shared by every process that computes chunks):
    `<key>.plan.json` (the units of each chunk) and `<key>.chunk-<i>.json` (+ sidecar).

    Args:
        folder: Where the plan and the chunk files go (directly under the data dir, so
            files that fail their check go to the data dir's `quarantine/`).
        key: Names this work's files (readable; unique with the digest in it).
        digest: What the work is (inputs, settings, code version): every chunk file's key
            records it, and a plan of another digest is not joined.
        units: The units, in order; empty: those of the stored plan (a worker joining).
        kind: What the work is, for messages ("sensitivity", "front").
        what: What a chunk file holds, for messages ("sensitivity chunk").
        compute: The stored bytes of a chunk of units, given their names and a check to
            call between units (subclasses may override `_compute` instead).
        extra: What a message of a chunk carries besides its units (the units' inputs).
    """

    def __init__(self, folder: Path, key: str, digest: str, units: Sequence[str], *,
                 kind: str = "chunks", what: str = "chunk",
                 compute: Callable[[list[str], Callable[[int], None]], bytes] | None = None,
                 extra: Callable[[list[str]], dict[str, Any]] | None = None) -> None:
        self.folder, self.key, self.digest = folder, key, digest
        self.kind, self.what = kind, what
        self.names = list(units)
        self._compute_fn, self._extra = compute, extra
        self._chunks: list[list[str]] | None = None

    @property
    def units(self) -> int:
        """Units to compute (what a chunk count is chosen from)."""
        return len(self.names)

    @property
    def count(self) -> int:
        """Chunks of the plan (`plan` first)."""
        return len(self._plan())

    def plan(self, count: int | None) -> int:
        """Fixes the chunks: an earlier run's when the folder holds a valid plan, else
        `count` new ones (written for the runs after this one); returns how many.

        Raises:
            InvalidSpecError: `count` is None (join a plan) and there is no valid plan.
        """
        path = self.folder / f"{self.key}.plan.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        # Two jobs of the same work may plan at once: the first plan written is everyone's.
        with engine.file_lock(self.folder / ".plan.lock"):
            chunks = self._read_plan(path)
            if chunks is None:
                if count is None:
                    raise InvalidSpecError(
                        f"no chunk plan for {self.key} under `{self.folder}`: the "
                        "workers must share the job's ALLOCATOR_DATA_DIR.")
                chunks = plan_chunks(self.names, count)
                doc = {"format": PLAN_FORMAT, "table": self.digest, "chunks": chunks}
                engine.atomic_write_bytes(path, (json.dumps(doc) + "\n").encode())
        self._chunks = chunks
        return len(chunks)

    def _read_plan(self, path: Path) -> list[list[str]] | None:
        if not path.exists():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            chunks = doc["chunks"]
            units = [str(n) for c in chunks for n in c]
            ok = (doc.get("format") == PLAN_FORMAT and doc.get("table") == self.digest
                  and isinstance(chunks, list) and all(isinstance(c, list) and c for c in chunks)
                  and (units == self.names or not self.names))
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if ok:
            self.names = units
            return [[str(n) for n in c] for c in chunks]
        engine.quarantine(path, "invalid", f"not a chunk plan of {self.key}",
                          what=f"{self.what} plan", action="planning anew")
        return None

    def _plan(self) -> list[list[str]]:
        if self._chunks is None:
            raise InvalidSpecError(f"chunks of {self.key} are not planned yet (`plan`).")
        return self._chunks

    def layers_of(self, index: int) -> list[str]:
        """The units of chunk `index`."""
        chunks = self._plan()
        if not 0 <= index < len(chunks):
            raise InvalidSpecError(f"`chunk` must be in 0..{len(chunks) - 1}, got {index}.")
        return chunks[index]

    def _path(self, index: int) -> Path:
        return self.folder / f"{self.key}.chunk-{index}.json"

    def _key(self, index: int) -> dict[str, Any]:
        return {"cache": self.what, "table": self.digest, "chunk": index,
                "layers": self.layers_of(index)}

    def done(self, index: int) -> bool:
        """Chunk `index` is stored (verified only when read)."""
        path = self._path(index)
        return path.is_file() and engine.sidecar_path(path).is_file()

    def finished(self) -> bool:
        """The whole result is stored elsewhere already (no chunk needs computing)."""
        return False

    def store(self, index: int, data: bytes) -> None:
        """Stores chunk `index`'s result (atomically, with its checksum and key)."""
        engine.store_cached(self._path(index), data, self._key(index), what=self.what)

    def read(self, index: int, parse: Callable[[bytes], Any]) -> Any:
        """Chunk `index`'s result through `parse`, verified; None when missing or when it
        failed its check (quarantined: the chunk must be computed again)."""
        return engine.load_cached(self._path(index), self._key(index), parse, what=self.what)

    def clear(self) -> None:
        """Removes this work's plan and chunk files (once the whole result is kept)."""
        with contextlib.suppress(OSError):
            for path in list(self.folder.iterdir()):
                if path.name.startswith(f"{self.key}."):
                    with contextlib.suppress(OSError):
                        path.unlink()

    def compute(self, index: int, should_stop: StopFn | None = None) -> bool:
        """Computes and stores chunk `index` here; False when there was nothing to do.

        Raises:
            ChunkStopped: `should_stop` said so between two units of work.
        """
        names = self.layers_of(index)
        if self.done(index) or self.finished():
            return False
        label = f"{self.key} chunk {index + 1}/{self.count}"

        def check(_units: int = 0) -> None:
            if should_stop is not None and should_stop():
                raise ChunkStopped(label)

        check()
        log.info("%s: started (%d units) in process %d", label, len(names), os.getpid())
        t0 = time.perf_counter()
        try:
            data = self._compute(names, check)
        except ChunkStopped:
            log.info("%s: stopped in process %d", label, os.getpid())
            raise
        self.store(index, data)
        log.info("%s: done in %.2f s in process %d", label, time.perf_counter() - t0,
                 os.getpid())
        return True

    def _compute(self, names: list[str], check: Callable[[int], None]) -> bytes:
        """The stored bytes of the chunk of units `names`; calls `check` between units."""
        if self._compute_fn is None:
            raise NotImplementedError(f"{self.kind} chunks have no `compute`.")
        return self._compute_fn(names, check)

    def message(self, index: int) -> dict[str, Any]:
        """What another process needs to compute chunk `index` (JSON; names and numbers,
        never tensors), with `extra`'s part."""
        names = self.layers_of(index)
        out = {"kind": self.kind, "table": self.digest, "chunk": index, "layers": names}
        return out | (self._extra(names) if self._extra is not None else {})

    def check_message(self, message: Mapping[str, Any]) -> int:
        """Joins the plan a message was sent under; returns its chunk index.

        Raises:
            InvalidSpecError: The message is for other work or another plan.
        """
        if message.get("table") != self.digest:
            raise InvalidSpecError(
                f"chunk message for {str(message.get('table'))[:20]}, but this worker's "
                f"{self.key} (weights, calibration data, settings, engine) is "
                f"{self.digest[:20]}: workers must run the same code and models.")
        self.plan(None)
        index = int(message["chunk"])
        if self.layers_of(index) != list(message.get("layers") or []):
            raise InvalidSpecError(f"chunk {index} of {self.key}: the message's units differ "
                                   "from the stored plan.")
        return index


class ChunkedEstimate(KeyedChunks):
    """One table's estimate as chunks of layers (see the module docstring).

    Args:
        runner: A `layer_parallel` estimator.
        spec: The model.
        bits: Candidate bit-widths (sorted, validated).
        seed: The estimate's seed.
        table_path: Where the whole table is cached; its stem names the chunk files.
        digest: The table's cache digest (model weights, data, estimator, config, seed,
            bits, engine): what every chunk file's key records.
    """

    def __init__(self, runner: BaseSensitivityEstimator, spec: Any, bits: Sequence[int],
                 seed: int, table_path: Path, digest: str) -> None:
        if not runner.layer_parallel:
            raise InvalidSpecError(f"the {runner.name} estimator scores all layers together; "
                                   "it cannot be computed in chunks.")
        super().__init__(table_path.parent.parent / CHUNKS_FOLDER, table_path.stem, digest,
                         [x.name for x in spec.layers()], kind="sensitivity", what=WHAT)
        self.runner, self.spec, self.seed = runner, spec, seed
        self.bits = list(bits)
        self.table_path = table_path
        self._params = {x.name: x.params for x in spec.layers()}
        self.merge_s: float | None = None  # seconds the merge and caching took (`estimate`)

    def finished(self) -> bool:
        """The whole table is cached already (another job of the same table merged it)."""
        return self.table_path.is_file()

    def _compute(self, names: list[str], check: Callable[[int], None]) -> bytes:
        t0 = time.perf_counter()
        layers = self.runner.estimate_layers(self.spec, self.bits, names, seed=self.seed,
                                             progress=check)
        part = SensitivityTable(layers, tuple(self.bits), self.runner.name, self.seed,
                                self.spec.name, self.runner.config_dict(),
                                time.perf_counter() - t0)
        return (part.to_json() + "\n").encode("utf-8")

    def load(self, index: int) -> dict[str, LayerSensitivity] | None:
        """Chunk `index`'s layers, verified; None when missing or quarantined."""
        names = self.layers_of(index)

        def parse(data: bytes) -> dict[str, LayerSensitivity]:
            table = SensitivityTable.from_json(data.decode("utf-8"))
            table.check_matches(model=self.spec.name, estimator=self.runner.name,
                                seed=self.seed, bits=self.bits,
                                config=self.runner.config_dict(),
                                layers={n: self._params[n] for n in names})
            return dict(table.layers)

        loaded: dict[str, LayerSensitivity] | None = self.read(index, parse)
        return loaded

    def merge(self, elapsed_s: float) -> SensitivityTable | None:
        """The whole table from the stored chunks; None when one is missing or failed its
        check (quarantined): that chunk must be computed again."""
        layers: dict[str, LayerSensitivity] = {}
        for i in range(self.count):
            part = self.load(i)
            if part is None:
                return None
            layers.update(part)
        return self.runner.make_table(self.spec, self.bits, self.seed, layers, elapsed_s)

    def message(self, index: int) -> dict[str, Any]:
        """What another process needs to compute chunk `index` (the model and its
        calibration data travel by reference, checked by the digest)."""
        return super().message(index) | {
            "estimator": self.runner.name, "config": self.runner.config_dict(),
            "bits": list(self.bits), "seed": self.seed, "model_name": self.spec.name}


class InProcessChunkExecutor:
    """Computes every chunk here, in order: a resumable estimate in one process (a run
    stopped midway keeps its finished chunks for the next).

    Args:
        chunks: How many chunks a new plan has.
    """

    def __init__(self, chunks: int = 4) -> None:
        if chunks < 1:
            raise InvalidSpecError(f"`chunks` must be >= 1, got {chunks}.")
        self.chunks = chunks
        self.computed: list[int] = []

    def run(self, work: KeyedChunks) -> None:
        for i in range(work.plan(self.chunks)):
            if work.compute(i):
                self.computed.append(i)
