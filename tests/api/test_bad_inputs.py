"""Bad input on every write route: always a JSON 4xx whose `field` names the bad value and
whose `detail` is one line naming that field; never a 5xx, and nothing stored.

Bodies are sent as JSON text written with escapes (`"\\ud800"`, `NaN`), as a careless or
hostile client would send them."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import Settings, create_app
from tests.api.conftest import TOKEN, problem_doc

JOB_ID = "0123456789abcdef0123456789abcdef"
DOC = problem_doc(4)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One API-only app for the whole table (as `api_client`, built once: the cases store
    nothing, and `test_no_bad_job_was_stored` counts on that)."""
    db = tmp_path_factory.mktemp("bad-inputs") / "jobs.sqlite"
    app = create_app(Settings(database_url=f"sqlite:///{db}", api_token=TOKEN, workers=0),
                     start_workers=False)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _post(client, path: str, body: Any):
    text = json.dumps(body, allow_nan=True)  # ASCII: a lone surrogate travels as "\ud800"
    return client.post(path, content=text, headers={"Content-Type": "application/json"})


def _assert_named(response, field: str) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert {"detail", "field", "value"} <= set(body), body
    assert body["field"] is not None and body["field"].startswith(field), body
    named = (body["field"], field, field.removeprefix("body."))  # uploads say `file`
    assert any(f"`{name}" in body["detail"] for name in named), body
    assert "\n" not in body["detail"]
    response.content.decode("utf-8")  # every string in it valid Unicode
    return body


def _problem_with(**changes: Any) -> dict[str, Any]:
    """DOC with changes at dotted paths (`layers.0.name`)."""
    data = copy.deepcopy(DOC)
    for path, value in changes.items():
        *parents, last = path.split(".")
        target: Any = data
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value
    return data


