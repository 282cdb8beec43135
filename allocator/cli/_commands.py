"""The model and solve commands: each reads its options, calls one library function and
hands the result to `allocator.cli._render`.

Heavy packages (torch, the zoo, sensitivity) are imported inside the commands, so that
`allocator --help` and the API process's `import allocator.cli` stay light.
"""

from __future__ import annotations

from typing import Any

import typer

import allocator
from allocator.cli import _render as render
from allocator.cli._app import app
from allocator.cli._files import check_input, check_output, writing
from allocator.cli._models import model_spec
from allocator.cli._options import (
    AsJson,
    Axis,
    BiasCorrection,
    BitList,
    Budgets,
    CalibrationInputs,
    ClipSearch,
    ConfigFile,
    ConfigOut,
    DataFile,
    Estimator,
    EstimatorTimeLimit,
    FixedBudgets,
    FrontOut,
    GroupSize,
    MaxProbes,
    MeasurePoints,
    ModelName,
    NoCache,
    PipelineEstimator,
    PipelineModel,
    PlotFile,
    Points,
    ProblemFile,
    QuantizedOut,
    RelTol,
    RequiredConfigFile,
    Reward,
    Rounding,
    Seed,
    SensitivityOut,
    SolverName,
    SolveTimeLimit,
    UniformBits,
    WeightOnlyChoice,
    WeightOnlyFlag,
    WeightsFile,
    exactly_one,
    parse_bits,
)
from engine import BitConfig, CLIUsageError, check_bits

REWARDS = ("proxy", "measured")


@app.command()
def demo(seed: Seed = 0) -> None:
    """Quantize a small model on the engine; print measured speed, size and error."""
    from allocator.cli._demo import run_demo

    with render.status("measuring fp32, int8, int4 and mixed on the engine..."):
        rows = run_demo(seed=seed)
    render.show(*render.demo_view(rows))


@app.command()
def models(as_json: AsJson = False) -> None:
    """List the registered models with parameters and quantizable layer counts."""
    import zoo

    with render.status("loading the models..."):
        rows = zoo.describe_models(details=True)
    render.emit({"models": rows}, as_json, render.models_view)


@app.command()
def evaluate(model: ModelName, bits: UniformBits = None, config: ConfigFile = None,
             group_size: GroupSize = None, weight_only: WeightOnlyFlag = False,
             rounding: Rounding = "gptq", bias_correction: BiasCorrection = True,
             clip_search: ClipSearch = True, calibration_inputs: CalibrationInputs = "fp32",
             data: DataFile = None, weights: WeightsFile = None, as_json: AsJson = False) -> None:
    """Apply a bit config (or uniform bits) on the engine; print metrics, size, latency vs FP32."""
    exactly_one(("--bits", bits), ("--config", config))
    uniform_bits = 0 if bits is None else check_bits(bits, where="--bits")  # 0: --config
    check_input("--config", config)
    spec = model_spec(model, data, weights)
    if config is not None:
        cfg = BitConfig.load(config)
    else:
        settings = {"rounding": rounding, "bias_correction": bias_correction,
                    "clip_search": clip_search, "calibration_inputs": calibration_inputs,
                    **({} if group_size is None else {"group_size": group_size or None}),
                    **({"activation_bits": None} if weight_only else {})}
        with render.status(f"loading {model}..."):
            cfg = BitConfig.uniform(spec.layers(), uniform_bits, model=spec.name, **settings)
    with render.status(f"evaluating {spec.name} at FP32 and quantized..."):
        result = allocator.evaluate_config(spec, cfg)
    render.emit(result.to_dict(), as_json, render.evaluation_view)


def _load_problem(path: str, bits: str | None) -> allocator.Problem:
    """The `--problem` file, with the `--bits` candidates when given."""
    check_input("--problem", path)
    problem = allocator.Problem.load(path)
    return problem if bits is None else problem.with_bits(parse_bits(bits))


def _source(problem: str | None, model: str | None, data: str | None,
            weights: str | None) -> Any:
    """Checks `--problem` / `--model` and their files before any work: the model's spec
    (a user model with its `--data` and `--weights`), or None for a problem file."""
    exactly_one(("--problem", problem), ("--model", model))
    if model is None:
        given = [flag for flag, value in (("--data", data), ("--weights", weights)) if value]
        if given:
            raise CLIUsageError(f"`{given[0]}` applies with `--model`, not `--problem`.")
        check_input("--problem", problem)
        return None
    return model_spec(model, data, weights)


def _solver_options(solver: str, reward: str, model: str | None) -> dict[str, Any]:
    if reward not in REWARDS:
        raise CLIUsageError(f"`--reward` must be proxy or measured, got {reward!r}.")
    if reward == "measured" and (solver != "ddpg" or model is None):
        raise CLIUsageError("`--reward measured` applies to `--solver ddpg` with `--model`.")
    return {"reward": reward} if solver == "ddpg" else {}


@app.command()
def solve(budget: Budgets, problem: ProblemFile = None, model: PipelineModel = None,
          solver: SolverName = "ilp", bits: BitList = None, seed: Seed = 0,
          time_limit: SolveTimeLimit = 60.0, estimator: PipelineEstimator = None,
          rounding: Rounding = "gptq", weight_only: WeightOnlyChoice = None,
          reward: Reward = "proxy", data: DataFile = None, weights: WeightsFile = None,
          as_json: AsJson = False, out: ConfigOut = None) -> None:
    """Choose per-layer bit-widths under the budgets (exit 3 when they cannot be met)."""
    spec = _source(problem, model, data, weights)
    options = _solver_options(solver, reward, model)
    check_output("--out", out)
    if spec is None:
        assert problem is not None  # _source: exactly one of the two
        report = allocator.solve_problem(_load_problem(problem, bits), budget, solver=solver,
                                         seed=seed, time_limit_s=time_limit)
    else:
        with render.status(f"{model}: sensitivity, solve, apply, measure..."):
            report = allocator.solve(
                spec, budget, solver=solver, bits=parse_bits(bits), seed=seed,
                estimator=estimator, rounding=rounding, weight_only=weight_only,
                time_limit_s=time_limit, solver_options=options, progress=not as_json,
                log=render.log)
    if out is not None:
        with writing("--out", out):
            render.write_json(out, report.config.to_dict())
    render.emit(report.to_dict(), as_json, render.solve_view)
    render.exit_if_infeasible(report.config)


