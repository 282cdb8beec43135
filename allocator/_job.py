"""What a job means: the solve, its Pareto front along `bits`, and the uniform rows.

A job service worker calls `run_model_job` or `run_problem_job` and stores what it returns;
the meaning of a job (which points are measured, what the front document holds) lives here
with the rest of the library, not in the service.

Model jobs: `solve` (sensitivity, latency, solve, apply, measure), then the front of the
job's problem along `bits`, each front point and each uniform row measured on the engine
when `measure` is on and the model is small enough, else only the chosen point. Problem
jobs: the solve and the front, predicted only.

Where a chunk executor is installed around the job (`sensitivity.use_chunk_executor`: the
job service's Celery workers install one), the front's measurements are keyed chunks of
points (`front_work`) that every worker may compute, merged in the same order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import engine
from allocator._budget import Budget, parse_budgets
from allocator._pareto import ParetoFront, pareto_front
from allocator._pipeline import SolveReport, front_rules, solve, solve_problem
from allocator._problem import Problem
from allocator._rules import Rules
from allocator.solvers import uniform_assignment
from engine import BitConfig, InvalidSpecError

if TYPE_CHECKING:
    from allocator._spec import ModelSpecLike
    from sensitivity import KeyedChunks

OnStage = Callable[[str, float], None]

# Share of the progress bar each part of a model job takes.
PIPELINE_SHARE = 0.7
FRONT_SHARE = 0.29
FRONT_FOLDER = "front-chunks"
FRONT_CHUNK_FORMAT = "allocator.front-chunk/1"


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
                    on_stage: OnStage, rules: Rules | None = None) -> JobResult:
    """The solve and the `bits` front of an `allocator.problem/1` document, predicted;
    `rules` (ties and pins) hold in both."""
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
                           time_limit_s=limits.time_limit_s, rules=rules)
    problem = report.problem  # with the rules
    timings["solve_s"] = report.timings_s["solve_s"]
    on_stage("pareto", 0.6)
    t0 = time.perf_counter()
    front = _front(problem, parsed, limits, report.timings_s["solve_s"])
    config = report.config
    doc = front.to_dict() | {"metric": None, "measured": [None] * len(front.points),
                             "uniform": uniform_points(problem, problem.bits),
                             "chosen": {"cost": config.cost, "objective": config.objective,
                                        "bits": config.bits, "metrics": None}}
    doc |= _rules_of(front, problem)
    timings["pareto_s"] = time.perf_counter() - t0
    return JobResult(report, doc, None, timings)


def run_model_job(model: str | ModelSpecLike, budgets: Sequence[str], *, solver: str,
                  estimator: str | None, seed: int, bits: Sequence[int], measure: bool,
                  limits: JobLimits, on_stage: OnStage,
                  rules: Rules | None = None, target: str = "engine") -> JobResult:
    """`solve` on a model, then its `bits` front with measured points (see the module);
    `rules` (ties and pins, with the `target`'s own) hold in both; `target` as in
    `solve` (its schemes measured, its file's bytes counted)."""
    import zoo

    def pipeline_stage(stage: str, fraction: float) -> None:
        if stage != "done":
            on_stage(stage, fraction * PIPELINE_SHARE)

    spec = zoo.get_model(model) if isinstance(model, str) else model
    report = solve(spec, budgets, solver=solver, bits=tuple(bits), estimator=estimator,
                   seed=seed, measure=measure, time_limit_s=limits.time_limit_s,
                   rules=rules, target=target, on_stage=pipeline_stage)
    timings = dict(report.timings_s)
    on_stage("pareto", PIPELINE_SHARE)
    t0 = time.perf_counter()
    problem = report.problem
    front = _front(problem, parse_budgets(list(budgets)), limits, report.timings_s["solve_s"])
    measure_all = measure and spec.params() <= limits.measure_front_max_params
    uniform = uniform_points(problem, problem.bits)
    total = max(len(front.points) + len(uniform), 1)
    measured: list[dict[str, Any] | None] = []
    fanned = _fanned_out(spec, report, front, uniform) if measure_all else None
    for i, point in enumerate(front.points):
        if fanned is not None:  # progress was the share of chunks done
            measured.append(fanned[f"front-{i}"])
            continue
        measured.append(_point(spec, report.settings, point.bits) if measure_all else None)
        on_stage("pareto", PIPELINE_SHARE + FRONT_SHARE * len(measured) / total)
    for j, row in enumerate(uniform):
        if fanned is not None:
            row["metrics"] = fanned[f"uniform-{j}"]["metrics"]
            continue
        if measure_all:
            row["metrics"] = _point(spec, report.settings, row["assignment"],
                                    latency=False)["metrics"]
        on_stage("pareto", PIPELINE_SHARE + FRONT_SHARE * (len(measured) + j + 1) / total)
    timings["pareto_s"] = time.perf_counter() - t0
    doc = front.to_dict() | {"metric": spec.primary_metric,
                             "higher_is_better": spec.higher_is_better,
                             "measured": measured, "uniform": uniform,
                             "chosen": _chosen(report)} | _rules_of(front, problem)
    return JobResult(report, doc, problem.to_dict(), timings)


def _rules_of(front: ParetoFront, problem: Problem) -> dict[str, Any]:
    """The front document's `rules` (ties and pins checked at every point), if any."""
    held = front_rules(front, problem)
    return {} if held is None else {"rules": held}


def _point(spec: ModelSpecLike, settings: BitConfig, bits: Mapping[str, int], *,
           latency: bool = True) -> dict[str, Any]:
    """One assignment measured with the report's quantization settings."""
    from allocator._evaluate import measure_config

    m = measure_config(spec, dataclasses.replace(settings, bits=dict(bits)), latency=latency)
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


def _fanned_out(spec: ModelSpecLike, report: SolveReport, front: ParetoFront,
                uniform: list[dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """The front points' and uniform rows' measurements through the installed chunk
    executor (`front-<i>`, `uniform-<j>`), or None when none is installed."""
    from sensitivity import current_chunk_executor

    executor = current_chunk_executor()
    points = {f"front-{i}": (dict(p.bits), True) for i, p in enumerate(front.points)}
    points |= {f"uniform-{j}": (dict(row["assignment"]), False) for j, row in enumerate(uniform)}
    if executor is None or len(points) < 2:
        return None
    work = front_work(spec, report.settings, points, model_digest(spec))
    for _ in range(3):  # a chunk that failed its check is measured again
        executor.run(work)
        results = front_results(work)
        if results is not None:
            work.clear()
            return results
    raise engine.CacheError(f"the front chunks of {work.key} failed their checks 3 times.")


def model_digest(spec: ModelSpecLike) -> str:
    """SHA-256 of a model's weights and calibration data: the same model on every worker."""
    from sensitivity import hash_tensors

    return hash_tensors([dict(spec.build().state_dict()),
                         [b.inputs for b in spec.calibration_batches()]])


def front_work(spec: ModelSpecLike, settings: BitConfig,
               points: Mapping[str, tuple[Mapping[str, int], bool]], weights_digest: str,
               digest: str | None = None) -> KeyedChunks:
    """A model job's front points and uniform rows to measure on the engine, as keyed
    chunks of points (`sensitivity.KeyedChunks`, kind "front"): any worker measures a
    chunk, a stored one is never measured again, `front_results` reads them back by name.

    Latency is timed on whichever worker measures a point: on workers that share cores it
    includes their contention, as it does for jobs running side by side.

    Args:
        spec: The model.
        settings: The quantization settings every point is measured with (no bits).
        points: Point name -> (layer -> bits, whether latency is timed); a worker joining
            from a message has only its chunk's.
        weights_digest: `model_digest(spec)`.
        digest: The work's digest (a worker joining from a message); default computed.
    """
    from sensitivity import KeyedChunks

    todo = {k: (dict(bits), bool(lat)) for k, (bits, lat) in points.items()}
    units: list[str] = []
    if digest is None:
        doc = {"model": spec.name, "weights": weights_digest, "engine": engine.ENGINE_VERSION,
               "settings": settings.to_dict(), "points": todo}
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
        units = list(todo)  # else: a worker joins the stored plan

    def compute(names: list[str], check: Callable[[int], None]) -> bytes:
        out = {}
        for name in names:
            check(0)
            if name not in todo:
                raise InvalidSpecError(f"front point {name!r} is not in this chunk's message.")
            bits, latency = todo[name]
            out[name] = _point(spec, settings, bits, latency=latency)
        return (json.dumps({"format": FRONT_CHUNK_FORMAT, "points": out}, allow_nan=False)
                + "\n").encode()

    def extra(names: list[str]) -> dict[str, Any]:
        return {"model_name": spec.name, "weights": weights_digest,
                "settings": settings.to_dict(),
                "points": {n: {"bits": todo[n][0], "latency": todo[n][1]} for n in names}}

    name = str(spec.name).replace(":", "_").replace("/", "_")
    return KeyedChunks(Path(engine.data_dir()) / FRONT_FOLDER, f"{name}-front-{digest[:20]}",
                       digest, units, kind="front", what="front measurement",
                       compute=compute, extra=extra)


def front_results(work: KeyedChunks) -> dict[str, dict[str, Any]] | None:
    """Every point's measurement of `front_work`'s chunks; None when a chunk is missing or
    failed its check (quarantined: measure it again)."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(work.count):
        names = work.layers_of(i)

        def parse(data: bytes, names: list[str] = names) -> dict[str, Any]:
            doc = json.loads(data)
            points = doc["points"]
            if doc.get("format") != FRONT_CHUNK_FORMAT or sorted(points) != sorted(names):
                raise InvalidSpecError("not this chunk's front measurements.")
            return dict(points)

        part = work.read(i, parse)
        if part is None:
            return None
        out.update(part)
    return out


def front_measurements(spec: ModelSpecLike, message: Mapping[str, Any]
                       ) -> tuple[KeyedChunks, int]:
    """The chunk of front points a message (`front_work(...).message`) asks for, on this
    process's `spec`: the work and the chunk index.

    Raises:
        InvalidSpecError: A bad message, or this worker's model differs from the job's.
    """
    try:
        settings = BitConfig.from_dict(message["settings"])
        points = {str(k): (dict(v["bits"]), bool(v["latency"]))
                  for k, v in dict(message["points"]).items()}
        weights, digest = str(message["weights"]), str(message["table"])
    except (KeyError, TypeError, AttributeError) as e:
        raise InvalidSpecError(f"bad front chunk message: {type(e).__name__}: {e}") from None
    if message.get("model_name") != spec.name or model_digest(spec) != weights:
        raise InvalidSpecError(f"front chunk of {message.get('model_name')!r}: this worker's "
                               f"{spec.name} has other weights or calibration data.")
    work = front_work(spec, settings, points, weights, digest=digest)
    return work, work.check_message(message)
