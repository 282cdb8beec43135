"""The job function: what a worker (in-process or Celery) runs for one job.

It reads the job row, calls the library (`allocator.run_model_job` or
`allocator.run_problem_job`, where what a job means is defined) and returns what the store
keeps. torch is imported by the library, lazily, so the API process that merely imports
this package never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api._settings import Settings
from api._store import STAGES, JobOutput, JobRecord

OnStage = Callable[[str, float], None]


class JobCancelled(Exception):
    """Raised inside a job when its row says it is no longer this worker's to run."""


def execute(job: JobRecord, settings: Settings, problem: dict[str, Any] | None,
            on_stage: OnStage) -> tuple[JobOutput, dict[str, float]]:
    """Runs `job`; returns its output and timings (seconds per stage)."""
    import allocator

    spec = job.spec
    # Checked when the job was submitted; parsed again here, named as the request named them.
    rules = allocator.parse_rules(spec.get("ties"), spec.get("fix"), tie_option="body.ties",
                                  fix_option="body.fix", indexed=True)
    limits = allocator.JobLimits(time_limit_s=settings.job_time_limit_s,
                                 front_points=settings.front_points,
                                 measure_front_max_params=settings.measure_front_max_params)
    last = ["load"]

    def stage(name: str, fraction: float) -> None:
        # A stage the store does not know reports as the one before it.
        last[0] = name if name in STAGES else last[0]
        on_stage(last[0], fraction)

    if job.kind == "model":
        result = allocator.run_model_job(
            job.model, spec["budgets"], solver=spec["solver"], estimator=spec["estimator"],
            seed=spec["seed"], bits=spec["bits"], measure=spec["measure"], limits=limits,
            on_stage=stage, rules=rules, target=spec.get("target", "engine"))
    elif problem is None:
        from engine import StoreError

        raise StoreError(f"problem job {job.id} has no stored problem.")
    else:
        result = allocator.run_problem_job(
            problem, spec["budgets"], solver=spec["solver"], seed=spec["seed"],
            bits=spec.get("bits"), limits=limits, on_stage=stage, rules=rules)
    report = result.report
    output = JobOutput(config=report.config.to_dict(), measured=report.measured,
                       uniform=report.uniform, front=result.front, problem=result.problem)
    return output, result.timings_s
