"""The model and solve commands: each reads its options, calls one library function and
hands the result to `allocator.cli._render`.

Heavy packages (torch, the zoo, sensitivity) are imported inside the commands, so that
`allocator --help` and the API process's `import allocator.cli` stay light.

A flag not given takes the project file's setting (`allocator.toml` or `[tool.allocator]`
in `pyproject.toml`, read from the working directory), else the default: flags win.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.console import RenderableType
from rich.table import Table

import allocator
from allocator._project import PROJECT_FILE, LoadedProject, load_project
from allocator._rules import Rules, apply_rules, parse_rules
from allocator.cli import _render as render
from allocator.cli._app import app
from allocator.cli._config import NO_MODEL_HINT, choose_model, require_model
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
    Device,
    Estimator,
    EstimatorTimeLimit,
    FixedBudgets,
    Fixes,
    FrontOut,
    GroupSize,
    LayersOf,
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
    ShowTimings,
    SolverName,
    SolveTimeLimit,
    Target,
    Ties,
    UniformBits,
    WeightOnlyChoice,
    WeightOnlyFlag,
    WeightsFile,
    exactly_one,
    parse_bits,
)
from engine import AllocatorError, BitConfig, CLIUsageError, InvalidSpecError, check_bits

REWARDS = ("proxy", "measured")


@app.command()
def demo(seed: Seed = 0) -> None:
    """Quantize a small model on the engine; print measured speed, size and error."""
    from allocator.cli._demo import run_demo

    with render.status("measuring fp32, int8, int4 and mixed on the engine..."):
        rows = run_demo(seed=seed or 0)
    render.show(*render.demo_view(rows))


def layers_view(doc: render.Document) -> list[RenderableType]:
    """`allocator models --layers MODEL`: every weight layer, quantized or why not."""
    rows = doc["layers"]
    quantized = sum(1 for r in rows if r["quantized"])
    table = Table(title=f"{doc['model']}: {len(rows)} Linear/Conv layers, {quantized} quantized")
    for column in ("layer", "kind", "shape", "params", "quantized", "reason"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for r in rows:
        shape = "x".join(map(str, r["shape"])) if r.get("shape") else "-"
        table.add_row(r["name"], r["kind"], shape, f"{r['params']:,}",
                      "yes" if r["quantized"] else "[yellow]no[/yellow]", r.get("reason") or "")
    return [table]


def _model_layers(model: str, as_json: bool) -> None:
    import zoo

    project = load_project()  # the project's data goes with the project's model only
    data = project.settings.data if model == project.settings.model else None
    with render.status(f"loading {model}..."):
        rows = zoo.describe_layers(model, data=data)
    render.emit({"model": model, "layers": rows}, as_json, layers_view)


@app.command()
def models(layers: LayersOf = None, as_json: AsJson = False) -> None:
    """List the registered models with parameters and quantizable layer counts, or with
    `--layers MODEL` every Linear/Conv layer of one model (quantized, or why not)."""
    import zoo

    if layers is not None:
        _model_layers(layers, as_json)
        return
    with render.status("loading the models..."):
        rows = zoo.describe_models(details=True)
    render.emit({"models": rows}, as_json, render.models_view)


@app.command()
def evaluate(model: ModelName = None, bits: UniformBits = None, config: ConfigFile = None,
             group_size: GroupSize = None, weight_only: WeightOnlyFlag = None,
             rounding: Rounding = None, bias_correction: BiasCorrection = True,
             clip_search: ClipSearch = True, calibration_inputs: CalibrationInputs = "fp32",
             device: Device = "auto", data: DataFile = None, weights: WeightsFile = None,
             as_json: AsJson = False) -> None:
    """Apply a bit config (or uniform bits) on the engine; print metrics, size, latency vs FP32."""
    exactly_one(("--bits", bits), ("--config", config))
    uniform_bits = 0 if bits is None else check_bits(bits, where="--bits")  # 0: --config
    check_input("--config", config)
    project = load_project()
    spec = model_spec(*require_model(project, model, data, weights), device=device)
    if config is not None:
        cfg = BitConfig.load(config)
    else:
        # unset: the model's own activations and group size, as its solves use them
        only_weights = project.pick("weight_only", weight_only)
        if only_weights is None:
            only_weights = spec.default_activation_bits is None
        settings = {"rounding": project.pick("rounding", rounding),
                    "bias_correction": bias_correction,
                    "clip_search": clip_search, "calibration_inputs": calibration_inputs,
                    **(_group_size(project, group_size)
                       or {"group_size": spec.default_group_size}),
                    **({"activation_bits": None} if only_weights else {})}
        with render.status(f"loading {spec.name}..."):
            cfg = BitConfig.uniform(spec.layers(), uniform_bits, model=spec.name, **settings)
    with render.status(f"evaluating {spec.name} at FP32 and quantized..."):
        result = allocator.evaluate_config(spec, cfg)
    render.emit(result.to_dict(), as_json, render.evaluation_view)


def _load_problem(path: str, bits: str | None) -> allocator.Problem:
    """The `--problem` file, with the `--bits` candidates when given."""
    check_input("--problem", path)
    problem = allocator.Problem.load(path)
    return problem if bits is None else problem.with_bits(parse_bits(bits))


def _group_size(project: LoadedProject, flag: int | None) -> dict[str, Any]:
    """The `group_size` setting when the flag or the project gives one (0: per channel),
    else nothing: the engine's own default applies."""
    value = flag if flag is not None else project.settings.group_size
    return {} if value is None else {"group_size": value or None}


