"""The Celery app of scale-out workers: `celery -A api.celery_app worker` (or
`allocator worker`). Settings come from the `ALLOCATOR_*` environment: the broker
(`ALLOCATOR_BROKER_URL`, Redis) and the shared database (`ALLOCATOR_DATABASE_URL`).

The task only carries a job id; the job itself is claimed from the database (an atomic
`UPDATE ... WHERE status = 'queued'`), so a redelivered task never runs a job twice.

Each pool process writes a process heartbeat (what `/health` lists). A job cancelled (or
re-queued) while it runs is noticed by its heartbeat within `heartbeat_interval_s`; a
prefork pool process then exits at once, as the in-process pool's workers do, so the work
stops and the next task is taken (the lost message is redelivered and skipped, since the
job is no longer queued). Under other pools (solo, threads) it stops at its next stage.

A model job's layer-parallel sensitivity and its front measurements fan out (`api._fanout`):
the job's process sends their chunks as `run_chunk` tasks, which every worker takes from the
same queue, and computes chunks itself while it waits, so one worker with one process
finishes alone.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from celery import Celery
from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from api._broker import RUN_CHUNK_TASK, RUN_JOB_TASK
from api._settings import load_settings
from api._store import JobStore
from api._worker import ProcessBeat, beat_interval_s, exit_now, new_worker_id

log = logging.getLogger("allocator.worker")

settings = load_settings()
app = Celery("allocator", broker=settings.broker_url)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


class _Process:
    """This process's store, worker id and heartbeat, made after the fork (never shared
    with the parent: database connections do not survive a fork)."""

    pid: int | None = None
    store: JobStore | None = None
    worker_id: str = ""
    beat: ProcessBeat | None = None
    pool_child = False  # a prefork pool process: may exit to stop a cancelled job


def _store() -> JobStore:
    """One store per worker process, built after the fork, migrations applied."""
    if _Process.store is None or _Process.pid != os.getpid():
        from api._db import open_database

        _Process.store = JobStore(open_database(settings.resolved_database_url()))
        _Process.pid = os.getpid()
        _Process.worker_id = new_worker_id("celery")
        _Process.beat = None
    return _Process.store


def _start_beat() -> None:
    store = _store()
    if _Process.beat is None:
        _Process.beat = ProcessBeat(store, _Process.worker_id, "worker",
                                    beat_interval_s(settings)).start()


@worker_process_init.connect
def _pool_process_started(**_kwargs: object) -> None:
    _Process.pool_child = True
    try:
        _start_beat()
    except Exception as e:  # noqa: BLE001  (the task retries the database itself)
        log.warning("worker process heartbeat not started: %s", e)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _process_stopping(**_kwargs: object) -> None:
    """A stopping process removes its heartbeat row (a pool process, or a solo worker)."""
    if _Process.beat is not None and _Process.pid == os.getpid():
        _Process.beat.stop()
        _Process.beat = None


@worker_ready.connect
def _worker_ready(sender: object = None, **_kwargs: object) -> None:
    """Solo and thread pools run tasks in this process: it beats for them."""
    pool = getattr(sender, "pool", None)
    if pool is not None and "prefork" not in type(pool).__module__:
        try:
            _start_beat()
        except Exception as e:  # noqa: BLE001
            log.warning("worker heartbeat not started: %s", e)


@app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> str:
    """Claims job `job_id` and runs it; "skipped" when another worker has it or it ended."""
    from api._runner import run_claimed
    from engine import configure_runtime

    configure_runtime()  # the kernels' process settings (once per worker process)
    store = _store()
    worker_id = _Process.worker_id
    job = store.claim(worker_id, job_id)
    if job is None:
        log.info("job %s: not queued any more; skipped", job_id)
        return "skipped"
    beat = _Process.beat
    if beat is not None:
        beat.set_job(job.id)
    fanout = None
    if settings.fanout and job.kind == "model":
        from api._fanout import job_fanout

        fanout = functools.partial(job_fanout, app, store, settings)
    on_lost: Callable[[], None] | None = _stop_lost_job if _Process.pool_child else None
    try:
        return run_claimed(store, job, worker_id, settings, on_lost=on_lost, fanout=fanout)
    finally:
        if beat is not None:
            beat.set_job(None)


def _stop_lost_job() -> None:
    """The job is not ours any more: its queued chunks are revoked, then the process exits."""
    from api._fanout import revoke_active

    revoke_active()
    exit_now()


@app.task(name=RUN_CHUNK_TASK)
def run_chunk(message: dict) -> str:
    """Computes one chunk of a fanned-out job (`api._fanout`); returns what happened."""
    from api._fanout import run_chunk_message
    from engine import configure_runtime

    configure_runtime()
    return run_chunk_message(message, store=_store(), settings=settings,
                             pool_child=_Process.pool_child)
