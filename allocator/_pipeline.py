"""The main job: model -> sensitivity -> (latency) -> solve -> apply -> measure.

`solve(model, budgets)` runs every stage on a model from the zoo and returns a
`SolveReport`: the BitConfig with what was measured on the engine, next to the best uniform
configuration that fits the same budgets. `solve_problem` answers the same question for an
`allocator.problem/1` document (predicted only) in the same report shape. Sensitivity tables
come from the cache when the same model, data, estimator config and seed were seen. The
BitConfig is deterministic for a seed (timings go to the report, not into the config), so
the same seed writes the same bytes.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import engine
from allocator._budget import Budget, parse_budgets
from allocator._evaluate import Measurement, measure_config, measure_model
from allocator._latency import (
    ENGINE_RUNTIME,
    ORT_RUNTIME,
    LatencyCosts,
    latency_costs,
    onnxruntime_graph,
    onnxruntime_latencies_us,
)
from allocator._problem import Problem
from allocator._rules import Rules, apply_rules, default_rules, rules_summary
from allocator.export._targets import TargetCosts, get_target, target_costs, target_settings
from allocator.solvers import SOLVERS, get_solver
from engine import DEFAULT_BITS, BitConfig, InvalidSpecError

if TYPE_CHECKING:
    from allocator._pareto import ParetoFront
    from allocator._spec import ModelSpecLike

OnStage = Callable[[str, float], None]
MODEL_GROUP_SIZE = "model"
DEFAULT_TARGET = "engine"
"""`target` default: this product's own engine (every width 2..8, its packed sizes)."""
"""`group_size` default: the model's own (`default_group_size`, 128 for most models)."""


