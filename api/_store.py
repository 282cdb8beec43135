"""The job store: every read and write of job state goes through here.

The database is the truth. Writes that race (a worker claiming a job, a client cancelling
it, a reaper re-queueing it) are single conditional UPDATEs (`... WHERE status = 'queued'`),
so exactly one of them wins on SQLite and PostgreSQL alike, with no lock held across a
read. A job's attempt history is rewritten only inside the transaction of the conditional
UPDATE that won (the row is locked then). SQLAlchemy errors become `StoreError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api._db import (
    SQLITE_BUSY_TIMEOUT_MS,
    FrontRow,
    HeartbeatRow,
    JobRow,
    ProblemRow,
    ResultRow,
)
from engine import AllocatorError, FinishedJobError, JobNotFoundError, StoreError

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
STAGES = ("queued", "load", "sensitivity", "latency", "solve", "measure", "pareto", "done")
# How one run of a job ended ("running" while it runs), in its attempt history.
OUTCOMES = ("running", "succeeded", "failed", "cancelled", "requeued")
HEALTH_LOCK_TIMEOUT_MS = 2000


def utcnow() -> dt.datetime:
    """Naive UTC now (what the DateTime columns hold on every backend)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=dt.UTC).isoformat()


@dataclass(frozen=True)
class JobRecord:
    """A frozen snapshot of one job row (what the API returns)."""

    id: str
    kind: str
    status: str
    stage: str
    progress: float
    error: str | None
    model: str | None
    spec: dict[str, Any]
    timings_s: dict[str, float]
    attempts: int
    worker_id: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    heartbeat_at: dt.datetime | None
    attempts_log: tuple[dict[str, Any], ...] = ()
    dispatched_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, row: JobRow) -> JobRecord:
        return cls(row.id, row.kind, row.status, row.stage, row.progress, row.error, row.model,
                   json.loads(row.spec), json.loads(row.timings or "{}"), row.attempts,
                   row.worker_id, row.created_at, row.started_at, row.finished_at,
                   row.heartbeat_at, tuple(_attempts(row.attempts_log)), row.dispatched_at)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def public(self) -> dict[str, Any]:
        """The job object of the JSON contract."""
        spec = self.spec
        return {
            "id": self.id, "status": self.status, "stage": self.stage,
            "progress": self.progress, "error": self.error, "kind": self.kind,
            "model": self.model, "budgets": spec.get("budgets", []),
            "solver": spec.get("solver"), "estimator": spec.get("estimator"),
            "bits": spec.get("bits"), "seed": spec.get("seed"), "measure": spec.get("measure"),
            **{key: spec[key] for key in ("ties", "fix", "target") if spec.get(key)},
            "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at), "timings_s": self.timings_s,
            "attempts": self.attempts,
            "attempts_history": [dict(a) for a in self.attempts_log],
        }


@dataclass
class JobOutput:
    """What a finished job writes: result, front and (for model jobs) its problem."""

    config: dict[str, Any]
    measured: dict[str, Any] = field(default_factory=dict)
    uniform: dict[str, Any] = field(default_factory=dict)
    front: dict[str, Any] | None = None
    problem: dict[str, Any] | None = None


def _finite(data: Any) -> Any:
    """`data` with NaN and infinities as null (JSON has no spelling for them), tuples as
    lists. Iterative: no depth of nesting exhausts the stack (requests are depth-checked
    before they get here, but not everything stored is a request)."""
    if not isinstance(data, dict | list | tuple):
        return None if isinstance(data, float) and not math.isfinite(data) else data
    root: list[Any] = [None]
    # (container of the copy, key or index in it, the original container to copy there)
    todo: list[tuple[Any, Any, Any]] = [(root, 0, data)]
    while todo:
        parent, key, value = todo.pop()
        copy = parent[key] = dict(value) if isinstance(value, dict) else list(value)
        for k, v in (copy.items() if isinstance(copy, dict) else enumerate(copy)):
            kind = type(v)
            if kind is str or kind is int or kind is bool or v is None:
                continue
            if isinstance(v, float):
                if not math.isfinite(v):
                    copy[k] = None  # a value of an existing key: the dict keeps its size
            elif isinstance(v, dict | list | tuple):
                todo.append((copy, k, v))
    return root[0]


