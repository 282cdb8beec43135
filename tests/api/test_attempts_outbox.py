"""The store's attempt history (kept after a retried job succeeds) and its broker outbox
marks, on SQLite (always) and PostgreSQL (where it runs)."""

from __future__ import annotations

import datetime as dt
import time

from fastapi.testclient import TestClient

from api._store import JobOutput, JobStore, utcnow
from tests.api.conftest import SPEC, problem_doc


def _new(store: JobStore) -> str:
    return store.create(kind="problem", model=None, spec=SPEC, problem={"x": 1}).id


def _stale(store: JobStore, job_id: str) -> None:
    """Ages the job's heartbeat as a dead worker's would be."""
    from sqlalchemy import update

    from api._db import JobRow

    with store.engine.begin() as conn:
        conn.execute(update(JobRow).where(JobRow.id == job_id).values(
            heartbeat_at=utcnow() - dt.timedelta(seconds=120)))


def test_retried_job_keeps_every_attempt(store: JobStore) -> None:
    job_id = _new(store)
    assert store.get(job_id).public()["attempts_history"] == []
    assert store.claim("w1", job_id) is not None
    _stale(store, job_id)
    assert store.requeue_stale(timeout_s=30, max_attempts=3) == ([job_id], [])
    assert store.claim("w2", job_id) is not None
    store.release("w2")  # shut down mid-job
    assert store.claim("w3", job_id) is not None
    assert store.succeed(job_id, "w3", JobOutput(config={"bits": {}}), {"total_s": 1.0})
    job = store.get(job_id).public()
    assert job["status"] == "succeeded" and job["error"] is None and job["attempts"] == 3
    history = job["attempts_history"]
    assert [a["attempt"] for a in history] == [1, 2, 3]
    assert [a["worker_id"] for a in history] == ["w1", "w2", "w3"]
    assert [a["outcome"] for a in history] == ["requeued", "requeued", "succeeded"]
    assert "w1 stopped answering" in history[0]["reason"]
    assert "no heartbeat for 30 s" in history[0]["reason"]
    assert "w2 was shut down" in history[1]["reason"] and history[2]["reason"] is None
    for a in history:
        assert a["started_at"] <= a["ended_at"]


def test_failed_and_cancelled_attempts_are_closed(store: JobStore) -> None:
    failed, cancelled, lost = _new(store), _new(store), _new(store)
    store.claim("w1", failed)
    store.fail(failed, "w1", "ValueError: bad table")
    store.claim("w2", cancelled)
    store.cancel(cancelled)
    store.claim("w3", lost)
    _stale(store, lost)
    assert store.requeue_stale(timeout_s=30, max_attempts=1) == ([], [lost])
    assert [(a["outcome"], a["reason"]) for a in
            store.get(failed).public()["attempts_history"]] == [("failed",
                                                                  "ValueError: bad table")]
    assert [(a["outcome"], a["reason"]) for a in
            store.get(cancelled).public()["attempts_history"]] == [("cancelled",
                                                                     "cancelled by request")]
    [gone] = store.get(lost).public()["attempts_history"]
    assert gone["outcome"] == "failed" and "giving up" in gone["reason"]
    # a worker that lost its job writes nothing into the history
    assert not store.succeed(cancelled, "w2", JobOutput(config={}), {})
    assert len(store.get(cancelled).attempts_log) == 1


def test_running_attempt_is_open(store: JobStore) -> None:
    job_id = _new(store)
    store.claim("w1", job_id)
    [a] = store.get(job_id).public()["attempts_history"]
    assert (a["attempt"], a["outcome"], a["ended_at"], a["worker_id"]) == (1, "running",
                                                                           None, "w1")


def test_outbox_marks(store: JobStore) -> None:
    a, b, c = _new(store), _new(store), _new(store)
    assert store.undispatched_ids() == [a, b, c]
    assert store.mark_dispatched(a)
    store.claim("w1", b)
    assert not store.mark_dispatched(b)  # running: nothing to send
    assert store.undispatched_ids() == [c]
    # a message the broker took long ago (and may have lost) is sent again
    time.sleep(0.01)
    assert store.undispatched_ids(resend_before=utcnow()) == [a, c]
    # a re-queued job needs sending again
    _stale(store, b)
    store.requeue_stale(timeout_s=30, max_attempts=3)
    assert store.undispatched_ids() == [b, c]
    assert store.get(b).dispatched_at is None


def test_attempts_history_is_in_the_job_json(api_client: TestClient) -> None:
    """The public job object keeps `attempts` and adds `attempts_history`."""
    job = api_client.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]})
    assert job.status_code == 202
    store = api_client.app.state.service.store
    job_id = job.json()["id"]
    store.claim("w1", job_id)
    _stale(store, job_id)
    store.requeue_stale(timeout_s=30, max_attempts=3)
    body = api_client.get(f"/jobs/{job_id}").json()
    assert body["attempts"] == 1
    [a] = body["attempts_history"]
    assert a["outcome"] == "requeued" and "no heartbeat" in a["reason"]
    listed = api_client.get("/jobs").json()["items"][0]
    assert listed["attempts_history"] == body["attempts_history"]


class FakeBroker:
    """A dispatcher whose broker is up or down at the test's word."""

    def __init__(self) -> None:
        self.up, self.sent, self.recoveries = True, [], 0
        self.last_error: str | None = None

    @property
    def down(self) -> bool:
        return self.last_error is not None

    def _seen(self, ok: bool) -> bool:
        if ok and self.last_error is not None:
            self.recoveries += 1
        self.last_error = None if ok else "ConnectionError: refused"
        return ok

    def send(self, job_id: str) -> bool:
        if self._seen(self.up):
            self.sent.append(job_id)
        return self.up

    def ping(self) -> str | None:
        return None if self._seen(self.up) else self.last_error


def test_outbox_sends_what_the_broker_missed(store: JobStore) -> None:
    from api._broker import Outbox
    from api._settings import Settings

    broker = FakeBroker()
    outbox = Outbox(store, broker, Settings(redispatch_after_s=3600))  # type: ignore[arg-type]
    old = _new(store)
    store.mark_dispatched(old)
    assert outbox.sweep() == [old]  # at start: every queued job (messages may be lost)
    assert outbox.sweep() == []
    broker.up = False
    a, b = _new(store), _new(store)
    assert outbox.sweep() == [] and broker.down
    assert store.undispatched_ids() == [a, b]
    broker.up = True  # back: everything queued goes again, oldest first
    assert outbox.sweep() == [old, a, b]
    assert store.undispatched_ids() == [] and outbox.sweep() == []
    c = _new(store)
    assert outbox.sweep() == [c]
