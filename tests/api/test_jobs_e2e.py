"""Jobs end to end on real workers: `allocator serve` (in-process pool) and a Celery worker,
restart safety (worker killed, service killed), 50 concurrent submissions."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from api import Settings, create_app
from tests.api.conftest import (
    REPO,
    TOKEN,
    in_sensitivity,
    problem_doc,
    stop_process_group,
    wait_for,
)

MODEL_JOB = {"model": "digits-cnn", "budgets": ["4bits"], "solver": "ilp",
             "estimator": "hutchinson", "bits": [2, 4, 8], "seed": 0}


def _check_model_result(client, job_id: str, *, measured: bool) -> None:
    result = client.get(f"/jobs/{job_id}/result").json()
    config = result["config"]
    assert config["format"] == "allocator.bitconfig/1" and config["status"] == "optimal"
    assert config["cost"]["avg_bits"] <= 4.0 + 1e-9
    problem = result["problem"]
    assert problem["format"] == "allocator.problem/1"
    assert set(config["bits"]) == {layer["name"] for layer in problem["layers"]}
    assert all(set(layer["omega"]) == {"2", "4", "8"} for layer in problem["layers"])
    front = client.get(f"/jobs/{job_id}/pareto").json()
    assert front["format"] == "allocator.pareto/1" and front["axis"] == "bits"
    assert front["metric"] == "accuracy" and len(front["points"]) >= 2
    assert len(front["measured"]) == len(front["points"])
    assert [u["bits"] for u in front["uniform"]] == [2, 4, 8]
    assert front["chosen"]["bits"] == config["bits"]
    costs = [p["cost"]["avg_bits"] for p in front["points"]]
    assert costs == sorted(costs)
    if measured:
        m = result["measured"]
        assert 0.5 < m["metrics"]["accuracy"] <= 1.0 and m["size_bytes"] < m["fp32_size_bytes"]
        assert result["uniform"]["metrics"]["accuracy"] > 0
        assert all(x is not None and "accuracy" in x["metrics"] and x["size_bytes"] > 0
                   for x in front["measured"])
        assert all(u["metrics"] is not None for u in front["uniform"])
        assert front["chosen"]["metrics"]["accuracy"] == m["metrics"]["accuracy"]
        # more bits on the front never cost less memory on the engine
        sizes = [x["size_bytes"] for x in front["measured"]]
        assert sizes[0] <= sizes[-1]
    else:
        assert result["measured"] == {} and front["measured"] == [None] * len(front["points"])


def test_model_job_in_process_worker(live_service, tmp_path) -> None:
    svc = live_service({"ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path}/jobs.sqlite"})
    with svc.client() as client:
        job = client.post("/jobs", json=MODEL_JOB | {"measure": True}).json()
        queued = client.post("/jobs", json=MODEL_JOB | {"seed": 1}).json()
        assert client.post(f"/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
        stages = set()
        deadline = time.monotonic() + 400
        while True:
            now = client.get(f"/jobs/{job['id']}").json()
            stages.add(now["stage"])
            if now["status"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert now["status"] == "succeeded", now
        assert {"pareto", "done"} <= stages and now["progress"] == 1.0
        assert now["attempts"] == 1 and now["started_at"] <= now["finished_at"]
        assert {"sensitivity_s", "solve_s", "pareto_s", "total_s"} <= set(now["timings_s"])
        _check_model_result(client, job["id"], measured=True)
        t0 = time.perf_counter()
        r = client.post(f"/jobs/{job['id']}/solve", json={"budgets": ["3bits"]})
        assert r.status_code == 200 and time.perf_counter() - t0 < 5.0
        assert r.json()["cost"]["avg_bits"] <= 3.0 + 1e-9
        # a running job is cancelled at its next stage and the worker moves on
        running = client.post("/jobs", json=MODEL_JOB | {"seed": 2}).json()
        now = wait_for(client, running["id"], until=("running",), where=in_sensitivity(),
                       timeout_s=60)
        assert now["status"] == "running", now
        assert client.post(f"/jobs/{running['id']}/cancel").status_code == 200
        follow = client.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]}).json()
        assert wait_for(client, follow["id"], timeout_s=120)["status"] == "succeeded"
        assert client.get(f"/jobs/{running['id']}").json()["status"] == "cancelled"
        assert client.get(f"/jobs/{queued['id']}").json()["started_at"] is None
        metrics = client.get("/metrics").text
        assert 'allocator_jobs{status="cancelled"} 2.0' in metrics


def test_problem_job_front(live_service, tmp_path) -> None:
    svc = live_service({"ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path}/jobs.sqlite"})
    with svc.client() as client:
        job = client.post("/jobs", json={"problem": problem_doc(12), "budgets": ["4bits"],
                                         "solver": "ilp"}).json()
        assert wait_for(client, job["id"], timeout_s=120)["status"] == "succeeded"
        result = client.get(f"/jobs/{job['id']}/result").json()
        front = client.get(f"/jobs/{job['id']}/pareto").json()
        assert result["config"]["cost"]["avg_bits"] <= 4.0 + 1e-9
        assert result["problem"]["format"] == "allocator.problem/1"
        assert front["chosen"]["objective"] == result["config"]["objective"]
        assert [u["bits"] for u in front["uniform"]] == [2, 3, 4, 6, 8]
        # a job that fails in the worker records why, without a traceback
        bad = client.post("/jobs", json={"problem": problem_doc(), "solver": "dp",
                                         "budgets": ["4bits", "1MB"]}).json()
        failed = wait_for(client, bad["id"], timeout_s=120)
        assert failed["status"] == "failed" and "exactly one budget" in failed["error"]
        assert "Traceback" not in failed["error"] and failed["finished_at"] is not None
        assert client.get(f"/jobs/{bad['id']}/result").status_code == 409
        # the chosen point is not dominated by any front point
        chosen = front["chosen"]
        assert not any(p["objective"] < chosen["objective"] - 1e-12
                       and p["cost"]["avg_bits"] <= chosen["cost"]["avg_bits"] + 1e-12
                       for p in front["points"])


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_restart_safety(live_service, tmp_path) -> None:
    env = {"ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path}/jobs.sqlite",
           "ALLOCATOR_HEARTBEAT_INTERVAL_S": "0.5", "ALLOCATOR_HEARTBEAT_TIMEOUT_S": "3",
           "ALLOCATOR_MAX_ATTEMPTS": "3"}
    svc = live_service(env)
    body = MODEL_JOB | {"measure": False, "estimator": "measured", "seed": 5}
    with svc.client() as client:
        job = client.post("/jobs", json=body).json()
        # Mid-job: the sensitivity table is computed in this test's own data directory.
        running = wait_for(client, job["id"], until=("running",), where=in_sensitivity(1),
                           timeout_s=120)
        assert running["status"] == "running", running
        pids = svc.worker_pids()
        assert pids, "no worker process found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # the worker dies mid-job
        # The reaper re-queues it and the pool's fresh worker takes it again.
        again_running = wait_for(client, job["id"], until=("running",),
                                 where=in_sensitivity(2), timeout_s=120)
        assert again_running["status"] == "running", again_running
        assert "no heartbeat" in again_running["error"], again_running
    svc.kill()  # the whole service dies mid-job
    again = live_service(env)
    with again.client() as client:
        done = wait_for(client, job["id"], timeout_s=400)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 3 and done["error"] is None
        _check_model_result(client, job["id"], measured=False)


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_fifty_concurrent_submissions(live_service, tmp_path) -> None:
    svc = live_service({"ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path}/jobs.sqlite"},
                       workers=2)
    doc = problem_doc(6)

    def submit(i: int) -> httpx.Response:
        with svc.client() as client:
            return client.post("/jobs", json={"problem": doc, "budgets": [f"{3 + i % 4}bits"],
                                              "solver": "greedy", "seed": i})

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(submit, range(50)))
    assert [r.status_code for r in responses] == [202] * 50
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 50
    with svc.client() as client:
        assert client.get("/jobs", params={"limit": 100}).json()["total"] == 50
        for job_id in ids:
            job = wait_for(client, job_id, timeout_s=300)
            assert job["status"] == "succeeded", job
            assert job["attempts"] == 1


@pytest.fixture
def celery_worker(redis_url, tmp_path, request):
    """A real Celery worker (`allocator worker`, i.e. `celery -A api.celery_app worker`) on
    PostgreSQL where it runs, else SQLite."""
    try:
        db_url = request.getfixturevalue("pg_url")
    except pytest.skip.Exception:
        db_url = f"sqlite:///{tmp_path}/jobs.sqlite"
    env = {**os.environ, "ALLOCATOR_BROKER_URL": redis_url, "ALLOCATOR_DATABASE_URL": db_url,
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "celery.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "allocator.cli", "worker", "--concurrency",
                             "1"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    yield db_url, proc, tmp_path / "celery.log"
    stop_process_group(proc)
    log.close()


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_celery_worker_end_to_end(celery_worker, redis_url) -> None:
    db_url, proc, log_path = celery_worker
    app = create_app(Settings(database_url=db_url, broker_url=redis_url, api_token=TOKEN))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get("/health").json()["workers"] == "celery"
        model_job = client.post("/jobs", json=MODEL_JOB | {"measure": False}).json()
        problem_job = client.post("/jobs", json={"problem": problem_doc(),
                                                 "budgets": ["4bits"]}).json()
        for job_id in (problem_job["id"], model_job["id"]):
            job = wait_for(client, job_id, timeout_s=400)
            assert job["status"] == "succeeded", (job, log_path.read_text()[-3000:])
        _check_model_result(client, model_job["id"], measured=False)
        assert proc.poll() is None


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_serve_demo_prints_result_and_dashboard_url(tmp_path) -> None:
    """The README's run command: `allocator serve --demo` runs the demo job to the end."""
    from tests.api.conftest import free_port

    port = free_port()
    env = {**os.environ, "ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path}/jobs.sqlite",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out_path = tmp_path / "demo.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "allocator.cli", "serve", "--port",
                                 str(port), "--demo"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            while "serving until Ctrl-C" not in out_path.read_text():
                assert proc.poll() is None, out_path.read_text()
                assert "demo job failed" not in out_path.read_text()
                assert time.monotonic() < deadline, out_path.read_text()
                time.sleep(0.5)
        finally:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    text = out_path.read_text()
    assert "result: optimal (ilp)" in text and "accuracy: mixed" in text and "FP32" in text
    assert "uniform" in text and "size: mixed" in text
    assert f"dashboard: http://127.0.0.1:{port}/" in text
    job_id = text.split("demo job ")[1].split(":")[0]
    assert len(job_id) == 32 and job_id in text.split("dashboard: ")[1]
