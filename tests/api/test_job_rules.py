"""Ties and pins on jobs: the request fields (`ties`, read as `tie` too, and `fix`), their
named 422s, the job's answer and front keeping them, re-solves keeping them, and the
dashboard form sending them."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient

from api._runner import run_claimed
from tests.api.conftest import REPO, problem_doc


def _run(client: TestClient, job_id: str) -> str:
    """Runs a queued job in this process, as a worker would."""
    service = client.app.state.service
    job = service.store.claim("test-worker", job_id)
    assert job is not None
    return run_claimed(service.store, job, "test-worker", service.settings)


def _kept(rules: dict, bits: dict[str, int]) -> None:
    for group in rules["groups"]:
        assert len({bits[n] for n in group}) == 1, group
    for name, width in rules["fixed_bits"].items():
        assert bits[name] == width, name


def test_problem_job_keeps_ties_and_pins_in_answer_front_and_resolves(
        api_client: TestClient) -> None:
    body = {"problem": problem_doc(6), "budgets": ["4bits"],
            "tie": [r"re:^layer[0-2]$"], "fix": ["layer5=8", "layer3,layer4=2"]}
    r = api_client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["ties"] == [r"re:^layer[0-2]$"] and job["fix"] == ["layer5=8", "layer3,layer4=2"]
    assert api_client.get(f"/jobs/{job['id']}").json() == job
    assert _run(api_client, job["id"]) == "succeeded"

    config = api_client.get(f"/jobs/{job['id']}/result").json()["config"]
    rules = config["extra"]["rules"]
    assert (rules["ties"], rules["fixed"], rules["held"]) == (1, 3, True)
    assert rules["groups"] == [["layer0", "layer1", "layer2"]]
    assert rules["fixed_bits"] == {"layer3": 2, "layer4": 2, "layer5": 8}
    _kept(rules, config["bits"])
    front = api_client.get(f"/jobs/{job['id']}/pareto").json()
    assert front["rules"]["held"] and len(front["points"]) >= 2
    for point in front["points"]:
        _kept(rules, point["bits"])
    for row in front["uniform"]:
        _kept(rules, row["assignment"])

    again = api_client.post(f"/jobs/{job['id']}/solve", json={"budgets": ["3bits"]}).json()
    assert again["extra"]["rules"]["held"]
    _kept(rules, again["bits"])
    r = api_client.post(f"/jobs/{job['id']}/solve", json={"budgets": ["3bits"], "bits": [2, 4]})
    assert r.status_code == 422
    assert r.json()["field"] == "job.fix.0" and "8 bits is not a candidate" in r.json()["detail"]


def test_jobs_without_rules_look_as_before(api_client: TestClient) -> None:
    job = api_client.post("/jobs", json={"problem": problem_doc(4),
                                         "budgets": ["4bits"]}).json()
    assert "ties" not in job and "fix" not in job
    assert _run(api_client, job["id"]) == "succeeded"
    result = api_client.get(f"/jobs/{job['id']}/result").json()
    assert "rules" not in result["config"]["extra"]
    assert "rules" not in api_client.get(f"/jobs/{job['id']}/pareto").json()


@pytest.mark.parametrize(("rules", "field", "detail"), [
    ({"ties": ["re:("]}, "body.ties.0", "is not a valid regex"),
    ({"ties": ["layer0,layer1", "re:"]}, "body.ties.1", "empty regex"),
    ({"ties": ["layer0"]}, "body.ties.0", "names one layer"),
    ({"ties": ["re:^conv"]}, "body.ties.0", "`body.ties.0` 're:^conv' matches no layer"),
    ({"ties": ["layer0,fc9"]}, "body.ties.0", "'fc9' is not a layer"),
    ({"fix": ["layer1=8", "layer2"]}, "body.fix.1", "must read NAME=BITS"),
    ({"fix": ["layer1=9"]}, "body.fix.0", "the width must be between 2 and 8, got 9"),
    ({"fix": ["layer1=5"]}, "body.fix.0", "5 bits is not a candidate width"),
    ({"fix": ["nope=8"]}, "body.fix.0", "`body.fix.0` 'nope=8': 'nope' is not a layer"),
    ({"fix": ["layer1=8", "re:^layer1$=4"]}, "body.fix.1", "pins 'layer1' to 4 bits, but "
     "`body.fix.0` 'layer1=8' pins it to 8"),
    ({"ties": ["layer0,layer1"], "fix": ["layer0=2", "layer1=8"]}, "body.ties.0",
     "ties 'layer0' and 'layer1', but `body.fix.0` 'layer0=2' pins"),
    ({"ties": ["a,b"] * 65}, "body.ties", "at most 64"),
    ({"ties": ["re:" + "a" * 600]}, "body.ties.0", "at most 500"),
    ({"fix": [""]}, "body.fix.0", "at least 1 character"),
    ({"ties": ["a,b"], "tie": ["c,d"]}, "body.tie", "Extra inputs"),
])
def test_bad_rules_are_named_422s(api_client: TestClient, rules, field, detail) -> None:
    r = api_client.post("/jobs", json={"problem": problem_doc(4), "budgets": ["4bits"],
                                       "bits": [2, 4, 8], **rules})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and detail in r.json()["detail"], r.json()


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_model_jobs_check_and_keep_ties_and_pins(api_client: TestClient) -> None:
    """The API knows a model job's candidate widths but not its layers (no torch): a width
    is a 422 at once; a rule that matches no layer fails the job, named, before any work.
    A job whose rules fit keeps them in its answer, its front and its stored problem."""
    r = api_client.post("/jobs", json={"model": "digits-mlp", "budgets": ["4bits"],
                                       "bits": [2, 4, 8], "fix": ["fc3=6"]})
    assert r.status_code == 422 and r.json()["field"] == "body.fix.0"
    job = api_client.post("/jobs", json={"model": "digits-mlp", "budgets": ["4bits"],
                                         "measure": False, "ties": ["re:^conv"]}).json()
    assert job["ties"] == ["re:^conv"]
    assert _run(api_client, job["id"]) == "failed"
    failed = api_client.get(f"/jobs/{job['id']}").json()
    assert "`body.ties.0` 're:^conv' matches no layer (layers: 'fc1', 'fc2', 'fc3')" in \
        failed["error"]
    assert "sensitivity_s" not in failed["timings_s"]

    job = api_client.post("/jobs", json={"model": "digits-mlp", "budgets": ["4bits"],
                                         "bits": [2, 4, 8], "measure": False,
                                         "ties": ["fc1,fc2"], "fix": ["fc3=8"]}).json()
    assert _run(api_client, job["id"]) == "succeeded", api_client.get(f"/jobs/{job['id']}").json()
    result = api_client.get(f"/jobs/{job['id']}/result").json()
    bits, rules = result["config"]["bits"], result["config"]["extra"]["rules"]
    assert bits["fc1"] == bits["fc2"] and bits["fc3"] == 8 and rules["held"]
    problem = result["problem"]  # the stored problem carries the rules, for re-solves
    assert problem["ties"] == [["fc1", "fc2"]]
    assert {x["name"]: x.get("fixed_bits") for x in problem["layers"]}["fc3"] == 8
    for point in api_client.get(f"/jobs/{job['id']}/pareto").json()["points"]:
        _kept(rules, point["bits"])


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_dashboard_form_sends_rules_as_the_api_names_them() -> None:
    from api._schemas import JobCreate

    text = "re:\\.(q|k|v)_proj$\n\n  fc1, fc2 \r\nx=8"
    script = ("const m = await import('./api/dashboard/static/js/jobs.js');"
              f"console.log(JSON.stringify(m.splitRules({json.dumps(text)})));")
    proc = subprocess.run(["node", "--input-type=module", "-e", script], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [r"re:\.(q|k|v)_proj$", "fc1, fc2", "x=8"]
    source = (REPO / "api/dashboard/static/js/jobs.js").read_text()
    assert "{ ties }" in source and "{ fix }" in source
    assert {"ties", "fix"} <= set(JobCreate.model_fields)
    assert 'id: "ties-input"' in source and 'id: "fix-input"' in source
