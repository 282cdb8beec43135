"""The HTTP surface without workers: contract shapes, errors, auth, limits, solves."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from fastapi.testclient import TestClient

from api import Settings, create_app
from api._catalog import solvers as catalog_solvers
from api._store import JobOutput
from engine import DEFAULT_BITS, MAX_BITS, MIN_BITS, BitConfig
from tests.api.conftest import TOKEN, problem_doc

JOB_KEYS = {"id", "status", "stage", "progress", "error", "kind", "model", "budgets", "solver",
            "estimator", "bits", "seed", "measure", "created_at", "started_at", "finished_at",
            "timings_s"}
ERROR_KEYS = {"detail", "field", "value"}
BITCONFIG_KEYS = {"format"} | {f.name for f in dataclasses.fields(BitConfig)}


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
    # The response models pass the catalog's rows on whole: every key, and no added ones.
    catalog = api_client.app.state.service.catalog.get()
    for key in ("models", "estimators", "hwprofiles"):
        assert api_client.get(f"/{key}").json() == {key: catalog[key]}
    assert api_client.get("/solvers").json() == {"solvers": catalog_solvers()}


def test_create_model_job_contract(api_client: TestClient) -> None:
    body = {"model": "digits-cnn", "budgets": ["4bits"], "solver": "ilp",
            "estimator": "hutchinson", "bits": [8, 2, 4], "seed": 3, "measure": True}
    r = api_client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert JOB_KEYS <= set(job)
    assert re.fullmatch("[0-9a-f]{32}", job["id"]), job["id"]
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
        ({"problem": {"format": "nope"}, "budgets": ["4bits"]}, "body.problem.format", "nope"),
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
    assert set(config) == BITCONFIG_KEYS  # the whole BitConfig, nothing added or dropped
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


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_resolve_from_cached_problem(api_client: TestClient) -> None:
    doc = problem_doc(10)
    job = api_client.post("/jobs", json={"problem": doc, "budgets": ["5bits"]}).json()
    a = api_client.post(f"/jobs/{job['id']}/solve", json={"budgets": ["3bits"]}).json()
    b = api_client.post(f"/jobs/{job['id']}/solve",
                        json={"budgets": ["3bits"], "solver": "greedy"}).json()
    assert set(a) == BITCONFIG_KEYS | {"job_id"}
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


def test_settings_are_what_the_service_does(sqlite_url: str) -> None:
    locked = create_app(Settings(database_url=sqlite_url, api_token=TOKEN, workers=0,
                                 read_requires_token=True), start_workers=False)
    with TestClient(locked) as c:
        r = c.get("/settings")  # open: a client learns it needs a token before it has one
        assert r.status_code == 200
        s = r.json()
        assert (s["write_requires_token"], s["read_requires_token"]) == (True, True)
        assert s["default_bits"] == list(DEFAULT_BITS)
        assert (s["min_bits"], s["max_bits"]) == (MIN_BITS, MAX_BITS)
        assert s["active_statuses"] == ["queued", "running"]
        assert set(s["active_statuses"]) < set(s["statuses"])
        auth = {"Authorization": f"Bearer {TOKEN}"}
        # A problem job that names nothing else gets the advertised defaults.
        job = c.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]},
                     headers=auth).json()
        defaults = s["job_defaults"]
        assert (job["solver"], job["seed"]) == (defaults["solver"], defaults["seed"])
        assert job["status"] in s["active_statuses"] and job["stage"] in s["stages"]
        # The limits are the ones enforced.
        too_many = [f"{b}bits" for b in range(2, 3 + s["limits"]["max_budgets"])]
        r = c.post("/jobs", json={"problem": problem_doc(), "budgets": too_many}, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == "body.budgets"
        r = c.get("/jobs", params={"limit": s["limits"]["max_page_size"] + 1}, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == "query.limit"
        bits = list(range(s["min_bits"], s["max_bits"] + 1))
        ok = c.post("/solve", json={"problem": problem_doc(), "budgets": ["6bits"],
                                    "bits": bits}, headers=auth)
        assert ok.status_code == 200, ok.text
        r = c.post("/solve", json={"problem": problem_doc(), "budgets": ["6bits"],
                                   "bits": [*bits[1:], s["max_bits"] + 1]}, headers=auth)
        assert r.status_code == 422 and r.json()["field"] == f"body.bits.{len(bits) - 1}"
    app = create_app(Settings(database_url=sqlite_url, workers=0), start_workers=False)
    with TestClient(app) as c:
        s = c.get("/settings").json()
        assert (s["write_requires_token"], s["read_requires_token"]) == (False, False)
        assert c.post("/jobs", json={"problem": problem_doc(),
                                     "budgets": ["4bits"]}).status_code == 202


def test_result_and_front_are_the_stored_documents(api_client: TestClient) -> None:
    """The response models check a succeeded job's documents and pass them on key for key:
    open parts (`extra`, `measured`, a key a newer library adds) included, nothing filled in
    for a key the document lacks."""
    doc = problem_doc(4)
    job = api_client.post("/jobs", json={"problem": doc, "budgets": ["4bits"]}).json()
    config = api_client.post("/solve", json={"problem": doc, "budgets": ["4bits"]}).json()
    config["extra"] = {"backend": "HiGHS", "nested": {"a": [1, 2.5, None]}}
    point = {"objective": config["objective"], "cost": config["cost"], "bits": config["bits"],
             "status": "optimal", "solver": "ilp"}
    front = {"format": "allocator.pareto/1", "model": None, "axis": "bits",
             "cost_key": "avg_bits", "fixed_budgets": [], "points": [point],
             "measured": [None], "uniform": [], "chosen": point, "added_later": {"x": 1}}
    measured = {"metrics": {"accuracy": 0.9}, "size_bytes": 123, "kernels": {"int8": 2}}
    store = api_client.app.state.service.store
    assert store.claim("w", job["id"]) is not None
    assert store.succeed(job["id"], "w", JobOutput(config=config, measured=measured,
                                                   front=front), {"total_s": 0.5})
    result = api_client.get(f"/jobs/{job['id']}/result")
    assert result.status_code == 200
    assert result.json() == {"config": config, "measured": measured, "uniform": {},
                             "timings_s": {"total_s": 0.5}, "problem": doc}
    assert api_client.get(f"/jobs/{job['id']}/pareto").json() == front
