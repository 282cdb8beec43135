"""`allocator serve` (API + in-process workers, one process tree) and `allocator worker`
(a Celery worker for scale-out).

Registered by `allocator.cli`. The API process never imports torch; the workers do.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

import typer

from engine._errors import CLIUsageError

DEMO_JOB = {"model": "digits-cnn", "budgets": ["4bits"], "solver": "ilp",
            "estimator": "hutchinson", "seed": 0, "measure": True}


def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int | None, typer.Option(
        help="In-process worker processes (default ALLOCATOR_WORKERS or 1; 0: API only).")] = None,
    demo: Annotated[bool, typer.Option(
        help="Submit a demo job (digits-cnn, 4bits, ilp), print it, keep serving.")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Start the job service: REST API, dashboard and in-process workers (Ctrl-C stops)."""
    import uvicorn

    from api import Settings, create_app

    overrides: dict[str, Any] = {} if workers is None else {"workers": workers}
    settings = Settings(**overrides)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    typer.echo(f"allocator service on {base} (docs {base}/docs; workers: "
               f"{app.state.service.mode}; database: {_safe_url(settings)})", err=True)
    if demo:
        threading.Thread(target=_run_demo, args=(server, base, settings.api_token),
                         name="demo", daemon=True).start()
    server.run()


def _safe_url(settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url()).render_as_string(hide_password=True)


def dashboard_url(base: str, job_id: str) -> str:
    """The dashboard's page of a job (its `/ui/jobs/{id}` route when served)."""
    try:
        from api.dashboard import router
    except ImportError:
        return f"{base}/jobs/{job_id}"
    paths = [getattr(r, "path", "") for r in router.routes]
    if any(p.startswith("/ui/jobs/") for p in paths):
        return f"{base}/ui/jobs/{job_id}"
    return f"{base}/#/jobs/{job_id}"


def _run_demo(server, base: str, token: str | None) -> None:
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
            last = None
            while job["status"] in ("queued", "running") and not server.should_exit:
                now = (job["status"], job["stage"], round(job["progress"], 2))
                if now != last:
                    typer.echo(f"  {job['status']:<9} {job['stage']:<12} {job['progress']:5.0%}")
                    last = now
                time.sleep(0.5)
                job = _ok(client.get(f"/jobs/{job['id']}"))
            if job["status"] != "succeeded":
                typer.echo(f"demo job {job['status']}: {job['error']}")
                return
            _print_result(_ok(client.get(f"/jobs/{job['id']}/result")))
            typer.echo(f"dashboard: {dashboard_url(base, job['id'])}")
            typer.echo("serving until Ctrl-C")
    except Exception as e:  # noqa: BLE001  (the service keeps running)
        typer.echo(f"demo failed: {e}", err=True)


def _ok(response) -> dict[str, Any]:
    if response.status_code >= 400:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: "
                           f"{response.status_code} {response.text[:300]}")
    return response.json()


def _print_result(result: dict[str, Any]) -> None:
    config, measured, uniform = result["config"], result["measured"], result["uniform"]
    cost = config["cost"]
    typer.echo(f"result: {config['status']} ({config['solver']}), "
               f"{cost['avg_bits']:.2f} avg bits, objective {config['objective']:.4g}")
    for layer, bits in config["bits"].items():
        typer.echo(f"  {layer:<24} {bits} bits")
    if measured:
        metric = next(iter(measured["metrics"]))
        line = (f"{metric}: mixed {measured['metrics'][metric]:.4f}, "
                f"FP32 {measured['fp32_metrics'][metric]:.4f}")
        if uniform:
            line += f", uniform {uniform['bits']} bits {uniform['metrics'][metric]:.4f}"
        typer.echo(line)
        size = (f"size: mixed {measured['size_bytes'] / 1e3:.1f} kB, "
                f"FP32 {measured['fp32_size_bytes'] / 1e3:.1f} kB")
        if uniform:
            size += f", uniform {uniform['size_bytes'] / 1e3:.1f} kB"
        typer.echo(size)


def worker_command(
    concurrency: Annotated[int, typer.Option(help="Jobs run at once (processes).")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
) -> None:
    """Run a Celery worker for scale-out (needs ALLOCATOR_BROKER_URL and a shared database)."""
    from api._settings import Settings

    if not Settings().broker_url:
        raise CLIUsageError("`allocator worker` needs ALLOCATOR_BROKER_URL (e.g. "
                            "redis://127.0.0.1:6379/0) and a shared ALLOCATOR_DATABASE_URL.")
    from api.celery_app import app

    app.worker_main(["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}",
                     "--pool=prefork"])


__all__ = ["DEMO_JOB", "dashboard_url", "serve_command", "worker_command"]