@dataclass
class SolveReport:
    """The chosen configuration, what was predicted and what was measured.

    Attributes:
        config: The BitConfig (`allocator.bitconfig/1`), deterministic for a seed.
        problem: The allocation problem that was solved.
        settings: The quantization settings of `config` without its bits (rounding, group
            size, activation bits): what any other assignment of the same model is
            measured with.
        measured: The config applied on the engine: metrics, size, kernels, latency, next
            to FP32 (empty for problem solves and when not measured).
        uniform: The best uniform configuration under the same budgets (predicted, and
            measured when `measured` is).
        timings_s: Seconds per stage.
        rules: The problem's tie groups and pins checked on the chosen bits
            (`RulesCheck.to_dict`: `ties`, `fixed`, `held`, ...); None when it has none.
        target: The deployment target the solve measured and counted for (`engine`: this
            product's own engine).
        float_layers: Layers the target cannot hold at any candidate width, left float,
            with the reason.
    """

    config: BitConfig
    problem: Problem
    settings: BitConfig
    measured: dict[str, Any] = field(default_factory=dict)
    uniform: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    rules: dict[str, Any] | None = None
    target: str = DEFAULT_TARGET
    float_layers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The documented report shape of `solve --json` and of a job's result (`rules`
        only when the problem has ties or pins; `target` only for a target other than the
        engine, with `float_layers` when it left some layers float)."""
        out = {"config": self.config.to_dict(), "measured": self.measured,
               "uniform": self.uniform, "timings_s": self.timings_s}
        if self.target != DEFAULT_TARGET:
            out["target"] = self.target
        if self.rules is not None:
            out["rules"] = self.rules
        if self.float_layers:
            out["float_layers"] = dict(self.float_layers)
        return out


def quantization_settings(rounding: str, group_size: int | None,
                          weight_only: bool) -> BitConfig:
    """The BitConfig settings (no bits) of a solve: `BitConfig.with_rounding`, with float
    activations when `weight_only`."""
    return BitConfig.with_rounding({}, rounding, group_size=group_size,
                                   activation_bits=None if weight_only else 8)


def problem_for(spec: ModelSpecLike, omega: Mapping[str, Mapping[int, float]],
                bits: Sequence[int], settings: BitConfig,
                latency: LatencyCosts | None = None,
                costs_in: TargetCosts | None = None) -> Problem:
    """The allocation problem of a model: Ω per layer and bit-width, real packed sizes
    under `settings`' schemes, and this machine's measured latencies where given.

    With `costs_in` (a non-engine target's `target_costs`), the sizes are the format's
    bytes, each layer may take only the widths the format holds for it, layers it cannot
    hold are left out (they stay float) and a bits budget counts stored bits per weight
    (`bits_cost="size_bytes"`)."""
    layers = spec.layers()
    if costs_in is None:
        sizes = {x.name: {b: float(engine.packed_weight_bytes(
            x.weight_shape, engine.scheme_for(settings, b))) for b in bits} for x in layers}
    else:
        layers = [x for x in layers if x.name not in costs_in.skipped]
        sizes = {n: dict(row) for n, row in costs_in.size_bytes.items()}
        bits = costs_in.bits
    costs: dict[str, dict[str, dict[int, float]]] = {"size_bytes": sizes}
    offset = 0.0
    if latency is not None:
        costs["latency_us"] = latency.latency_us
        offset = latency.offset_us
    problem = Problem.from_tables(layers, omega, bits, costs=costs, model=spec.name,
                                  latency_offset_us=offset)
    if costs_in is None:
        return problem
    rows = tuple(dataclasses.replace(x, allowed_bits=costs_in.allowed_bits(x.name))
                 for x in problem.layers)
    return dataclasses.replace(problem, layers=rows, bits_cost="size_bytes")


def _target_costs(spec: ModelSpecLike, target: str, bits: Sequence[int],
                  settings: BitConfig) -> TargetCosts | None:
    """A non-engine target's costs for the model (None for the engine: its problem is
    built as it always was).

    Raises:
        InvalidSpecError: The target can hold no layer of the model at any width.
    """
    if get_target(target).name == DEFAULT_TARGET:
        return None
    tc = target_costs(target, spec.layers(), bits, settings)
    if not tc.size_bytes:
        first = next(iter(tc.skipped.values()), "the model has no quantizable layer")
        raise InvalidSpecError(f"`target` {target!r} can hold none of {spec.name}'s layers "
                               f"at bit-widths {list(tc.bits)}: {first}")
    return tc


def _with_target_rules(rules: Rules | None, target: str) -> Rules | None:
    """The user's rules plus the target's own (`default_rules`)."""
    own = default_rules(get_target(target).name)
    if not own:
        return rules
    return own if not rules else rules + own


def _digest(spec: ModelSpecLike) -> dict[str, str]:
    from sensitivity import hash_tensors

    own = getattr(spec, "calibration_inputs", None)  # without reference outputs
    inputs = own() if callable(own) else [b.inputs for b in spec.calibration_batches()]
    return {"model_sha256": hash_tensors(dict(spec.build().state_dict()))[:16],
            "calibration_sha256": hash_tensors(inputs)[:16]}


def _spec(model: str | ModelSpecLike) -> ModelSpecLike:
    import zoo

    return zoo.get_model(model) if isinstance(model, str) else model


def _defaults(spec: ModelSpecLike, estimator: str | None,
              weight_only: bool | None) -> tuple[str, bool]:
    """The caller's estimator and activation choice, else the model's own defaults."""
    if estimator is None:
        estimator = spec.default_estimator
    if weight_only is None:
        weight_only = spec.default_activation_bits is None
    return estimator, weight_only


def _group_size(spec: ModelSpecLike, group_size: int | None | str) -> int | None:
    """The caller's group size, or the model's own for `MODEL_GROUP_SIZE`."""
    if group_size == MODEL_GROUP_SIZE:
        return getattr(spec, "default_group_size", 128)
    if isinstance(group_size, str):
        raise InvalidSpecError(f"`group_size` must be a number, None (per channel) or "
                               f"{MODEL_GROUP_SIZE!r}; got {group_size!r}.")
    return group_size


def _budgets(budgets: Sequence[str | Budget]) -> list[Budget]:
    parsed = [b if isinstance(b, Budget) else parse_budgets([b])[0] for b in budgets]
    parse_budgets([b.text for b in parsed])  # one budget per kind
    return parsed


def _model_problem(spec: ModelSpecLike, *, bits: Sequence[int], estimator: str, seed: int,
                   settings: BitConfig, latency: bool, progress: bool,
                   estimator_options: Mapping[str, Any] | None, stage: OnStage,
                   timings: dict[str, float], rules: Rules | None = None,
                   costs_in: TargetCosts | None = None
                   ) -> tuple[Problem, dict[str, Any], LatencyCosts | None]:
    """The sensitivity and latency stages: the model's problem (with `rules` applied), the
    estimator config that made its Ω, and the latency costs (None without latency).

    The rules are checked against the model's layers and candidate widths before any
    sensitivity is computed, so a bad rule fails at once. With a target's `costs_in`, Ω and
    latency are computed at the target's widths only."""
    import sensitivity

    if costs_in is not None:
        bits = costs_in.bits
    if rules:
        apply_rules(_placeholder_problem(spec, bits, costs_in), rules)
    stage("sensitivity", 0.05)
    t0 = time.perf_counter()
    options = {"rounding": settings.rounding, "group_size": settings.group_size}
    table = sensitivity.estimate(spec, estimator, bits=bits, seed=seed,
                                 options=options | dict(estimator_options or {}),
                                 progress=progress)
    timings["sensitivity_s"] = time.perf_counter() - t0
    lat = None
    if latency:
        stage("latency", 0.5)
        t0 = time.perf_counter()
        onnx = costs_in is not None and costs_in.target == "onnx"
        lat = latency_costs(spec, bits, weight_only=settings.activation_bits is None,
                            progress=progress, runtime=ORT_RUNTIME if onnx else ENGINE_RUNTIME,
                            settings=settings if onnx else None)
        timings["latency_s"] = time.perf_counter() - t0
    problem = problem_for(spec, table.omega(), bits, settings, latency=lat, costs_in=costs_in)
    if rules:
        problem = apply_rules(problem, rules)
    return problem, dict(table.config), lat


