"""The Celery app of scale-out workers: `celery -A api.celery_app worker` (or
`allocator worker`). Settings come from the `ALLOCATOR_*` environment: the broker
(`ALLOCATOR_BROKER_URL`, Redis) and the shared database (`ALLOCATOR_DATABASE_URL`).

The task only carries a job id; the job itself is claimed from the database (an atomic
`UPDATE ... WHERE status = 'queued'`), so a redelivered task never runs a job twice.
"""

from __future__ import annotations

import logging

from celery import Celery

from api._service import RUN_JOB_TASK
from api._settings import Settings
from api._store import JobStore

log = logging.getLogger("allocator.worker")

settings = Settings()
app = Celery("allocator", broker=settings.broker_url)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_STORE: JobStore | None = None


def _store() -> JobStore:
    """One store per worker process, built after the fork, migrations applied."""
    global _STORE
    if _STORE is None:
        from api._db import make_engine, upgrade

        engine = make_engine(settings.resolved_database_url())
        upgrade(engine)
        _STORE = JobStore(engine)
    return _STORE


@app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> str:
    """Claims job `job_id` and runs it; "skipped" when another worker has it or it ended."""
    from api._runner import run_claimed
    from api._worker import new_worker_id
    from engine import configure_runtime

    configure_runtime()  # the kernels' process settings (once per worker process)
    store = _store()
    worker_id = new_worker_id("celery")
    job = store.claim(worker_id, job_id)
    if job is None:
        log.info("job %s: not queued any more; skipped", job_id)
        return "skipped"
    return run_claimed(store, job, worker_id, settings)
