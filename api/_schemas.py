"""Request and response models (pydantic): what OpenAPI at /docs describes.

Naming follows the template split: `*Create` is what a client sends, `*Public` what the
service returns. Routes return plain data and FastAPI checks it against these models.
Documents the library writes (`allocator.bitconfig/1`, `allocator.pareto/1`) are open:
keys a newer library adds pass through, keys an older stored document lacks stay absent
(routes serialize with `response_model_exclude_unset`, so no key appears that the data
did not have).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from allocator import MAX_BUDGET_CHARS, ProblemDocument
from allocator._rules import MAX_RULE_CHARS, MAX_RULES, RuleError, parse_fix, parse_tie
from api._store import STAGES, STATUSES
from engine import BITCONFIG_FORMAT, DEFAULT_BITS, MAX_BITS, MIN_BITS, Document

Status = Literal[STATUSES]
Stage = Literal[STAGES]
# Budgets one job or solve may combine.
MAX_BUDGETS = 4
# Candidate bit-widths a request may name: each of MIN_BITS..MAX_BITS once.
MAX_CANDIDATE_BITS = MAX_BITS - MIN_BITS + 1
# Largest page of `GET /jobs`.
MAX_PAGE_SIZE = 500


class _Strict(Document):
    """A request body: unknown keys are errors, and before any field is read the whole body
    is checked (`engine.Document`): nesting at most 32 deep, every string (keys too) valid
    Unicode, every number finite. A failure is a 422 naming the path to the bad value."""

    model_config = ConfigDict(frozen=False)
    finite_numbers = True


class _Document(BaseModel):
    """A JSON document the library writes: keys this model does not name pass through."""

    model_config = ConfigDict(extra="allow")


_DEFAULT_BITS_TEXT = ",".join(map(str, DEFAULT_BITS))
MAX_SEED = 2**31 - 1
BudgetText = Annotated[str, Field(min_length=1, max_length=MAX_BUDGET_CHARS)]


def _tie_text(text: str) -> str:
    try:
        parse_tie(text, "ties")
    except RuleError as e:  # a 422 naming `body.ties.<i>` and the text, without "Value error"
        raise PydanticCustomError("rule", str(e)) from None
    return text


def _fix_text(text: str) -> str:
    try:
        parse_fix(text, "fix")
    except RuleError as e:
        raise PydanticCustomError("rule", str(e)) from None
    return text


TieText = Annotated[str, Field(min_length=1, max_length=MAX_RULE_CHARS),
                    AfterValidator(_tie_text)]
FixText = Annotated[str, Field(min_length=1, max_length=MAX_RULE_CHARS),
                    AfterValidator(_fix_text)]


# Properties to receive on job creation
class JobCreate(_Strict):
    """A job: a registered model (sensitivity, solve, front, measurements) or an
    allocator.problem/1 document (solve and front only). Exactly one of `model`, `problem`."""

    model: str | None = Field(default=None, min_length=1, max_length=128,
                              examples=["digits-cnn"])
    problem: ProblemDocument | None = Field(default=None,
                                            description="allocator.problem/1 document")
    budgets: list[BudgetText] = Field(min_length=1, max_length=MAX_BUDGETS,
                                      examples=[["4bits"]])
    solver: str = Field(default="ilp", min_length=1, max_length=32)
    estimator: str | None = Field(
        default=None, min_length=1, max_length=32,
        description="Sensitivity estimator (default: the model's own: hutchinson, fisher for "
                    "causal LMs, or what its registration names)")
    bits: list[int] | None = Field(
        default=None, min_length=1, max_length=MAX_CANDIDATE_BITS, examples=[[2, 4, 8]],
        description=f"Candidate bit-widths (default: {_DEFAULT_BITS_TEXT} for models, the "
                    "problem's own for problems)")
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    measure: bool = True
    ties: list[TieText] = Field(
        default_factory=list, max_length=MAX_RULES, validation_alias=AliasChoices("ties", "tie"),
        examples=[[r"re:\.(q|k|v)_proj$"]],
        description="Tie rules (`--tie`; the key `tie` is read too): layers that take one "
                    "bit-width. `re:REGEX` groups the matching layers per block (the name "
                    "without the matched part: q/k/v of block N together); `a,b,c` names one "
                    "group. A rule that matches no layer fails the job (a problem job: 422)")
    target: str = Field(
        default="engine", min_length=1, max_length=32, examples=["gguf"],
        description="Deployment target (`--target`): engine, onnx, compressed-tensors or gguf; "
                    "the solve measures the target's schemes and counts its file's bytes (a "
                    "bits budget is its bits per weight). Model jobs only")
    fix: list[FixText] = Field(
        default_factory=list, max_length=MAX_RULES, examples=[["lm_head=8"]],
        description="Pinned layers (`--fix`): `NAME=BITS`, `a,b=BITS` or `re:REGEX=BITS`; the "
                    "width must be a candidate bit-width")


# Properties to return for a job
class JobPublic(BaseModel):
    """A job's request and state (the database row)."""

    id: str
    status: Status
    stage: Stage
    progress: float
    error: str | None
    kind: Literal["model", "problem"]
    model: str | None
    budgets: list[str]
    solver: str | None
    estimator: str | None
    bits: list[int] | None
    seed: int | None
    measure: bool | None
    ties: list[str] | None = Field(default=None, description="Tie rules (absent: none)")
    fix: list[str] | None = Field(default=None, description="Pinned layers (absent: none)")
    target: str | None = Field(default=None,
                               description="Deployment target (absent: the engine)")
    created_at: str
    started_at: str | None
    finished_at: str | None
    timings_s: dict[str, float]
    attempts: int
    attempts_history: list[AttemptPublic] = Field(
        default_factory=list, description="Each run of the job, first first: worker, times, "
        "outcome and the reason it ended (a re-queue's reason stays after a retry succeeds).")