def _placeholder_problem(spec: ModelSpecLike, bits: Sequence[int],
                         costs_in: TargetCosts | None = None) -> Problem:
    """The model's layers and candidate widths with made-up Ω: enough to check rules (with
    a target's costs: its layers and the widths each can take)."""
    omega = {x.name: {int(b): 0.0 for b in bits} for x in spec.layers()}
    if costs_in is not None:
        return problem_for(spec, omega, bits, BitConfig(bits={}), costs_in=costs_in)
    return Problem.from_tables(spec.layers(), omega, bits, model=spec.name)


def rules_layout(model: str | ModelSpecLike, bits: Sequence[int], rules: Rules, *,
                 target: str = DEFAULT_TARGET, settings: BitConfig | None = None) -> Problem:
    """The tie groups and pins `rules` (plus the target's own) give a model at these
    candidate widths, as a problem with made-up Ω (for `front_rules` on a model's front;
    no sensitivity is computed). `settings`: the solve's quantization settings (a
    target's layer shapes depend on its group size; default: weight-only, the model's
    group size).

    Raises:
        InvalidSpecError: A rule that does not fit the model.
    """
    spec = _spec(model)
    if settings is None:
        settings = quantization_settings("rtn", _group_size(spec, MODEL_GROUP_SIZE), True)
    costs_in = _target_costs(spec, target, bits, target_settings(target, settings))
    return apply_rules(_placeholder_problem(spec, bits, costs_in),
                       _with_target_rules(rules, target) or Rules())


def front_rules(front: ParetoFront, problem: Problem) -> dict[str, Any] | None:
    """`problem`'s ties and pins checked at every point of `front` (`RulesCheck.to_dict`),
    or None when it has none."""
    return rules_summary(problem, [p.bits for p in front.points])


