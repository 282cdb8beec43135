"""The running service: settings, database, store, catalog, and how jobs reach workers.

Without a broker, queued rows are the queue: the in-process pool polls for them. With
`broker_url`, each new (or re-queued) job is also sent to Celery as `allocator.run_job`
(`api._broker`: a bounded wait, and an outbox sweep for what a down broker missed); the
worker claims it in the database, so a task delivered twice runs once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from api._broker import RUN_JOB_TASK, CeleryDispatcher, Outbox
from api._catalog import Catalog
from api._db import open_database
from api._settings import Settings
from api._store import JobStore
from api._worker import Reaper, WorkerPool, new_worker_id
from engine import StoreError

log = logging.getLogger("allocator.api")

__all__ = ["RUN_JOB_TASK", "CeleryDispatcher", "Service"]


@dataclass
class Service:
    """Everything a request handler needs, built once per app."""

    settings: Settings
    store: JobStore
    catalog: Catalog
    dispatcher: CeleryDispatcher | None = None
    pool: WorkerPool | None = None
    reaper: Reaper | None = None
    outbox: Outbox | None = None
    process_id: str = field(default_factory=lambda: new_worker_id("api"))
    extra: dict = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> Service:
        """Opens the database (migrated, a write proven) or raises one line naming the
        setting and the cause (`SettingsError`, `StoreError`)."""
        setting = ("ALLOCATOR_DATABASE_URL" if settings.database_url
                   else "ALLOCATOR_DATA_DIR")
        engine = open_database(settings.resolved_database_url(), setting=setting)
        store = JobStore(engine)
        catalog = Catalog(settings.worker_env())
        dispatcher = (CeleryDispatcher(settings.broker_url, settings.broker_timeout_s,
                                       retry_after_s=settings.dispatch_interval_s)
                      if settings.broker_url else None)
        return cls(settings, store, catalog, dispatcher)

    @property
    def mode(self) -> str:
        if self.dispatcher is not None:
            return "celery"
        return f"in-process:{self.settings.workers}" if self.settings.workers else "none"

    @property
    def expects_workers(self) -> bool:
        """Whether this service counts on workers being alive (Celery, or its own pool)."""
        return self.dispatcher is not None or self.pool is not None

    def submit(self, job_id: str) -> None:
        """Hands a queued job to the broker (Celery mode) without waiting on a down one:
        while the broker is known to be down, the outbox sends it once the broker is back."""
        if self.dispatcher is None or self.dispatcher.down:
            return
        if self.dispatcher.send(job_id):
            try:
                self.store.mark_dispatched(job_id)
            except StoreError as e:  # the outbox sends it again; a duplicate runs once
                log.warning("job %s sent, but not marked: %s", job_id, e)

    def start(self) -> None:
        """Starts the catalog probe, the reaper, and the outbox (with a broker) or the
        worker pool (without)."""
        self.catalog.start()
        from api._solving import warm_up

        warm_up(self.settings)  # the first synchronous solve does not pay the process start
        self.reaper = Reaper(self.store, self.settings,
                             on_requeue=self.submit if self.dispatcher is not None else None)
        self.reaper.start()
        if self.dispatcher is not None:
            # Its first sweep sends every queued job: messages may have been lost while
            # the service was down; the database is the truth.
            self.outbox = Outbox(self.store, self.dispatcher, self.settings)
            self.outbox.start()
        elif self.settings.workers > 0:
            self.pool = WorkerPool(self.settings, self.store, self.settings.workers)
            self.pool.start()

    def stop(self) -> None:
        if self.outbox is not None:
            self.outbox.stop()
        if self.reaper is not None:
            self.reaper.stop()
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        if self.dispatcher is not None:
            self.dispatcher.close()
        try:
            self.store.forget(self.process_id)
        except StoreError as e:
            log.debug("heartbeat row of %s left behind: %s", self.process_id, e)
        self.store.engine.dispose()
