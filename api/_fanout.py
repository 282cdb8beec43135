"""One job across many workers: a job's layer-parallel sensitivity and its front
measurements in chunks over the Celery workers (`sensitivity._chunks` says what a chunk is
and how a table is merged; `allocator._job.front_work` the front's chunks of points).

The worker running a model job (`run_job`) installs a `JobFanout` as the job's chunk
executor. When the job's table is not cached and its estimator is layer-parallel (and again
for the front's measurements), the fan-out

1. plans the chunks: live worker processes x `fanout_chunks_per_worker`, at most one per
   layer or point (a plan stored by an earlier attempt is kept);
2. sends every unfinished chunk as a Celery group of `run_chunk` tasks (acks late: the
   message of a chunk whose worker died comes back after the broker's visibility timeout);
3. works while it waits: it takes the last unfinished chunk that nobody holds and computes
   it itself, so every worker computes chunks, its own included, and one worker with one
   process never waits on a queue it cannot serve; the job's progress is the share of
   chunks done;
4. returns once every chunk is stored; `sensitivity.estimate` merges and caches the table.

A chunk is keyed (the table's digest and its index) and idempotent: its result is a
checksummed file under the shared data dir, so a stored chunk is never computed again (a
redelivered message returns at once, a restarted job skips it). Whoever computes a chunk
holds its lease, a Redis key on the broker renewed every third of `fanout_lease_s`: the
chunk of a worker that died is taken over once its lease lapses. A chunk task checks its
job before it starts and every half second while it runs: the chunks of a cancelled job
stop (a prefork pool process exits at once, as the job's own process does), and the job's
worker revokes the chunks still queued when it stops.

Messages carry names and numbers only: the model by its registered name, the estimator,
its config, bits, seed, the chunk's layers (or points) and the digest; never tensors. Each
worker process loads a model once and keeps up to `worker_models` of them (least recently
used dropped first); a worker whose weights or calibration data give another digest
refuses the chunk (the job's worker then computes it). Nothing here imports torch at
import time: the API process imports this module's names without loading it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from api._broker import RUN_CHUNK_TASK
from api._jobfn import JobCancelled, OnStage
from api._settings import Settings
from api._store import JobRecord, JobStore
from api._worker import exit_now
from engine import InvalidSpecError, JobNotFoundError

log = logging.getLogger("allocator.worker")

POLL_S = 0.1  # how often a waiting job looks at its chunks
WATCH_S = 0.5  # how often a running chunk looks at its job
LIVE = ("queued", "running")
# Where a kind of work sits on a model job's progress bar: its stage, and the progress at
# which the next stage starts (allocator's model job gives its pipeline 0.7 of the bar, the
# pipeline gives sensitivity 0.05 -> 0.5 of that, and the front takes 0.7 -> 0.99).
STAGES = {"sensitivity": ("sensitivity", 0.35), "front": ("pareto", 0.99)}


class FanoutWork(Protocol):
    """Work in keyed, idempotent chunks (`sensitivity.ChunkedEstimate` is one)."""

    @property
    def kind(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def units(self) -> int: ...

    def plan(self, count: int | None) -> int: ...

    def done(self, index: int) -> bool: ...

    def finished(self) -> bool: ...

    def compute(self, index: int, should_stop: Callable[[], bool] | None = None) -> bool: ...

    def message(self, index: int) -> dict[str, Any]: ...


# -- leases -------------------------------------------------------------------------------


class Lease:
    """A held lease, renewed from a daemon thread until the block ends, then released."""

    def __init__(self, lock: Any | None, name: str, renew_s: float) -> None:
        self._lock, self.name, self._renew_s = lock, name, renew_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        if self._lock is not None:
            self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._lock is not None:
            with contextlib.suppress(Exception):  # lapsed already: nothing to give back
                self._lock.release()

    def _renew(self) -> None:
        while not self._stop.wait(self._renew_s):
            try:
                self._lock.reacquire()  # type: ignore[union-attr]
            except Exception as e:  # noqa: BLE001  (lapsed or Redis away: others may take it)
                log.warning("lease %s not renewed: %s", self.name, e)
                return


class Leases:
    """Leases on chunks in Redis (the broker): a chunk is computed by whoever holds its
    lease, and a lease lapses `lease_s` after its holder stopped renewing it.

    Without Redis (another broker, or Redis unreachable) every lease is granted: chunks
    are idempotent, so a chunk computed twice costs time, never a wrong table.
    """

    def __init__(self, url: str | None, lease_s: float) -> None:
        self._url, self.lease_s = url, lease_s
        self._client: Any = None
        self._pid: int | None = None
        self._warned = False

    def _redis(self) -> Any:
        if self._url is None or not self._url.startswith(("redis://", "rediss://")):
            return None
        if self._client is None or self._pid != os.getpid():  # never share one over a fork
            import redis

            self._client = redis.Redis.from_url(self._url, socket_timeout=5,
                                                socket_connect_timeout=5)
            self._pid = os.getpid()
        return self._client

    def take(self, name: str) -> Lease | None:
        """The lease on `name`, held (use it as a context); None when another holds it."""
        client = self._redis()
        if client is None:
            return Lease(None, name, 0.0)
        lock = client.lock(f"allocator:lease:{name}", timeout=self.lease_s, blocking=False,
                           thread_local=False)
        try:
            if not lock.acquire():
                return None
        except Exception as e:  # noqa: BLE001  (Redis away: compute unguarded, see above)
            if not self._warned:
                log.warning("chunk leases unavailable (%s); chunks are computed unguarded", e)
                self._warned = True
            return Lease(None, name, 0.0)
        return Lease(lock, name, self.lease_s / 3)


_LEASES: dict[tuple[str | None, float], Leases] = {}


def leases(settings: Settings) -> Leases:
    """This process's leases on the settings' broker."""
    key = (settings.broker_url, settings.fanout_lease_s)
    if key not in _LEASES:
        _LEASES[key] = Leases(*key)
    return _LEASES[key]


def lease_name(work: FanoutWork, index: int) -> str:
    return f"{work.kind}:{work.key}:{index}"


# -- the job's side ----------------------------------------------------------------------


_ACTIVE: set[JobFanout] = set()


class JobFanout:
    """The chunk executor of one job on a Celery worker (see the module docstring).

    Args:
        app: The Celery app that sends the chunk tasks.
        store: The job store (live worker processes size the plan).
        settings: `fanout_chunks_per_worker`, `fanout_lease_s`, `heartbeat_timeout_s`.
        job: The job.
        on_stage: The job's stage callback; raises `JobCancelled` once the job is not this
            worker's any more.
        progress_now: The job's progress now (where a fan-out's share of the bar starts).
        lost: Set when the job's heartbeat found it cancelled or taken away.
    """

    def __init__(self, app: Any, store: JobStore, settings: Settings, job: JobRecord, *,
                 on_stage: OnStage, progress_now: Callable[[], float],
                 lost: threading.Event) -> None:
        self._app, self._store, self._settings, self._job = app, store, settings, job
        self._on_stage, self._progress_now, self._lost = on_stage, progress_now, lost
        self._leases = leases(settings)
        self._outstanding: list[str] = []
        self._works: list[FanoutWork] = []
        self.timings: dict[str, float] = {}

    def run(self, work: FanoutWork) -> None:
        """Gets every chunk of `work` stored (see the module docstring).

        Raises:
            JobCancelled: The job stopped being this worker's meanwhile.
        """
        from sensitivity import ChunkStopped

        t0 = time.perf_counter()
        count = work.plan(self._chunk_count(work.units))
        pending = [i for i in range(count) if not work.done(i)]
        self._send(work, pending)
        self._add("fanout_dispatch_s", time.perf_counter() - t0)
        self._works.append(work)
        _ACTIVE.add(self)
        try:
            here = self._drive(work, count)
        except ChunkStopped:
            self.revoke()
            raise JobCancelled(self._job.id) from None
        except BaseException:
            self.revoke()
            raise
        finally:
            _ACTIVE.discard(self)
        self._outstanding.clear()  # what is still queued finds its chunk stored: a no-op
        log.info("job %s: %s %s in %d chunks (%d sent, %d computed here) in %.1f s",
                 self._job.id, work.kind, work.key, count, len(pending), here,
                 time.perf_counter() - t0)

    def _chunk_count(self, units: int) -> int:
        try:
            rows: Any = self._store.workers()  # (JobStore.list shadows `list` for mypy)
            live = len([w for w in rows if w["age_s"] <= self._settings.heartbeat_timeout_s])
        except Exception as e:  # noqa: BLE001  (the plan only sets the balance)
            log.warning("job %s: live workers unknown (%s); planning for one", self._job.id, e)
            live = 1
        return max(1, min(units, max(live, 1) * self._settings.fanout_chunks_per_worker))

    def _send(self, work: FanoutWork, pending: list[int]) -> None:
        if not pending:
            return
        from celery import group

        base = {"job": self._job.id, "model": self._job.model}
        signatures = [self._app.signature(RUN_CHUNK_TASK, args=[work.message(i) | base],
                                          task_id=f"chunk-{uuid.uuid4().hex}")
                      for i in pending]
        try:
            group(signatures).apply_async()
        except Exception as e:  # noqa: BLE001  (the broker is away: compute them all here)
            log.warning("job %s: chunks not sent (%s); this worker computes them",
                        self._job.id, e)
            return
        self._outstanding += [str(s.id) for s in signatures]

    def _drive(self, work: FanoutWork, count: int) -> int:
        """Reports, steals and waits until every chunk is stored; returns how many chunks
        this process computed."""
        stage, end = STAGES.get(work.kind, (work.kind, self._progress_now()))
        start = self._progress_now()
        reported, here, idle_s = -1, 0, 0.0
        while True:
            if self._lost.is_set():
                raise JobCancelled(self._job.id)
            if work.finished():
                break
            done = [work.done(i) for i in range(count)]
            n = sum(done)
            if n != reported:
                self._on_stage(stage, start + max(end - start, 0.0) * n / count)
                reported = n
            if n == count:
                break
            todo = [i for i in reversed(range(count)) if not done[i]]
            stolen = self._steal(work, todo)
            if stolen is None:
                time.sleep(POLL_S)
                idle_s += POLL_S
            else:
                here += stolen
        self._add("fanout_idle_s", idle_s)
        return here

    def _steal(self, work: FanoutWork, todo: list[int]) -> int | None:
        """Computes the first chunk of `todo` nobody holds: 1 when computed here, 0 when it
        turned out stored meanwhile, None when every one is held by another."""
        for i in todo:
            lease = self._leases.take(lease_name(work, i))
            if lease is None:
                continue
            with lease:
                return int(work.compute(i, should_stop=self._lost.is_set))
        return None

    def revoke(self) -> None:
        """Revokes the chunk tasks this fan-out sent that may still be queued (a job that
        stops early; revoking a finished one is a no-op)."""
        ids, self._outstanding = self._outstanding, []
        if ids:
            try:
                self._app.control.revoke(ids)
            except Exception as e:  # noqa: BLE001  (a queued chunk then finds its job over)
                log.debug("revoking %d chunks: %s", len(ids), e)

    def close(self) -> None:
        """Adds the merges' time to the timings (`sensitivity.estimate` merges after
        `run`)."""
        for work in self._works:
            merge_s = getattr(work, "merge_s", None)
            if merge_s is not None:
                self._add("fanout_merge_s", float(merge_s))

    def _add(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds


def revoke_active() -> None:
    """Revokes the queued chunks of every fan-out running in this process (called before a
    process exits on a cancelled job)."""
    for fan in list(_ACTIVE):
        fan.revoke()


@contextlib.contextmanager
def job_fanout(app: Any, store: JobStore, settings: Settings, job: JobRecord,
               on_stage: OnStage, progress_now: Callable[[], float],
               lost: threading.Event) -> Iterator[dict[str, float]]:
    """Within the block, the job's layer-parallel sensitivity fans out over the workers;
    yields the fan-out's timings (seconds), complete once the block ends."""
    from sensitivity import use_chunk_executor

    fan = JobFanout(app, store, settings, job, on_stage=on_stage, progress_now=progress_now,
                    lost=lost)
    try:
        with use_chunk_executor(fan):
            yield fan.timings
    finally:
        fan.close()