class JobsPublic(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class ResolveCreate(_Strict):
    """A re-solve of a job's stored problem under other budgets or another solver."""

    budgets: list[BudgetText] = Field(min_length=1, max_length=MAX_BUDGETS,
                                      examples=[["3bits"]])
    solver: str = Field(default="ilp", min_length=1, max_length=32)
    bits: list[int] | None = Field(default=None, min_length=1, max_length=MAX_CANDIDATE_BITS)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class SolveCreate(ResolveCreate):
    """A synchronous solve of an allocator.problem/1 document."""

    problem: ProblemDocument = Field(description="allocator.problem/1 document")


class CostPublic(_Document):
    """Predicted cost of an assignment; a key is absent when the problem has no such cost
    (latency without a latency table), null when it is not finite."""

    avg_bits: float | None = None
    size_bytes: float | None = None
    bops: float | None = None
    latency_us: float | None = None


class BitConfigPublic(_Document):
    """An `allocator.bitconfig/1` document: per-layer weight bits, the engine settings they
    run with, and what the solver predicted. Only `format` and `bits` are always there
    (configs stored before a field existed lack it); `extra` is free-form (backend,
    measurements, `infeasible_budgets`: the smallest value of each unmet budget)."""

    format: Literal[BITCONFIG_FORMAT]
    bits: dict[str, int]
    activation_bits: int | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    rounding: str | None = None
    bias_correction: bool | None = None
    clip_search: bool | None = None
    calibration_inputs: str | None = None
    smoothing_alpha: float | None = None
    activation_grid: str | None = None
    model: str | None = None
    solver: str | None = None
    status: str | None = Field(default=None, description="optimal, feasible or infeasible")
    objective: float | None = None
    solve_s: float | None = None
    budgets: list[str] | None = None
    cost: CostPublic | None = None
    extra: dict[str, Any] | None = None


class ResolvedPublic(BitConfigPublic):
    """The BitConfig of a re-solve, with the job whose problem it solved."""

    job_id: str


class ResultPublic(BaseModel):
    """A succeeded job's answer, in the report shape of `allocator solve --json`: its
    BitConfig, what was measured on the engine (model jobs with `measure`), the best uniform
    bit-width and the seconds per stage, plus the allocation problem it solved."""

    config: BitConfigPublic
    measured: dict[str, Any]
    uniform: dict[str, Any]
    timings_s: dict[str, float]
    problem: dict[str, Any] | None = Field(description="allocator.problem/1 document")


class ParetoPointPublic(_Document):
    """One non-dominated solution of the sweep."""

    objective: float | None = None
    cost: CostPublic
    bits: dict[str, int]
    status: str | None = None
    solver: str | None = None


class ParetoPublic(_Document):
    """A job's Pareto front: an `allocator.pareto/1` document plus, aligned with `points`,
    what was measured (`measured`, null where a point was not), the uniform rows and the
    job's own answer (`chosen`)."""

    format: str
    model: str | None = None
    axis: str | None = None
    cost_key: str | None = None
    fixed_budgets: list[str] | None = None
    points: list[ParetoPointPublic]
    metric: str | None = None
    higher_is_better: bool | None = None
    measured: list[dict[str, Any] | None] | None = None
    uniform: list[dict[str, Any]] | None = None
    chosen: dict[str, Any] | None = None


class BudgetsValidate(_Strict):
    """Budget texts to check against the budget grammar."""

    budgets: list[BudgetText] = Field(max_length=16, examples=[["4bits", "12MB"]])


class BudgetPublic(BaseModel):
    text: str
    kind: str
    value: float


class BudgetsPublic(BaseModel):
    budgets: list[BudgetPublic]


class ModelPublic(BaseModel):
    """A model jobs can name: a built-in (no `origin`), or one registered by the models file
    or uploaded (`origin`, `source` and, for uploads, size, checksum and date)."""

    name: str
    description: str
    available: bool
    missing: str | None = Field(default=None, description="What to install, when not available")
    origin: Literal["models-file", "upload"] | None = Field(
        default=None, description="Where a registered model comes from; absent for built-ins")
    source: str | None = Field(default=None, description="`hf:<checkpoint folder or repo id>`")
    data: str | None = Field(default=None, description="Its calibration data file")
    metric: str | None = None
    estimator: str | None = Field(default=None,
                                  description="The estimator its jobs use unless they name one")
    size_bytes: int | None = Field(default=None, description="Unpacked size of an upload")
    sha256: str | None = Field(default=None, description="SHA-256 of the uploaded archive")
    created: str | None = Field(default=None, description="When it was uploaded (ISO 8601)")


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


# The form of `POST /models` (read as a stream by the route, so described here by hand).
MODEL_UPLOAD_FORM: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "archive": {"type": "string", "format": "binary",
                    "description": "A zip or tar (plain or gzip) of a Hugging Face checkpoint "
                                   "folder: config.json, tokenizer files, *.safetensors (at "
                                   "the top or in one folder; no pickles, no code)"},
        "file": {"type": "string", "format": "binary",
                 "description": "The same as `archive` (give one of the two)"},
        "data": {"type": "string", "format": "binary",
                 "description": "Calibration data: .txt, .jsonl or .npy"},
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$",
                 "description": "Default: upload-<first 12 hex of the archive's sha256>"},
        "description": {"type": "string", "maxLength": 500},
    }}}}}}