def solve(
    model: str | ModelSpecLike,
    budgets: Sequence[str | Budget],
    *,
    solver: str = "ilp",
    bits: Sequence[int] = DEFAULT_BITS,
    estimator: str | None = None,
    seed: int = 0,
    rounding: str = "gptq",
    group_size: int | None | str = MODEL_GROUP_SIZE,
    measure: bool = True,
    latency: bool = True,
    weight_only: bool | None = None,
    time_limit_s: float = 60.0,
    solver_options: Mapping[str, Any] | None = None,
    estimator_options: Mapping[str, Any] | None = None,
    rules: Rules | None = None,
    target: str = DEFAULT_TARGET,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    on_stage: OnStage | None = None,
) -> SolveReport:
    """Finds, applies and measures the per-layer bit-widths of a model under budgets.

    Args:
        model: A registered model name or a `ModelSpec`.
        budgets: Budget texts ("5bits", "12MB", "1.2GBOPs", "4ms") or `Budget`s.
        solver: Registered solver name ("ilp", "ddpg", "greedy", "uniform", ...).
        bits: Candidate bit-widths.
        estimator: Sensitivity estimator ("hutchinson", "measured", "fracbits", "fisher";
            default: the model's `default_estimator`).
        seed: Seed of every stochastic step.
        rounding: "gptq" (calibrated: GPTQ + bias correction + clipping search) or "rtn".
        group_size: Scale group size below 8 bits (None: per channel; default: the
            model's `default_group_size`).
        measure: Apply the result on the engine and measure it (and the best uniform).
        latency: Read (or measure) this machine's per-layer latency table, so the solve
            knows latency costs, and time the quantized models against FP32. A latency
            budget turns the table on regardless.
        weight_only: Keep activations float (no W8A8 kernels for 8-bit layers); default:
            the model's `default_activation_bits` decides.
        time_limit_s: The solver's time limit.
        solver_options, estimator_options: Options of the solver's and the estimator's
            configs.
        rules: Ties and pins the solve must keep (`parse_rules`, `default_rules`); the
            report's `rules` says whether the chosen bits kept them.
        target: Deployment target (`engine`, `onnx`, `compressed-tensors`, `gguf`): the
            engine quantizes with the target's schemes (`target_settings`), the candidate
            widths are those it holds, sizes are its file's bytes, a bits budget is its
            stored bits per weight, its tie rules (`default_rules`) join `rules`, and layers
            it cannot hold stay float (`report.float_layers`).
        progress: Show progress bars on stderr.
        log: Called with one line per notable step.
        on_stage: Called as `on_stage(stage, fraction_done)` when each stage starts ("load",
            "sensitivity", "latency", "solve", "measure") and at the end ("done", 1.0); an
            exception it raises aborts the run (the job service cancels this way).

    Returns:
        A `SolveReport`; `report.config.status` is "infeasible" when the budgets cannot
        be met, with the smallest feasible value of each in `config.extra`.

    Raises:
        InvalidSpecError: A rule that does not fit the model (named by its option).

    Example:
        >>> from allocator import solve
        >>> report = solve("digits-cnn", ["4bits"])
        >>> report.config.bits
    """
    say = log or (lambda _msg: None)
    stage = on_stage or (lambda _stage, _fraction: None)
    parsed = _budgets(budgets)
    timings: dict[str, float] = {}
    stage("load", 0.0)
    t0 = time.perf_counter()
    spec = _spec(model)
    estimator, weight_only = _defaults(spec, estimator, weight_only)
    group_size = _group_size(spec, group_size)
    layers = spec.layers()  # calibration batches are made when a stage needs them: a warm
    timings["load_s"] = time.perf_counter() - t0  # solve of an LLM needs none
    say(f"{spec.name}: {len(layers)} quantizable layers")
    target = get_target(target).name
    settings = target_settings(target, quantization_settings(rounding, group_size, weight_only))
    costs_in = _target_costs(spec, target, bits, settings)
    if costs_in is not None and costs_in.skipped:
        say(f"target {target}: {len(costs_in.skipped)} layer(s) stay float")
    rules = _with_target_rules(rules, target)
    latency = latency or any(b.kind == "latency" for b in parsed)
    problem, estimator_config, lat = _model_problem(
        spec, bits=bits, estimator=estimator, seed=seed, settings=settings, latency=latency,
        progress=progress, estimator_options=estimator_options, stage=stage, timings=timings,
        rules=rules, costs_in=costs_in)
    if lat is not None:
        say(f"latency table {lat.profile}" + (" (profiled now)" if lat.profiled_now else ""))

    stage("solve", 0.6)
    t0 = time.perf_counter()
    options = dict(solver_options or {})
    if SOLVERS.get(solver).takes_model:  # fracbits, DDPG (its measured reward)
        options = {"model": spec, "rounding": rounding, "group_size": group_size} | options
    solution = get_solver(solver, **options).solve(
        problem, parsed, seed=seed, time_limit_s=time_limit_s)
    timings["solve_s"] = time.perf_counter() - t0
    repro = {"seed": seed, "estimator": estimator, "estimator_config": estimator_config,
             "solver": solver, "bits": list(bits), **_digest(spec), "versions": _versions()}
    if lat is not None:
        repro["latency_profile"] = lat.profile
    if rules:
        repro["rules"] = rules.to_dict()
    extra: dict[str, Any] = {"reproducibility": repro}
    skipped = dict(costs_in.skipped) if costs_in is not None else {}
    if target != DEFAULT_TARGET:  # the engine's configs stay byte-identical to before
        extra["target"] = target
        if skipped:
            extra["float_layers"] = skipped
    held = rules_summary(problem, [solution.bits])
    if held is not None:
        extra["rules"] = held
    details = {k: v for k, v in solution.extra.items() if not k.endswith("_s")}
    if details:  # timings stay out: the same seed writes the same bytes
        extra["solver_details"] = details
    if solution.diagnosis:
        extra["infeasible_budgets"] = solution.diagnosis
    config = dataclasses.replace(
        settings, bits=solution.bits, model=spec.name, solver=solver, status=solution.status,
        objective=solution.objective, budgets=tuple(b.text for b in parsed),
        cost=solution.cost, extra=extra)
    report = SolveReport(config, problem, settings, timings_s=timings, rules=held,
                         target=target, float_layers=skipped)
    if measure and solution.status != "infeasible":
        stage("measure", 0.7)
        say("applying on the engine and measuring...")
        t0 = time.perf_counter()
        _measure_report(spec, report, parsed, latency=latency)
        timings["measure_s"] = time.perf_counter() - t0
    stage("done", 1.0)
    return report