def _model_bits(project: LoadedProject, bits: str | None) -> tuple[int, ...]:
    """The candidate widths of a model: `--bits`, else the project's, else the default."""
    return parse_bits(bits) if bits is not None else tuple(project.value("bits"))


def _source(project: LoadedProject, problem: str | None, model: str | None,
            data: str | None, weights: str | None, device: str = "auto") -> Any:
    """Checks `--problem` / `--model` and their files before any work: the model's spec
    (a user model with its `--data` and `--weights`), or None for a problem file. Without
    either flag, the project's model (with its data and weights) is the model."""
    if problem is None:
        choice = choose_model(project, model, data, weights)
        if choice.model is None:
            raise CLIUsageError(f"give exactly one of `--problem` and `--model`, or "
                                f"{NO_MODEL_HINT}.")
        return model_spec(choice.model, choice.data, choice.weights, device=device)
    exactly_one(("--problem", problem), ("--model", model))
    given = [flag for flag, value in (("--data", data), ("--weights", weights)) if value]
    if given:
        raise CLIUsageError(f"`{given[0]}` applies with `--model`, not `--problem`.")
    check_input("--problem", problem)
    return None


def _solver_options(solver: str, reward: str, spec: Any) -> dict[str, Any]:
    if reward not in REWARDS:
        raise CLIUsageError(f"`--reward` must be proxy or measured, got {reward!r}.")
    if reward == "measured" and (solver != "ddpg" or spec is None):
        raise CLIUsageError("`--reward measured` applies to `--solver ddpg` with `--model`.")
    return {"reward": reward} if solver == "ddpg" else {}


def _budgets(project: LoadedProject, budget: list[str] | None) -> list[str]:
    budgets = project.pick("budget", budget or None)
    if not budgets:
        raise CLIUsageError(f"give `--budget` (e.g. 4.5bits), or add `budget = \"4.5bits\"` "
                            f"to {PROJECT_FILE}.")
    return list(budgets)


def _rules(project: LoadedProject, tie: list[str] | None, fix: list[str] | None,
           from_project: bool) -> Rules:
    """`--tie` and `--fix`, each else the project's `tie` / `fix` (with a model: layer
    names belong to the project's model, not to a problem file)."""
    where = f"{project.source} `%s`"
    ties = tie or (project.value("tie") if from_project else None)
    fixes = fix or (project.value("fix") if from_project else None)
    return parse_rules(ties, fixes, tie_option="--tie" if tie else where % "tie",
                       fix_option="--fix" if fix else where % "fix")


def _target(project: LoadedProject, flag: str | None, spec: Any) -> str:
    """`--target`, else the project's `target`, else `engine`; a target other than the
    engine needs a model (a problem file's costs are its own)."""
    from allocator.export import TARGETS

    if flag is not None and flag not in TARGETS:
        raise InvalidSpecError(f"`--target` must be one of {', '.join(TARGETS.names())}; "
                               f"got {flag!r}.")
    if spec is None:
        if flag is not None and flag != "engine":
            raise CLIUsageError("`--target` applies with `--model` (a problem file carries "
                                "its own costs).")
        return "engine"
    return str(project.pick("target", flag))


