"""`GET /health` reports each dependency (database read and write, broker, workers with
their heartbeats), keeps its first keys, and answers 503 when no job can be taken."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api import Settings, create_app
from api._db import make_engine
from api._store import JobStore
from api._worker import ProcessBeat
from tests.api.conftest import free_port


def test_ok_keeps_its_keys_and_checks_each_dependency(api_client: TestClient) -> None:
    r = api_client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert (body["status"], body["database"], body["workers"]) == ("ok", "ok", "none")
    db = body["checks"]["database"]
    assert db["ok"] and db["read"] and db["write"] and db["latency_ms"] >= 0
    assert "broker" not in body and "broker" not in body["checks"]
    workers = body["checks"]["workers"]
    assert workers["mode"] == "none" and not workers["expected"] and workers["ok"]


def test_write_locked_database_is_503_within_seconds(api_client: TestClient,
                                                     sqlite_url: str) -> None:
    """Another process holds the write lock: reads still work, writes do not, so no job
    can be taken; the check gives up after about two seconds instead of hanging."""
    path = sqlite_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, timeout=1, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        r = api_client.get("/health")
        elapsed_s = time.monotonic() - t0
        assert r.status_code == 503, r.text
        body = r.json()
        assert (body["status"], body["database"]) == ("unavailable", "error")
        db = body["checks"]["database"]
        assert db["read"] is True and db["write"] is False and not db["ok"]
        assert "locked" in db["detail"] and "database" in body["detail"]
        assert body["workers"] == "none"  # the first keys stay
        assert elapsed_s < 10.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert api_client.get("/health").status_code == 200


def test_read_only_database_is_503(api_client: TestClient, sqlite_url: str) -> None:
    svc = api_client.app.state.service
    path = sqlite_url.removeprefix("sqlite:///")
    writable = svc.store
    svc.store = JobStore(make_engine(f"sqlite:///file:{path}?mode=ro&uri=true"))
    try:
        r = api_client.get("/health")
        assert r.status_code == 503
        db = r.json()["checks"]["database"]
        assert db["read"] and not db["write"] and "readonly" in db["detail"]
        assert api_client.get("/jobs").status_code == 200  # reads still answer
    finally:
        svc.store.engine.dispose()
        svc.store = writable


def test_unreadable_database_is_503(api_client: TestClient, tmp_path: Path) -> None:
    svc = api_client.app.state.service
    writable = svc.store
    (tmp_path / "folder.sqlite").mkdir()
    svc.store = JobStore(make_engine(f"sqlite:///{tmp_path / 'folder.sqlite'}"))
    try:
        r = api_client.get("/health")
        assert r.status_code == 503
        body = r.json()
        assert body["checks"]["database"]["read"] is False
        assert body["checks"]["workers"]["ok"]  # nothing expected of workers here
    finally:
        svc.store.engine.dispose()
        svc.store = writable


def test_broker_down_is_degraded_not_503(sqlite_url: str) -> None:
    """Jobs are still taken with the broker down (the outbox sends them later), so the
    service answers 200 "degraded", naming the broker and the missing workers."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(Settings(database_url=sqlite_url, broker_url=closed, workers=0),
                     start_workers=False)
    with TestClient(app) as client:
        t0 = time.monotonic()
        r = client.get("/health")
        assert time.monotonic() - t0 < 5.0
        assert r.status_code == 200
        body = r.json()
        assert (body["status"], body["workers"], body["broker"]) == ("degraded", "celery",
                                                                       "error")
        assert body["database"] == "ok"
        assert not body["checks"]["broker"]["ok"]
        # "connection refused", or a timeout when the machine is too busy to be refused
        # within broker_timeout_s: either way the detail says why.
        assert body["checks"]["broker"]["detail"]
        workers = body["checks"]["workers"]
        assert workers["expected"] and workers["alive"] == 0 and not workers["ok"]
        assert "broker" in body["detail"] and "workers" in body["detail"]


def test_worker_heartbeats_are_listed(sqlite_url: str) -> None:
    """A worker process's heartbeat row makes it alive in /health, with the job it runs;
    a stopped worker's row goes away."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(Settings(database_url=sqlite_url, broker_url=closed, workers=0,
                              heartbeat_timeout_s=3), start_workers=False)
    with TestClient(app) as client:
        store = app.state.service.store
        beat = ProcessBeat(store, "celery-test-1", "worker", 60).start()
        beat.set_job("0" * 32)  # written at once, not a minute later
        try:
            deadline = time.monotonic() + 10
            while True:
                workers = client.get("/health").json()["checks"]["workers"]
                if workers["alive"] and workers["items"][0]["job_id"]:
                    break
                assert time.monotonic() < deadline, workers
                time.sleep(0.1)
            item = workers["items"][0]
            assert item["id"] == "celery-test-1" and item["job_id"] == "0" * 32
            assert item["age_s"] < 3 and workers["last_heartbeat_at"] == item["heartbeat_at"]
            assert workers["ok"]
        finally:
            beat.stop()
        assert client.get("/health").json()["checks"]["workers"]["alive"] == 0


@pytest.mark.slow
def test_in_process_pool_workers_beat(sqlite_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(database_url=sqlite_url, workers=1, data_dir=tmp_path / "d"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while True:
            body = client.get("/health").json()
            if body["checks"]["workers"]["alive"] == 1:
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.5)
        assert body["status"] == "ok" and body["checks"]["workers"]["expected"]
        assert body["checks"]["workers"]["items"][0]["id"].startswith("inproc-")


def test_openapi_declares_the_503_body(api_client: TestClient) -> None:
    spec = api_client.get("/openapi.json").json()
    responses = spec["paths"]["/health"]["get"]["responses"]
    ref = responses["503"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/HealthPublic")
    assert {"status", "database", "workers", "broker", "checks"} <= set(
        spec["components"]["schemas"]["HealthPublic"]["properties"])
