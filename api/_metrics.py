"""Prometheus metrics: request latency per route, and jobs by status read from the database
at scrape time. Each app has its own registry, so several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

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


def route_of(scope: Scope) -> str:
    """The matched route template (`/jobs/{job_id}`), so that labels stay few."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    if isinstance(scope.get("endpoint"), StaticFiles):
        # A mount (the dashboard's /static) hands its prefix down as the root path.
        return f"{scope.get('root_path', '')}/{{path}}"
    return "unmatched"
