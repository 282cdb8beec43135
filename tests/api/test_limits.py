"""The limits of synchronous solves hold: a request just over a limit is refused with a
named 4xx, one at it finishes within the stated time; a solve runs in a solver process with
a hard deadline, so that no request, however large, delays another."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from allocator import parse_budgets
from allocator.testing_problems import random_problem
from api import Settings, create_app
from api._errors import ApiError
from api._solving import SolvePool
from tests.api.conftest import TOKEN, problem_doc

SEVEN_BITS = (2, 3, 4, 5, 6, 7, 8)
# Time a request may take beyond its solve: validation, transfer, a loaded machine.
OVERHEAD_S = 10.0


def _client(sqlite_url: str, **settings: Any) -> TestClient:
    app = create_app(Settings(database_url=sqlite_url, api_token=TOKEN, workers=0, **settings),
                     start_workers=False)
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    with _client(sqlite_url) as c:
        c.post("/solve", json={"problem": problem_doc(), "budgets": ["4bits"]})  # warm
        yield c


def test_solve_of_2000_layers_by_7_bits_with_greedy_within_the_limit(client) -> None:
    """At `sync_max_layers` (2000): greedy answers within `sync_time_limit_s` (10 s) plus
    overhead; one layer more is refused before any solving."""
    limits = client.get("/settings").json()["limits"]
    n, limit_s = limits["sync_max_layers"], limits["sync_time_limit_s"]
    assert (n, limit_s) == (2000, 10.0)
    doc = random_problem(n, SEVEN_BITS, seed=0).to_dict()
    start = time.perf_counter()
    r = client.post("/solve", json={"problem": doc, "budgets": ["4.5bits"], "solver": "greedy"})
    elapsed_s = time.perf_counter() - start
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "feasible" and r.json()["cost"]["avg_bits"] <= 4.5 + 1e-9
    assert elapsed_s < limit_s + OVERHEAD_S
    over = random_problem(n + 1, SEVEN_BITS, seed=0).to_dict()
    r = client.post("/solve", json={"problem": over, "budgets": ["4.5bits"], "solver": "greedy"})
    assert r.status_code == 422 and r.json()["field"] == "body.problem.layers"
    assert r.json()["value"] == n + 1 and str(n) in r.json()["detail"]


def test_resolve_takes_the_synchronous_layer_limit(sqlite_url: str) -> None:
    """A re-solve is synchronous: `sync_max_layers` holds for a job's problem too (jobs
    themselves take bigger ones)."""
    with _client(sqlite_url, sync_max_layers=20) as c:
        at = c.post("/jobs", json={"problem": problem_doc(20), "budgets": ["5bits"]}).json()
        over = c.post("/jobs", json={"problem": problem_doc(21), "budgets": ["5bits"]})
        assert over.status_code == 202, over.text
        r = c.post(f"/jobs/{at['id']}/solve", json={"budgets": ["4bits"]})
        assert r.status_code == 200 and r.json()["job_id"] == at["id"]
        r = c.post(f"/jobs/{over.json()['id']}/solve", json={"budgets": ["4bits"]})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "job.problem.layers" and r.json()["value"] == 21


def test_solve_past_the_time_limit(sqlite_url: str) -> None:
    """Out of time, the best answer found is returned marked (brute), or the request is
    refused naming `sync_time_limit_s` (dp has no answer before it ends)."""
    with _client(sqlite_url, sync_time_limit_s=1.0) as c:
        c.post("/solve", json={"problem": problem_doc(), "budgets": ["4bits"]})  # warm
        brute = random_problem(9, seed=0, latency=False).to_dict()  # 5**9 assignments
        start = time.perf_counter()
        r = c.post("/solve", json={"problem": brute, "budgets": ["5bits"], "solver": "brute"})
        assert time.perf_counter() - start < 1.0 + 2.0 + OVERHEAD_S
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "feasible" and r.json()["extra"]["time_limit_reached"]
        dp = random_problem(20, seed=0, latency=False).to_dict()
        start = time.perf_counter()
        r = c.post("/solve", json={"problem": dp, "budgets": ["5bits"], "solver": "dp"})
        assert time.perf_counter() - start < 1.0 + 2.0 + OVERHEAD_S
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["field"] == "body.solver" and body["value"] == "dp"
        assert "sync_time_limit_s" in body["detail"] and "POST /jobs" in body["detail"]


class _SleepsWhenRead:
    """A request that holds its solver process: unpickling it sleeps (a stand-in for a
    solver that ignores its time limit)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple:
        return time.sleep, (self.seconds,)


