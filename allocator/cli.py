"""The `allocator` command line (typer). Errors become one stderr line and an exit code."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from allocator import __version__
from engine._errors import (
    AllocatorError,
    CLIUsageError,
    InvalidSpecError,
    UnknownComponentError,
)

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 0, 1, 2, 3

app = typer.Typer(
    name="allocator",
    help="Mixed-precision bit allocation for PyTorch models, measured on real int8/int4 kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"allocator {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True,
                           help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Mixed-precision bit allocation for PyTorch models."""


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the demo weights and inputs.")] = 0,
) -> None:
    """Quantize a small model on the engine; print measured speed, size and error."""
    from rich.console import Console
    from rich.table import Table

    from allocator._demo import run_demo

    console = Console()
    with console.status("measuring fp32, int8, int4 and mixed on the engine..."):
        rows = run_demo(seed=seed)
    table = Table(title="DemoMLP 1024-4096-1024, measured on this machine")
    for col in ("config", "rows", "latency", "speed-up", "SQNR", "size", "kernels"):
        table.add_column(col, justify="left" if col in ("config", "kernels") else "right")
    for r in rows:
        table.add_row(r.config, str(r.rows), f"{r.latency_us:,.0f} us", f"{r.speedup:.2f}x",
                      "-" if r.config == "fp32" else f"{r.sqnr_db:.1f} dB",
                      f"{r.size_bytes / 2**20:.2f} MiB", r.kernels)
    console.print(table)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _print_json(data: object) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """List the registered models with parameters and quantizable layer counts."""
    import zoo

    rows = []
    console = _console()
    for entry in zoo.MODELS:
        row = {"name": entry.name, "available": entry.available(),
               "description": entry.description}
        if row["available"]:
            with console.status(f"loading {entry.name}..."):
                spec = zoo.get_model(entry.name)
                layers = spec.layers()
            row |= {"params": spec.params(), "quantizable_layers": len(layers),
                    "quantizable_params": sum(x.params for x in layers),
                    "metric": spec.primary_metric}
        else:
            row["missing"] = f"install the `{entry.extra}` extra"
        rows.append(row)
    if as_json:
        _print_json({"models": rows})
        return
    from rich.table import Table

    table = Table(title="models")
    for col in ("name", "params", "layers", "metric", "description"):
        table.add_column(col, justify="right" if col in ("params", "layers") else "left")
    for r in rows:
        table.add_row(r["name"], f"{r.get('params', 0):,}" if r["available"] else "-",
                      str(r.get("quantizable_layers", "-")), r.get("metric", r.get("missing", "")),
                      r["description"])
    from rich.console import Console

    Console().print(table)


def _parse_bits(text: str) -> int:
    from engine._types import check_bits

    try:
        value = int(text)
    except ValueError:
        raise InvalidSpecError(f"`--bits` must be an integer 2..8, got {text!r}.") from None
    return check_bits(value, where="--bits")