def _measured(m: Measurement, fp32_latency_us: float | None) -> tuple[dict, dict]:
    """A measurement as the report's deterministic part (metrics, bytes, kernels) and its
    timing part (latency, speed-up; only when FP32 was timed)."""
    det = {"metrics": m.metrics, "size_bytes": m.size_bytes, "kernels": sorted(m.kernels)}
    return det, _timing(m.latency_us, fp32_latency_us)


def _timing(latency_us: float | None, fp32_latency_us: float | None) -> dict[str, Any]:
    if fp32_latency_us is None or latency_us is None:
        return {}
    return {"latency_us": latency_us, "speedup_vs_fp32": fp32_latency_us / latency_us}


def _measure_report(spec: ModelSpecLike, report: SolveReport, budgets: Sequence[Budget], *,
                    latency: bool) -> None:
    """Measures the report's config and the best uniform one next to FP32, in place.

    Latency is timed where the solve's latency costs came from: the engine, or for the
    onnx target ONNX Runtime running the exported graphs (`latency_runtime` says which),
    so that predicted and measured latency are of the same runtime."""
    best = best_uniform(report.problem, budgets)
    uniform = (dataclasses.replace(report.settings, bits=best.pop("assignment"))
               if best else None)
    configs = [report.config, *([uniform] if uniform else [])]
    _release_for_measuring(spec, configs)
    in_ort = latency and report.target == "onnx"
    on_engine = latency and not in_ort
    fp32_latency = spec.measure_latency_us(spec.build()) if on_engine else None
    dets, latencies, graphs = [], [], []
    for config in configs:
        qmodel = spec.quantize(config)
        m = measure_model(spec, qmodel, latency=on_engine)
        dets.append(_measured(m, fp32_latency)[0])
        latencies.append(m.latency_us)
        if in_ort:
            graphs.append(onnxruntime_graph(spec, config, qmodel))
        del qmodel
    runtime = "engine"
    if in_ort:
        from hwprofiles import require_onnxruntime

        fp32_latency, ort_latencies = onnxruntime_latencies_us(spec, graphs)
        latencies = list(ort_latencies)
        runtime = f"onnxruntime {require_onnxruntime()[1].__version__}"
    det = dets[0]
    timing = _timing(latencies[0], fp32_latency)
    det["fp32_metrics"] = spec.baseline()
    det["fp32_size_bytes"] = engine.model_size_bytes(spec.build())
    if uniform is not None:
        report.uniform = best | dets[1]
        timing["uniform"] = _timing(latencies[1], fp32_latency)
    if fp32_latency is not None:
        timing["fp32_latency_us"] = fp32_latency
        timing["latency_runtime"] = runtime
    extra = dict(report.config.extra) | {"measured": det, "uniform_baseline": report.uniform}
    report.config = dataclasses.replace(report.config, extra=extra)
    report.measured = det | timing


def _release_for_measuring(spec: ModelSpecLike, configs: Sequence[BitConfig]) -> None:
    """Lets go of what the sensitivity stage kept and measuring does not need: roundings of
    candidates no config uses, and large calibration references (see
    `ModelSpec.release_references`), so a large model's measuring peak holds neither."""
    engine.retain_rounded(configs)
    release = getattr(spec, "release_references", None)
    if callable(release):
        release()
    engine.release_free_memory()


def best_uniform(problem: Problem, budgets: Sequence[Budget]) -> dict[str, Any]:
    """The best single bit-width under `budgets` (`bits`, `objective`, `cost`,
    `assignment`), or {} when none fits."""
    sol = get_solver("uniform").solve(problem, budgets)
    if sol.status == "infeasible":
        return {}
    return {"bits": sol.extra.get("uniform_bits"), "objective": sol.objective,
            "cost": sol.cost, "assignment": sol.bits}