@app.command()
def pareto(problem: ProblemFile = None, model: PipelineModel = None,
           measure: MeasurePoints = None, png: PlotFile = None, axis: Axis = "bits",
           points: Points = 20, budget: FixedBudgets = None, bits: BitList = None,
           estimator: PipelineEstimator = None, seed: Seed = 0, rounding: Rounding = "gptq",
           weight_only: WeightOnlyChoice = None, data: DataFile = None,
           weights: WeightsFile = None, as_json: AsJson = False, out: FrontOut = None) -> None:
    """The accuracy/cost Pareto front of a problem or a model along one cost axis."""
    spec = _source(problem, model, data, weights)
    check_output("--out", out)
    check_output("--png", png)
    if spec is None:
        assert problem is not None  # _source: exactly one of the two
        if png is not None:
            raise CLIUsageError("`--png` applies with `--model` (a problem file has no "
                                "measured points to plot).")
        front = allocator.pareto_front(_load_problem(problem, bits), axis, points,
                                       budgets=allocator.parse_budgets(budget or []))
        document = render.front_document(front, [])
    else:
        with render.status(f"{model}: sensitivity, front, measuring points..."):
            front, measured = allocator.pareto(
                spec, axis=axis, points=points, measure_points=measure, budgets=budget or [],
                bits=parse_bits(bits), estimator=estimator, seed=seed, rounding=rounding,
                weight_only=weight_only, progress=not as_json)
        document = render.front_document(front, measured)
        png = png or (out.removesuffix(".json") + ".png" if out else None)
        if png:  # the folder of --out was checked; a png beside it is writable too
            with writing("--png", png):
                allocator.plot_front(front, measured, spec.primary_metric, png)
    if out is not None:
        with writing("--out", out):
            render.write_json(out, document)
    render.emit(document, as_json, render.front_view)


@app.command("apply")
def apply_command(model: ModelName, config: RequiredConfigFile, out: QuantizedOut,
                  data: DataFile = None, weights: WeightsFile = None) -> None:
    """Quantize a model with a bit config on the engine and save it (safetensors + JSON)."""
    from engine import model_size_bytes, save_quantized

    check_input("--config", config)
    check_output("--out", out, folder=True)
    spec = model_spec(model, data, weights)
    cfg = BitConfig.load(config)
    with render.status(f"quantizing {spec.name}..."):
        qmodel = spec.quantize(cfg)
        with writing("--out", out):
            path = save_quantized(qmodel, cfg, out)
    typer.echo(f"saved {spec.name} ({model_size_bytes(qmodel) / 2**20:.2f} MiB in memory) "
               f"to {path}")


@app.command()
def solvers(as_json: AsJson = False) -> None:
    """List the solvers and which are installed (ILP backends included)."""
    from allocator.solvers import SOLVERS, available_backends

    rows = [{"name": e.name, "available": e.available(), "description": e.description,
             "extra": e.extra} for e in SOLVERS]
    render.emit({"solvers": rows, "ilp_backends": available_backends()}, as_json,
                render.solvers_view)


def _estimator_options(estimator: str, rounding: str, **limits: Any) -> dict[str, Any]:
    """The estimator's options from the sensitivity flags given; the probe and time limits
    apply to Hutchinson (and fracbits' `--time-limit`) only."""
    from sensitivity import HutchinsonConfig

    options: dict[str, Any] = {"rounding": rounding}
    for key, value in limits.items():
        if value is None:
            continue
        if estimator != "hutchinson" and not (estimator == "fracbits" and key == "time_limit_s"):
            flag = key.removesuffix("_s").replace("_", "-")
            raise CLIUsageError(f"`--{flag}` applies to the hutchinson estimator only.")
        options[key] = value
    max_probes = limits.get("max_probes")
    if (estimator == "hutchinson" and max_probes is not None
            and max_probes < HutchinsonConfig.min_probes):
        options["min_probes"] = max_probes  # a lower maximum lowers the minimum with it
    return options


@app.command()
def sensitivity(model: ModelName, estimator: Estimator = "hutchinson", seed: Seed = 0,
                out: SensitivityOut = None, bits: BitList = None, rounding: Rounding = "gptq",
                max_probes: MaxProbes = None, rel_tol: RelTol = None,
                time_limit: EstimatorTimeLimit = None, no_cache: NoCache = False,
                data: DataFile = None, weights: WeightsFile = None,
                as_json: AsJson = False) -> None:
    """Estimate every layer's sensitivity Ω per bit-width (cached per model/data/config/seed)."""
    import sensitivity as sens

    options = _estimator_options(estimator, rounding, max_probes=max_probes, rel_tol=rel_tol,
                                 time_limit_s=time_limit)
    candidates = parse_bits(bits)
    check_output("--out", out)
    spec = model_spec(model, data, weights)
    with render.status(f"loading {model}..."):
        spec.layers()
    table = sens.estimate(spec, estimator, bits=candidates, seed=seed, options=options,
                          use_cache=not no_cache, progress=True)
    if out is not None:
        with writing("--out", out):
            table.save(out)
    render.emit(table.to_dict(), as_json, render.sensitivity_view)
