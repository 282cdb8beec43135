"""Request and response models (pydantic): what OpenAPI at /docs describes.

Naming follows the template split: `*Create` is what a client sends, `*Public` what the
service returns.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_BITS = [2, 3, 4, 5, 6, 8]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Stage = Literal["queued", "load", "sensitivity", "latency", "solve", "measure", "pareto", "done"]
BudgetText = Field(min_length=1, max_length=64, examples=["4bits"])
Bits = list[int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Properties to receive on job creation
class JobCreate(_Strict):
    """A job: a registered model (sensitivity, solve, front, measurements) or an
    allocator.problem/1 document (solve and front only). Exactly one of `model`, `problem`."""

    model: str | None = Field(default=None, min_length=1, max_length=128,
                              examples=["digits-cnn"])
    problem: dict[str, Any] | None = Field(default=None,
                                           description="allocator.problem/1 document")
    budgets: list[str] = Field(min_length=1, max_length=4, examples=[["4bits"]])
    solver: str = Field(default="ilp", min_length=1, max_length=32)
    estimator: str = Field(default="hutchinson", min_length=1, max_length=32)
    bits: list[int] | None = Field(
        default=None, min_length=1, max_length=7, examples=[[2, 4, 8]],
        description="Candidate bit-widths (default: 2,3,4,5,6,8 for models, the problem's own)")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    measure: bool = True


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
    created_at: str
    started_at: str | None
    finished_at: str | None
    timings_s: dict[str, float]
    attempts: int


class JobsPublic(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class ResolveCreate(_Strict):
    """A re-solve of a job's stored problem under other budgets or another solver."""

    budgets: list[str] = Field(min_length=1, max_length=4, examples=[["3bits"]])
    solver: str = Field(default="ilp", min_length=1, max_length=32)
    bits: list[int] | None = Field(default=None, min_length=1, max_length=7)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class SolveCreate(ResolveCreate):
    """A synchronous solve of an allocator.problem/1 document."""

    problem: dict[str, Any] = Field(description="allocator.problem/1 document")


class BudgetsValidate(_Strict):
    """Budget texts to check against the budget grammar."""

    budgets: list[str] = Field(max_length=16, examples=[["4bits", "12MB"]])


class BudgetPublic(BaseModel):
    text: str
    kind: str
    value: float


class BudgetsPublic(BaseModel):
    budgets: list[BudgetPublic]


class ModelPublic(BaseModel):
    name: str
    description: str
    available: bool


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


class SolverPublic(BaseModel):
    name: str
    available: bool
    description: str


class SolversPublic(BaseModel):
    solvers: list[SolverPublic]


class HealthPublic(BaseModel):
    status: str
    database: str
    workers: str


class ErrorPublic(BaseModel):
    """Every 4xx/5xx body."""

    detail: str
    field: str | None = None
    value: Any = None