class SolverPublic(BaseModel):
    name: str
    available: bool
    description: str
    extra: str | None = Field(default=None, description="The package extra it needs, if any")
    needs_model: bool | None = Field(default=None,
                                     description="Learns bit-widths on the model (model jobs)")
    needs_torch: bool | None = None
    runs_in_api: bool | None = Field(default=None,
                                     description="Offered by the synchronous solves")


class SolversPublic(BaseModel):
    solvers: list[SolverPublic]


class EstimatorPublic(BaseModel):
    name: str
    available: bool
    description: str


class EstimatorsPublic(BaseModel):
    estimators: list[EstimatorPublic]


class HwProfilePublic(BaseModel):
    """A stored hardware latency table; an unreadable one carries `error`."""

    name: str = Field(description="Name in the profile registry.")
    path: str = Field(description="The table file on the service's disk.")
    error: str | None = Field(None, description="Why the file could not be read.")
    device: str = Field(description="CPU or GPU the table was measured on.")
    model: str | None = Field(None, description="Model it was profiled for, if any.")
    batch: int = Field(description="Batch size of the timed calls.")
    entries: int = Field(description="Distinct layer shapes measured.")
    created: str = Field(description="When it was made (ISO 8601).")


class HwProfilesPublic(BaseModel):
    hwprofiles: list[HwProfilePublic]