@app.command()
def evaluate(
    model: Annotated[str, typer.Option("--model", help="Registered model, or module:factory.")],
    bits: Annotated[str | None, typer.Option(help="Uniform weight bits for every layer.")] = None,
    config: Annotated[str | None, typer.Option(help="allocator.bitconfig/1 JSON file.")] = None,
    group_size: Annotated[
        int | None, typer.Option(help="Group size below 8 bits (0: per-channel).")] = None,
    weight_only: Annotated[
        bool, typer.Option(help="Keep activations float (no W8A8 kernels).")] = False,
    rounding: Annotated[str, typer.Option(help="rtn or gptq (calibrated).")] = "gptq",
    bias_correction: Annotated[bool, typer.Option(help="Remove the mean output shift.")] = True,
    clip_search: Annotated[bool, typer.Option(help="MSE-optimal clipping of scales.")] = True,
    calibration_inputs: Annotated[str, typer.Option(
        help="Calibrated rounding's layer inputs: fp32 (float model) or sequential.")] = "fp32",
    data: Annotated[str | None, typer.Option(help="User model inputs (.pt or .npy).")] = None,
    weights: Annotated[str | None, typer.Option(help="User model weights (.safetensors).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Apply a bit config (or uniform bits) on the engine; print metrics, size, latency vs FP32."""
    import zoo
    from allocator._evaluate import evaluate_config
    from engine import BitConfig, read_config

    if (bits is None) == (config is None):
        raise CLIUsageError("give exactly one of `--bits` and `--config`.")
    spec = zoo.get_model(model, data=data, weights=weights)
    console = _console()
    with console.status(f"loading {model}..."):
        layers = spec.layers()
    if config is not None:
        cfg = read_config(config)
    else:
        kwargs = {"rounding": rounding, "bias_correction": bias_correction,
                  "clip_search": clip_search, "calibration_inputs": calibration_inputs}
        if group_size is not None:
            kwargs["group_size"] = group_size or None
        if weight_only:
            kwargs["activation_bits"] = None
        cfg = BitConfig.uniform(layers, _parse_bits(bits), model=spec.name, **kwargs)
    with console.status(f"evaluating {spec.name} at FP32 and quantized..."):
        result = evaluate_config(spec, cfg)
    if as_json:
        _print_json(result.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{spec.name}: {result.avg_bits:.2f} average weight bits, measured here")
    table.add_column("")
    table.add_column("FP32", justify="right")
    table.add_column("quantized", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{result.fp32_metrics[key]:.4f}", f"{value:.4f}")
    table.add_row("size", f"{result.fp32_size_bytes / 2**20:.2f} MiB",
                  f"{result.size_bytes / 2**20:.2f} MiB")
    table.add_row("latency (1 batch)", f"{result.fp32_latency_us / 1e3:.1f} ms",
                  f"{result.latency_us / 1e3:.1f} ms ({result.speedup:.2f}x)")
    table.add_row("kernels", "float", ", ".join(sorted(result.kernels)))
    Console().print(table)


def _parse_bit_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    from engine._types import check_bits

    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InvalidSpecError(
            f"`--bits` must be a comma-separated list such as 4,8; got {text!r}.") from None
    if not values:
        raise InvalidSpecError(f"`--bits` must name at least one bit-width; got {text!r}.")
    return [check_bits(v, where="--bits") for v in values]


def _write_json(path: str, data: object) -> None:
    import json
    from pathlib import Path

    from engine import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())


@app.command()
def solve(
    budget: Annotated[
        list[str], typer.Option("--budget",
                                help="e.g. 4.5bits, 12MB, 1.2GBOPs, 2.5ms; repeatable.")],
    problem: Annotated[str | None, typer.Option(help="allocator.problem/1 JSON file.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Registered model (runs the pipeline).")] = None,
    solver: Annotated[str, typer.Option(help="ilp, ddpg, fracbits (with --model), greedy, "
                                        "uniform, dp, brute.")] = "ilp",
    bits: Annotated[str | None, typer.Option(help="Candidate bit-widths, e.g. 4,8.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every stochastic step.")] = 0,
    time_limit: Annotated[
        float, typer.Option("--time-limit", help="Solver time limit (s).")] = 60.0,
    estimator: Annotated[str | None, typer.Option(help="With --model: hutchinson, measured or "
                                                  "fracbits (default: the model's own).")
                         ] = None,
    rounding: Annotated[
        str, typer.Option(help="With --model: gptq (calibrated) or rtn.")] = "gptq",
    weight_only: Annotated[bool | None, typer.Option(
        "--weight-only/--w8a8", help="With --model: keep activations float, or quantize them "
        "on 8-bit layers (default: the model's own).")] = None,
    reward: Annotated[str, typer.Option(help="DDPG reward: proxy (Ω) or measured (with "
                                        "--model: calibration loss on the engine's weights).")
                      ] = "proxy",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    out: Annotated[str | None, typer.Option(help="Write the BitConfig JSON here.")] = None,
) -> None:
    """Choose per-layer bit-widths under the budgets (exit 3 when they cannot be met)."""
    from allocator._budget import parse_budgets
    from allocator._problem import Problem
    from allocator.solvers import solve as run_solver

    if (problem is None) == (model is None):
        raise CLIUsageError("give exactly one of `--problem` and `--model`.")
    budgets = parse_budgets(budget)
    if reward not in ("proxy", "measured"):
        raise CLIUsageError(f"`--reward` must be proxy or measured, got {reward!r}.")
    if reward == "measured" and (solver != "ddpg" or model is None):
        raise CLIUsageError("`--reward measured` applies to `--solver ddpg` with `--model`.")
    if model is not None:
        options = {"reward": reward} if solver == "ddpg" else {}
        _solve_model(model, budget, solver, bits, seed, time_limit, estimator, rounding,
                     as_json, out, weight_only, options)
        return
    prob = Problem.load(problem)
    candidate = _parse_bit_list(bits)
    if candidate is not None:
        prob = prob.with_bits(candidate)
    solution = run_solver(prob, budgets, solver, seed=seed, time_limit_s=time_limit)
    config = solution.to_bitconfig(prob, budgets)
    if out is not None:
        _write_json(out, config.to_dict())
    if as_json:
        _print_json(config.to_dict())
    else:
        _print_solution(config)
    if solution.status == "infeasible":
        need = ", ".join(f"{k} -> at least {v}" for k, v in solution.diagnosis.items())
        typer.echo(f"infeasible: the budgets cannot all be met ({need}).", err=True)
        raise typer.Exit(EXIT_INFEASIBLE)


def _solve_model(model, budget, solver, bits, seed, time_limit, estimator, rounding, as_json,
                 out, weight_only=False, solver_options=None) -> None:
    from allocator._pipeline import DEFAULT_BITS
    from allocator._pipeline import solve as run_pipeline

    console = _console()
    candidate = _parse_bit_list(bits) or list(DEFAULT_BITS)
    with console.status(f"{model}: sensitivity, solve, apply, measure..."):
        result = run_pipeline(model, budget, solver=solver, bits=candidate, seed=seed,
                              estimator=estimator, rounding=rounding, time_limit_s=time_limit,
                              weight_only=weight_only, solver_options=solver_options,
                              progress=not as_json, log=lambda m: console.log(m))
    config = result.config
    if out is not None:
        _write_json(out, config.to_dict())
    if as_json:
        _print_json(result.report())
    else:
        _print_pipeline(result)
    if config.status == "infeasible":
        need = ", ".join(f"{k} -> at least {v}"
                         for k, v in config.extra["infeasible_budgets"].items())
        typer.echo(f"infeasible: the budgets cannot all be met ({need}).", err=True)
        raise typer.Exit(EXIT_INFEASIBLE)


def _print_pipeline(result) -> None:
    from rich.console import Console
    from rich.table import Table

    config, m, u = result.config, result.measured, result.uniform
    console = Console()
    _print_solution(config)
    if not m:
        return
    metric_names = list(m["metrics"])
    table = Table(title="measured on the engine")
    table.add_column("")
    table.add_column("FP32", justify="right")
    table.add_column(f"mixed ({config.cost['avg_bits']:.2f} bits)", justify="right")
    if u:
        table.add_column(f"uniform {u['bits']} bits", justify="right")
    for k in metric_names:
        row = [k, f"{m['fp32_metrics'][k]:.4f}", f"{m['metrics'][k]:.4f}"]
        if u:
            row.append(f"{u['metrics'][k]:.4f}")
        table.add_row(*row)
    row = ["size", f"{m['fp32_size_bytes'] / 2**20:.2f} MiB", f"{m['size_bytes'] / 2**20:.2f} MiB"]
    if u:
        row.append(f"{u['size_bytes'] / 2**20:.2f} MiB")
    table.add_row(*row)
    if "latency_us" in m:
        row = ["latency (1 batch)", f"{m['fp32_latency_us'] / 1e3:.1f} ms",
               f"{m['latency_us'] / 1e3:.1f} ms ({m['speedup_vs_fp32']:.2f}x)"]
        if u and "uniform" in m and m["uniform"]:
            row.append(f"{m['uniform']['latency_us'] / 1e3:.1f} ms")
        table.add_row(*row)
    predicted = ["predicted by the solve", "",
                 f"{config.cost['size_bytes'] / 2**20:.2f} MiB"
                 + (f", {config.cost['latency_us'] / 1e3:.1f} ms" if "latency_us" in config.cost
                    else "")]
    if u:
        predicted.append(f"{u['cost']['size_bytes'] / 2**20:.2f} MiB"
                         + (f", {u['cost']['latency_us'] / 1e3:.1f} ms"
                            if "latency_us" in u["cost"] else ""))
    table.add_row(*predicted)
    console.print(table)
    console.print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items()))


def _print_solution(config) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cost = config.cost
    summary = (f"[bold]{config.status}[/bold] ({config.solver}) "
               f"objective {config.objective:.6g}; avg {cost.get('avg_bits', 0):.3f} bits, "
               f"{cost.get('size_bytes', 0) / 1e6:.3f} MB, {cost.get('bops', 0) / 1e9:.4g} GBOPs"
               + (f", {cost['latency_us'] / 1e3:.3f} ms" if "latency_us" in cost else ""))
    console.print(summary)
    if len(config.bits) <= 80:
        table = Table(show_header=True)
        table.add_column("layer")
        table.add_column("bits", justify="right")
        for name, b in config.bits.items():
            table.add_row(name, str(b))
        console.print(table)


@app.command()
def pareto(
    problem: Annotated[str | None, typer.Option(help="allocator.problem/1 JSON file.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Registered model (front measured on the engine).")] = None,
    measure: Annotated[
        int | None,
        typer.Option(help="With --model: measure the first N points (default all).")] = None,
    png: Annotated[
        str | None, typer.Option(help="With --model: plot the front to this PNG.")] = None,
    axis: Annotated[str, typer.Option(help="Cost axis: bits, size, bops or latency.")] = "bits",
    points: Annotated[int, typer.Option(help="Budget values swept.")] = 20,
    budget: Annotated[
        list[str] | None, typer.Option("--budget", help="Budgets held fixed.")] = None,
    bits: Annotated[str | None, typer.Option(help="Candidate bit-widths, e.g. 2,4,8.")] = None,
    estimator: Annotated[str | None, typer.Option(help="With --model: hutchinson, measured or "
                                                  "fracbits (default: the model's own).")
                         ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every stochastic step.")] = 0,
    rounding: Annotated[
        str, typer.Option(help="With --model: gptq (calibrated) or rtn.")] = "gptq",
    weight_only: Annotated[bool | None, typer.Option(
        "--weight-only/--w8a8", help="With --model: keep activations float, or quantize them "
        "on 8-bit layers (default: the model's own).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    out: Annotated[
        str | None, typer.Option(help="Write the allocator.pareto/1 JSON here.")] = None,
) -> None:
    """The accuracy/cost Pareto front of a problem or a model along one cost axis."""
    from allocator._budget import parse_budgets
    from allocator._pareto import AXES, pareto_front
    from allocator._problem import Problem

    if (problem is None) == (model is None):
        raise CLIUsageError("give exactly one of `--problem` and `--model`.")
    candidate = _parse_bit_list(bits)
    measured: list = []
    if model is not None:
        import zoo
        from allocator._pipeline import DEFAULT_BITS, plot_front
        from allocator._pipeline import pareto as model_pareto

        spec = zoo.get_model(model)
        with _console().status(f"{model}: sensitivity, front, measuring points..."):
            front, measured = model_pareto(spec, axis=axis, points=points, measure_points=measure,
                                           budgets=budget or [], bits=candidate or DEFAULT_BITS,
                                           estimator=estimator, seed=seed, rounding=rounding,
                                           weight_only=weight_only, progress=not as_json)
        png = png or (str(out).removesuffix(".json") + ".png" if out else None)
        if png:
            plot_front(front, measured, spec.primary_metric, png)
    else:
        prob = Problem.load(problem)
        if candidate is not None:
            prob = prob.with_bits(candidate)
        front = pareto_front(prob, axis, points, budgets=parse_budgets(budget or []))
    data = front.to_dict()
    for point, metrics in zip(data["points"], measured, strict=False):
        point["measured"] = metrics
    if out is not None:
        _write_json(out, data)
    if as_json:
        _print_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Pareto front along {axis} ({len(front.points)} points)")
    table.add_column(AXES[axis], justify="right")
    table.add_column("objective", justify="right")
    table.add_column("bits used", justify="left")
    if measured:
        table.add_column("measured", justify="right")
    for i, p in enumerate(front.points):
        used = sorted(set(p.bits.values()))
        row = [f"{p.cost[AXES[axis]]:.6g}", f"{p.objective:.6g}", ",".join(map(str, used))]
        if measured:
            row.append(", ".join(f"{k}={v:.4f}" for k, v in list(measured[i].items())[:2])
                       if i < len(measured) else "-")
        table.add_row(*row)
    Console().print(table)


@app.command("apply")
def apply_command(
    model: Annotated[str, typer.Option(help="Registered model, or module:factory.")],
    config: Annotated[str, typer.Option(help="allocator.bitconfig/1 JSON file.")],
    out: Annotated[str, typer.Option(help="Folder for model.safetensors + bitconfig.json.")],
    data: Annotated[str | None, typer.Option(help="User model inputs (.pt or .npy).")] = None,
    weights: Annotated[str | None, typer.Option(help="User model weights (.safetensors).")] = None,
) -> None:
    """Quantize a model with a bit config on the engine and save it (safetensors + JSON)."""
    import zoo
    from engine import model_size_bytes, read_config, save_quantized

    spec = zoo.get_model(model, data=data, weights=weights)
    cfg = read_config(config)
    with _console().status(f"quantizing {spec.name}..."):
        qmodel = spec.quantize(cfg)
        path = save_quantized(qmodel, cfg, out)
    typer.echo(f"saved {spec.name} ({model_size_bytes(qmodel) / 2**20:.2f} MiB in memory) "
               f"to {path}")


@app.command()
def solvers(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """List the solvers and which are installed (ILP backends included)."""
    from allocator.solvers import SOLVERS, available_backends

    rows = [{"name": e.name, "available": e.available(), "description": e.description,
             "extra": e.extra} for e in SOLVERS]
    data = {"solvers": rows, "ilp_backends": available_backends()}
    if as_json:
        _print_json(data)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"solvers (ILP backends: {', '.join(data['ilp_backends']) or 'none'})")
    for col in ("name", "available", "description"):
        table.add_column(col)
    for r in rows:
        avail = "yes" if r["available"] else f"no (install `{r['extra']}`)"
        table.add_row(r["name"], avail, r["description"])
    Console().print(table)


@app.command()
def sensitivity(
    model: Annotated[str, typer.Option(help="Registered model, or module:factory.")],
    estimator: Annotated[
        str, typer.Option(help="hutchinson, measured or fracbits.")] = "hutchinson",
    seed: Annotated[int, typer.Option(help="Seed of the random probes.")] = 0,
    out: Annotated[
        str | None, typer.Option(help="Write the allocator.sensitivity/1 JSON here.")] = None,
    bits: Annotated[str, typer.Option(help="Candidate bit-widths.")] = "2,3,4,5,6,8",
    rounding: Annotated[str, typer.Option(help="Rounding scored by Ω: gptq or rtn.")] = "gptq",
    max_probes: Annotated[
        int | None, typer.Option(help="Hutchinson: probes per layer at most.")] = None,
    rel_tol: Annotated[
        float | None, typer.Option(help="Hutchinson: stop at this relative std-error.")] = None,
    time_limit: Annotated[float | None, typer.Option("--time-limit", help="Hutchinson or "
                                                     "fracbits: seconds.")] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute even if cached.")] = False,
    data: Annotated[str | None, typer.Option(help="User model inputs (.pt or .npy).")] = None,
    weights: Annotated[str | None, typer.Option(help="User model weights (.safetensors).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Estimate every layer's sensitivity Ω per bit-width (cached per model/data/config/seed)."""
    import sensitivity as sens
    import zoo

    spec = zoo.get_model(model, data=data, weights=weights)
    options: dict = {"rounding": rounding}
    for key, value in (("max_probes", max_probes), ("rel_tol", rel_tol),
                       ("time_limit_s", time_limit)):
        if value is not None:
            fracbits_limit = estimator == "fracbits" and key == "time_limit_s"
            if estimator != "hutchinson" and not fracbits_limit:
                raise CLIUsageError(f"`--{key.replace('_s', '').replace('_', '-')}` applies to "
                                    "the hutchinson estimator only.")
            options[key] = value
    if estimator == "hutchinson" and max_probes is not None and max_probes < 16:
        options["min_probes"] = max_probes
    with _console().status(f"loading {model}..."):
        spec.layers()
    table = sens.estimate(spec, estimator, bits=_parse_bit_list(bits), seed=seed,
                          options=options, use_cache=not no_cache, progress=True)
    if out is not None:
        table.save(out)
    if as_json:
        _print_json(table.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    view = Table(title=f"{estimator} sensitivity of {spec.name} ({table.seconds:.1f} s)")
    view.add_column("layer")
    if estimator == "fracbits":
        view.add_column("learned bits", justify="right")
    else:
        view.add_column("trace", justify="right")
        view.add_column("rel. std-err", justify="right")
        view.add_column("probes", justify="right")
    for b in table.bits:
        view.add_column(f"Ω@{b}", justify="right")
    for name, row in table.layers.items():
        if estimator == "fracbits":
            facts = [f"{row.extra['fractional_bits']:.2f}"]
        else:
            rel = (f"{row.std_error / abs(row.trace):.1%}"
                   if row.std_error is not None and row.trace else "-")
            facts = ["-" if row.trace is None else f"{row.trace:.4g}", rel, str(row.probes)]
        view.add_row(name + (" [" + ",".join(row.flags) + "]" if row.flags else ""), *facts,
                     *(f"{row.omega[b]:.3g}" for b in table.bits))
    Console().print(view)


def _register_profile_commands() -> None:
    from allocator.cli_profile import profile_command, profiles_command

    app.command("profile")(profile_command)
    app.command("profiles")(profiles_command)


_register_profile_commands()


def _register_serve_commands() -> None:
    from allocator.cli_serve import serve_command, worker_command

    app.command("serve")(serve_command)
    app.command("worker")(worker_command)


_register_serve_commands()


def _exit_code(err: AllocatorError) -> int:
    if isinstance(err, InvalidSpecError | UnknownComponentError | CLIUsageError):
        return EXIT_BAD_INPUT
    return EXIT_RUNTIME


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the typer app, mapping `AllocatorError` to a message and exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="allocator", standalone_mode=False)
    except AllocatorError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        return _exit_code(err)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:
        # click's usage/parameter errors (typer vendors click; matched by shape, not class)
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            typer.echo(f"error: {e.format_message()}", err=True)
            return e.exit_code
        raise
    return result if isinstance(result, int) else EXIT_OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
