"""Running one claimed job: heartbeat thread, stage updates, result or failure recorded.

The same code runs in the in-process worker pool and in Celery workers. A failure inside
the job is recorded on the row (type and message), never lost; a job that was cancelled or
taken away meanwhile stops at its next stage and writes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

from api._jobfn import JobCancelled, execute
from api._settings import Settings
from api._store import JobRecord, JobStore

log = logging.getLogger("allocator.worker")


class Heartbeat:
    """Refreshes a running job's heartbeat every `interval_s` from a daemon thread."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str, interval_s: float) -> None:
        self._store, self._job_id, self._worker_id = store, job_id, worker_id
        self._interval_s = interval_s
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
                    return
            except Exception as e:  # noqa: BLE001  (a missed beat is retried)
                log.warning("heartbeat of job %s failed: %s", self._job_id, e)


def run_claimed(store: JobStore, job: JobRecord, worker_id: str, settings: Settings) -> str:
    """Runs a job this worker has claimed; returns its final status as this worker saw it."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def on_stage(stage: str, progress: float) -> None:
        if not store.set_stage(job.id, worker_id, stage, progress):
            raise JobCancelled(job.id)

    with Heartbeat(store, job.id, worker_id, settings.heartbeat_interval_s):
        try:
            problem = store.problem(job.id) if job.kind == "problem" else None
            output, timings = execute(job, settings, problem, on_stage)
            timings["total_s"] = time.perf_counter() - t_start
            if store.succeed(job.id, worker_id, output, timings):
                log.info("job %s succeeded in %.1f s", job.id, timings["total_s"])
                return "succeeded"
            return "lost"
        except JobCancelled:
            log.info("job %s stopped: cancelled or re-assigned", job.id)
            return "cancelled"
        except Exception as e:  # noqa: BLE001  (recorded on the job, as Optuna records trials)
            log.warning("job %s failed: %s\n%s", job.id, e, traceback.format_exc())
            timings["total_s"] = time.perf_counter() - t_start
            store.fail(job.id, worker_id, f"{type(e).__name__}: {e}", timings)
            return "failed"