@pytest.fixture
def one_process() -> Iterator[SolvePool]:
    pool = SolvePool(1)
    yield pool
    pool.close()


def _small() -> tuple[Any, list]:
    return random_problem(6, seed=0), parse_budgets(["4bits"])


def test_a_solve_past_its_hard_deadline_is_killed(one_process: SolvePool) -> None:
    problem, budgets = _small()
    assert one_process.run(problem, budgets, solver="ilp", seed=0, time_limit_s=5,
                           grace_s=1)["status"] == "optimal"
    before = one_process.pids
    start = time.perf_counter()
    with pytest.raises(ApiError) as err:
        one_process.run(_SleepsWhenRead(60), budgets, solver="ilp", seed=0, time_limit_s=0.5,
                        grace_s=0.5)
    assert time.perf_counter() - start < 1.0 + 5.0
    assert err.value.status_code == 422 and err.value.field == "body.solver"
    assert "sync_time_limit_s" in err.value.detail
    assert one_process.pids != before  # killed, and a fresh one started
    again = one_process.run(problem, budgets, solver="ilp", seed=0, time_limit_s=5, grace_s=1)
    assert again["status"] == "optimal"


def test_no_queue_past_the_processes_a_503_with_retry_after(one_process: SolvePool) -> None:
    problem, budgets = _small()
    one_process.run(problem, budgets, solver="ilp", seed=0, time_limit_s=5, grace_s=1)
    held = threading.Thread(target=lambda: pytest.raises(
        ApiError, one_process.run, _SleepsWhenRead(3), budgets, solver="ilp", seed=0,
        time_limit_s=10, grace_s=1))
    held.start()
    time.sleep(0.5)
    start = time.perf_counter()
    with pytest.raises(ApiError) as err:
        one_process.run(problem, budgets, solver="ilp", seed=0, time_limit_s=5, grace_s=1)
    assert time.perf_counter() - start < 1.0
    assert err.value.status_code == 503 and "sync_solve_workers" in err.value.detail
    assert err.value.headers is not None and int(err.value.headers["Retry-After"]) >= 1
    held.join(timeout=30)
    assert one_process.run(problem, budgets, solver="ilp", seed=0, time_limit_s=5,
                           grace_s=1)["status"] == "optimal"


def test_the_service_answers_while_a_long_solve_runs(live_service, tmp_path) -> None:
    """Over a real server: while one solve runs to its deadline, /health and POST /jobs
    answer within a second and a solve over `sync_solve_workers` gets a 503 at once."""
    svc = live_service({"ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path}/jobs.sqlite",
                        "ALLOCATOR_SYNC_TIME_LIMIT_S": "1.8", "ALLOCATOR_SYNC_SOLVE_WORKERS": "1"},
                       workers=0)
    # 1.95M assignments: brute needs 2.8 s on an idle Zen 4 core (4 s on older ones), past
    # the 1.8 s limit; the checks below start 0.5 s in, well before it.
    brute = random_problem(9, seed=0, latency=False).to_dict()
    with svc.client() as client:
        assert client.post("/solve", json={"problem": problem_doc(),
                                           "budgets": ["4bits"]}).status_code == 200  # warm
        health = client.get("/health").status_code
        answer: dict[str, httpx.Response] = {}

        def long_solve() -> None:
            with svc.client() as other:
                answer["r"] = other.post("/solve", json={"problem": brute, "budgets": ["5bits"],
                                                         "solver": "brute"})

        thread = threading.Thread(target=long_solve)
        thread.start()
        time.sleep(0.5)
        for _ in range(3):
            start = time.perf_counter()
            assert client.get("/health").status_code == health
            assert time.perf_counter() - start < 1.0
        start = time.perf_counter()
        r = client.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]})
        assert r.status_code == 202 and time.perf_counter() - start < 1.0
        r = client.post("/solve", json={"problem": problem_doc(), "budgets": ["4bits"]})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["detail"] and "sync_solve_workers" in r.json()["detail"]
        thread.join(timeout=30)
        assert answer["r"].status_code == 200
        assert answer["r"].json()["extra"]["time_limit_reached"]
