"""The app factory: `create_app(settings)` builds the FastAPI app over one `Service`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from api import _errors
from api._metrics import Metrics
from api._middleware import BodyLimitMiddleware, MetricsMiddleware
from api._routes import open_routes, read, write
from api._service import Service
from api._settings import Settings, load_settings

log = logging.getLogger("allocator.api")


def create_app(settings: Settings | None = None, *, start_workers: bool = True) -> FastAPI:
    """The job service over the database of `settings` (migrations applied now).

    Args:
        settings: Defaults to `load_settings()` (the `ALLOCATOR_*` environment).
        start_workers: Start the worker pool (or the broker outbox), reaper and catalog
            probe with the app's lifespan (set False for an API-only app in tests).

    Returns:
        The FastAPI app; `app.state.service` holds the store and workers.

    Raises:
        SettingsError: A setting cannot work (one line naming the variable and why),
            including a database path that cannot be written.
        StoreError: The database server does not answer.
    """
    settings = settings or load_settings()
    svc = Service.build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if start_workers:
            svc.start()
        else:
            svc.catalog.start()
        try:
            yield
        finally:
            svc.stop()

    app = FastAPI(title="allocator job service", version=_version(), lifespan=lifespan,
                  description="Mixed-precision bit allocation as a service: submit jobs, "
                              "poll them, fetch BitConfigs, Pareto fronts and measurements.")
    app.state.service = svc
    app.state.metrics = Metrics(lambda: svc.store)
    _errors.install(app)
    app.include_router(open_routes)
    app.include_router(read)
    app.include_router(write)
    _include_dashboard(app)
    # A checkpoint upload: the archive, a data file and the form's own bytes.
    upload_bytes = settings.max_model_bytes + settings.max_upload_bytes + 2**16
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes,
                       route_limits={("POST", "/models"): (upload_bytes, "max_model_bytes")})
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def _include_dashboard(app: FastAPI) -> None:
    try:
        from api.dashboard import router
    except ImportError as e:
        if getattr(e, "name", "") not in ("api.dashboard",):
            log.warning("dashboard not served: %s", e)
        return
    app.include_router(router)


def _version() -> str:
    from allocator import __version__

    return __version__
