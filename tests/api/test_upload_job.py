"""An uploaded checkpoint end to end: zip a tiny Llama made here, `POST /models` with a data
file, run a job on it on a real worker, read the allocation; then delete it."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.api.conftest import wait_for  # noqa: E402
from zoo.testing import tiny_checkpoint  # noqa: E402


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.iterdir()):
            z.write(path, f"tiny-llama/{path.name}")
    return buf.getvalue()


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_job_on_an_uploaded_checkpoint(live_service, tmp_path: Path) -> None:
    archive = _zip(tiny_checkpoint("llama", tmp_path / "ckpt"))
    words = "the quick brown fox jumps over a lazy dog while seven cats watch".split()
    data = "\n".join(json.dumps({"text": " ".join(words[i % 13:] + words[: i % 13]) * 4})
                     for i in range(60)).encode()
    svc = live_service({"ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path}/jobs.sqlite"})
    with svc.client() as client:
        r = client.post("/models", files={"archive": ("tiny.zip", archive),
                                          "data": ("calib.jsonl", data)},
                        data={"name": "tiny-llama"})
        assert r.status_code == 201, r.text
        assert "tiny-llama" in [m["name"] for m in client.get("/models").json()["models"]]
        job = client.post("/jobs", json={"model": "tiny-llama", "budgets": ["6bits"],
                                         "bits": [4, 8], "estimator": "fisher",
                                         "measure": False})
        assert job.status_code in (200, 201, 202), job.text
        done = wait_for(client, job.json()["id"], timeout_s=300)
        assert done["status"] == "succeeded", done
        config = client.get(f"/jobs/{done['id']}/result").json()["config"]
        assert config["model"] == "tiny-llama" and config["cost"]["avg_bits"] <= 6.0 + 1e-9
        assert set(config["bits"].values()) <= {4, 8}
        assert any(name.startswith("model.layers.0.") for name in config["bits"])
        assert "lm_head" not in config["bits"]
        assert client.delete("/models/tiny-llama").status_code == 204
