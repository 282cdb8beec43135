"""Fixtures of the job-service tests: settings over a temporary SQLite file (always), the
real PostgreSQL (`ALLOCATOR_TEST_PG_URL`, default 127.0.0.1:5432/test) and Redis
(`ALLOCATOR_TEST_REDIS_URL`, default 127.0.0.1:6379) where they answer, skipped cleanly
where they do not, and a live `allocator serve` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from allocator.testing_problems import random_problem
from api import Settings, create_app
from api._db import make_engine, upgrade
from api._store import JobStore
from api.testing import free_port
from tests.conftest import private_data_dir

REPO = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("ALLOCATOR_TEST_PG_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ALLOCATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TOKEN = "test-token"


SPEC = {"budgets": ["4bits"], "solver": "ilp", "seed": 0, "measure": False, "bits": [2, 4, 8]}


def problem_doc(n_layers: int = 6, seed: int = 0) -> dict[str, Any]:
    """A seeded synthetic allocator.problem/1 document."""
    return random_problem(n_layers, seed=seed).to_dict()


def _pg_reachable() -> str | None:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as e:  # noqa: BLE001
        return f"PostgreSQL at {PG_URL} unreachable: {type(e).__name__}"


def _redis_reachable() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except Exception as e:  # noqa: BLE001
        return f"Redis at {REDIS_URL} unreachable: {type(e).__name__}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh schema-free PostgreSQL database state (tables dropped before and after)."""
    reason = _pg_reachable()
    if reason:
        pytest.skip(reason)
    _drop_pg_tables()
    yield PG_URL
    _drop_pg_tables()


def _drop_pg_tables() -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        for table in ("problems", "fronts", "results", "heartbeats", "jobs", "alembic_version"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    reason = _redis_reachable()
    if reason:
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.sqlite'}"


@pytest.fixture
def api_client(sqlite_url: str) -> Iterator[TestClient]:
    """An API-only app (no workers) over a temporary SQLite file, with a write token."""
    app = create_app(Settings(database_url=sqlite_url, api_token=TOKEN, workers=0),
                     start_workers=False)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


FINISHED = ("succeeded", "failed", "cancelled")


def wait_for(client: Any, job_id: str, *, timeout_s: float = 300.0,
             until: tuple[str, ...] = FINISHED,
             where: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Polls a job until its status is in `until` and, given `where`, `where(job)` holds;
    a finished job returns at once either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in FINISHED or (job["status"] in until
                                         and (where is None or where(job))):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']}/{job['stage']} "
                                 f"after {timeout_s} s")
        time.sleep(0.3)


def in_sensitivity(attempt: int = 1) -> Callable[[dict[str, Any]], bool]:
    """`where` of a job running its sensitivity stage on attempt `attempt`: mid-job, as
    that stage computes its table (the services here have data directories of their own)."""
    return lambda job: job["stage"] == "sensitivity" and job["attempts"] == attempt


class LiveService:
    """`allocator serve` in a subprocess (own process group) on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "HF_HUB_OFFLINE": "1", **env}
        self.workers, self.log_path = workers, log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> LiveService:
        log = open(self.log_path, "ab")  # noqa: SIM115  (closed with the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "allocator.cli", "serve", "--port", str(self.port),
             "--workers", str(self.workers)], cwd=REPO, env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service did not start: {self.log_path.read_text()[-2000:]}")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30,
                            headers={"Authorization": f"Bearer {TOKEN}"})

    def worker_pids(self) -> list[int]:
        """Pids of the pool's worker processes (children running `spawn_main`)."""
        assert self.proc is not None
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"spawn_main" in cmdline:
                    pids.append(int(child))
        return pids

    def kill(self) -> None:
        """SIGKILL to the whole process tree (a crash, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)


@pytest.fixture
def live_service(tmp_path: Path) -> Iterator[Any]:
    """A factory of live services over one private data directory per test; every one
    started is stopped at the end."""
    started: list[LiveService] = []
    data = private_data_dir(tmp_path / "data")

    def make(env: dict[str, str], workers: int = 1) -> LiveService:
        svc = LiveService({"ALLOCATOR_API_TOKEN": TOKEN, "ALLOCATOR_DATA_DIR": str(data), **env},
                          tmp_path / f"service-{uuid.uuid4().hex[:6]}.log", workers)
        started.append(svc)
        return svc.start()

    yield make
    for svc in started:
        svc.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment without ALLOCATOR_* variables but a private database."""
    for key in list(os.environ):
        if key.startswith("ALLOCATOR_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ALLOCATOR_DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    monkeypatch.setenv("ALLOCATOR_WORKERS", "0")
    return monkeypatch


__all__ = ["LiveService", "json", "problem_doc", "wait_for"]


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM to a process group started with `start_new_session`, SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    engine = make_engine(url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    s = JobStore(engine)
    if request.param == "postgres":
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM jobs")
    yield s
    engine.dispose()


def own_redis_db(redis_url: str, db: int) -> str:
    """The test Redis on database `db` of a suite's own (other suites' workers on the shared
    one would take, and skip, tasks sent here), emptied of earlier runs' messages."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


class CeleryWorker:
    """`allocator worker --concurrency 1` in its own process group, its output appended
    to `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "allocator.cli", "worker", "--concurrency", "1"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process_group(self.proc)
        self._log.close()


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (no process, or a zombie not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")
