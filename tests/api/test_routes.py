"""The HTTP surface without workers: contract shapes, errors, auth, limits, solves."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from api import Settings, create_app
from tests.api.conftest import TOKEN, problem_doc

JOB_KEYS = {"id", "status", "stage", "progress", "error", "kind", "model", "budgets", "solver",
            "estimator", "bits", "seed", "measure", "created_at", "started_at", "finished_at",
            "timings_s"}
ERROR_KEYS = {"detail", "field", "value"}


def test_health_and_catalogs(api_client: TestClient) -> None:
    assert api_client.get("/health").json()["status"] == "ok"
    models = api_client.get("/models").json()["models"]
    assert {"name", "description", "available"} <= set(models[0])
    assert "digits-cnn" in {m["name"] for m in models}
    solvers = api_client.get("/solvers").json()["solvers"]
    assert {"ilp", "greedy", "uniform"} <= {s["name"] for s in solvers}
    assert {"name", "available", "description"} <= set(solvers[0])
    assert "hwprofiles" in api_client.get("/hwprofiles").json()
    assert "hutchinson" in {e["name"] for e in api_client.get("/estimators").json()["estimators"]}


def test_create_model_job_contract(api_client: TestClient) -> None:
    body = {"model": "digits-cnn", "budgets": ["4bits"], "solver": "ilp",
            "estimator": "hutchinson", "bits": [8, 2, 4], "seed": 3, "measure": True}
    r = api_client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert JOB_KEYS <= set(job)
    assert len(job["id"]) == 32 and int(job["id"], 16) >= 0
    assert (job["status"], job["stage"], job["progress"]) == ("queued", "queued", 0.0)
    assert job["bits"] == [2, 4, 8] and job["seed"] == 3 and job["kind"] == "model"
    assert job["created_at"].endswith("+00:00") and job["started_at"] is None
    assert api_client.get(f"/jobs/{job['id']}").json() == job
    page = api_client.get("/jobs", params={"status": "queued", "model": "digits-cnn"}).json()
    assert page["total"] == 1 and page["items"][0]["id"] == job["id"]
    assert (page["limit"], page["offset"]) == (50, 0)


def test_list_newest_first_and_paging(api_client: TestClient) -> None:
    ids = [api_client.post("/jobs", json={"problem": problem_doc(seed=i),
                                          "budgets": ["4bits"]}).json()["id"] for i in range(5)]
    page = api_client.get("/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5
    assert [j["id"] for j in page["items"]] == ids[::-1][1:3]
    assert api_client.get("/jobs", params={"status": "failed"}).json()["total"] == 0


def test_bad_input_is_a_named_422(api_client: TestClient) -> None:
    cases = [
        ({"model": "nope", "budgets": ["4bits"]}, "body.model", "nope"),
        ({"model": "digits-cnn", "budgets": ["4bats"]}, "body.budgets.0", "4bats"),
        ({"model": "digits-cnn", "budgets": ["4bits", "3bits"]}, "body.budgets", None),
        ({"model": "digits-cnn", "budgets": ["4bits"], "solver": "magic"}, "body.solver", "magic"),
        ({"model": "digits-cnn", "budgets": ["4bits"], "estimator": "x"}, "body.estimator", "x"),
        ({"model": "digits-cnn", "budgets": ["4bits"], "bits": [2, 9]}, "body.bits.1", 9),
        ({"model": "digits-cnn", "budgets": []}, "body.budgets", []),
        ({"model": "digits-cnn", "budgets": ["4bits"], "seed": -1}, "body.seed", -1),
        ({"budgets": ["4bits"]}, "body.model", None),
        ({"model": "digits-cnn", "problem": problem_doc(), "budgets": ["4bits"]}, "body.model",
         "digits-cnn"),
        ({"problem": {"format": "nope"}, "budgets": ["4bits"]}, "body.problem", None),
        ({"problem": problem_doc(), "budgets": ["4bits"], "extra": 1}, "body.extra", 1),
        ({"problem": problem_doc(), "budgets": ["4bits"], "solver": "fracbits"}, "body.solver",
         "fracbits"),
    ]
    for body, field, value in cases:
        r = api_client.post("/jobs", json=body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()
        assert ERROR_KEYS <= set(err), err
        assert err["field"] == field, (body, err)
        if value is not None:
            assert err["value"] == value, (body, err)
        assert field in err["detail"]
    r = api_client.post("/jobs", content=b"{not json",
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "errors" in r.json()


def test_unknown_and_malformed_ids(api_client: TestClient) -> None:
    missing = "0" * 32
    for path in (f"/jobs/{missing}", f"/jobs/{missing}/result", f"/jobs/{missing}/pareto"):
        r = api_client.get(path)
        assert r.status_code == 404 and missing in r.json()["detail"]
    r = api_client.get("/jobs/not-an-id")
    assert r.status_code == 422 and r.json()["field"] == "path.job_id"
    assert api_client.get("/no/such/route").status_code == 404
    assert set(api_client.get("/no/such/route").json()) >= ERROR_KEYS


def test_result_409_until_succeeded_and_cancel(api_client: TestClient) -> None:
    job = api_client.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]}).json()
    for path in ("result", "pareto"):
        r = api_client.get(f"/jobs/{job['id']}/{path}")
        assert r.status_code == 409 and "queued" in r.json()["detail"]
    r = api_client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    r = api_client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]


def test_budgets_validate(api_client: TestClient) -> None:
    r = api_client.post("/budgets/validate", json={"budgets": ["4bits", "12MB"]})
    assert r.json() == {"budgets": [{"text": "4bits", "kind": "bits", "value": 4.0},
                                    {"text": "12MB", "kind": "size", "value": 12e6}]}
    r = api_client.post("/budgets/validate", json={"budgets": ["4bits", "twelve"]})
    assert r.status_code == 422
    assert (r.json()["field"], r.json()["value"]) == ("body.budgets.1", "twelve")


def test_sync_solve_and_limits(api_client: TestClient) -> None:
    doc = problem_doc(8)
    r = api_client.post("/solve", json={"problem": doc, "budgets": ["4bits"], "solver": "ilp"})
    assert r.status_code == 200, r.text
    config = r.json()
    assert config["format"] == "allocator.bitconfig/1"
    assert config["status"] == "optimal" and config["cost"]["avg_bits"] <= 4.0 + 1e-9
    assert set(config["bits"]) == {layer["name"] for layer in doc["layers"]}
    r = api_client.post("/solve", json={"problem": doc, "budgets": ["1.5bits"]})
    assert r.status_code == 200 and r.json()["status"] == "infeasible"
    r = api_client.post("/solve", json={"problem": doc, "budgets": ["4bits"], "solver": "ddpg"})
    assert r.status_code == 422 and r.json()["field"] == "body.solver"
    big = problem_doc(200)
    app = create_app(Settings(database_url="sqlite://", workers=0, sync_max_layers=10,
                              max_upload_bytes=20_000), start_workers=False)
    with TestClient(app) as small:
        r = small.post("/solve", json={"problem": problem_doc(12), "budgets": ["4bits"]})
        assert r.status_code == 422 and r.json()["field"] == "body.problem.layers"
        r = small.post("/solve", json={"problem": big, "budgets": ["4bits"]})
        assert r.status_code == 413 and "upload limit" in r.json()["detail"]


def test_resolve_from_cached_problem(api_client: TestClient) -> None:
    doc = problem_doc(10)
    job = api_client.post("/jobs", json={"problem": doc, "budgets": ["5bits"]}).json()
    a = api_client.post(f"/jobs/{job['id']}/solve", json={"budgets": ["3bits"]}).json()
    b = api_client.post(f"/jobs/{job['id']}/solve",
                        json={"budgets": ["3bits"], "solver": "greedy"}).json()
    assert a["job_id"] == job["id"] and a["cost"]["avg_bits"] <= 3.0 + 1e-9
    assert b["solver"] == "greedy" and b["objective"] >= a["objective"] - 1e-12
    r = api_client.post(f"/jobs/{job['id']}/solve", json={"budgets": ["x"]})
    assert r.status_code == 422 and r.json()["field"] == "body.budgets.0"
    model_job = api_client.post("/jobs", json={"model": "digits-cnn", "budgets": ["4bits"]}).json()
    r = api_client.post(f"/jobs/{model_job['id']}/solve", json={"budgets": ["3bits"]})
    assert r.status_code == 409


def test_upload_problem_file(api_client: TestClient) -> None:
    files = {"file": ("p.json", json.dumps(problem_doc()).encode(), "application/json")}
    r = api_client.post("/jobs/upload", files=files, data={"budgets": ["4bits"]})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "problem"
    files = {"file": ("p.json", b"not json", "application/json")}
    r = api_client.post("/jobs/upload", files=files, data={"budgets": ["4bits"]})
    assert r.status_code == 422 and r.json()["field"] == "body.file"


def test_auth_required_on_writes(sqlite_url: str) -> None:
    app = create_app(Settings(database_url=sqlite_url, api_token=TOKEN, workers=0),
                     start_workers=False)
    body = {"problem": problem_doc(), "budgets": ["4bits"]}
    with TestClient(app) as c:
        for path, payload in (("/jobs", body), ("/solve", body)):
            r = c.post(path, json=payload)
            assert r.status_code == 401, path
            assert "Bearer" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
            r = c.post(path, json=payload, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
        assert c.get("/jobs").status_code == 200  # reads stay open
        assert c.post("/budgets/validate", json={"budgets": ["4bits"]}).status_code == 200
        ok = c.post("/jobs", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 202
        r = c.post(f"/jobs/{ok.json()['id']}/cancel")
        assert r.status_code == 401
    locked = create_app(Settings(database_url=sqlite_url, api_token=TOKEN, workers=0,
                                 read_requires_token=True), start_workers=False)
    with TestClient(locked) as c:
        assert c.get("/jobs").status_code == 401
        assert c.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/health").status_code == 200


def test_metrics_text(api_client: TestClient) -> None:
    api_client.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]})
    api_client.get("/jobs")
    text = api_client.get("/metrics").text
    assert 'allocator_jobs{status="queued"} 1.0' in text
    assert 'allocator_http_request_duration_seconds_count{method="GET",route="/jobs"' in text
    assert 'route="/jobs/{job_id}"' not in text or "job_id" in text
