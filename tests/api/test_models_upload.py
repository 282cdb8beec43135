"""Models registered through the service: `POST /models` (a checkpoint archive streamed in,
checked whole, unpacked under the data dir), `GET /models` (built-ins plus registered,
fresh on every call), `DELETE /models/{name}`, jobs naming a registered model or an
`hf:<org>/<name>` repo id, and the models file checked at start."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api import Settings, create_app
from api._settings import SettingsError, load_settings
from tests.api.conftest import TOKEN
from tests.test_registered import (
    ARCHIVE_CASES,
    bomb_files,
    checkpoint_files,
    leftovers,
    tar_bytes,
    zip_bytes,
)

MAX_MODEL_BYTES = 4 * 2**20
MAX_UPLOAD_BYTES = 2**20
MODELS_FILE = """
[models.ops-bert]
source = "hf:org/ops-bert"
estimator = "measured"
description = "registered by the operator"
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[TestClient, Path]]:
    """One app for the module (its catalog probe imports torch once): a write token, a data
    dir of its own, small upload limits and a models file."""
    root = tmp_path_factory.mktemp("models-upload")
    models_file = root / "models.toml"
    models_file.write_text(MODELS_FILE)
    settings = Settings(database_url=f"sqlite:///{root / 'jobs.sqlite'}", api_token=TOKEN,
                        workers=0, data_dir=root / "data", models_file=models_file,
                        max_model_bytes=MAX_MODEL_BYTES, max_upload_bytes=MAX_UPLOAD_BYTES)
    app = create_app(settings, start_workers=False)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, root


@pytest.fixture
def client(service) -> Iterator[TestClient]:
    """The module's client; each test leaves the uploads as it found them."""
    client, root = service
    before = leftovers(root / "data")
    yield client
    assert leftovers(root / "data") == before


def _upload(client: TestClient, archive: bytes, filename: str = "ckpt.zip",
            field: str = "archive", data: tuple[str, bytes] | None = None,
            **form: str):
    files = {field: (filename, archive, "application/octet-stream")}
    if data is not None:
        files["data"] = (data[0], data[1], "application/octet-stream")
    return client.post("/models", files=files, data=form)


def _names(client: TestClient) -> list[str]:
    r = client.get("/models")
    assert r.status_code == 200, r.text
    return [m["name"] for m in r.json()["models"]]


def test_upload_list_delete(client: TestClient, service) -> None:
    _, root = service
    calib = b'{"text": "hello"}\n{"text": "world"}\n'
    r = _upload(client, zip_bytes(checkpoint_files(), folder="bert/"), data=("calib.jsonl", calib),
                name="tiny-bert", description="a tiny BERT")
    assert r.status_code == 201, r.text
    model = r.json()
    folder = (root / "data" / "uploads" / "tiny-bert").resolve()
    assert model | {"created": None, "sha256": None} == {
        "name": "tiny-bert", "description": "a tiny BERT", "available": True,
        "origin": "upload", "source": f"hf:{folder / 'checkpoint'}",
        "data": str(folder / "data.jsonl"), "created": None, "sha256": None,
        "size_bytes": sum(map(len, checkpoint_files().values())) + len(calib)}
    assert (folder / "data.jsonl").read_bytes() == calib
    assert (folder / "checkpoint" / "config.json").is_file()
    # Listed with the built-ins (fresh: no catalog refresh needed), once.
    listed = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert {"digits-cnn", "tiny-bert", "ops-bert"} <= set(listed)
    assert listed["tiny-bert"] == model
    assert "origin" not in listed["digits-cnn"]
    assert listed["ops-bert"]["origin"] == "models-file"
    assert listed["ops-bert"]["source"] == "hf:org/ops-bert"
    # The same archive again: the same registration.
    again = _upload(client, zip_bytes(checkpoint_files(), folder="bert/"), name="tiny-bert")
    assert again.status_code == 201 and again.json() == model
    # Another archive under the taken name: a conflict.
    other = _upload(client, zip_bytes(checkpoint_files({"model_type": "gpt2"})), name="tiny-bert")
    assert other.status_code == 409 and other.json()["field"] == "body.name"
    assert "already registered" in other.json()["detail"]
    r = client.delete("/models/tiny-bert")
    assert r.status_code == 204 and r.content == b""
    assert "tiny-bert" not in _names(client) and not folder.exists()
    r = client.delete("/models/tiny-bert")
    assert r.status_code == 404
    assert r.json() == {"detail": "`path.name`: no registered model 'tiny-bert'.",
                        "field": "path.name", "value": "tiny-bert"}


