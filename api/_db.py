"""The database: SQLAlchemy 2 tables, engine creation (SQLite in WAL mode) and migrations.

Tables: `jobs` (one row per job: the request and its state, the truth of the service, with
its attempt history and when it was last handed to the broker), `results` (the BitConfig
and measurements), `fronts` (the Pareto front), `problems` (the cached allocation table a
job solved, reused by re-solves), `heartbeats` (one row per live API or worker process).
JSON documents are stored as text written by `json.dumps`, so any database keeps them byte
for byte.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

from engine import file_lock

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
PG_CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_TIMEOUT_MS = 30000  # API and workers share the file: wait out each other's writes


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """One job: what was asked, and where it stands."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    spec: Mapped[str] = mapped_column(Text)
    timings: Mapped[str] = mapped_column(Text, default="{}")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # When the job id last went to the broker (Celery mode); NULL: never, or re-queued
    # since. The API's outbox sweep sends the queued jobs that are NULL here.
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    # JSON list, one object per run: attempt, worker_id, started_at, ended_at, outcome,
    # reason (why it ended: the re-queue reason of a lost worker, the error of a failure).
    attempts_log: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_created", "created_at"),
        Index("ix_jobs_model", "model"),
    )


class ResultRow(Base):
    """A succeeded job's answer: allocator.bitconfig/1, measurements, the best uniform."""

    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    config: Mapped[str] = mapped_column(Text)
    measured: Mapped[str] = mapped_column(Text)
    uniform: Mapped[str] = mapped_column(Text)


class FrontRow(Base):
    """A succeeded job's Pareto front (allocator.pareto/1 plus measurements)."""

    __tablename__ = "fronts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    front: Mapped[str] = mapped_column(Text)


class ProblemRow(Base):
    """The allocation problem (cached sensitivity and cost tables) of a job."""

    __tablename__ = "problems"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    problem: Mapped[str] = mapped_column(Text)


class HeartbeatRow(Base):
    """A live process of the service: the API (`role` "api", also its database write
    check) or a worker ("worker"), with the job it runs."""

    __tablename__ = "heartbeats"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)

    __table_args__ = (Index("ix_heartbeats_role_at", "role", "heartbeat_at"),)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL mode and a busy timeout (API and workers share
    the file), `sqlite://` (memory) one shared connection; a plain `postgresql://` URL
    gets the psycopg 3 driver (the one installed)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        path = sqlite_path(parsed.database, parsed.query)
        if not memory and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = ({"poolclass": StaticPool} if memory else {})
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30},
                               **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S  # a down server fails fast
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         connect_args=connect_args)


def sqlite_path(database: str | None, query: Mapping[str, Any]) -> Path | None:
    """The file of a SQLite URL's database; None in memory (`uri=true` with `file:`
    names are SQLite's own URIs: their path, without the query)."""
    if not database or database == ":memory:":
        return None
    if str(query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        database = database.removeprefix("file:").split("?", 1)[0]
        if not database or database == ":memory:" or "mode=memory" in str(query):
            return None
    return Path(database).expanduser()


def upgrade(engine: Engine) -> None:
    """Applies the alembic migrations up to head (idempotent; serialized across processes
    by an advisory lock on PostgreSQL)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _sqlite_migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(724513)")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


@contextlib.contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """On a SQLite file, an exclusive lock on `<file>.migrate.lock` while migrating: an API
    and a worker starting together would otherwise both create the tables, and one fail."""
    path = sqlite_path(engine.url.database, engine.url.query) \
        if engine.dialect.name == "sqlite" else None
    if path is None:
        yield
        return
    with file_lock(path.with_name(path.name + ".migrate.lock")):
        yield


def open_database(url: str, *, setting: str = "ALLOCATOR_DATABASE_URL",
                  migrate: bool = True) -> Engine:
    """An engine for `url` with the migrations applied and a write proven, or one line
    naming `setting`, the database and the cause: `SettingsError` when the URL or the
    SQLite path cannot work, `StoreError` when the server does not answer."""
    from sqlalchemy import delete, insert
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from api._settings import SettingsError
    from engine import StoreError

    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise SettingsError(f"{setting}: not a database URL ({e}).") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        engine = make_engine(url)
    except OSError as e:
        raise SettingsError(f"{setting}: cannot use the SQLite database {parsed.database}: "
                            f"{_sqlite_cause(sqlite_path(parsed.database, parsed.query), e)}."
                            ) from None
    except (ArgumentError, ImportError) as e:
        raise SettingsError(f"{setting}: cannot use {shown}: {e}.") from None
    try:
        if migrate:
            upgrade(engine)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        probe = {"id": f"write-probe-{uuid.uuid4().hex}", "role": "probe", "host": "",
                 "pid": 0, "started_at": now, "heartbeat_at": now}
        with engine.begin() as conn:  # a real write (and its undo), committed
            conn.execute(insert(HeartbeatRow).values(**probe))
            conn.execute(delete(HeartbeatRow).where(HeartbeatRow.id == probe["id"]))
    except (SQLAlchemyError, OSError) as e:
        engine.dispose()
        if parsed.get_backend_name() == "sqlite":
            cause = _sqlite_cause(sqlite_path(parsed.database, parsed.query), e)
            raise SettingsError(f"{setting}: cannot write the SQLite database "
                                f"{parsed.database}: {cause}.") from None
        raise StoreError(f"{setting}: the database {shown} does not answer or refuses "
                         f"writes: {_first_line(e)}.") from None
    return engine


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0]}" if text else type(orig).__name__


def _sqlite_cause(path: Path | None, error: BaseException) -> str:
    """Why a SQLite file cannot be written, in words a user can act on."""
    if path is not None:
        if path.is_dir():
            return "the path is a folder"
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
        if path.exists() and not os.access(path, os.W_OK):
            return "the file is read-only (permission denied)"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"the folder {path.parent} is not writable (permission denied)"
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}"
    return _first_line(error)
