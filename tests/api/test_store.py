"""The job store on SQLite (always) and PostgreSQL (where it runs): atomic claims,
cancellation, heartbeats, stale-worker recovery, results."""

from __future__ import annotations

import threading
import time

import pytest

from api._store import JobOutput, JobStore, NotSucceededError
from engine import FinishedJobError, JobNotFoundError
from tests.api.conftest import SPEC


def test_claim_is_atomic_under_threads(store: JobStore) -> None:
    ids = {store.create(kind="problem", model=None, spec=SPEC, problem={"x": 1}).id
           for _ in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        while True:
            job = store.claim(f"w{n}")
            if job is None:
                if store.counts()["queued"] == 0:
                    return
                continue
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(claimed) == sorted(ids)  # each job exactly once
    assert store.counts()["running"] == 12


def test_lifecycle_and_finished_jobs_are_frozen(store: JobStore) -> None:
    job = store.create(kind="problem", model=None, spec=SPEC, problem={"p": 1})
    assert store.problem(job.id) == {"p": 1}
    running = store.claim("w1", job.id)
    assert running is not None and running.status == "running" and running.attempts == 1
    assert store.claim("w2", job.id) is None
    assert store.set_stage(job.id, "w1", "solve", 0.5)
    assert not store.set_stage(job.id, "w2", "solve", 0.6)  # not w2's job
    with pytest.raises(NotSucceededError):
        store.result(job.id)
    out = JobOutput(config={"bits": {"a": 4}}, measured={"m": 1}, uniform={}, front={"f": 1})
    assert store.succeed(job.id, "w1", out, {"total_s": 1.0})
    done = store.get(job.id)
    assert (done.status, done.stage, done.progress) == ("succeeded", "done", 1.0)
    assert store.result(job.id)["config"] == {"bits": {"a": 4}}
    assert store.front(job.id) == {"f": 1}
    assert not store.fail(job.id, "w1", "late")
    with pytest.raises(FinishedJobError):
        store.cancel(job.id)
    with pytest.raises(JobNotFoundError):
        store.get("f" * 32)


def test_cancel_stops_the_worker_writes(store: JobStore) -> None:
    job = store.create(kind="problem", model=None, spec=SPEC)
    store.claim("w1", job.id)
    assert store.cancel(job.id).status == "cancelled"
    assert not store.heartbeat(job.id, "w1")
    assert not store.set_stage(job.id, "w1", "pareto", 0.9)
    assert not store.succeed(job.id, "w1", JobOutput(config={}), {})
    assert store.get(job.id).status == "cancelled"


def test_stale_heartbeat_requeues_then_fails(store: JobStore) -> None:
    job = store.create(kind="problem", model=None, spec=SPEC)
    store.claim("dead-1", job.id)
    time.sleep(1.2)
    requeued, failed = store.requeue_stale(timeout_s=1.0, max_attempts=2)
    assert (requeued, failed) == ([job.id], [])
    again = store.get(job.id)
    assert again.status == "queued" and "dead-1" in again.error
    store.claim("dead-2", job.id)
    assert store.requeue_stale(timeout_s=1.0, max_attempts=2) == ([], [])  # fresh heartbeat
    time.sleep(1.2)
    requeued, failed = store.requeue_stale(timeout_s=1.0, max_attempts=2)
    assert (requeued, failed) == ([], [job.id])
    dead = store.get(job.id)
    assert dead.status == "failed" and "dead-2 died" in dead.error and "attempt 2" in dead.error


def test_release_returns_jobs_to_queue(store: JobStore) -> None:
    job = store.create(kind="problem", model=None, spec=SPEC)
    store.claim("w1", job.id)
    assert store.release("w1") == [job.id]
    assert store.get(job.id).status == "queued"


def test_non_finite_numbers_are_stored_as_null(store: JobStore) -> None:
    job = store.create(kind="problem", model=None, spec=SPEC)
    store.claim("w1", job.id)
    out = JobOutput(config={"objective": float("nan")}, measured={"nll": float("inf")},
                    front={"points": [{"x": float("-inf")}]})
    assert store.succeed(job.id, "w1", out, {"total_s": 1.0})
    assert store.result(job.id)["config"] == {"objective": None}
    assert store.result(job.id)["measured"] == {"nll": None}
    assert store.front(job.id) == {"points": [{"x": None}]}


def test_migrations_match_the_models(store: JobStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from api._db import Base

    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0002"
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert diff == []
