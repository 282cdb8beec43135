"""Getting job ids to Celery workers: the dispatcher (sends, with a bounded wait) and the
outbox sweep (re-sends what the broker never got).

The database is the truth and the broker only a doorbell: a job row is created queued, the
API tries once to send its id (never waiting on a down broker longer than
`broker_timeout_s`), and marks the row `dispatched_at` when the broker took it. A
background sweep sends every queued row without that mark (broker down at submit time, or
re-queued since) once the broker answers again, and re-sends queued rows whose message a
restarted broker may have lost. A worker claims a job in the database, so a duplicate
message runs nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from api._settings import Settings
from api._store import JobStore, utcnow
from engine import StoreError

log = logging.getLogger("allocator.api")

RUN_JOB_TASK = "allocator.run_job"
# One chunk of a job's fanned-out work (`api._fanout`), sent by the worker running the job.
RUN_CHUNK_TASK = "allocator.run_chunk"


def _one_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class CeleryDispatcher:
    """Sends job ids to Celery workers through the broker.

    Args:
        broker_url: The broker (Redis).
        timeout_s: Longest wait for connecting to and writing to the broker.
        retry_after_s: After a failure, how long requests leave sending to the outbox.
    """

    def __init__(self, broker_url: str, timeout_s: float = 0.5,
                 retry_after_s: float = 2.0) -> None:
        from celery import Celery

        self.app = Celery("allocator-api", broker=broker_url)
        self.app.conf.update(
            broker_connection_retry_on_startup=False,
            broker_connection_retry=False,
            broker_connection_max_retries=0,
            broker_connection_timeout=timeout_s,
            broker_transport_options={"socket_connect_timeout": timeout_s,
                                      "socket_timeout": timeout_s, "max_retries": 0},
        )
        self.timeout_s, self.retry_after_s = timeout_s, retry_after_s
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.recoveries = 0  # outages that ended (the outbox then re-sends every job)

    @property
    def down(self) -> bool:
        """True within `retry_after_s` of the last failed send or ping: requests then leave
        their job to the outbox instead of waiting on the broker; a success clears it."""
        at = self.last_error_at
        return at is not None and time.monotonic() - at < self.retry_after_s

    def _record(self, error: BaseException | None) -> None:
        with self._lock:
            if error is None:
                if self.last_error is not None:
                    log.warning("broker reachable again")
                    self.recoveries += 1
                self.last_error = self.last_error_at = None
            else:
                if self.last_error is None:
                    log.warning("broker unreachable: %s", _one_line(error))
                self.last_error, self.last_error_at = _one_line(error), time.monotonic()

    def send(self, job_id: str) -> bool:
        """Publishes `job_id`; False (logged, the job stays queued for the outbox) when the
        broker does not take it within the timeout."""
        try:
            self.app.send_task(RUN_JOB_TASK, args=[job_id], retry=False)
        except Exception as e:  # noqa: BLE001  (any broker failure: the outbox re-sends)
            self._record(e)
            return False
        self._record(None)
        return True

    def ping(self) -> str | None:
        """None when the broker accepts a connection within the timeout, else the reason."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=0, timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001
            self._record(e)
            return _one_line(e)
        self._record(None)
        return None

    def close(self) -> None:
        try:
            self.app.close()
        except Exception as e:  # noqa: BLE001
            log.debug("closing the broker connection: %s", e)


class Outbox:
    """Every `dispatch_interval_s`, sends the queued jobs the broker has not taken.

    The first sweep (at service start) and the first after an outage send every queued
    job: messages may have been lost while the service or the broker was down.
    """

    def __init__(self, store: JobStore, dispatcher: CeleryDispatcher,
                 settings: Settings) -> None:
        self._store, self._dispatcher, self._settings = store, dispatcher, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._send_all = True
        self._recoveries = dispatcher.recoveries

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def sweep(self) -> list[str]:
        """One pass; returns the ids sent."""
        if self._dispatcher.last_error is not None and self._dispatcher.ping() is not None:
            return []
        if self._dispatcher.recoveries != self._recoveries:  # back after an outage
            self._recoveries, self._send_all = self._dispatcher.recoveries, True
        if self._send_all:
            ids = self._store.queued_ids()
        else:
            before = utcnow() - dt.timedelta(seconds=self._settings.redispatch_after_s)
            ids = self._store.undispatched_ids(resend_before=before)
        sent: list[str] = []
        for job_id in ids:
            if self._stop.is_set() or not self._dispatcher.send(job_id):
                return sent
            self._store.mark_dispatched(job_id)
            sent.append(job_id)
        self._send_all = False
        if sent:
            log.info("outbox: sent %d queued job(s) to the broker", len(sent))
        return sent

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except StoreError as e:
                log.warning("outbox: %s", e)
            except Exception as e:  # noqa: BLE001  (the sweep must outlive any failure)
                log.warning("outbox: %s", _one_line(e))
            self._stop.wait(self._settings.dispatch_interval_s)
