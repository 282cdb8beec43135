"""Bearer-token checks: writes need the token when one is set; reads only when
`read_requires_token` is on."""

from __future__ import annotations

import hmac

from fastapi import Request

from api._errors import ApiError


def _check(request: Request) -> None:
    settings = request.app.state.service.settings
    token = settings.api_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                              token.encode()):
        raise ApiError(401, "this endpoint needs `Authorization: Bearer <token>` "
                            "(ALLOCATOR_API_TOKEN); the header was missing or wrong.",
                       "header.authorization", None, headers={"WWW-Authenticate": "Bearer"})


def require_write(request: Request) -> None:
    """Dependency of every POST route."""
    _check(request)


def require_read(request: Request) -> None:
    """Dependency of read routes (open unless `read_requires_token`)."""
    if request.app.state.service.settings.read_requires_token:
        _check(request)