def test_contract_field_file_and_default_name(client: TestClient) -> None:
    """DESIGN.md's contract names the archive field `file`; the name defaults to the
    archive's checksum."""
    archive = tar_bytes(checkpoint_files())
    r = _upload(client, archive, "ckpt.tar.gz", field="file")
    assert r.status_code == 201, r.text
    import hashlib

    name = f"upload-{hashlib.sha256(archive).hexdigest()[:12]}"
    assert r.json()["name"] == name and name in _names(client)
    assert client.delete(f"/models/{name}").status_code == 204


def test_builtins_and_models_file_entries_are_not_deleted(client: TestClient) -> None:
    r = client.delete("/models/digits-cnn")
    assert r.status_code == 409 and "built-in" in r.json()["detail"]
    r = client.delete("/models/ops-bert")
    assert r.status_code == 409 and "models file" in r.json()["detail"]
    assert client.delete("/models/no-such-model").status_code == 404
    assert {"digits-cnn", "ops-bert"} <= set(_names(client))


BAD = ["pickle", "code", "auto_map", "parent", "absolute", "zip symlink", "tar symlink",
       "no config", "other file", "bad safetensors"]


@pytest.mark.parametrize("case", BAD)
def test_bad_archive_is_a_named_422_leaving_nothing(client: TestClient, service,
                                                    case: str) -> None:
    _, root = service
    outside = sorted(p.name for p in root.iterdir())
    make, expected = ARCHIVE_CASES[case]
    r = _upload(client, make(), "evil.zip")
    assert r.status_code == 422, r.text
    body = r.json()
    assert expected in body["detail"], body
    assert (body["field"], body["value"]) == ("body.archive", "evil.zip")
    assert sorted(p.name for p in root.iterdir()) == outside
    assert not Path("/etc/vocab.json").exists()


def test_zip_bomb_is_refused_by_ratio(client: TestClient) -> None:
    archive = zip_bytes(bomb_files(3 * 2**20))
    assert len(archive) < 50_000
    r = _upload(client, archive, "bomb.zip")
    assert r.status_code == 422
    assert "compression ratio" in r.json()["detail"] and "zip bomb" in r.json()["detail"]


def test_oversize_uploads_are_413(client: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 255, MAX_MODEL_BYTES + 4096, dtype=np.uint8)
    big = zip_bytes(checkpoint_files(**{"model-2.safetensors": noise.tobytes()}))
    assert MAX_MODEL_BYTES < len(big) < MAX_MODEL_BYTES + MAX_UPLOAD_BYTES
    r = _upload(client, big, "big.zip")
    assert r.status_code == 413
    assert r.json()["field"] == "body.archive" and "max_model_bytes" in r.json()["detail"]
    r = _upload(client, zip_bytes(checkpoint_files()),
                data=("calib.txt", b"x" * (MAX_UPLOAD_BYTES + 1)))
    assert r.status_code == 413 and r.json()["field"] == "body.data"
    # Past the whole route's limit: refused by its Content-Length, unread.
    huge = b"\0" * (MAX_MODEL_BYTES + MAX_UPLOAD_BYTES + 2**17)
    r = _upload(client, huge, "huge.zip")
    assert r.status_code == 413 and r.json()["field"] == "body"


