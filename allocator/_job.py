"""What a job means: the solve, its Pareto front along `bits`, and the uniform rows.

A job service worker calls `run_model_job` or `run_problem_job` and stores what it returns;
the meaning of a job (which points are measured, what the front document holds) lives here
with the rest of the library, not in the service.

Model jobs: `solve` (sensitivity, latency, solve, apply, measure), then the front of the
job's problem along `bits`, each front point and each uniform row measured on the engine
when `measure` is on and the model is small enough, else only the chosen point. Problem
jobs: the solve and the front, predicted only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from allocator._budget import Budget, parse_budgets
from allocator._pareto import ParetoFront, pareto_front
from allocator._pipeline import SolveReport, solve, solve_problem
from allocator._problem import Problem
from allocator.solvers import uniform_assignment

if TYPE_CHECKING:
    from allocator._spec import ModelSpecLike

OnStage = Callable[[str, float], None]

# Share of the progress bar each part of a model job takes.
PIPELINE_SHARE = 0.7
FRONT_SHARE = 0.29


@dataclass(frozen=True)
class JobLimits:
    """What a job may spend.

    Attributes:
        time_limit_s: The solve and the front together: the solve gets it all, the front
            what the solve left (it stops there with the points found).
        front_points: Budget values swept along `bits` for the front.
        measure_front_max_params: Models above this many parameters get only their chosen
            point measured, not every front point and uniform row.
    """

    time_limit_s: float
    front_points: int
    measure_front_max_params: int


@dataclass
class JobResult:
    """What a finished job stores: the report, the front document and the problem."""

    report: SolveReport
    front: dict[str, Any]
    problem: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


def uniform_points(problem: Problem, bits: Sequence[int]) -> list[dict[str, Any]]:
    """One row per candidate bit-width: every layer at it (see `uniform_assignment`), with
    objective and cost, and room for measured metrics."""
    out = []
    for b in bits:
        assign = uniform_assignment(problem, b)
        objective, cost = problem.evaluate(assign)
        out.append({"bits": b, "cost": cost, "objective": objective, "metrics": None,
                    "assignment": assign})
    return out


def _front(problem: Problem, budgets: Sequence[Budget], limits: JobLimits,
           solve_s: float) -> ParetoFront:
    fixed = [b for b in budgets if b.kind not in ("bits", "latency")]
    left_s = max(limits.time_limit_s - solve_s, 0.0)
    return pareto_front(problem, "bits", limits.front_points, budgets=fixed,
                        time_limit_s=limits.time_limit_s, total_time_s=left_s)


def run_problem_job(document: Mapping[str, Any], budgets: Sequence[str], *, solver: str,
                    seed: int, bits: Sequence[int] | None, limits: JobLimits,
                    on_stage: OnStage) -> JobResult:
    """The solve and the `bits` front of an `allocator.problem/1` document, predicted."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    on_stage("load", 0.0)
    problem = Problem.from_dict(document)
    if bits:
        problem = problem.with_bits(bits)
    parsed = parse_budgets(list(budgets))
    timings["load_s"] = time.perf_counter() - t0
    on_stage("solve", 0.1)
    report = solve_problem(problem, parsed, solver=solver, seed=seed,
                           time_limit_s=limits.time_limit_s)
    timings["solve_s"] = report.timings_s["solve_s"]
    on_stage("pareto", 0.6)
    t0 = time.perf_counter()
    front = _front(problem, parsed, limits, report.timings_s["solve_s"])
    config = report.config
    doc = front.to_dict() | {"metric": None, "measured": [None] * len(front.points),
                             "uniform": uniform_points(problem, problem.bits),
                             "chosen": {"cost": config.cost, "objective": config.objective,
                                        "bits": config.bits, "metrics": None}}
    timings["pareto_s"] = time.perf_counter() - t0
    return JobResult(report, doc, None, timings)


def run_model_job(model: str | ModelSpecLike, budgets: Sequence[str], *, solver: str,
                  estimator: str | None, seed: int, bits: Sequence[int], measure: bool,
                  limits: JobLimits, on_stage: OnStage) -> JobResult:
    """`solve` on a model, then its `bits` front with measured points (see the module)."""
    import zoo

    def pipeline_stage(stage: str, fraction: float) -> None:
        if stage != "done":
            on_stage(stage, fraction * PIPELINE_SHARE)

    spec = zoo.get_model(model) if isinstance(model, str) else model
    report = solve(spec, budgets, solver=solver, bits=tuple(bits), estimator=estimator,
                   seed=seed, measure=measure, time_limit_s=limits.time_limit_s,
                   on_stage=pipeline_stage)
    timings = dict(report.timings_s)
    on_stage("pareto", PIPELINE_SHARE)
    t0 = time.perf_counter()
    problem = report.problem
    front = _front(problem, parse_budgets(list(budgets)), limits, report.timings_s["solve_s"])
    measure_all = measure and spec.params() <= limits.measure_front_max_params
    uniform = uniform_points(problem, problem.bits)
    total = max(len(front.points) + len(uniform), 1)
    measured: list[dict[str, Any] | None] = []
    for point in front.points:
        measured.append(_point(spec, report, point.bits) if measure_all else None)
        on_stage("pareto", PIPELINE_SHARE + FRONT_SHARE * len(measured) / total)
    for j, row in enumerate(uniform):
        if measure_all:
            row["metrics"] = _point(spec, report, row["assignment"], latency=False)["metrics"]
        on_stage("pareto", PIPELINE_SHARE + FRONT_SHARE * (len(measured) + j + 1) / total)
    timings["pareto_s"] = time.perf_counter() - t0
    doc = front.to_dict() | {"metric": spec.primary_metric,
                             "higher_is_better": spec.higher_is_better,
                             "measured": measured, "uniform": uniform,
                             "chosen": _chosen(report)}
    return JobResult(report, doc, problem.to_dict(), timings)


def _point(spec: ModelSpecLike, report: SolveReport, bits: Mapping[str, int], *,
           latency: bool = True) -> dict[str, Any]:
    """One assignment measured with the report's quantization settings."""
    from allocator._evaluate import measure_config

    m = measure_config(spec, dataclasses.replace(report.settings, bits=dict(bits)),
                       latency=latency)
    out: dict[str, Any] = {"metrics": m.metrics, "size_bytes": m.size_bytes}
    if latency:
        out["latency_us"] = m.latency_us
    return out


def _chosen(report: SolveReport) -> dict[str, Any]:
    config, measured = report.config, report.measured
    return {"cost": config.cost, "objective": config.objective, "bits": config.bits,
            "metrics": measured.get("metrics") if measured else None, "status": config.status,
            "measured": ({k: measured[k] for k in ("size_bytes", "latency_us") if k in measured}
                         if measured else None)}
