"""Service settings, read from `ALLOCATOR_*` environment variables (pydantic-settings).

`load_settings()` is how a process starts: a setting that cannot work (a token no client
can send, a read lock without a key) is refused with one line naming the variable and the
reason (`SettingsError`), never a traceback and never silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine import InvalidSpecError

ENV_PREFIX = "ALLOCATOR_"
SECRET_FIELDS = frozenset({"api_token"})


class SettingsError(InvalidSpecError):
    """Raised at start when a setting (an `ALLOCATOR_*` variable) cannot be used; its
    message is one line naming the variable and the reason."""


def env_name(field: str) -> str:
    """The environment variable of a settings field (`api_token` -> `ALLOCATOR_API_TOKEN`)."""
    return f"{ENV_PREFIX}{field.upper()}"


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
        broker_timeout_s: Longest wait for the broker when the API sends a job or checks
            it (a down broker never holds a request longer).
        dispatch_interval_s: How often the API re-sends queued jobs the broker never got.
        redispatch_after_s: A queued job sent this long ago and still not started is sent
            again (a broker that restarted may have lost its message; a duplicate is
            claimed once).
        models_file: A TOML models file registering Hugging Face checkpoints by name
            (`allocator._registered`); checked at start, read again on every listing.
        max_model_bytes: Largest checkpoint `POST /models` accepts: the archive and its
            unpacked files (413 above).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True,
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
    broker_timeout_s: float = Field(default=0.5, gt=0, le=30)
    dispatch_interval_s: float = Field(default=2.0, gt=0, le=3600)
    redispatch_after_s: float = Field(default=300.0, gt=0)
    models_file: Path | None = None
    max_model_bytes: int = Field(default=2 * 2**30, gt=0)

    @field_validator("database_url", "broker_url", "api_token")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("api_token")
    @classmethod
    def _sendable_token(cls, value: str | None) -> str | None:
        """A token a client can put in an `Authorization` header, or a refusal: one with
        other characters, or with surrounding spaces, could never match."""
        if value is None:
            return value
        if value != value.strip():
            raise ValueError("has leading or trailing whitespace, which an Authorization "
                             "header cannot carry, so no request could ever match it; "
                             "remove the whitespace")
        bad = next((i for i, ch in enumerate(value) if not (ch.isascii() and ch.isprintable())),
                   None)
        if bad is not None:
            raise ValueError(f"character {bad + 1} is not printable ASCII, which an "
                             "Authorization header cannot carry, so no request could ever "
                             "match it; use ASCII letters, digits and punctuation")
        return value

    @field_validator("models_file")
    @classmethod
    def _readable_models_file(cls, value: Path | None) -> Path | None:
        """The models file as an absolute path, once it reads without error (workers and the
        probe get the same file whatever their working folder)."""
        if value is None:
            return None
        from allocator._registered import read_models_file

        path = value.expanduser().resolve()
        try:
            read_models_file(path)
        except InvalidSpecError as e:
            raise ValueError(str(e)) from None
        return path

    @model_validator(mode="after")
    def _read_lock_has_a_key(self) -> Settings:
        if self.read_requires_token and not self.api_token:
            raise ValueError(f"{env_name('read_requires_token')}=1 needs "
                             f"{env_name('api_token')}: without a token every read would "
                             "stay open; set the token or unset the read lock")
        return self

    def resolved_data_dir(self) -> Path:
        """`data_dir`, else the engine's default data folder (created); `SettingsError` when
        `data_dir` cannot be created."""
        if self.data_dir is not None:
            try:
                self.data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SettingsError(f"{env_name('data_dir')}={str(self.data_dir)!r}: cannot "
                                    f"create the folder: {e.strerror or e}") from None
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
        if self.models_file is not None:
            from allocator._registered import MODELS_FILE_ENV

            env[MODELS_FILE_ENV] = str(self.models_file)
        return env

    # Synchronous solves (`api._solving`): each runs in one of a few solver processes.
    #: Solver processes for `POST /solve` and re-solves: that many run at once, one more
    #: is a 503 with `Retry-After` (never a queue).
    sync_solve_workers: int = Field(default=2, ge=1, le=32)
    #: Seconds past `sync_time_limit_s` before a synchronous solve's process is killed and
    #: the request answered with a 422 naming the limit.
    sync_grace_s: float = Field(default=2.0, ge=0, le=600)

    # Fan-out in Celery mode (`api._fanout`): one job's work in chunks over many workers.
    #: Split a model job's layer-parallel sensitivity (the measured estimator) into chunks
    #: of layers computed by every live Celery worker (off: the job's worker does it all).
    fanout: bool = True
    #: Chunks per live worker process when a table's chunks are first planned: more give
    #: finer balance, progress and restarts, fewer less per-chunk overhead.
    fanout_chunks_per_worker: int = Field(default=4, ge=1, le=64)
    #: Seconds a chunk's lease lasts unrenewed (its worker renews it every third of
    #: that): a chunk whose worker died is taken over this long after.
    fanout_lease_s: float = Field(default=30.0, ge=1, le=3600)
    #: Models a worker process keeps loaded for chunk tasks (least recently used dropped
    #: first): size it to the worker's memory over the largest model's.
    worker_models: int = Field(default=2, ge=1, le=64)


def load_settings(**overrides: Any) -> Settings:
    """`Settings` from the environment (and `overrides`), or `SettingsError` with one line
    naming the first bad variable and why (secrets are never echoed)."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise SettingsError(describe_error(e)) from None


def describe_error(error: ValidationError) -> str:
    """One line for the first error of a settings validation."""
    first = error.errors()[0]
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    loc = [str(part) for part in first.get("loc", ())]
    if not loc:
        return message
    field = loc[0]
    shown = "" if field in SECRET_FIELDS else f"={first.get('input')!r}"
    return f"{env_name(field)}{shown}: {message}"
