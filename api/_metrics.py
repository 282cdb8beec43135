"""Prometheus metrics: request latency per route, and jobs by status read from the database
at scrape time. Each app has its own registry, so several apps can live in one process."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from api._store import JobStore


class _JobsCollector:
    def __init__(self, store: Callable[[], JobStore | None]) -> None:
        self._store = store

    def collect(self):
        gauge = GaugeMetricFamily("allocator_jobs", "Jobs in the database by status",
                                  labels=["status"])
        store = self._store()
        if store is not None:
            try:
                for status, n in store.counts().items():
                    gauge.add_metric([status], n)
            except Exception:  # noqa: BLE001  (a scrape must not fail with the database)
                pass
        yield gauge


class Metrics:
    """The registry of one app and the ASGI middleware that times its requests."""

    def __init__(self, store: Callable[[], JobStore | None]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "allocator_http_request_duration_seconds", "HTTP request latency",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.registry.register(_JobsCollector(store))


def _route_of(scope: Scope) -> str:
    """The matched route template (`/jobs/{job_id}`), so that labels stay few."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    if isinstance(scope.get("endpoint"), StaticFiles):
        # A mount (the dashboard's /static) hands its prefix down as the root path.
        return f"{scope.get('root_path', '')}/{{path}}"
    return "unmatched"


class MetricsMiddleware:
    """Times every HTTP request into `Metrics.latency` (pure ASGI: no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_of(scope)
            self.metrics.latency.labels(scope["method"], route, str(status["code"])).observe(
                time.perf_counter() - start)


class BodyLimitMiddleware:
    """Answers 413 (JSON) when a request body exceeds `max_bytes`, by header or by count."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from api._errors import error_response

        length = dict(scope.get("headers") or ()).get(b"content-length")
        too_big = error_response(413, f"request body larger than the upload limit of "
                                      f"{self.max_bytes} bytes (max_upload_bytes).",
                                 "body", None)
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                size = -1
            if size > self.max_bytes:
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
                if received > self.max_bytes:
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
