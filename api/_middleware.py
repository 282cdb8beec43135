"""The service's ASGI middleware: request timing for the metrics, and the upload limit."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from api._errors import error_response
from api._metrics import Metrics, route_of


class HttpMiddleware:
    """Pure ASGI middleware (no body buffering) that sees HTTP requests only; lifespan and
    websocket scopes pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class MetricsMiddleware(HttpMiddleware):
    """Times every HTTP request into `Metrics.latency` by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_of(scope)
            self.metrics.latency.labels(scope["method"], route, str(status["code"])).observe(
                time.perf_counter() - start)


class BodyLimitMiddleware(HttpMiddleware):
    """Answers 413 (JSON) when a request body exceeds `max_bytes`, by header or by count.

    Args:
        max_bytes: The limit of every request (the `max_upload_bytes` setting).
        route_limits: (method, path) -> (limit, the setting that says so), for routes that
            take more (checkpoint uploads) and check their parts themselves.
    """

    def __init__(self, app: ASGIApp, max_bytes: int,
                 route_limits: dict[tuple[str, str], tuple[int, str]] | None = None) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes
        self.route_limits = route_limits or {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        max_bytes, setting = self.route_limits.get((scope["method"], scope["path"]),
                                                   (self.max_bytes, "max_upload_bytes"))
        length = dict(scope.get("headers") or ()).get(b"content-length")
        too_big = error_response(413, f"request body larger than the upload limit of "
                                      f"{max_bytes} bytes ({setting}).",
                                 "body", None)
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                size = -1
            if size > max_bytes:
                await too_big(scope, receive, send)
                return
        received = 0
        overflow = False

        class _TooBig(Exception):
            pass

        async def counting_receive():
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    overflow = True
                    raise _TooBig
            return message

        sent = False

        async def guarded_send(message) -> None:
            nonlocal sent
            if overflow:  # the app answered the aborted read (FastAPI: 400); answer 413
                if not sent and message["type"] == "http.response.start":
                    sent = True
                    await too_big(scope, receive, send)
                return
            sent = sent or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooBig:
            if not sent:
                await too_big(scope, receive, send)
