"""The main job: model -> sensitivity -> (latency) -> solve -> apply -> measure.

`solve(model, budgets)` runs every stage on a model from the zoo and returns the BitConfig
with what was measured on the engine, next to the best uniform configuration that fits the
same budgets. Sensitivity tables come from the cache when the same model, data, estimator
config and seed were seen. The BitConfig it returns is deterministic for a seed (timings go
to the report, not into the config), so the same seed writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import engine
from allocator._budget import Budget, parse_budgets
from allocator._latency import LatencyCosts, latency_costs
from allocator._problem import Problem
from allocator.solvers import SOLVERS, get_solver
from engine import BitConfig

DEFAULT_BITS = (2, 3, 4, 5, 6, 8)


@dataclass
class PipelineResult:
    """The chosen configuration, what was predicted and what was measured."""

    config: BitConfig
    problem: Problem
    measured: dict[str, Any] = field(default_factory=dict)
    uniform: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "measured": self.measured,
                "uniform": self.uniform, "timings_s": self.timings_s}


def problem_for(spec, table, bits: Sequence[int], *, group_size: int | None,
                latency: LatencyCosts | None = None, weight_only: bool = False) -> Problem:
    """The allocation problem of a model: Ω from `table`, real packed sizes per bit-width,
    and this machine's measured latencies where given."""
    layers = spec.layers()
    shape = BitConfig(bits={}, group_size=group_size, activation_bits=None if weight_only else 8)
    sizes = {x.name: {b: float(engine.packed_weight_bytes(
        x.weight_shape, engine.scheme_for(shape, b))) for b in bits} for x in layers}
    costs: dict[str, dict] = {"size_bytes": sizes}
    offset = 0.0
    if latency is not None:
        costs["latency_us"] = latency.latency_us
        offset = latency.offset_us
    return Problem.from_tables(layers, table.omega(), bits, costs=costs, model=spec.name,
                               latency_offset_us=offset)


def _measure(spec, config: BitConfig, fp32_latency_us: float | None) -> tuple[dict, dict]:
    """Deterministic measurements (metrics, bytes) and timings of one config."""
    qmodel = spec.quantize(config)
    metrics = spec.evaluate(qmodel)
    det = {"metrics": metrics, "size_bytes": engine.model_size_bytes(qmodel)}
    timing: dict[str, Any] = {}
    if fp32_latency_us is not None:
        lat = spec.measure_latency_us(qmodel)
        timing = {"latency_us": lat, "speedup_vs_fp32": fp32_latency_us / lat}
    det["kernels"] = sorted(engine.kernel_counts(qmodel))
    return det, timing


def _digest(spec) -> dict[str, str]:
    h_model, h_data = hashlib.sha256(), hashlib.sha256()
    from sensitivity._estimate import _hash_tensors

    _hash_tensors(h_model, dict(spec.build().state_dict()))
    _hash_tensors(h_data, [b.inputs for b in spec.calibration_batches()])
    return {"model_sha256": h_model.hexdigest()[:16],
            "calibration_sha256": h_data.hexdigest()[:16]}


