"""`GET /jobs/{id}/export?format=F`: 422 for a bad format or a problem job, 409 (naming the
status) before the job succeeded, 202 while the export child runs, then the file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api import Settings, create_app
from api._runner import run_claimed
from tests.api.conftest import TOKEN, problem_doc


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", api_token=TOKEN,
                        workers=0, data_dir=tmp_path / "data")
    app = create_app(settings, start_workers=False)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def _run(client: TestClient, job_id: str) -> str:
    service = client.app.state.service
    job = service.store.claim("test-worker", job_id)
    assert job is not None
    return run_claimed(service.store, job, "test-worker", service.settings)


def test_problem_job_has_nothing_to_export(client: TestClient) -> None:
    job = client.post("/jobs", json={"problem": problem_doc(4), "budgets": ["4bits"]}).json()
    r = client.get(f"/jobs/{job['id']}/export", params={"format": "onnx"})
    assert r.status_code == 422 and "no model to export" in r.json()["detail"]
    r = client.post("/jobs", json={"problem": problem_doc(4), "budgets": ["4bits"],
                                   "target": "gguf"})
    assert r.status_code == 422 and r.json()["field"] == "body.target"


def test_model_job_exports_onnx_after_success(client: TestClient, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    r = client.post("/jobs", json={"model": "digits-mlp", "budgets": ["6.5bits"],
                                   "target": "onnx", "bits": [4, 8], "measure": False})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    bad = client.get(f"/jobs/{job_id}/export", params={"format": "tflite"})
    assert bad.status_code == 422
    assert (bad.json()["field"], bad.json()["value"]) == ("query.format", "tflite")
    early = client.get(f"/jobs/{job_id}/export", params={"format": "onnx"})
    assert early.status_code == 409 and early.json()["status"] == "queued"
    assert _run(client, job_id) == "succeeded"
    config = client.get(f"/jobs/{job_id}/result").json()["config"]
    assert config["extra"]["target"] == "onnx" and set(config["bits"].values()) <= {4, 8}

    first = client.get(f"/jobs/{job_id}/export", params={"format": "onnx"})
    assert first.status_code == 202 and first.json() == {"status": "exporting"}
    assert int(first.headers["Retry-After"]) > 0
    again = client.get(f"/jobs/{job_id}/export", params={"format": "onnx"})
    assert again.status_code in (200, 202)  # never a second export
    deadline = time.monotonic() + 240
    while True:
        r = client.get(f"/jobs/{job_id}/export", params={"format": "onnx"})
        if r.status_code != 202 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    assert f"{job_id}-model.onnx" in r.headers["content-disposition"]
    path = tmp_path / "got.onnx"
    path.write_bytes(r.content)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()
    folder = tmp_path / "data" / "exports" / job_id / "onnx"
    assert sorted(p.name for p in folder.iterdir()) == ["bitconfig.json", "model.onnx",
                                                        "started.json"]

    wrong = client.get(f"/jobs/{job_id}/export", params={"format": "gguf"})
    while wrong.status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.5)
        wrong = client.get(f"/jobs/{job_id}/export", params={"format": "gguf"})
    assert wrong.status_code == 422, wrong.text  # solved for onnx: re-solve for gguf
    assert "--target gguf" in wrong.json()["detail"]