@pytest.mark.parametrize(("kwargs", "status", "field", "needle"), [
    ({"data": ("calib.pt", b"\x80\x04.")}, 422, "body.data", "pickle"),
    ({"name": "Bad Name"}, 422, "body.name", "must be 1-64 characters"),
    ({"name": "minilm"}, 422, "body.name", "built-in"),
    ({"name": "ops-bert"}, 409, "body.name", "models file"),
    ({"field": "weights"}, 422, "body.weights", "unknown form field"),
])
def test_bad_form_fields_are_named(client: TestClient, kwargs: dict, status: int, field: str,
                                   needle: str) -> None:
    r = _upload(client, zip_bytes(checkpoint_files()), **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and needle in r.json()["detail"], r.json()


def test_not_multipart_and_no_archive(client: TestClient) -> None:
    r = client.post("/models", json={"archive": "x"})
    assert r.status_code == 422 and r.json()["field"] == "header.content-type"
    r = client.post("/models", files={"data": ("c.txt", b"text")})
    assert r.status_code == 422 and r.json()["field"] == "body.archive"


def test_writes_need_the_token(service) -> None:
    client, _ = service
    anonymous = {"Authorization": ""}
    r = client.post("/models", files={"archive": ("a.zip", zip_bytes(checkpoint_files()))},
                    headers=anonymous)
    assert r.status_code == 401
    assert client.delete("/models/ops-bert", headers=anonymous).status_code == 401


def test_jobs_accept_registered_models_and_repo_ids(client: TestClient) -> None:
    r = _upload(client, zip_bytes(checkpoint_files()), name="job-bert")
    assert r.status_code == 201, r.text
    try:
        for name in ("job-bert", "ops-bert", "hf:HuggingFaceTB/SmolLM2-135M"):
            r = client.post("/jobs", json={"model": name, "budgets": ["4bits"]})
            assert r.status_code == 202, r.text
            assert r.json()["model"] == name
        # The models file's estimator is the default of its jobs; a job may name another.
        ops = client.get("/jobs", params={"model": "ops-bert"}).json()["items"][0]
        assert ops["estimator"] == "measured"
        # Without one, the model's own default is chosen by the worker (fisher for LLMs).
        hub = client.get("/jobs", params={"model": "hf:HuggingFaceTB/SmolLM2-135M"}).json()
        assert hub["items"][0]["estimator"] is None
        r = client.post("/jobs", json={"model": "ops-bert", "budgets": ["4bits"],
                                       "estimator": "hutchinson"})
        assert r.json()["estimator"] == "hutchinson"
        assert client.get("/jobs", params={"model": "hf:HuggingFaceTB/SmolLM2-135M"}).json()[
            "total"] == 1
    finally:
        assert client.delete("/models/job-bert").status_code == 204
    # Deleted: no longer a model jobs can name.
    r = client.post("/jobs", json={"model": "job-bert", "budgets": ["4bits"]})
    assert r.status_code == 422 and "unknown model 'job-bert'" in r.json()["detail"]


@pytest.mark.parametrize("name", ["hf:/etc", "hf:./ckpt", "hf:../x/y", "hf:ckpt",
                                  "hf:org/../../x", "hf:org--x/y", "pkg.module:factory"])
def test_jobs_refuse_paths_and_code(client: TestClient, name: str) -> None:
    r = client.post("/jobs", json={"model": name, "budgets": ["4bits"]})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "body.model"


def test_settings_name_the_limit_and_model_bytes(client: TestClient) -> None:
    limits = client.get("/settings").json()["limits"]
    assert limits["max_model_bytes"] == MAX_MODEL_BYTES


# -- the models file at start ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "needle"), [
    ("[models.x\n", "not valid TOML"),
    ('[models.x]\nsource = "hf:org/x"\nweights = "w"\n', "model `x`: unknown key `weights`"),
    ('[models.minilm]\nsource = "hf:org/x"\n', "'minilm' is a built-in model"),
])
def test_bad_models_file_is_one_line_naming_the_variable(env, tmp_path: Path, text: str,
                                                         needle: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    env.setenv("ALLOCATOR_MODELS_FILE", str(path))
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("ALLOCATOR_MODELS_FILE=") and needle in message, message
    assert str(path) in message and "\n" not in message


def test_models_file_reaches_the_workers(env, tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(MODELS_FILE)
    env.setenv("ALLOCATOR_MODELS_FILE", str(path))
    env.chdir(tmp_path)
    settings = load_settings()
    assert settings.models_file == path.resolve()
    assert settings.worker_env()["ALLOCATOR_MODELS_FILE"] == str(path.resolve())
    env.setenv("ALLOCATOR_MODELS_FILE", "models.toml")  # relative: made absolute at start
    assert load_settings().models_file == path.resolve()
    env.setenv("ALLOCATOR_MODELS_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="ALLOCATOR_MODELS_FILE=.*cannot read it"):
        load_settings()


def test_openapi_describes_the_model_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    form = paths["/models"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"archive", "file", "data", "name", "description"} <= set(form["properties"])
    assert "201" in paths["/models"]["post"]["responses"]
    assert {"204", "404", "409"} <= set(paths["/models/{name}"]["delete"]["responses"])
    model = client.get("/openapi.json").json()["components"]["schemas"]["ModelPublic"]
    assert {"origin", "source", "size_bytes"} <= set(model["properties"])
    json.dumps(paths)  # serializable as a whole