# Route -> a valid body (its `problem`, where it takes one, is DOC).
ROUTES: dict[str, dict[str, Any]] = {
    "/jobs": {"problem": DOC, "budgets": ["4bits"], "solver": "ilp"},
    "/solve": {"problem": DOC, "budgets": ["4bits"], "solver": "ilp"},
    f"/jobs/{JOB_ID}/solve": {"budgets": ["4bits"], "solver": "ilp"},
    "/budgets/validate": {"budgets": ["4bits"]},
}
# (name, change to the body, field the error names, routes it applies to: None for all).
# Budget-grammar cases skip the re-solve: an unknown job is a 404 before budgets are read.
_ALL, _GRAMMAR = None, ("/jobs", "/solve", "/budgets/validate")
_PROBLEM = ("/jobs", "/solve")
CASES: list[tuple[str, dict[str, Any], str, tuple[str, ...] | None]] = [
    ("budget surrogate", {"budgets": ["\ud800"]}, "body.budgets.0", _ALL),
    ("budget surrogate inside", {"budgets": ["4bits", "1\udfffMB"]}, "body.budgets.1", _ALL),
    ("budget too long", {"budgets": ["4" * 100 + "bits"]}, "body.budgets.0", _ALL),
    ("budget 1e309", {"budgets": ["1e309bits"]}, "body.budgets.0", _GRAMMAR),
    ("budget huge exponent", {"budgets": ["1e99999999999bits"]}, "body.budgets.0", _GRAMMAR),
    ("budget Arabic-Indic", {"budgets": ["٤bits"]}, "body.budgets.0", _GRAMMAR),
    ("budget fullwidth", {"budgets": ["４bits"]}, "body.budgets.0", _GRAMMAR),
    ("budget no-break space", {"budgets": ["4\u00a0bits"]}, "body.budgets.0", _GRAMMAR),
    ("budget zero", {"budgets": ["1e-99999999999bits"]}, "body.budgets.0", _GRAMMAR),
    ("budgets not a list", {"budgets": "4bits"}, "body.budgets", _ALL),
    ("budget not text", {"budgets": [4]}, "body.budgets.0", _ALL),
    ("budgets deep", {"budgets": _nested(40)}, "body.budgets", _ALL),
    ("budgets NaN", {"budgets": [float("nan")]}, "body.budgets.0", _ALL),
    ("solver surrogate", {"solver": "il\ud800p"}, "body.solver", ("/jobs", "/solve",
                                                                   f"/jobs/{JOB_ID}/solve")),
    ("unknown key surrogate", {"x\ud800": 1}, "body", _ALL),
    ("unknown key deep", {"zz": _nested(500)}, "body.zz", _ALL),
    ("unknown key", {"zz": 1}, "body.zz", _ALL),
    ("seed overflow", {"seed": 1e309}, "body.seed", ("/jobs", "/solve",
                                                     f"/jobs/{JOB_ID}/solve")),
    ("seed NaN", {"seed": float("nan")}, "body.seed", ("/jobs", "/solve",
                                                       f"/jobs/{JOB_ID}/solve")),
    ("seed too big", {"seed": 2**64}, "body.seed", ("/jobs", "/solve",
                                                    f"/jobs/{JOB_ID}/solve")),
    ("bits fractional", {"bits": [4.7, 2.2]}, "body.bits.0", ("/jobs", "/solve",
                                                              f"/jobs/{JOB_ID}/solve")),
    ("bits out of range", {"bits": [4, 99]}, "body.bits.1", ("/jobs", "/solve")),
    ("model surrogate", {"model": "\ud800", "problem": None}, "body.model", ("/jobs",)),
    ("layer name surrogate", {"problem": _problem_with(**{"layers.0.name": "\ud800"})},
     "body.problem.layers.0.name", _PROBLEM),
    ("tie surrogate", {"problem": _problem_with(ties=[["layer0", "\udc00"]])},
     "body.problem.ties.0.1", _PROBLEM),
    ("omega key surrogate", {"problem": _problem_with(**{"layers.0.omega.\ud800": 1.0})},
     "body.problem.layers.0.omega", _PROBLEM),
    ("problem model surrogate", {"problem": _problem_with(model="m\ud800")},
     "body.problem.model", _PROBLEM),
    ("meta deep", {"problem": _problem_with(meta=_nested(500))}, "body.problem.meta",
     _PROBLEM),
    ("meta just too deep", {"problem": _problem_with(meta=_nested(31))}, "body.problem.meta",
     _PROBLEM),
    ("meta NaN", {"problem": _problem_with(meta={"a": float("inf")})}, "body.problem.meta.a",
     _PROBLEM),
    ("omega 1e308", {"problem": _problem_with(**{"layers.0.omega.2": 1e308})},
     "body.problem.layers.0.omega.2", _PROBLEM),
    ("omega overflow", {"problem": _problem_with(**{"layers.0.omega.2": 1e309})},
     "body.problem.layers.0.omega.2", _PROBLEM),
    ("latency 1e300", {"problem": _problem_with(**{"layers.1.latency_us.4": 1e300})},
     "body.problem.layers.1.latency_us.4", _PROBLEM),
    ("params huge", {"problem": _problem_with(**{"layers.0.params": 10**30})},
     "body.problem.layers.0.params", _PROBLEM),
    ("problem bits fractional", {"problem": _problem_with(bits=[4.7, 2.2])},
     "body.problem.bits.0", _PROBLEM),
    ("duplicate layers", {"problem": _problem_with(**{"layers.1.name": "layer0"})},
     "body.problem", _PROBLEM),
]


def _cases() -> list[Any]:
    out = []
    for name, change, field, routes in CASES:
        for route, base in ROUTES.items():
            if routes is not None and route not in routes:
                continue
            if any(k in ("problem", "model") for k in change) and "problem" not in base:
                continue
            out.append(pytest.param(route, {**base, **change}, field,
                                    id=f"{route.split('/')[1]}-{route.count('/')}-{name}"))
    return out


@pytest.mark.parametrize("route, body, field", _cases())
def test_bad_body_is_a_named_4xx(client, route, body, field):
    _assert_named(_post(client, route, body), field)


def test_no_bad_job_was_stored(client):
    # Runs after the table (same module client): no case above stored a job.
    assert client.get("/jobs").json()["total"] == 0


