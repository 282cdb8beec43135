"""The running service: settings, database, store, catalog, and how jobs reach workers.

Without a broker, queued rows are the queue: the in-process pool polls for them. With
`broker_url`, each new (or re-queued) job is also sent to Celery as `allocator.run_job`;
the worker claims it in the database, so a task delivered twice runs once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from api._catalog import Catalog
from api._db import make_engine, upgrade
from api._settings import Settings
from api._store import JobStore
from api._worker import Reaper, WorkerPool

log = logging.getLogger("allocator.api")

RUN_JOB_TASK = "allocator.run_job"


class CeleryDispatcher:
    """Sends job ids to Celery workers through the broker."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery

        self.app = Celery("allocator-api", broker=broker_url)
        self.app.conf.broker_connection_retry_on_startup = False

    def submit(self, job_id: str) -> None:
        try:
            self.app.send_task(RUN_JOB_TASK, args=[job_id], retry=True,
                               retry_policy={"max_retries": 3, "interval_start": 0.2,
                                             "interval_step": 0.5, "interval_max": 2})
        except Exception as e:  # noqa: BLE001  (the job stays queued; the reaper re-sends)
            log.warning("could not send job %s to the broker: %s", job_id, e)


@dataclass
class Service:
    """Everything a request handler needs, built once per app."""

    settings: Settings
    store: JobStore
    catalog: Catalog
    dispatcher: CeleryDispatcher | None = None
    pool: WorkerPool | None = None
    reaper: Reaper | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> Service:
        engine = make_engine(settings.resolved_database_url())
        upgrade(engine)
        store = JobStore(engine)
        catalog = Catalog(settings.worker_env())
        dispatcher = CeleryDispatcher(settings.broker_url) if settings.broker_url else None
        return cls(settings, store, catalog, dispatcher)

    @property
    def mode(self) -> str:
        if self.dispatcher is not None:
            return "celery"
        return f"in-process:{self.settings.workers}" if self.settings.workers else "none"

    def submit(self, job_id: str) -> None:
        if self.dispatcher is not None:
            self.dispatcher.submit(job_id)

    def start(self) -> None:
        """Starts the catalog probe, the reaper and (without a broker) the worker pool."""
        self.catalog.start()
        self.reaper = Reaper(self.store, self.settings,
                             on_requeue=self.submit if self.dispatcher is not None else None)
        self.reaper.start()
        if self.dispatcher is not None:
            # Messages may have been lost while the service was down; the database is the
            # truth, and a task delivered twice is claimed once.
            for job in self.store.queued_ids():
                self.dispatcher.submit(job)
        if self.dispatcher is None and self.settings.workers > 0:
            self.pool = WorkerPool(self.settings, self.store, self.settings.workers)
            self.pool.start()

    def stop(self) -> None:
        if self.reaper is not None:
            self.reaper.stop()
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        self.store.engine.dispose()