# -- a chunk task's side -----------------------------------------------------------------


class _Models:
    """This process's models for chunk tasks, by name, least recently used first."""

    def __init__(self) -> None:
        self._specs: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def get(self, name: str, keep: int) -> Any:
        import zoo

        spec = self._specs.pop(name, None)
        if spec is None:
            spec = zoo.get_model(name)
        self._specs[name] = spec
        while len(self._specs) > keep:
            _, old = self._specs.popitem(last=False)
            _forget(old)
        return spec


def _forget(spec: Any) -> None:
    """Drops a model from zoo's per-process instances, so its memory can go."""
    import zoo

    zoo.forget_model(spec)


MODELS = _Models()


class _JobWatch:
    """Watches a chunk's job from a daemon thread: once the job is over (cancelled,
    failed, gone), `stopped` is set and `on_stop` called (a prefork pool process exits)."""

    def __init__(self, store: JobStore, job_id: str,
                 on_stop: Callable[[], None] | None) -> None:
        self._store, self._job_id, self._on_stop = store, job_id, on_stop
        self.stopped, self._end = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="chunk-watch", daemon=True)

    def __enter__(self) -> _JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._end.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._end.wait(WATCH_S):
            if _job_live(self._store, self._job_id):
                continue
            log.info("job %s is over; its chunk stops", self._job_id)
            self.stopped.set()
            if self._on_stop is not None and not self._end.is_set():
                self._on_stop()
            return