def _dumps(data: Any) -> str:
    return json.dumps(_finite(data), allow_nan=False, separators=(",", ":"))


def _attempts(raw: str | None) -> list[dict[str, Any]]:
    """The attempt history stored on a job row (empty for rows older than it)."""
    if not raw:
        return []
    data = json.loads(raw)
    return [a for a in data if isinstance(a, dict)] if isinstance(data, list) else []


def _edit_attempts(s: Session, job_id: str,
                   edit: Callable[[list[dict[str, Any]]], None]) -> None:
    """Rewrites a job's attempt history; call only after this transaction's conditional
    UPDATE of the row won (the row is locked, so no other writer interleaves)."""
    log = _attempts(s.scalar(select(JobRow.attempts_log).where(JobRow.id == job_id)))
    edit(log)
    s.execute(update(JobRow).where(JobRow.id == job_id).values(attempts_log=_dumps(log)))


def _end_attempt(outcome: str, reason: str | None,
                 now: dt.datetime) -> Callable[[list[dict[str, Any]]], None]:
    """An edit that closes the open (last running) attempt with `outcome` and `reason`."""
    def edit(log: list[dict[str, Any]]) -> None:
        if log and log[-1].get("outcome") == "running":
            log[-1].update(ended_at=_iso(now), outcome=outcome, reason=reason)
    return edit