def _say_rules(summary: dict[str, Any] | None) -> None:
    """One stderr line on the ties and pins the answer kept; exit 1 when one broke (a
    solver bug: the answer must not be used)."""
    if summary is None:
        return
    counts = (f"{summary['ties']} tie group(s) of {summary['tied_layers']} layers, "
              f"{summary['fixed']} pinned layer(s)")
    if summary["held"]:
        render.log(f"rules held: {counts}")
        return
    raise AllocatorError(f"rules broken ({counts}): "
                         + "; ".join(summary.get("broken", [])[:5]))


@app.command()
def solve(budget: Budgets = None, problem: ProblemFile = None, model: PipelineModel = None,
          solver: SolverName = None, bits: BitList = None, seed: Seed = None,
          time_limit: SolveTimeLimit = None, estimator: PipelineEstimator = None,
          rounding: Rounding = None, weight_only: WeightOnlyChoice = None,
          reward: Reward = "proxy", device: Device = "auto", data: DataFile = None,
          weights: WeightsFile = None, tie: Ties = None, fix: Fixes = None,
          target: Target = None, as_json: AsJson = False, out: ConfigOut = None,
          timings: ShowTimings = False) -> None:
    """Choose per-layer bit-widths under the budgets (exit 3 when they cannot be met)."""
    project = load_project()
    spec = _source(project, problem, model, data, weights, device)
    budgets = _budgets(project, budget)
    rules = _rules(project, tie, fix, from_project=spec is not None)
    solver = project.pick("solver", solver)
    seed = project.pick("seed", seed)
    time_limit = project.pick("time_limit_s", time_limit)
    options = _solver_options(solver, reward, spec)
    deploy = _target(project, target, spec)
    check_output("--out", out)
    if spec is None:
        assert problem is not None  # _source: exactly one of the two
        report = allocator.solve_problem(_load_problem(problem, bits), budgets, solver=solver,
                                         seed=seed, time_limit_s=time_limit, rules=rules)
    else:
        from allocator._pipeline import rules_layout

        candidates = _model_bits(project, bits)
        if rules or deploy != "engine":  # a rule or target that does not fit fails at once
            rules_layout(spec, candidates, rules, target=deploy)
        with render.status(f"{spec.name}: sensitivity, solve, apply, measure..."):
            report = allocator.solve(
                spec, budgets, solver=solver, bits=candidates, seed=seed,
                estimator=project.pick("estimator", estimator),
                rounding=project.pick("rounding", rounding),
                weight_only=project.pick("weight_only", weight_only),
                **_group_size(project, None), time_limit_s=time_limit,
                solver_options=options, rules=rules, target=deploy, progress=not as_json,
                log=render.log)
    _say_rules(report.rules)
    if report.target != "engine":
        floats = report.float_layers
        render.log(f"target {report.target}: sizes and bits are its file's"
                   + (f"; {len(floats)} layer(s) stay float: " + ", ".join(list(floats)[:5])
                      if floats else ""))
    if out is not None:
        with writing("--out", out):
            render.write_json(out, report.config.to_dict())
    render.emit(report.to_dict(), as_json, render.solve_view)
    if timings:
        render.show_timings(report.timings_s)
    render.exit_if_infeasible(report.config)


