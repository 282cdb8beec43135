"""`allocator serve` (API + in-process workers, one process tree) and `allocator worker`
(a Celery worker for scale-out).

The API process never imports torch; the workers do.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import typer

from allocator.cli import _render as render
from allocator.cli._app import app
from allocator.cli._options import (
    CeleryLogLevel,
    Concurrency,
    Host,
    LogLevel,
    Port,
    ServeDemo,
    Workers,
)
from engine import CLIUsageError

DEMO_JOB = {"model": "digits-cnn", "budgets": ["4bits"], "solver": "ilp",
            "estimator": "hutchinson", "seed": 0, "measure": True}
POLL_S = 0.5


@app.command("serve")
def serve_command(host: Host = "127.0.0.1", port: Port = 8000, workers: Workers = None,
                  demo: ServeDemo = False, log_level: LogLevel = "warning") -> None:
    """Start the job service: REST API, dashboard and in-process workers (Ctrl-C stops)."""
    import uvicorn
    from sqlalchemy.engine import make_url

    from api import create_app, load_settings

    # A setting that cannot work, or a database that cannot be written, ends here with
    # one line naming it (SettingsError / StoreError, exit 2 / 1), not a traceback.
    settings = load_settings(**({} if workers is None else {"workers": workers}))
    _check_bindable(host, port)
    service = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(service, host=host, port=port, log_level=log_level))
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    database = make_url(settings.resolved_database_url()).render_as_string(hide_password=True)
    typer.echo(f"allocator service on {base} (docs {base}/docs; workers: "
               f"{service.state.service.mode}; database: {database})", err=True)
    if demo:
        threading.Thread(target=_run_demo, args=(server, base, settings.api_token),
                         name="demo", daemon=True).start()
    server.run()


def _check_bindable(host: str, port: int) -> None:
    """Refuses, in one line, an address the server could not listen on (a port in use, a
    host that does not resolve), before anything starts or is printed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CLIUsageError(f"`--host` {host!r} does not resolve: {e.strerror}.") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise CLIUsageError(f"cannot listen on {host}:{port}: {e.strerror or e}.") from None


@app.command("worker")
def worker_command(concurrency: Concurrency = 1, loglevel: CeleryLogLevel = "info") -> None:
    """Run a Celery worker for scale-out (needs ALLOCATOR_BROKER_URL and a shared database)."""
    from api import load_settings, open_database

    settings = load_settings()
    if not settings.broker_url:
        raise CLIUsageError("`allocator worker` needs ALLOCATOR_BROKER_URL (e.g. "
                            "redis://127.0.0.1:6379/0) and a shared ALLOCATOR_DATABASE_URL.")
    # A database the workers cannot write ends here in one line, not in every task.
    open_database(settings.resolved_database_url()).dispose()
    from api.celery_app import app as celery

    celery.worker_main(["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
                        "--pool=prefork"])


def _dashboard_url(base: str, job_id: str) -> str:
    """The dashboard's page of a job (its `/ui/jobs/{id}` route when served)."""
    try:
        from api.dashboard import router
    except ImportError:
        return f"{base}/jobs/{job_id}"
    paths = [getattr(r, "path", "") for r in router.routes]
    if any(p.startswith("/ui/jobs/") for p in paths):
        return f"{base}/ui/jobs/{job_id}"
    return f"{base}/#/jobs/{job_id}"


def _ok(response: Any) -> dict[str, Any]:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: "
                           f"{response.status_code} {response.text[:300]}")
    return response.json()


def _follow(client: Any, server: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Polls a job until it finishes (or the server stops), echoing each new stage."""
    last = None
    while job["status"] in ("queued", "running") and not server.should_exit:
        now = (job["status"], job["stage"], round(job["progress"], 2))
        if now != last:
            typer.echo(f"  {job['status']:<9} {job['stage']:<12} {job['progress']:5.0%}")
            last = now
        time.sleep(POLL_S)
        job = _ok(client.get(f"/jobs/{job['id']}"))
    return job


def _run_demo(server: Any, base: str, token: str | None) -> None:
    """Submits `DEMO_JOB` once the server is up and prints it to the end; the service keeps
    running whatever happens."""
    import httpx

    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.1)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30.0) as client:
            job = _ok(client.post("/jobs", json=DEMO_JOB))
            typer.echo(f"demo job {job['id']}: {DEMO_JOB['model']}, budget "
                       f"{DEMO_JOB['budgets'][0]}, solver {DEMO_JOB['solver']}")
            job = _follow(client, server, job)
            if job["status"] != "succeeded":
                typer.echo(f"demo job {job['status']}: {job['error']}")
                return
            result = _ok(client.get(f"/jobs/{job['id']}/result"))
        for line in render.job_result_lines(result):
            typer.echo(line)
        typer.echo(f"dashboard: {_dashboard_url(base, job['id'])}")
        typer.echo("serving until Ctrl-C")
    except Exception as e:  # noqa: BLE001  (the service keeps running)
        typer.echo(f"demo failed: {e}", err=True)
