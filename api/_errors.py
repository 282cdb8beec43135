"""Errors at the HTTP edge: the project's exceptions and FastAPI's validation errors become
one JSON shape, `{"detail", "field", "value"}`; nothing a client sends yields a 500."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from engine import (
    AllocatorError,
    DuplicateJobError,
    FinishedJobError,
    InvalidSpecError,
    JobNotFoundError,
    MissingDependencyError,
    StoreError,
    UnknownComponentError,
)

log = logging.getLogger("allocator.api")


class ApiError(Exception):
    """An HTTP error with the field and value it is about.

    Args:
        status_code: The HTTP status.
        detail: One line naming the field and the bad value.
        field: Dotted path of the field (`body.budgets.0`), or None.
        value: The bad value (JSON-safe), or None.
    """

    def __init__(self, status_code: int, detail: str, field: str | None = None,
                 value: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code, self.detail, self.field, self.value = status_code, detail, field, value
        self.headers = headers


# Longest JSON text of a value an error shows (`value`, each error's `input`); a longer one
# (a whole problem document) is shown as the start of its repr.
MAX_VALUE_CHARS = 2000
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _text(text: str) -> str:
    """`text` sendable as UTF-8: a lone surrogate (from a `\\ud800` escape) spelled as
    that escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_safe(value: Any) -> Any:
    """`value` as JSON data an error body can hold: small, finite, valid Unicode (lone
    surrogates spelled as escapes); else the start of its repr. Never raises, however deep
    or odd the value."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return _short_repr(value)
    if len(text) > MAX_VALUE_CHARS:
        return _short_repr(value)
    if _SURROGATE.search(text) is None:
        return value
    # Spelled in the JSON text as an escaped backslash: the parsed value holds `\ud800`.
    return json.loads(_SURROGATE.sub(lambda m: f"\\\\u{ord(m.group()):04x}", text))


def _short_repr(value: Any) -> str:
    try:
        return _text(repr(value)[:500])
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"


def error_response(status_code: int, detail: str, field: str | None = None, value: Any = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The JSON error body; every string in it valid Unicode (a client's lone surrogate
    echoed in a message would otherwise fail to encode: a 500)."""
    body = {"detail": _text(detail), "field": None if field is None else _text(field),
            "value": _json_safe(value), **extra}
    return JSONResponse(body, status_code=status_code, headers=headers)


_STATUS: tuple[tuple[type[AllocatorError], int], ...] = (
    (JobNotFoundError, 404),
    (DuplicateJobError, 409),
    (FinishedJobError, 409),
    (InvalidSpecError, 422),
    (UnknownComponentError, 422),
    (MissingDependencyError, 501),
    (StoreError, 503),
)


def status_of(err: AllocatorError) -> int:
    """The HTTP status of a project error (409 for a job in the wrong state)."""
    from api._store import NotSucceededError

    if isinstance(err, NotSucceededError):
        return 409
    for cls, code in _STATUS:
        if isinstance(err, cls):
            return code
    return 500


def _loc(loc: tuple | list) -> str:
    return ".".join(str(p) for p in loc)


def _allow(request: Request, headers: dict[str, str] | None) -> dict[str, str] | None:
    """The `Allow` header of a 405: the methods documented for the path. Starlette names only
    those of the first route matching the path, and GET and POST of one path (such as /jobs)
    are two routes here."""
    paths = request.app.openapi()["paths"]
    operations = paths.get(request.url.path) or next(
        (ops for template, ops in paths.items()
         if compile_path(template)[0].match(request.url.path)), None)
    if operations is None:  # not an API path (the dashboard's files): Starlette's answer
        return headers
    return {**(headers or {}), "Allow": ", ".join(m.upper() for m in operations)}


def _error(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error as the body lists it. An error of the body's walk (depth,
    Unicode, finite numbers: `engine.Document`) is raised at the model: its `ctx` holds the
    path below it (`loc`) and the bad value's repr (`shown`)."""
    loc = list(error.get("loc", ()))
    value = error.get("input")
    if _walked(error):
        loc += list(error["ctx"]["loc"])
        value = error["ctx"]["shown"]
    return {"loc": [_text(p) if isinstance(p, str) else p for p in loc],
            "msg": _text(str(error.get("msg", ""))), "type": error.get("type", ""),
            "input": _json_safe(value)}


def _walked(error: dict[str, Any]) -> bool:
    """Whether a validation error comes from the body's walk (see `_error`)."""
    ctx = error.get("ctx") or {}
    return isinstance(ctx.get("loc"), tuple | list) and "shown" in ctx


def install(app: FastAPI) -> None:
    """Registers the handlers that give every error the JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.detail, exc.field, exc.value, exc.headers)

    @app.exception_handler(AllocatorError)
    async def _allocator_error(_request: Request, exc: AllocatorError) -> JSONResponse:
        code = status_of(exc)
        if code >= 500:
            log.warning("%s: %s", type(exc).__name__, exc)
        field = getattr(exc, "field", None)
        return error_response(code, str(exc), field, getattr(exc, "value", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        raw = exc.errors()
        errors = [_error(e) for e in raw]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request", "input": None}
        field = _loc(first["loc"]) or None
        value = first["input"]
        if raw and _walked(raw[0]):  # "`body.budgets.0` ('\\ud800') is not valid Unicode ..."
            shown = f" ({value})" if value is not None else ""
            detail = f"`{field or 'body'}`{shown} {first['msg']}."
        else:
            shown = json.dumps(value)[:120] if value is not None else "missing"
            detail = f"`{field}`: {first['msg']} (got {shown})" if field else first["msg"]
        return error_response(422, detail, field, value, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = _allow(request, headers)
        return error_response(exc.status_code, str(exc.detail), None, None, headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}")