def solve_problem(problem: Problem, budgets: Sequence[str | Budget], *, solver: str = "ilp",
                  seed: int = 0, time_limit_s: float = 60.0,
                  rules: Rules | None = None) -> SolveReport:
    """Solves an `allocator.problem/1` problem under budgets: the same report shape as
    `solve`, predicted only (`measured` empty; `uniform` the best single bit-width).

    `rules` add ties and pins to the problem's own; the report's `rules` (and the config's
    `extra["rules"]`) say whether the chosen bits kept every one.

    Example:
        >>> from allocator import Problem, solve_problem
        >>> solve_problem(Problem.load("p.json"), ["4.5bits"]).config.bits
    """
    parsed = _budgets(budgets)
    if rules:
        problem = apply_rules(problem, rules)
    t0 = time.perf_counter()
    solution = get_solver(solver).solve(problem, parsed, seed=seed, time_limit_s=time_limit_s)
    config = solution.to_bitconfig(problem, parsed)
    held = rules_summary(problem, [solution.bits])
    if held is not None:
        config = dataclasses.replace(config, extra=dict(config.extra) | {"rules": held})
    uniform = best_uniform(problem, parsed)
    settings = BitConfig(bits={}, activation_bits=problem.activation_bits)
    return SolveReport(config, problem, settings, uniform=uniform,
                       timings_s={"solve_s": time.perf_counter() - t0}, rules=held)


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
    model: str | ModelSpecLike,
    *,
    axis: str = "bits",
    points: int = 8,
    budgets: Sequence[str] = (),
    measure_points: int | None = None,
    seed: int = 0,
    bits: Sequence[int] = DEFAULT_BITS,
    estimator: str | None = None,
    weight_only: bool | None = None,
    rounding: str = "gptq",
    group_size: int | None | str = MODEL_GROUP_SIZE,
    latency: bool = True,
    rules: Rules | None = None,
    target: str = DEFAULT_TARGET,
    progress: bool = False,
    timings: dict[str, float] | None = None,
) -> tuple[ParetoFront, list[dict[str, float]]]:
    """The Pareto front of a model along one cost axis, with the first `measure_points`
    points (all by default) applied on the engine and measured.

    With `latency` (or a latency axis or budget) the points carry this machine's predicted
    latency too (`allocator.pareto/1` `cost.latency_us`). `rules` (ties and pins) hold at
    every point (`front_rules` checks them). `target` as in `solve`: the front's sizes and
    bits are the target's file's, measured with its schemes.

    `timings`, when given, is filled with each stage's seconds (`load_s`, `sensitivity_s`,
    `latency_s`, `front_s`, `measure_s`).

    Returns:
        (ParetoFront, list of measured metrics dicts aligned with the front's points).
    """
    from allocator._pareto import pareto_front

    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    spec = _spec(model)
    spec.layers()
    estimator, weight_only = _defaults(spec, estimator, weight_only)
    target = get_target(target).name
    settings = target_settings(
        target, quantization_settings(rounding, _group_size(spec, group_size), weight_only))
    costs_in = _target_costs(spec, target, bits, settings)
    rules = _with_target_rules(rules, target)
    fixed = parse_budgets(list(budgets))
    latency = latency or axis == "latency" or any(b.kind == "latency" for b in fixed)
    timings["load_s"] = time.perf_counter() - t0
    problem, _, _ = _model_problem(
        spec, bits=bits, estimator=estimator, seed=seed, settings=settings, latency=latency,
        progress=progress, estimator_options=None, stage=lambda _s, _f: None, timings=timings,
        rules=rules, costs_in=costs_in)
    t0 = time.perf_counter()
    front = pareto_front(problem, axis, points, budgets=fixed)
    timings["front_s"] = time.perf_counter() - t0
    limit = len(front.points) if measure_points is None else measure_points
    configs = [dataclasses.replace(settings, bits=p.bits) for p in front.points[:limit]]
    t0 = time.perf_counter()
    if configs:
        _release_for_measuring(spec, configs)
    measured = [measure_config(spec, cfg, latency=False).metrics for cfg in configs]
    timings["measure_s"] = time.perf_counter() - t0
    return front, measured


def plot_front(front: ParetoFront, measured: Sequence[Mapping[str, float]], metric: str,
               path: str) -> None:
    """A PNG of the front: predicted Ω and the measured metric against cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from allocator._budget import COST_KEYS

    key = COST_KEYS[front.axis]
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
