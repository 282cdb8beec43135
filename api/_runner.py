"""Running one claimed job: heartbeat thread, stage updates, result or failure recorded.

The same code runs in the in-process worker pool and in Celery workers. A failure inside
the job is recorded on the row (type and message), never lost; a job that was cancelled or
taken away meanwhile stops at its next stage and writes nothing. Celery workers run the job
inside a fan-out scope (`api._fanout.job_fanout`), which spreads its chunked work over the
other workers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager

from api._jobfn import JobCancelled, OnStage, execute
from api._settings import Settings
from api._store import JobRecord, JobStore

log = logging.getLogger("allocator.worker")

Fanout = Callable[[JobRecord, OnStage, Callable[[], float], threading.Event],
                  AbstractContextManager[dict[str, float]]]
"""A scope around a running job: `(job, on_stage, progress_now, lost)` -> a context whose
value (seconds by name) joins the job's timings when it ends (`api._fanout.job_fanout`)."""


class Heartbeat:
    """Refreshes a running job's heartbeat every `interval_s` from a daemon thread."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str, interval_s: float,
                 on_lost: Callable[[], None] | None = None) -> None:
        self._store, self._job_id, self._worker_id = store, job_id, worker_id
        self._interval_s, self._on_lost = interval_s, on_lost
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}",
                                        daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                if not self._store.heartbeat(self._job_id, self._worker_id):
                    self.lost.set()
                    if self._on_lost is not None and not self._stop.is_set():
                        self._on_lost()
                    return
            except Exception as e:  # noqa: BLE001  (a missed beat is retried)
                log.warning("heartbeat of job %s failed: %s", self._job_id, e)


def run_claimed(store: JobStore, job: JobRecord, worker_id: str, settings: Settings, *,
                on_lost: Callable[[], None] | None = None, fanout: Fanout | None = None
                ) -> str:
    """Runs a job this worker has claimed; returns its final status as this worker saw it.

    Args:
        on_lost: Called from the heartbeat thread when the job stops being this worker's
            (cancelled, or re-queued after a missed heartbeat) while it still runs; the
            in-process pool exits the worker process there, to stop at once rather than at
            the job's next stage. Without it the job stops at its next stage.
        fanout: The scope the job runs in (Celery workers: its work fans out), if any.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    progress = [0.0]

    def on_stage(stage: str, fraction: float) -> None:
        progress[0] = fraction
        if not store.set_stage(job.id, worker_id, stage, fraction):
            raise JobCancelled(job.id)

    output = None
    error: Exception | None = None
    with Heartbeat(store, job.id, worker_id, settings.heartbeat_interval_s, on_lost) as beat:
        try:
            problem = store.problem(job.id) if job.kind == "problem" else None
            scope = (fanout(job, on_stage, lambda: progress[0], beat.lost)
                     if fanout is not None else contextlib.nullcontext({}))
            with scope as fanout_timings:
                output, timings = execute(job, settings, problem, on_stage)
            timings.update(fanout_timings)
        except JobCancelled:
            log.info("job %s stopped: cancelled or re-assigned", job.id)
            return "cancelled"
        except Exception as e:  # noqa: BLE001  (recorded on the job, as Optuna records trials)
            log.warning("job %s failed: %s\n%s", job.id, e, traceback.format_exc())
            error = e
    # The heartbeat has stopped: the final write below cannot race a "lost" verdict.
    timings["total_s"] = time.perf_counter() - t_start
    if error is not None:
        store.fail(job.id, worker_id, f"{type(error).__name__}: {error}", timings)
        return "failed"
    if store.succeed(job.id, worker_id, output, timings):
        log.info("job %s succeeded in %.1f s", job.id, timings["total_s"])
        return "succeeded"
    return "lost"
