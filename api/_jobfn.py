"""The job function: what a worker (in-process or Celery) runs for one job.

Model jobs: `allocator.solve` (sensitivity, solve, apply, measure), then the Pareto front of
the job's problem along `bits`, each front point and each uniform baseline measured on the
engine when `measure` is on and the model is small enough, else only the chosen point.
Problem jobs: the solve and the front, predicted only. torch is imported here, lazily, so
the API process that merely imports this package never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from api._settings import Settings
from api._store import STAGES, JobOutput, JobRecord

OnStage = Callable[[str, float], None]

# Share of the progress bar each part of a model job takes.
_PIPELINE_SHARE = 0.7
_FRONT_SHARE = 0.29


class JobCancelled(Exception):
    """Raised inside a job when its row says it is no longer this worker's to run."""


def execute(job: JobRecord, settings: Settings, problem: dict[str, Any] | None,
            on_stage: OnStage) -> tuple[JobOutput, dict[str, float]]:
    """Runs `job`; returns its output and timings (seconds per stage)."""
    if job.kind == "model":
        return _model_job(job, settings, on_stage)
    if problem is None:
        from engine import StoreError

        raise StoreError(f"problem job {job.id} has no stored problem.")
    return _problem_job(job, settings, problem, on_stage)


def uniform_points(problem, bits: list[int]) -> list[dict[str, Any]]:
    """One assignment per candidate bit-width: every layer at it (a layer that cannot take
    it at its nearest allowed choice below, else its smallest), with objective and cost."""
    out = []
    for b in bits:
        assign = {}
        for layer in problem.layers:
            choices = problem.layer_choices(layer)
            assign[layer.name] = max([c for c in choices if c <= b] or [min(choices)])
        objective, cost = problem.evaluate(assign)
        out.append({"bits": b, "cost": cost, "objective": objective, "metrics": None,
                    "assignment": assign})
    return out


def _problem_job(job: JobRecord, settings: Settings, data: dict[str, Any],
                 on_stage: OnStage) -> tuple[JobOutput, dict[str, float]]:
    from allocator._budget import parse_budgets
    from allocator._problem import Problem
    from allocator.solvers import get_solver

    spec = job.spec
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    on_stage("load", 0.0)
    problem = Problem.from_dict(data)
    if spec.get("bits"):
        problem = problem.with_bits(spec["bits"])
    budgets = parse_budgets(spec["budgets"])
    timings["load_s"] = time.perf_counter() - t0
    on_stage("solve", 0.1)
    t0 = time.perf_counter()
    solution = get_solver(spec["solver"]).solve(problem, budgets, seed=spec["seed"],
                                                time_limit_s=settings.job_time_limit_s)
    config = solution.to_bitconfig(problem, budgets)
    best_uniform = get_solver("uniform").solve(problem, budgets)
    uniform = ({} if best_uniform.status == "infeasible" else
               {"bits": best_uniform.extra.get("uniform_bits"),
                "objective": best_uniform.objective, "cost": best_uniform.cost,
                "assignment": best_uniform.bits})
    timings["solve_s"] = time.perf_counter() - t0
    on_stage("pareto", 0.6)
    t0 = time.perf_counter()
    front = _front(problem, budgets, settings)
    doc = front.to_dict() | {"metric": None, "measured": [None] * len(front.points),
                             "uniform": uniform_points(problem, list(problem.bits)),
                             "chosen": {"cost": config.cost, "objective": config.objective,
                                        "bits": config.bits, "metrics": None}}
    timings["pareto_s"] = time.perf_counter() - t0
    return JobOutput(config=config.to_dict(), measured={}, uniform=uniform, front=doc), timings


def _front(problem, budgets, settings: Settings):
    from allocator._pareto import pareto_front

    fixed = [b for b in budgets if b.kind not in ("bits", "latency")]
    return pareto_front(problem, "bits", settings.front_points, budgets=fixed,
                        time_limit_s=settings.job_time_limit_s)


def _measure(spec, template, bits: dict[str, int], *, latency: bool) -> dict[str, Any]:
    """Applies `bits` on the engine (quantization settings of `template`) and measures it."""
    import engine
    from engine import BitConfig

    cfg = BitConfig(bits=bits, activation_bits=template.activation_bits,
                    group_size=template.group_size, rounding=template.rounding,
                    bias_correction=template.bias_correction, clip_search=template.clip_search,
                    calibration_inputs=template.calibration_inputs)
    qmodel = spec.quantize(cfg)
    out: dict[str, Any] = {"metrics": spec.evaluate(qmodel),
                           "size_bytes": engine.model_size_bytes(qmodel)}
    if latency:
        out["latency_us"] = spec.measure_latency_us(qmodel)
    return out


def _model_job(job: JobRecord, settings: Settings,
               on_stage: OnStage) -> tuple[JobOutput, dict[str, float]]:
    import allocator
    import zoo

    spec = job.spec

    last = ["load"]

    def pipeline_stage(stage: str, fraction: float) -> None:
        if stage == "done":
            return
        # A stage the service does not know reports as the one before it.
        last[0] = stage if stage in STAGES else last[0]
        on_stage(last[0], fraction * _PIPELINE_SHARE)

    result = allocator.solve(job.model, spec["budgets"], solver=spec["solver"],
                             bits=tuple(spec["bits"]), estimator=spec["estimator"],
                             seed=spec["seed"], measure=spec["measure"],
                             time_limit_s=settings.job_time_limit_s, on_stage=pipeline_stage)
    timings = dict(result.timings_s)
    config, problem = result.config, result.problem
    on_stage("pareto", _PIPELINE_SHARE)
    t0 = time.perf_counter()
    from allocator._budget import parse_budgets

    front = _front(problem, parse_budgets(spec["budgets"]), settings)
    model = zoo.get_model(job.model)
    measure_all = spec["measure"] and model.params() <= settings.measure_front_max_params
    uniform = uniform_points(problem, list(problem.bits))
    total = len(front.points) + len(uniform)
    measured: list[dict[str, Any] | None] = []
    for i, point in enumerate(front.points):
        measured.append(_measure(model, config, point.bits, latency=True) if measure_all else None)
        on_stage("pareto", _PIPELINE_SHARE + _FRONT_SHARE * (i + 1) / max(total, 1))
    for j, row in enumerate(uniform):
        if measure_all:
            row["metrics"] = _measure(model, config, row["assignment"], latency=False)["metrics"]
        done = len(measured) + j + 1
        on_stage("pareto", _PIPELINE_SHARE + _FRONT_SHARE * done / max(total, 1))
    timings["pareto_s"] = time.perf_counter() - t0
    chosen_metrics = result.measured.get("metrics") if result.measured else None
    doc = front.to_dict() | {
        "metric": model.primary_metric, "higher_is_better": model.higher_is_better,
        "measured": measured, "uniform": uniform,
        "chosen": {"cost": config.cost, "objective": config.objective, "bits": config.bits,
                   "metrics": chosen_metrics, "status": config.status,
                   "measured": ({k: result.measured[k] for k in ("size_bytes", "latency_us")
                                 if k in result.measured} if result.measured else None)}}
    output = JobOutput(config=config.to_dict(), measured=result.measured,
                       uniform=result.uniform, front=doc, problem=problem.to_dict())
    return output, timings
