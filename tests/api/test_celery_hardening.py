"""Celery mode never strands a job (real Redis and a real `allocator worker`; skipped
cleanly without Redis): a cancelled running job stops within seconds and the next job
runs; a job posted while the broker is down is answered at once (202) and runs once the
broker is back, without restarting anything."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import Settings, create_app
from api._broker import CeleryDispatcher
from api.testing import BrokerForwarder
from tests.api.conftest import (
    TOKEN,
    CeleryWorker,
    free_port,
    in_sensitivity,
    own_redis_db,
    problem_doc,
    process_gone,
    wait_for,
)
from tests.conftest import private_data_dir

# A Redis database of these tests' own: other suites' workers on the shared one would take
# (and skip, not knowing the job) the tasks sent here.
OWN_DB = 13
MODEL_JOB = {"model": "digits-cnn", "budgets": ["4bits"], "solver": "ilp",
             "estimator": "hutchinson", "bits": [2, 4, 8], "seed": 11, "measure": True}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def broker(redis_url: str) -> str:
    return own_redis_db(redis_url, OWN_DB)


class Worker(CeleryWorker):
    def log(self) -> str:
        return super().log()[-4000:]


@pytest.fixture
def worker_env(broker: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ALLOCATOR_BROKER_URL": broker,
            "ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite'}",
            "ALLOCATOR_DATA_DIR": str(private_data_dir(tmp_path / "data")),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], Worker]]:
    started: list[Worker] = []

    def start() -> Worker:
        w = Worker(worker_env, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def _alive_workers(client: TestClient) -> list[dict[str, Any]]:
    return client.get("/health").json()["checks"]["workers"]["items"]


def _wait_worker(client: TestClient, worker: Worker, timeout_s: float = 120) -> None:
    """Until the worker's pool process has sent a heartbeat (it is ready for tasks)."""
    deadline = time.monotonic() + timeout_s
    while not _alive_workers(client):
        assert worker.proc.poll() is None, worker.log()
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.3)


@pytest.mark.slow
def test_cancel_stops_a_running_celery_job(start_worker, worker_env) -> None:
    worker = start_worker()
    app = create_app(Settings(database_url=worker_env["ALLOCATOR_DATABASE_URL"],
                              broker_url=worker_env["ALLOCATOR_BROKER_URL"],
                              api_token=TOKEN, data_dir=Path(worker_env["ALLOCATOR_DATA_DIR"])))
    with TestClient(app, headers=AUTH) as client:
        _wait_worker(client, worker)
        job = client.post("/jobs", json=MODEL_JOB).json()
        running = wait_for(client, job["id"], until=("running",), where=in_sensitivity(),
                           timeout_s=180)
        assert running["status"] == "running", (running, worker.log())
        # /health names the process running it (its heartbeat carries the job id)
        [busy] = [w for w in _alive_workers(client) if w["job_id"] == job["id"]]
        pid = busy["pid"]
        assert not process_gone(pid)

        r = client.post(f"/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        t0 = time.monotonic()
        while not process_gone(pid):  # the process computing the job stops within seconds
            assert time.monotonic() - t0 < 15, worker.log()
            time.sleep(0.1)
        # The next job does not wait behind the cancelled one.
        follow = client.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]})
        done = wait_for(client, follow.json()["id"], timeout_s=120)
        assert done["status"] == "succeeded", (done, worker.log())
        assert time.monotonic() - t0 < 120
        final = client.get(f"/jobs/{job['id']}").json()
        assert final["status"] == "cancelled" and final["error"] == "cancelled by request"
        history = app.state.service.store.get(job["id"]).attempts_log
        assert [a["outcome"] for a in history] == ["cancelled"]
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 409
        assert worker.proc.poll() is None  # the worker itself lives on
        assert "job no longer ours" in worker.log()


@pytest.fixture
def forwarder(broker: str) -> Iterator[BrokerForwarder]:
    from urllib.parse import urlparse

    target = urlparse(broker)
    fwd = BrokerForwarder((target.hostname or "127.0.0.1", target.port or 6379))
    yield fwd
    fwd.close()


def test_down_broker_fails_fast() -> None:
    """Sending to a broker that refuses, or that accepts and never answers, gives up
    within the timeout instead of holding the request."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        for url in (f"redis://127.0.0.1:{free_port()}/0",
                    f"redis://127.0.0.1:{silent.getsockname()[1]}/0"):
            dispatcher = CeleryDispatcher(url, timeout_s=0.5, retry_after_s=60)
            t0 = time.monotonic()
            assert dispatcher.send("0" * 32) is False
            assert time.monotonic() - t0 < 3.0
            assert dispatcher.down and dispatcher.last_error
            assert dispatcher.ping() is not None
            dispatcher.close()
    finally:
        silent.close()


def test_job_posted_while_broker_down_runs_when_it_returns(start_worker, worker_env,
                                                           forwarder: BrokerForwarder) -> None:
    """The API's broker is down (a closed port); the worker's is not. Jobs posted meanwhile
    get their 202 at once, stay queued, and run once the API's broker is back: the outbox
    sends them, with no restart."""
    worker = start_worker()
    app = create_app(Settings(database_url=worker_env["ALLOCATOR_DATABASE_URL"],
                              broker_url=forwarder.url(OWN_DB), api_token=TOKEN,
                              dispatch_interval_s=0.5,
                              data_dir=Path(worker_env["ALLOCATOR_DATA_DIR"])))
    body = {"problem": problem_doc(), "budgets": ["4bits"]}
    with TestClient(app, headers=AUTH) as client:
        _wait_worker(client, worker)
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["broker"] == "error"
        assert health.json()["status"] == "degraded"
        ids, took_s = [], []
        for i in range(3):
            t0 = time.monotonic()
            r = client.post("/jobs", json=body | {"seed": i})
            took_s.append(time.monotonic() - t0)
            assert r.status_code == 202 and r.json()["status"] == "queued", r.text
            ids.append(r.json()["id"])
        assert max(took_s) < 2.0, took_s  # the broker wait is bounded (0.5 s)
        time.sleep(2.0)
        assert {client.get(f"/jobs/{i}").json()["status"] for i in ids} == {"queued"}

        forwarder.open()  # the broker is back
        for job_id in ids:
            done = wait_for(client, job_id, timeout_s=120)
            assert done["status"] == "succeeded", (done, worker.log())
            assert done["attempts"] == 1
        health = client.get("/health").json()
        assert (health["status"], health["broker"]) == ("ok", "ok")
        # a job posted now goes straight to the broker
        r = client.post("/jobs", json=body | {"seed": 9})
        assert wait_for(client, r.json()["id"], timeout_s=120)["status"] == "succeeded"
        assert app.state.service.store.undispatched_ids() == []