def test_surrogate_layer_job_is_refused_at_submit(api_client):
    body = {"problem": _problem_with(**{"layers.2.name": "conv\ud800"}), "budgets": ["4bits"]}
    error = _assert_named(_post(api_client, "/jobs", body), "body.problem.layers.2.name")
    assert error["value"] == repr("conv\ud800")  # shown escaped: "'conv\\ud800'"
    assert api_client.get("/jobs").json()["total"] == 0


def test_good_bodies_still_pass(api_client):
    assert _post(api_client, "/budgets/validate", {"budgets": ["4µs", " 4bits "]}
                 ).status_code == 200
    deep_ok = _problem_with(meta=_nested(29), model="résnet-ünïcode")
    response = _post(api_client, "/jobs", {"problem": deep_ok, "budgets": ["4bits"]})
    assert response.status_code == 202, response.text[:500]


def test_tiny_budget_is_an_infeasible_answer(client):
    response = _post(client, "/solve", {"problem": DOC, "budgets": ["1e-15bits"]})
    assert response.status_code == 200, response.text[:500]
    config = response.json()
    assert config["status"] == "infeasible"
    assert config["extra"]["infeasible_budgets"] == {"1e-15bits": "2bits"}


def test_twenty_thousand_duplicate_layers_are_refused_quickly(client):
    layers = [dict(DOC["layers"][0], name="same") for _ in range(20_000)]
    body = {"problem": {**DOC, "layers": layers}, "budgets": ["4bits"]}
    cpu_s = time.process_time()  # this process's CPU (the app runs in its threads): a
    response = _post(client, "/jobs", body)  # measure other processes' load leaves alone
    cpu_s = time.process_time() - cpu_s
    error = _assert_named(response, "body.problem")
    assert "duplicate names ['same']" in error["detail"]
    # ~0.6 s of CPU with the 5 MB body's parsing; validation alone was 9.9 s (quadratic).
    assert cpu_s < 5.0


# -- /jobs/upload ------------------------------------------------------------------------------


def _upload(client, content: bytes, budgets: tuple[str, ...] = ("4bits",)):
    return client.post("/jobs/upload", files={"file": ("p.json", content)},
                       data={"budgets": list(budgets)})


UPLOADS: dict[str, bytes] = {
    "not utf-8": b'{"format": "allocator.problem/1", "model": "\xff\xfe"}',
    "nested 900": ("[" * 900 + "]" * 900).encode(),
    "nested 5000": ("[" * 5000 + "]" * 5000).encode(),
    "meta nested 900": json.dumps({**DOC, "meta": _nested(900)}).encode(),
    "layer surrogate": json.dumps(_problem_with(**{"layers.0.name": "\ud800"})).encode(),
    "meta NaN": json.dumps({**DOC, "meta": float("nan")}).encode(),
    "omega 1e308": json.dumps(_problem_with(**{"layers.0.omega.2": 1e308})).encode(),
    "long integer": json.dumps(DOC)[:-1].encode() + b', "meta": ' + b"1" * 5000 + b"}",
    "not an object": b"[]",
    "truncated": json.dumps(DOC)[:40].encode(),
    "empty": b"",
}


@pytest.mark.parametrize("name", list(UPLOADS))
def test_bad_upload_is_a_named_4xx(client, name):
    error = _assert_named(_upload(client, UPLOADS[name]), "body.file")
    assert error["detail"].startswith("`file`")


@pytest.mark.parametrize("budget, field", [("\ud800", "body.budgets.0"),
                                           ("٤bits", "body.budgets.0"),
                                           ("1e309bits", "body.budgets.0"),
                                           ("4" * 100 + "bits", "body.budgets.0")])
def test_bad_upload_budgets_are_named(client, budget, field):
    response = client.post("/jobs/upload", files={"file": ("p.json", json.dumps(DOC))},
                               data={"budgets": [budget.encode("utf-8", "surrogatepass")]})
    _assert_named(response, field)


def test_upload_accepts_a_bom_and_stores_nothing_bad(api_client):
    response = _upload(api_client, b"\xef\xbb\xbf" + json.dumps(DOC).encode())
    assert response.status_code == 202, response.text[:500]
    for content in UPLOADS.values():
        _upload(api_client, content)
    assert api_client.get("/jobs").json()["total"] == 1