class JobStore:
    """Jobs in a SQL database (SQLite or PostgreSQL).

    Thread safety: one instance may be shared by threads; each call opens its own session.

    Args:
        engine: From `api._db.make_engine`; migrations must already be applied.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as e:
            session.rollback()
            raise StoreError(f"job store: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        finally:
            session.close()

    # -- reads ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Raises `StoreError` when the database does not answer."""
        with self._session() as s:
            s.execute(select(1))

    def get(self, job_id: str) -> JobRecord:
        """The job `job_id`; raises `JobNotFoundError`."""
        with self._session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(f"no job with id {job_id!r}.")
            return JobRecord.from_row(row)

    def list(self, *, status: str | None = None, model: str | None = None, limit: int = 50,
             offset: int = 0) -> tuple[list[JobRecord], int]:
        """Jobs newest first, filtered, and how many match in all."""
        query = select(JobRow)
        count = select(func.count()).select_from(JobRow)
        conditions = []
        if status is not None:
            conditions.append(JobRow.status == status)
        if model is not None:
            conditions.append(JobRow.model == model)
        query = (query.where(*conditions).order_by(JobRow.created_at.desc(), JobRow.id.desc())
                 .limit(limit).offset(offset))
        count = count.where(*conditions)
        with self._session() as s:
            rows = s.scalars(query).all()
            total = s.scalar(count) or 0
            return [JobRecord.from_row(r) for r in rows], int(total)

    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, zero when none)."""
        with self._session() as s:
            rows = s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
        out = dict.fromkeys(STATUSES, 0)
        out.update({status: int(n) for status, n in rows})
        return out

    def queued_ids(self) -> list[str]:
        """Ids of the queued jobs, oldest first."""
        with self._session() as s:
            return list(s.scalars(select(JobRow.id).where(JobRow.status == "queued")
                                  .order_by(JobRow.created_at, JobRow.id)).all())

    def result(self, job_id: str) -> dict[str, Any]:
        """`{"config", "measured", "uniform", "timings_s", "problem"}` of a succeeded job:
        the report shape of `allocator solve --json`, plus the problem."""
        job = self._finished_ok(job_id)
        with self._session() as s:
            res = s.get(ResultRow, job.id)
            prob = s.get(ProblemRow, job.id)
            if res is None:
                raise StoreError(f"job {job_id!r} succeeded but has no stored result.")
            return {"config": json.loads(res.config), "measured": json.loads(res.measured),
                    "uniform": json.loads(res.uniform), "timings_s": job.timings_s,
                    "problem": json.loads(prob.problem) if prob else None}

    def front(self, job_id: str) -> dict[str, Any]:
        """The stored Pareto front of a succeeded job."""
        job = self._finished_ok(job_id)
        with self._session() as s:
            row = s.get(FrontRow, job.id)
            if row is None:
                raise StoreError(f"job {job_id!r} succeeded but has no stored front.")
            return json.loads(row.front)

    def problem(self, job_id: str) -> dict[str, Any] | None:
        """The job's allocation problem (input of problem jobs, output of model jobs)."""
        self.get(job_id)
        with self._session() as s:
            row = s.get(ProblemRow, job_id)
            return None if row is None else json.loads(row.problem)

    def _finished_ok(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.status != "succeeded":
            raise NotSucceededError(
                f"job {job_id!r} is {job.status}; its result exists once it has succeeded.")
        return job

    # -- writes from the API -------------------------------------------------------------

    def create(self, *, kind: str, model: str | None, spec: dict[str, Any],
               problem: dict[str, Any] | None = None) -> JobRecord:
        """A new queued job (and its input problem, for problem jobs)."""
        job_id = uuid.uuid4().hex
        row = JobRow(id=job_id, kind=kind, status="queued", stage="queued", progress=0.0,
                     error=None, model=model, spec=_dumps(spec), timings="{}", attempts=0,
                     created_at=utcnow())
        with self._session() as s:
            s.add(row)
            s.flush()
            if problem is not None:
                s.add(ProblemRow(job_id=job_id, problem=_dumps(problem)))
            return JobRecord.from_row(row)

    def cancel(self, job_id: str) -> JobRecord:
        """Marks a queued or running job cancelled (its worker stops at the next stage);
        raises `FinishedJobError` when it already finished."""
        now = utcnow()
        with self._session() as s:
            done = s.execute(update(JobRow).where(JobRow.id == job_id,
                                                  JobRow.status.in_(("queued", "running")))
                             .values(status="cancelled", finished_at=now,
                                     error="cancelled by request")).rowcount
            if done:
                _edit_attempts(s, job_id, _end_attempt("cancelled", "cancelled by request",
                                                       now))
        job = self.get(job_id)
        if not done:
            raise FinishedJobError(f"job {job_id!r} already finished ({job.status}).")
        return job

    def requeue_stale(self, *, timeout_s: float, max_attempts: int) -> tuple[list[str], list[str]]:
        """Running jobs whose heartbeat is older than `timeout_s`: back to the queue, or failed
        with the reason after `max_attempts` runs. Returns (requeued ids, failed ids)."""
        cutoff = utcnow() - dt.timedelta(seconds=timeout_s)
        with self._session() as s:
            stale = s.execute(select(JobRow.id, JobRow.attempts, JobRow.worker_id).where(
                JobRow.status == "running", JobRow.heartbeat_at < cutoff)).all()
        requeued, failed = [], []
        for job_id, attempts, worker in stale:
            cond = (JobRow.id == job_id, JobRow.status == "running",
                    JobRow.heartbeat_at < cutoff)
            now = utcnow()
            with self._session() as s:
                if attempts < max_attempts:
                    reason = (f"worker {worker} stopped answering (no heartbeat for "
                              f"{timeout_s:g} s); re-queued after attempt {attempts}")
                    n = s.execute(update(JobRow).where(*cond).values(
                        status="queued", stage="queued", progress=0.0, worker_id=None,
                        dispatched_at=None, error=reason)).rowcount
                    outcome = "requeued"
                    (requeued if n else []).append(job_id)
                else:
                    reason = (f"worker {worker} died (no heartbeat for {timeout_s:g} s) on "
                              f"attempt {attempts} of {max_attempts}; giving up")
                    n = s.execute(update(JobRow).where(*cond).values(
                        status="failed", finished_at=now, error=reason)).rowcount
                    outcome = "failed"
                    (failed if n else []).append(job_id)
                if n:
                    _edit_attempts(s, job_id, _end_attempt(outcome, reason, now))
        return requeued, failed

    def release(self, worker_id: str) -> list[str]:
        """Returns the running jobs of a worker being shut down to the queue."""
        reason = f"worker {worker_id} was shut down; re-queued"
        released = []
        with self._session() as s:
            ids = s.scalars(select(JobRow.id).where(JobRow.status == "running",
                                                    JobRow.worker_id == worker_id)).all()
            for job_id in ids:
                n = s.execute(update(JobRow).where(JobRow.id == job_id,
                                                   JobRow.status == "running",
                                                   JobRow.worker_id == worker_id).values(
                    status="queued", stage="queued", progress=0.0, worker_id=None,
                    dispatched_at=None, error=reason)).rowcount
                if n:
                    _edit_attempts(s, job_id, _end_attempt("requeued", reason, utcnow()))
                    released.append(job_id)
        return released

    # -- writes from workers -------------------------------------------------------------

    def claim(self, worker_id: str, job_id: str | None = None) -> JobRecord | None:
        """Atomically takes a queued job (the oldest, or `job_id`) for `worker_id`."""
        now = utcnow()
        if job_id is None:
            with self._session() as s:
                job_id = s.scalar(select(JobRow.id).where(JobRow.status == "queued")
                                  .order_by(JobRow.created_at, JobRow.id).limit(1))
            if job_id is None:
                return None
        with self._session() as s:
            n = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == "queued")
                          .values(status="running", stage="load", progress=0.0,
                                  worker_id=worker_id, started_at=now, heartbeat_at=now,
                                  attempts=JobRow.attempts + 1)).rowcount
            if n:
                attempt = int(s.scalar(select(JobRow.attempts).where(JobRow.id == job_id)) or 1)
                _edit_attempts(s, job_id, lambda log: log.append({
                    "attempt": attempt, "worker_id": worker_id, "started_at": _iso(now),
                    "ended_at": None, "outcome": "running", "reason": None}))
        return self.get(job_id) if n else None

    def _mine(self, job_id: str, worker_id: str) -> tuple:
        return (JobRow.id == job_id, JobRow.status == "running", JobRow.worker_id == worker_id)

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Proves the worker is alive; False when the job is no longer its own (cancelled,
        re-queued, finished)."""
        with self._session() as s:
            return bool(s.execute(update(JobRow).where(*self._mine(job_id, worker_id))
                                  .values(heartbeat_at=utcnow())).rowcount)

    def set_stage(self, job_id: str, worker_id: str, stage: str, progress: float,
                  timings_s: dict[str, float] | None = None) -> bool:
        """Records progress; False when the job is no longer this worker's to run."""
        values: dict[str, Any] = {"stage": stage, "progress": min(max(progress, 0.0), 1.0),
                                  "heartbeat_at": utcnow()}
        if timings_s is not None:
            values["timings"] = _dumps(timings_s)
        with self._session() as s:
            return bool(s.execute(update(JobRow).where(*self._mine(job_id, worker_id))
                                  .values(**values)).rowcount)

    def succeed(self, job_id: str, worker_id: str, output: JobOutput,
                timings_s: dict[str, float]) -> bool:
        """Stores the output and marks the job succeeded, in one transaction; False (nothing
        written) when the job was cancelled or taken away meanwhile."""
        now = utcnow()
        with self._session() as s:
            n = s.execute(update(JobRow).where(*self._mine(job_id, worker_id)).values(
                status="succeeded", stage="done", progress=1.0, error=None,
                finished_at=now, timings=_dumps(timings_s))).rowcount
            if not n:
                s.rollback()
                return False
            _edit_attempts(s, job_id, _end_attempt("succeeded", None, now))
            s.merge(ResultRow(job_id=job_id, config=_dumps(output.config),
                              measured=_dumps(output.measured), uniform=_dumps(output.uniform)))
            if output.front is not None:
                s.merge(FrontRow(job_id=job_id, front=_dumps(output.front)))
            if output.problem is not None:
                s.merge(ProblemRow(job_id=job_id, problem=_dumps(output.problem)))
        return True

    def fail(self, job_id: str, worker_id: str, error: str,
             timings_s: dict[str, float] | None = None) -> bool:
        """Marks the job failed with `error`; False when it was no longer this worker's."""
        now = utcnow()
        values: dict[str, Any] = {"status": "failed", "finished_at": now,
                                  "error": error[:4000]}
        if timings_s is not None:
            values["timings"] = _dumps(timings_s)
        with self._session() as s:
            n = s.execute(update(JobRow).where(*self._mine(job_id, worker_id))
                          .values(**values)).rowcount
            if n:
                _edit_attempts(s, job_id, _end_attempt("failed", error[:4000], now))
            return bool(n)

    # -- the broker outbox (Celery mode) -------------------------------------------------

    def undispatched_ids(self, *, resend_before: dt.datetime | None = None,
                         limit: int = 500) -> list[str]:
        """Queued jobs never handed to the broker (or re-queued since), oldest first; with
        `resend_before`, also those last handed over before it (their message may be lost)."""
        never = JobRow.dispatched_at.is_(None)
        cond = never if resend_before is None else (never
                                                    | (JobRow.dispatched_at < resend_before))
        with self._session() as s:
            return list(s.scalars(select(JobRow.id).where(JobRow.status == "queued", cond)
                                  .order_by(JobRow.created_at, JobRow.id).limit(limit)).all())

    def mark_dispatched(self, job_id: str) -> bool:
        """Records that the broker has the queued job `job_id` (False: not queued now)."""
        with self._session() as s:
            return bool(s.execute(update(JobRow).where(JobRow.id == job_id,
                                                       JobRow.status == "queued")
                                  .values(dispatched_at=utcnow())).rowcount)

    # -- process heartbeats (health) -----------------------------------------------------

    def beat(self, process_id: str, role: str, job_id: str | None = None) -> None:
        """Records that process `process_id` (an "api" or a "worker") is alive now."""
        now = utcnow()
        with self._session() as s:
            n = s.execute(update(HeartbeatRow).where(HeartbeatRow.id == process_id)
                          .values(heartbeat_at=now, job_id=job_id)).rowcount
            if not n:
                s.add(HeartbeatRow(id=process_id, role=role, host=socket.gethostname()[:128],
                                   pid=os.getpid(), started_at=now, heartbeat_at=now,
                                   job_id=job_id))
                try:
                    s.flush()
                except IntegrityError:  # another thread of this process inserted it first
                    s.rollback()

    def forget(self, process_id: str) -> None:
        """Removes the heartbeat row of a process that shuts down."""
        with self._session() as s:
            s.execute(delete(HeartbeatRow).where(HeartbeatRow.id == process_id))

    def prune_beats(self, older_than_s: float) -> int:
        """Deletes heartbeat rows of processes silent for `older_than_s` (dead ones)."""
        cutoff = utcnow() - dt.timedelta(seconds=older_than_s)
        with self._session() as s:
            return int(s.execute(delete(HeartbeatRow)
                                 .where(HeartbeatRow.heartbeat_at < cutoff)).rowcount or 0)

    def workers(self, limit: int = 64) -> list[dict[str, Any]]:
        """Worker processes, latest heartbeat first: id, host, pid, started_at,
        heartbeat_at (ISO), job_id, and `age_s` (seconds since the heartbeat)."""
        now = utcnow()
        with self._session() as s:
            rows = s.scalars(select(HeartbeatRow).where(HeartbeatRow.role == "worker")
                             .order_by(HeartbeatRow.heartbeat_at.desc()).limit(limit)).all()
            return [{"id": r.id, "host": r.host, "pid": r.pid,
                     "started_at": _iso(r.started_at), "heartbeat_at": _iso(r.heartbeat_at),
                     "age_s": round(max(0.0, (now - r.heartbeat_at).total_seconds()), 3),
                     "job_id": r.job_id} for r in rows]

    def check_write(self, process_id: str) -> None:
        """A committed write (this API process's heartbeat) that gives up within about
        two seconds when the database is locked; raises `StoreError` when it fails."""
        lock_ms = HEALTH_LOCK_TIMEOUT_MS
        try:
            with self.engine.connect() as conn:
                sqlite = conn.dialect.name == "sqlite"
                if sqlite:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={lock_ms}")
                    conn.commit()  # end the autobegun transaction; the write has its own
                try:
                    with conn.begin():
                        if conn.dialect.name == "postgresql":
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {lock_ms}")
                            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {lock_ms}")
                        now = utcnow()
                        n = conn.execute(update(HeartbeatRow)
                                         .where(HeartbeatRow.id == process_id)
                                         .values(heartbeat_at=now)).rowcount
                        if not n:
                            conn.execute(insert(HeartbeatRow).values(
                                id=process_id, role="api", host=socket.gethostname()[:128],
                                pid=os.getpid(), started_at=now, heartbeat_at=now))
                finally:
                    if sqlite:
                        conn.rollback()
                        conn.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                        conn.commit()
        except SQLAlchemyError as e:
            cause = getattr(e, "orig", None) or e
            text = (str(cause).strip().splitlines() or [""])[0]
            raise StoreError(f"{type(cause).__name__}: {text}") from e


class NotSucceededError(AllocatorError):
    """Raised when the result or front of a job that has not succeeded is asked for."""
