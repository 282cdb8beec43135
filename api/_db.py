"""The database: SQLAlchemy 2 tables, engine creation (SQLite in WAL mode) and migrations.

Tables: `jobs` (one row per job: the request and its state, the truth of the service),
`results` (the BitConfig and measurements), `fronts` (the Pareto front), `problems` (the
cached allocation table a job solved, reused by re-solves). JSON documents are stored as
text written by `json.dumps`, so any database keeps them byte for byte.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

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

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


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


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL mode and a busy timeout (API and workers share
    the file), `sqlite://` (memory) one shared connection; a plain `postgresql://` URL
    gets the psycopg 3 driver (the one installed)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        if not memory:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs = ({"poolclass": StaticPool} if memory else {})
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30},
                               **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


def upgrade(engine: Engine) -> None:
    """Applies the alembic migrations up to head (idempotent; serialized across processes
    by an advisory lock on PostgreSQL)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(724513)")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