def solve(
    model: str | Any,
    budgets: Sequence[str | Budget],
    *,
    solver: str = "ilp",
    bits: Sequence[int] = DEFAULT_BITS,
    estimator: str | None = None,
    seed: int = 0,
    rounding: str = "gptq",
    group_size: int | None = 128,
    measure: bool = True,
    latency: bool = True,
    weight_only: bool | None = None,
    time_limit_s: float = 60.0,
    solver_options: dict[str, Any] | None = None,
    estimator_options: dict[str, Any] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    on_stage: Callable[[str, float], None] | None = None,
) -> PipelineResult:
    """Finds, applies and measures the per-layer bit-widths of a model under budgets.

    Args:
        model: A registered model name or a `ModelSpec`.
        budgets: Budget texts ("5bits", "12MB", "1.2GBOPs", "4ms") or `Budget`s.
        solver: Registered solver name ("ilp", "ddpg", "greedy", "uniform", ...).
        bits: Candidate bit-widths.
        estimator: Sensitivity estimator ("hutchinson", "measured", "fracbits"; default:
            the model's `default_estimator`).
        seed: Seed of every stochastic step.
        rounding: "gptq" (calibrated: GPTQ + bias correction + clipping search) or "rtn".
        group_size: Scale group size below 8 bits (None: per channel).
        measure: Apply the result on the engine and measure it (and the best uniform).
        weight_only: Keep activations float (no W8A8 kernels for 8-bit layers); default:
            the model's `default_activation_bits` decides.
        latency: Read (or measure) this machine's per-layer latency table, so the solve
            knows latency costs, and time the quantized models against FP32. A latency
            budget turns the table on regardless.
        on_stage: Called as `on_stage(stage, fraction_done)` when each stage starts ("load",
            "sensitivity", "latency", "solve", "measure") and at the end ("done", 1.0); an
            exception it raises aborts the run (the job service cancels this way).

    Returns:
        A `PipelineResult`; `result.config.status` is "infeasible" when the budgets cannot
        be met, with the smallest feasible value of each in `config.extra`.

    Example:
        >>> from allocator import solve
        >>> result = solve("digits-cnn", ["4bits"])
        >>> result.config.bits
    """
    import sensitivity
    import zoo

    say = log or (lambda _msg: None)
    stage = on_stage or (lambda _stage, _fraction: None)
    parsed = [b if isinstance(b, Budget) else parse_budgets([b])[0] for b in budgets]
    parse_budgets([b.text for b in parsed])  # one budget per kind
    timings: dict[str, float] = {}
    stage("load", 0.0)
    t0 = time.perf_counter()
    spec = zoo.get_model(model) if isinstance(model, str) else model
    estimator, weight_only = _defaults(spec, estimator, weight_only)
    layers = spec.layers()
    spec.calibration_batches()
    timings["load_s"] = time.perf_counter() - t0
    say(f"{spec.name}: {len(layers)} quantizable layers")

    stage("sensitivity", 0.05)
    t0 = time.perf_counter()
    options = {"rounding": rounding, "group_size": group_size} | dict(estimator_options or {})
    table = sensitivity.estimate(spec, estimator, bits=bits, seed=seed, options=options,
                                 progress=progress)
    timings["sensitivity_s"] = time.perf_counter() - t0

    lat = None
    if latency or any(b.kind == "latency" for b in parsed):
        stage("latency", 0.5)
        t0 = time.perf_counter()
        lat = latency_costs(spec, bits, weight_only=weight_only, progress=progress)
        timings["latency_s"] = time.perf_counter() - t0
        say(f"latency table {lat.profile}" + (" (profiled now)" if lat.profiled_now else ""))
    problem = problem_for(spec, table, bits, group_size=group_size, latency=lat,
                          weight_only=weight_only)
    stage("solve", 0.6)
    t0 = time.perf_counter()
    options = dict(solver_options or {})
    if getattr(SOLVERS.get(solver), "model_options", False):  # fracbits, measured DDPG
        options = {"model": spec, "rounding": rounding, "group_size": group_size} | options
    solution = get_solver(solver, **options).solve(
        problem, parsed, seed=seed, time_limit_s=time_limit_s)
    timings["solve_s"] = time.perf_counter() - t0
    calibrated = rounding == "gptq"
    repro = {"seed": seed, "estimator": estimator, "estimator_config": dict(table.config),
             "solver": solver, "bits": list(bits), **_digest(spec),
             "versions": _versions()}
    if lat is not None:
        repro["latency_profile"] = lat.profile
    extra: dict[str, Any] = {"reproducibility": repro}
    details = {k: v for k, v in solution.extra.items() if not k.endswith("seconds")}
    if details:  # timings stay out: the same seed writes the same bytes
        extra["solver_details"] = details
    if solution.diagnosis:
        extra["infeasible_budgets"] = solution.diagnosis
    act_bits = None if weight_only else 8
    config = BitConfig(bits=solution.bits, activation_bits=act_bits, group_size=group_size,
                       rounding=rounding, bias_correction=calibrated, clip_search=calibrated,
                       model=spec.name, solver=solver, status=solution.status,
                       objective=solution.objective, budgets=tuple(b.text for b in parsed),
                       cost=solution.cost, extra=extra)
    result = PipelineResult(config, problem, timings_s=timings)
    if not measure or solution.status == "infeasible":
        stage("done", 1.0)
        return result

    stage("measure", 0.7)
    say("applying on the engine and measuring...")
    t0 = time.perf_counter()
    fp32_latency = spec.measure_latency_us(spec.build()) if latency else None
    det, timing = _measure(spec, config, fp32_latency)
    det["fp32_metrics"] = spec.baseline()
    det["fp32_size_bytes"] = engine.model_size_bytes(spec.build())
    uniform_sol = get_solver("uniform").solve(problem, parsed)
    uniform = {}
    if uniform_sol.status != "infeasible":
        ucfg = BitConfig(bits=uniform_sol.bits, activation_bits=act_bits, group_size=group_size,
                         rounding=rounding, bias_correction=calibrated, clip_search=calibrated)
        udet, utiming = _measure(spec, ucfg, fp32_latency)
        uniform = {"bits": uniform_sol.extra.get("uniform_bits"),
                   "objective": uniform_sol.objective, "cost": uniform_sol.cost, **udet}
        timing["uniform"] = utiming
    extra = dict(config.extra) | {"measured": det, "uniform_baseline": uniform}
    result.config = dataclasses.replace(config, extra=extra)
    result.measured = det | timing | ({"fp32_latency_us": fp32_latency} if fp32_latency else {})
    result.uniform = uniform
    timings["measure_s"] = time.perf_counter() - t0
    stage("done", 1.0)
    return result



