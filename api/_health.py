"""`GET /health`: whether the service can take jobs, one check per dependency.

- `database`: a read and a committed write (this API process's heartbeat row), each given
  up after about two seconds; failing either means no job can be taken: 503.
- `broker` (Celery mode): a connection within `broker_timeout_s`. Down, jobs are still
  taken (queued, sent by the outbox once it is back): 200, status "degraded".
- `workers`: the worker processes' heartbeats. None fresh where workers are expected
  (Celery, or this service's own pool): "degraded", since jobs wait.

The top-level `database` and `workers` keys keep their first meaning ("ok"; the worker
mode); `checks` holds the detail.
"""

from __future__ import annotations

import time
from typing import Any

from api._service import Service
from engine import StoreError


def _timed(fn: Any) -> tuple[str | None, float]:
    """Runs `fn`; (None or the one-line failure, milliseconds taken)."""
    t0 = time.perf_counter()
    try:
        fn()
        error = None
    except StoreError as e:
        error = str(e).removeprefix("job store: ")
    except Exception as e:  # noqa: BLE001  (a health check reports, never raises)
        error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return error, round((time.perf_counter() - t0) * 1000, 1)


def health(svc: Service) -> tuple[int, dict[str, Any]]:
    """The HTTP status (200 or 503) and body of `GET /health`."""
    read_error, read_ms = _timed(svc.store.ping)
    write_error, write_ms = _timed(lambda: svc.store.check_write(svc.process_id))
    db_ok = read_error is None and write_error is None
    database: dict[str, Any] = {"ok": db_ok, "read": read_error is None,
                                "write": write_error is None,
                                "latency_ms": round(read_ms + write_ms, 1)}
    problems: list[str] = []
    if not db_ok:
        database["detail"] = (f"read failed: {read_error}" if read_error
                              else f"write failed: {write_error}")
        problems.append(f"database: {database['detail']}")
    checks: dict[str, Any] = {"database": database}
    body: dict[str, Any] = {"database": "ok" if db_ok else "error", "workers": svc.mode}

    if svc.dispatcher is not None:
        t0 = time.perf_counter()
        broker_error = svc.dispatcher.ping()
        broker_ms = round((time.perf_counter() - t0) * 1000, 1)
        checks["broker"] = {"ok": broker_error is None, "latency_ms": broker_ms}
        body["broker"] = "ok" if broker_error is None else "error"
        if broker_error is not None:
            checks["broker"]["detail"] = broker_error
            problems.append(f"broker: {broker_error}")

    checks["workers"] = _workers(svc, read_error is None)
    if not checks["workers"]["ok"]:
        problems.append(f"workers: {checks['workers']['detail']}")

    status = "unavailable" if not db_ok else ("degraded" if problems else "ok")
    body = {"status": status, **body, "checks": checks}
    if problems:
        body["detail"] = "; ".join(problems)
    return (503 if not db_ok else 200), body


def _workers(svc: Service, readable: bool) -> dict[str, Any]:
    """Worker processes by heartbeat: alive when within `heartbeat_timeout_s`."""
    timeout_s = svc.settings.heartbeat_timeout_s
    out: dict[str, Any] = {"ok": True, "mode": svc.mode, "expected": svc.expects_workers,
                           "alive": 0, "last_heartbeat_at": None, "heartbeat_timeout_s":
                           timeout_s, "items": []}
    if not readable:
        out.update(ok=not svc.expects_workers, detail="database unreadable")
        return out
    try:
        items = svc.store.workers()
    except StoreError as e:
        out.update(ok=not svc.expects_workers, detail=str(e))
        return out
    alive = [w for w in items if w["age_s"] <= timeout_s]
    out.update(alive=len(alive), items=alive,
               last_heartbeat_at=items[0]["heartbeat_at"] if items else None)
    if svc.expects_workers and not alive:
        out.update(ok=False, detail=f"no worker has sent a heartbeat in the last "
                                    f"{timeout_s:g} s; queued jobs wait")
    return out
