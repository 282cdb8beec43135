"""Schemathesis against the OpenAPI schema: whatever a client sends, no server error; every
answer has a documented status and content type and matches its declared response model;
every 4xx is the JSON error shape. Then what a schema cannot describe, on every POST route:
lone surrogates, nesting past the depth limit, numbers past the float range, as values and
as keys anywhere in the body (hypothesis picks the place)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    positive_data_acceptance,
    unsupported_method,
)

from allocator.testing_problems import random_problem
from api import Settings, create_app

# Built at import: schemathesis reads the schema when the module is collected.
_DB = Path(tempfile.mkdtemp(prefix="allocator-fuzz-")) / "jobs.sqlite"
APP = create_app(Settings(database_url=f"sqlite:///{_DB}", workers=0, sync_time_limit_s=2.0,
                          sync_max_layers=200), start_workers=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# Checks of what the service accepts, not of what it answers: it checks more than a schema
# can say (registered names, the budget grammar, problem documents: schema-valid yet 422),
# and pydantic's lax mode takes documented coercions ("1" for an integer) that a strict
# reading of the schema would reject.
NOT_CHECKED = [positive_data_acceptance, negative_data_rejection]
# GET /jobs/upload is GET /jobs/{job_id} with a malformed id: a 422 naming `path.job_id`.
NOT_CHECKED_AT = {"/jobs/upload": [unsupported_method]}


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_no_server_errors(case) -> None:
    response = case.call_and_validate(
        excluded_checks=NOT_CHECKED + NOT_CHECKED_AT.get(case.operation.path, []))
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    if 400 <= response.status_code < 500:
        body = response.json()
        assert {"detail", "field", "value"} <= set(body), body
        assert isinstance(body["detail"], str) and body["detail"]


# -- hostile values the schema cannot describe: lone surrogates, deep nesting, overflow ------

_PROBLEM = random_problem(3, seed=0).to_dict()
_JOB = "0123456789abcdef0123456789abcdef"
# A valid body per POST route (the upload: its file's document); a new route must add one.
EXAMPLES: dict[str, Any] = {
    "/jobs": {"problem": _PROBLEM, "budgets": ["4bits"], "solver": "greedy", "seed": 1,
              "bits": [2, 4, 8]},
    "/solve": {"problem": _PROBLEM, "budgets": ["4bits", "1ms"], "solver": "greedy"},
    "/jobs/{job_id}/solve": {"budgets": ["4bits"], "solver": "greedy", "bits": [4, 8]},
    "/jobs/{job_id}/cancel": {},
    "/budgets/validate": {"budgets": ["4bits", "12MB"]},
    "/jobs/upload": _PROBLEM,
    "/models": {"name": "x"},  # multipart only: any JSON body is a named 422
}
_RAW = "\x00raw:"  # a string the JSON text replaces by the number it spells


def _raw(number_text: str) -> str:
    return _RAW + number_text


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


POISONS: list[Any] = [
    "\ud800", "x\udfffy", "\udc80bits", "1e309bits", "1e99999999999bits", "1e-15bits",
    "٤bits", "４bits", "4\u00a0bits", "9" * 5000, _raw("1e309"), _raw("-1e309"), _raw("NaN"),
    _raw("Infinity"), _raw("1" * 5000), 10**40, -(2**63), 1e308, 4.7, True, None, [], {},
    _nested(33), _nested(500), _raw("[" * 990 + "]" * 990), {"\ud800": 1},
    {"a": {"\udbff": [1]}},
]


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a body: the body itself, each key's value, each list item."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], tuple(rest), new)}
    return [_replace(v, tuple(rest), new) if i == head else v for i, v in enumerate(value)]


def _add_key(value: Any, path: tuple, key: str) -> Any:
    """The body with a new key at the object at (or holding) `path`."""
    while path:
        target = value
        for p in path:
            target = target[p]
        if isinstance(target, dict):
            break
        path = path[:-1]
    return _replace(value, path, {**_get(value, path), key: _raw("1")})


def _get(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def _json_text(body: Any) -> str:
    text = json.dumps(body, allow_nan=True)  # ASCII: lone surrogates travel as escapes
    return re.sub(r'"\\u0000raw:([^"]*)"', r"\1", text)


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, str, Any]:
    route = draw(st.sampled_from(sorted(EXAMPLES)))
    body = EXAMPLES[route]
    path = draw(st.sampled_from(_paths(body)))
    if draw(st.booleans()) and draw(st.booleans()):  # a hostile key instead of a value
        body = _add_key(body, path, draw(st.sampled_from(["\ud800", "k\udfff", "zz"])))
    else:
        body = _replace(body, path, draw(st.sampled_from(POISONS)))
    return route.replace("{job_id}", _JOB), _json_text(body), body


_CLIENT = TestClient(APP, raise_server_exceptions=False)


def _send(path: str, text: str) -> Any:
    if path == "/jobs/upload":
        return _CLIENT.post(path, files={"file": ("p.json", text.encode())},
                            data={"budgets": ["4bits"]})
    return _CLIENT.post(path, content=text, headers={"Content-Type": "application/json"})


def _check_hostile(path: str, text: str) -> None:
    response = _send(path, text)
    assert response.status_code < 500, (path, text[:300], response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    response.content.decode("utf-8")  # valid UTF-8 whatever the request held
    if response.status_code >= 400:
        body = response.json()
        assert {"detail", "field", "value"} <= set(body), body
        assert isinstance(body["detail"], str) and "\n" not in body["detail"]


def test_every_post_route_has_a_hostile_example():
    posts = {p for p, ops in APP.openapi()["paths"].items() if "post" in ops}
    assert posts == set(EXAMPLES)


@pytest.mark.parametrize("route", sorted(EXAMPLES))
@pytest.mark.parametrize("poison", POISONS, ids=[f"{i}-{type(p).__name__}"
                                                   for i, p in enumerate(POISONS)])
def test_hostile_value_as_the_whole_body_or_its_first_field(route, poison):
    body = EXAMPLES[route]
    first = next(iter(body), None) if isinstance(body, dict) else None
    for path in ((), (first,)) if first is not None else ((),):
        _check_hostile(route.replace("{job_id}", _JOB), _json_text(_replace(body, path,
                                                                            poison)))


@given(hostile_requests())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_values_anywhere(request) -> None:
    path, text, _ = request
    _check_hostile(path, text)


@pytest.mark.slow
@given(hostile_requests())
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_values_anywhere_long(request) -> None:
    path, text, _ = request
    _check_hostile(path, text)