@app.command()
def pareto(problem: ProblemFile = None, model: PipelineModel = None,
           measure: MeasurePoints = None, png: PlotFile = None, axis: Axis = "bits",
           points: Points = 20, budget: FixedBudgets = None, bits: BitList = None,
           estimator: PipelineEstimator = None, seed: Seed = None, rounding: Rounding = None,
           weight_only: WeightOnlyChoice = None, device: Device = "auto", data: DataFile = None,
           weights: WeightsFile = None, tie: Ties = None, fix: Fixes = None,
           target: Target = None, as_json: AsJson = False, out: FrontOut = None,
           timings: ShowTimings = False) -> None:
    """The accuracy/cost Pareto front of a problem or a model along one cost axis."""
    from allocator._pipeline import front_rules, rules_layout

    project = load_project()  # its `budget` is solve's: pareto's --budget holds costs fixed
    spec = _source(project, problem, model, data, weights, device)
    rules = _rules(project, tie, fix, from_project=spec is not None)
    deploy = _target(project, target, spec)
    check_output("--out", out)
    check_output("--png", png)
    stage_s: dict[str, float] = {}
    if spec is None:
        assert problem is not None  # _source: exactly one of the two
        if png is not None:
            raise CLIUsageError("`--png` applies with `--model` (a problem file has no "
                                "measured points to plot).")
        solved = apply_rules(_load_problem(problem, bits), rules)
        t0 = time.perf_counter()
        front = allocator.pareto_front(solved, axis, points,
                                       budgets=allocator.parse_budgets(budget or []))
        stage_s["front_s"] = time.perf_counter() - t0
        document = render.front_document(front, [])
        held = front_rules(front, solved)
    else:
        candidates = _model_bits(project, bits)
        # the model's ties and pins, checked before any work (a bad rule fails at once)
        layout = (rules_layout(spec, candidates, rules, target=deploy)
                  if rules or deploy != "engine" else None)
        with render.status(f"{spec.name}: sensitivity, front, measuring points..."):
            front, measured = allocator.pareto(
                spec, axis=axis, points=points, measure_points=measure, budgets=budget or [],
                bits=candidates, rules=rules, target=deploy,
                estimator=project.pick("estimator", estimator),
                seed=project.pick("seed", seed), rounding=project.pick("rounding", rounding),
                weight_only=project.pick("weight_only", weight_only),
                **_group_size(project, None), progress=not as_json, timings=stage_s)
        document = render.front_document(front, measured)
        held = None if layout is None else front_rules(front, layout)
        document["target"] = deploy
        png = png or (out.removesuffix(".json") + ".png" if out else None)
        if png:  # the folder of --out was checked; a png beside it is writable too
            with writing("--png", png):
                allocator.plot_front(front, measured, spec.primary_metric, png)
    if held is not None:
        document["rules"] = held
    _say_rules(held)
    if out is not None:
        with writing("--out", out):
            render.write_json(out, document)
    render.emit(document, as_json, render.front_view)
    if timings:
        render.show_timings(stage_s)


@app.command("apply")
def apply_command(config: RequiredConfigFile, out: QuantizedOut, model: ModelName = None,
                  device: Device = "auto", data: DataFile = None,
                  weights: WeightsFile = None) -> None:
    """Quantize a model with a bit config on the engine and save it (safetensors + JSON)."""
    from engine import model_size_bytes, save_quantized

    check_input("--config", config)
    check_output("--out", out, folder=True)
    spec = model_spec(*require_model(load_project(), model, data, weights), device=device)
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
def sensitivity(model: ModelName = None, estimator: Estimator = None, seed: Seed = None,
                out: SensitivityOut = None, bits: BitList = None, rounding: Rounding = None,
                max_probes: MaxProbes = None, rel_tol: RelTol = None,
                time_limit: EstimatorTimeLimit = None, no_cache: NoCache = False,
                device: Device = "auto", data: DataFile = None, weights: WeightsFile = None,
                as_json: AsJson = False) -> None:
    """Estimate every layer's sensitivity Ω per bit-width (cached per model/data/config/seed)."""
    import sensitivity as sens

    project = load_project()
    estimator = project.pick("estimator", estimator) or "hutchinson"
    options = _estimator_options(estimator, project.pick("rounding", rounding),
                                 max_probes=max_probes, rel_tol=rel_tol, time_limit_s=time_limit)
    candidates = _model_bits(project, bits)
    check_output("--out", out)
    spec = model_spec(*require_model(project, model, data, weights), device=device)
    with render.status(f"loading {spec.name}..."):
        spec.layers()
    table = sens.estimate(spec, estimator, bits=candidates, seed=project.pick("seed", seed),
                          options=options, use_cache=not no_cache, progress=True)
    if out is not None:
        with writing("--out", out):
            table.save(out)
    render.emit(table.to_dict(), as_json, render.sensitivity_view)
from allocator.cli import _export as _export  # noqa: E402,F401  (registers `allocator export`)