def _defaults(spec, estimator: str | None, weight_only: bool | None) -> tuple[str, bool]:
    """The caller's estimator and activation choice, else the model's own defaults."""
    if estimator is None:
        estimator = getattr(spec, "default_estimator", "hutchinson")
    if weight_only is None:
        weight_only = getattr(spec, "default_activation_bits", 8) is None
    return estimator, weight_only


def _versions() -> dict[str, str]:
    import torch

    from allocator import __version__

    out = {"allocator": __version__, "torch": torch.__version__,
           "python": platform.python_version(), "engine": engine.ENGINE_VERSION}
    try:
        import pulp

        out["pulp"] = pulp.__version__
    except ImportError:
        pass
    return out


def pareto(
    model: str | Any,
    *,
    axis: str = "bits",
    points: int = 8,
    measure_points: int | None = None,
    budgets: Sequence[str] = (),
    bits: Sequence[int] = DEFAULT_BITS,
    estimator: str | None = None,
    seed: int = 0,
    rounding: str = "gptq",
    group_size: int | None = 128,
    latency: bool = True,
    weight_only: bool | None = None,
    progress: bool = False,
):
    """The Pareto front of a model along one cost axis, with the first `measure_points`
    points (all by default) applied on the engine and measured.

    With `latency` (or a latency axis or budget) the points carry this machine's predicted
    latency too (`allocator.pareto/1` `cost.latency_us`).

    Returns:
        (ParetoFront, list of measured metrics dicts aligned with the front's points).
    """
    import sensitivity
    import zoo
    from allocator._pareto import pareto_front

    spec = zoo.get_model(model) if isinstance(model, str) else model
    estimator, weight_only = _defaults(spec, estimator, weight_only)
    options = {"rounding": rounding, "group_size": group_size}
    table = sensitivity.estimate(spec, estimator, bits=bits, seed=seed, options=options,
                                 progress=progress)
    fixed = parse_budgets(list(budgets))
    lat = None
    if latency or axis == "latency" or any(b.kind == "latency" for b in fixed):
        lat = latency_costs(spec, bits, weight_only=weight_only, progress=progress)
    problem = problem_for(spec, table, bits, group_size=group_size, latency=lat,
                          weight_only=weight_only)
    front = pareto_front(problem, axis, points, budgets=fixed)
    calibrated = rounding == "gptq"
    limit = len(front.points) if measure_points is None else measure_points
    measured = []
    for p in front.points[:limit]:
        cfg = BitConfig(bits=p.bits, group_size=group_size, rounding=rounding,
                        activation_bits=None if weight_only else 8,
                        bias_correction=calibrated, clip_search=calibrated)
        measured.append(spec.evaluate(spec.quantize(cfg)))
    return front, measured


def plot_front(front, measured: list[dict], metric: str, path: str) -> None:
    """A PNG of the front: predicted Ω and the measured metric against cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from allocator._pareto import AXES

    key = AXES[front.axis]
    xs = [p.cost[key] for p in front.points]
    fig, ax1 = plt.subplots(figsize=(7, 4.5))
    ax1.plot(xs, [p.objective for p in front.points], "o-", color="tab:blue",
             label="predicted Ω (sum)")
    ax1.set_yscale("symlog", linthresh=1e-6)
    ax1.set_xlabel(key)
    ax1.set_ylabel("predicted Ω", color="tab:blue")
    if measured:
        ax2 = ax1.twinx()
        ax2.plot(xs[: len(measured)], [m[metric] for m in measured], "s--", color="tab:red",
                 label=f"measured {metric}")
        ax2.set_ylabel(f"measured {metric}", color="tab:red")
    ax1.set_title(f"{front.model}: Pareto front along {front.axis}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