class HealthPublic(BaseModel):
    """Whether the service can take jobs (503 when it cannot), one check per dependency."""

    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="ok; degraded: jobs are taken but wait (broker down, no live worker); "
                    "unavailable (503): the database cannot be read or written")
    database: str = Field(description='"ok" or "error" (read and write checked)')
    workers: str = Field(description="How jobs run: celery, in-process:N or none")
    broker: str | None = Field(default=None, description='Celery mode: "ok" or "error"')
    detail: str | None = Field(default=None, description="What is wrong, one line")
    checks: HealthChecksPublic | None = None


class JobDefaultsPublic(BaseModel):
    """What a job request gets for the fields it leaves out."""

    solver: str
    estimator: str | None = Field(description="None: the model's own default")
    seed: int
    measure: bool


class LimitsPublic(BaseModel):
    """What one request may ask for."""

    max_budgets: int
    max_upload_bytes: int
    sync_max_layers: int
    sync_time_limit_s: float
    job_time_limit_s: float
    max_page_size: int
    max_model_bytes: int | None = Field(default=None,
                                        description="Largest checkpoint POST /models takes")


class TargetPublic(BaseModel):
    """A deployment target: its name and what it writes."""

    name: str
    description: str


class ServiceSettingsPublic(BaseModel):
    """What the service offers and expects, for clients that build requests (the dashboard
    reads it instead of repeating the server's facts)."""

    default_bits: list[int] = Field(description="Candidate bit-widths of a model job that "
                                                "names none")
    min_bits: int
    max_bits: int
    statuses: list[Status]
    active_statuses: list[Status] = Field(description="Statuses of jobs not yet finished")
    stages: list[Stage]
    job_defaults: JobDefaultsPublic
    limits: LimitsPublic
    targets: list[TargetPublic] = Field(
        default_factory=list, description="Deployment targets a model job can name (`target`)")
    write_requires_token: bool = Field(
        description="Every write needs `Authorization: Bearer <token>`")
    read_requires_token: bool
    workers: str


class ErrorPublic(BaseModel):
    """Every 4xx/5xx body."""

    detail: str
    field: str | None = None
    value: Any = None


# -- health checks and attempt history (appended: H4) ---------------------------------------


class DependencyPublic(BaseModel):
    """One dependency's check."""

    ok: bool
    latency_ms: float
    read: bool | None = None
    write: bool | None = None
    detail: str | None = None


class WorkerBeatPublic(BaseModel):
    """A worker process and its last heartbeat."""

    id: str
    host: str
    pid: int
    started_at: str | None
    heartbeat_at: str | None
    age_s: float
    job_id: str | None


class WorkersCheckPublic(BaseModel):
    """Worker processes alive by their heartbeats."""

    ok: bool
    mode: str
    expected: bool = Field(description="Whether this service counts on workers")
    alive: int
    last_heartbeat_at: str | None
    heartbeat_timeout_s: float
    items: list[WorkerBeatPublic]
    detail: str | None = None


class HealthChecksPublic(BaseModel):
    """Each dependency of the service; `broker` only in Celery mode."""

    database: DependencyPublic
    broker: DependencyPublic | None = None
    workers: WorkersCheckPublic


class AttemptPublic(BaseModel):
    """One run of a job: who ran it, when, and how and why it ended."""

    attempt: int
    worker_id: str | None
    started_at: str | None
    ended_at: str | None
    outcome: Literal["running", "succeeded", "failed", "cancelled", "requeued"]
    reason: str | None


HealthPublic.model_rebuild()
# A job model that names AttemptPublic (defined after it) resolves it here.
JobPublic.model_rebuild()
JobsPublic.model_rebuild()