def _job_live(store: JobStore, job_id: str) -> bool:
    try:
        return store.get(job_id).status in LIVE
    except JobNotFoundError:
        return False
    except Exception as e:  # noqa: BLE001  (the database briefly away: keep going)
        log.warning("job %s: status unknown: %s", job_id, e)
        return True


def _work_for(spec: Any, message: Mapping[str, Any]) -> tuple[FanoutWork, int]:
    kind = message.get("kind")
    if kind == "sensitivity":
        from sensitivity import chunked_estimate

        return chunked_estimate(spec, message)
    if kind == "front":
        from allocator import front_measurements

        return front_measurements(spec, message)
    raise InvalidSpecError(f"chunk message of unknown `kind` {kind!r}; kinds: sensitivity, "
                           "front.")


def run_chunk_message(message: Mapping[str, Any], *, store: JobStore, settings: Settings,
                      pool_child: bool) -> str:
    """Computes the chunk a `run_chunk` task carries, unless it is stored, held by another
    process or its job is over; returns what happened ("computed", "done", "taken",
    "skipped", "stopped").

    Raises:
        InvalidSpecError: A bad message, or this worker's model differs from the job's.
    """
    from sensitivity import ChunkStopped

    job_id = str(message.get("job", ""))
    if not _job_live(store, job_id):
        log.info("chunk of job %s: the job is over; skipped", job_id)
        return "skipped"
    spec = MODELS.get(str(message.get("model", "")), settings.worker_models)
    work, index = _work_for(spec, message)
    if work.finished() or work.done(index):
        return "done"
    lease = leases(settings).take(lease_name(work, index))
    if lease is None:
        return "taken"
    with lease, _JobWatch(store, job_id, exit_now if pool_child else None) as watch:
        try:
            return "computed" if work.compute(index, should_stop=watch.stopped.is_set) \
                else "done"
        except ChunkStopped:
            return "stopped"
