"""Service settings, read from `ALLOCATOR_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service reads from its environment; built once per app, never at import.

    Attributes:
        database_url: SQLAlchemy URL; default a SQLite file `jobs.sqlite` under `data_dir`.
        broker_url: Celery broker (Redis); unset means the in-process worker pool runs jobs.
        api_token: When set, every write (POST) needs `Authorization: Bearer <token>`.
        read_requires_token: Also require the token on reads.
        data_dir: Caches, trained models, tables (`ALLOCATOR_DATA_DIR`; default user cache).
        workers: Size of the in-process worker pool (0: none, e.g. an API-only process).
        heartbeat_interval_s: How often a running job's worker proves it is alive.
        heartbeat_timeout_s: A running job whose heartbeat is older is taken as orphaned.
        max_attempts: Runs of one job before a dead worker fails it instead of re-queueing.
        poll_interval_s: How often idle in-process workers look for queued jobs.
        max_upload_bytes: Largest request body accepted (413 above).
        sync_max_layers: Largest problem `POST /solve` and re-solves accept.
        sync_time_limit_s: Solver time limit of synchronous solves.
        job_time_limit_s: Solver time limit inside jobs.
        front_points: Budget values swept for a job's Pareto front.
        measure_front_max_params: Models up to this many parameters get every front point
            measured on the engine; bigger ones only the chosen point.
    """

    model_config = SettingsConfigDict(env_prefix="ALLOCATOR_", env_ignore_empty=True,
                                      extra="ignore")

    database_url: str | None = None
    broker_url: str | None = None
    api_token: str | None = None
    read_requires_token: bool = False
    data_dir: Path | None = None
    workers: int = Field(default=1, ge=0, le=64)
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=2, ge=1)
    poll_interval_s: float = Field(default=0.5, gt=0)
    max_upload_bytes: int = Field(default=8 * 2**20, gt=0)
    sync_max_layers: int = Field(default=2000, gt=0)
    sync_time_limit_s: float = Field(default=10.0, gt=0)
    job_time_limit_s: float = Field(default=60.0, gt=0)
    front_points: int = Field(default=8, ge=2, le=64)
    measure_front_max_params: int = Field(default=5_000_000, ge=0)

    @field_validator("database_url", "broker_url", "api_token")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    def resolved_data_dir(self) -> Path:
        """`data_dir`, else the engine's default data folder (created)."""
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return self.data_dir
        from engine import data_dir

        return data_dir()

    def resolved_database_url(self) -> str:
        """`database_url`, else a SQLite file under the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir() / 'jobs.sqlite'}"

    def worker_env(self) -> dict[str, str]:
        """The environment a worker process needs to see the same settings."""
        env = {"ALLOCATOR_DATABASE_URL": self.resolved_database_url()}
        if self.data_dir is not None:
            env["ALLOCATOR_DATA_DIR"] = str(self.data_dir)
        return env
