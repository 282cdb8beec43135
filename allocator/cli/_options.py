"""Every command-line option, declared once as an `Annotated` alias, and their parsing.

Commands take these aliases as parameter types, so a flag shared by several commands
(`--json`, `--bits`, `--seed`, ...) has one name, one type and one help text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import typer

from engine import DEFAULT_BITS, CLIUsageError, InvalidSpecError, check_bits

_DEFAULT_BITS_TEXT = ",".join(map(str, DEFAULT_BITS))
_WITH_MODEL = "With --model: "


def _or_project(default: object) -> str:
    """The help's default of a flag the project file may set (allocator.toml's key)."""
    return f"default: the project file's, else {default}"



def _positive_seconds(value: float | None) -> float | None:
    """A time limit: a finite number of seconds above 0 (nan, inf, 0 and below refused)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number of seconds above 0, got {value}.")
    return value


def _fraction(value: float | None) -> float | None:
    """A relative tolerance: finite, above 0 and below 1."""
    if value is not None and not (math.isfinite(value) and 0 < value < 1):
        raise typer.BadParameter(f"must be a number above 0 and below 1, got {value}.")
    return value


def _int_range(low: int, high: int) -> Callable[[int | None], int | None]:
    """A callback refusing integers outside [low, high] (typer's own `min`/`max` message
    would be fine too; this one also bounds the huge values that overflow later)."""

    def check(value: int | None) -> int | None:
        if value is not None and not low <= value <= high:
            raise typer.BadParameter(f"must be between {low} and {high}, got {value}.")
        return value

    return check


def _choice(*allowed: str) -> Callable[[str], str]:
    """A callback refusing text outside `allowed` (case-insensitive; returned lower-case)."""

    def check(value: str) -> str:
        if value.lower() not in allowed:
            raise typer.BadParameter(f"must be one of {', '.join(allowed)}; got {value!r}.")
        return value.lower()

    return check


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take it
MAX_COUNT = 10**6  # points, probes, repeats, batch rows: beyond any sensible run

# Shared by several commands.
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ShowTimings = Annotated[bool, typer.Option(
    "--timings", help="List each stage's seconds on stderr (load, sensitivity, latency, "
                      "solve, measure); `--json` output has them as `timings_s`.")]
ModelName = Annotated[str | None, typer.Option(
    "--model", help="Registered model, or module:factory (default: the project file's).")]
PipelineModel = Annotated[str | None, typer.Option(
    "--model", help="Registered model: estimate, solve, then apply and measure on the engine "
    "(default: the project file's, unless --problem).")]
ProblemFile = Annotated[str | None, typer.Option(
    "--problem", help="allocator.problem/1 JSON file.")]
BitList = Annotated[str | None, typer.Option(
    "--bits", help=f"Candidate bit-widths, e.g. 2,4,8 ({_or_project(_DEFAULT_BITS_TEXT)}; "
    "with --problem: the problem file's own).")]
Seed = Annotated[int | None, typer.Option(
    "--seed", callback=_int_range(0, MAX_SEED),
    help=f"Seed of every stochastic step ({_or_project(0)}).")]
Rounding = Annotated[str | None, typer.Option(
    "--rounding", help=f"gptq (calibrated) or rtn ({_or_project('gptq')}).")]
PipelineEstimator = Annotated[str | None, typer.Option(
    "--estimator", help=_WITH_MODEL + "hutchinson, measured, fracbits or fisher (default: the "
    "project file's, else the model's own).")]
WeightOnlyChoice = Annotated[bool | None, typer.Option(
    "--weight-only/--w8a8", help=_WITH_MODEL + "keep activations float, or quantize them on "
    "8-bit layers (default: the project file's, else the model's own).")]
Device = Annotated[str, typer.Option(
    "--device", callback=_choice("auto", "cpu", "cuda"),
    help="Where an hf: model runs: auto (CUDA when present), cpu or cuda.")]
DataFile = Annotated[str | None, typer.Option("--data", help="User model inputs (.pt or .npy).")]
WeightsFile = Annotated[str | None, typer.Option(
    "--weights", help="User model weights (.safetensors).")]

# models
LayersOf = Annotated[str | None, typer.Option(
    "--layers", metavar="MODEL",
    help="List every Linear/Conv layer of MODEL: whether it is quantized, and why not.")]

# evaluate and apply
UniformBits = Annotated[int | None, typer.Option(
    "--bits", help="Uniform weight bits for every layer.")]
_CONFIG_FILE_HELP = "allocator.bitconfig/1 JSON file."
ConfigFile = Annotated[str | None, typer.Option("--config", help=_CONFIG_FILE_HELP)]
RequiredConfigFile = Annotated[str, typer.Option("--config", help=_CONFIG_FILE_HELP)]
GroupSize = Annotated[int | None, typer.Option(
    "--group-size", callback=_int_range(0, MAX_COUNT),
    help=f"Group size below 8 bits (0: per-channel; {_or_project(128)}).")]
WeightOnlyFlag = Annotated[bool | None, typer.Option(
    "--weight-only/--no-weight-only",
    help=f"Keep activations float, no W8A8 kernels ({_or_project('no')}).")]
BiasCorrection = Annotated[bool, typer.Option(
    "--bias-correction/--no-bias-correction", help="Remove the mean output shift.")]
ClipSearch = Annotated[bool, typer.Option(
    "--clip-search/--no-clip-search", help="MSE-optimal clipping of scales.")]
CalibrationInputs = Annotated[str, typer.Option(
    "--calibration-inputs",
    help="Calibrated rounding's layer inputs: fp32 (float model) or sequential.")]
QuantizedOut = Annotated[str, typer.Option(
    "--out", help="Folder for model.safetensors + bitconfig.json.")]

# sensitivity
Estimator = Annotated[str | None, typer.Option(
    "--estimator",
    help=f"hutchinson, measured, fracbits or fisher ({_or_project('hutchinson')}).")]
SensitivityOut = Annotated[str | None, typer.Option(
    "--out", help="Write the allocator.sensitivity/1 JSON here.")]
MaxProbes = Annotated[int | None, typer.Option(
    "--max-probes", callback=_int_range(1, MAX_COUNT),
    help="Hutchinson: probes per layer at most.")]
RelTol = Annotated[float | None, typer.Option(
    "--rel-tol", callback=_fraction, help="Hutchinson: stop at this relative std-error.")]
EstimatorTimeLimit = Annotated[float | None, typer.Option(
    "--time-limit", callback=_positive_seconds, help="Hutchinson or fracbits: seconds.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Recompute even if cached.")]

# solve and pareto
Budgets = Annotated[list[str] | None, typer.Option(
    "--budget", help="e.g. 4.5bits, 12MB, 1.2GBOPs, 2.5ms; repeatable (default: the project "
    "file's `budget`).")]
FixedBudgets = Annotated[list[str] | None, typer.Option("--budget", help="Budgets held fixed.")]
SolverName = Annotated[str | None, typer.Option(
    "--solver", help="ilp, ddpg, fracbits (with --model), greedy, uniform, dp, brute "
    f"({_or_project('ilp')}).")]
SolveTimeLimit = Annotated[float | None, typer.Option(
    "--time-limit", callback=_positive_seconds,
    help=f"Solver time limit in seconds ({_or_project(60)}).")]
Reward = Annotated[str, typer.Option(
    "--reward", help="DDPG reward: proxy (Ω) or measured (with --model: calibration loss on "
    "the engine's weights).")]
ConfigOut = Annotated[str | None, typer.Option("--out", help="Write the BitConfig JSON here.")]
MeasurePoints = Annotated[int | None, typer.Option(
    "--measure", callback=_int_range(0, MAX_COUNT),
    help=_WITH_MODEL + "measure the first N points (default all).")]
PlotFile = Annotated[str | None, typer.Option(
    "--png", help=_WITH_MODEL + "plot the front to this PNG.")]
Axis = Annotated[str, typer.Option("--axis", help="Cost axis: bits, size, bops or latency.")]
Points = Annotated[int, typer.Option("--points", callback=_int_range(2, 1000),
                                     help="Budget values swept.")]
FrontOut = Annotated[str | None, typer.Option(
    "--out", help="Write the allocator.pareto/1 JSON here.")]
Ties = Annotated[list[str] | None, typer.Option(
    "--tie", metavar="RULE",
    help="Layers that take one bit-width: re:REGEX (grouped per block: q/k/v of block N "
    "together, e.g. 're:\\.(q|k|v)_proj$') or a,b,c; repeatable (default: the project "
    "file's `tie`, with --model).")]
Target = Annotated[str | None, typer.Option(
    "--target", metavar="TARGET",
    help="Deployment target: engine, onnx, compressed-tensors or gguf; the solve measures its "
    "schemes and counts its file's bytes (a bits budget: its bits per weight) "
    f"({_or_project('engine')}).")]
Fixes = Annotated[list[str] | None, typer.Option(
    "--fix", metavar="RULE",
    help="Pin layers to a bit-width: NAME=BITS, a,b=BITS or re:REGEX=BITS (e.g. lm_head=8); "
    "repeatable (default: the project file's `fix`, with --model).")]

# profile
Batch = Annotated[int | None, typer.Option(
    "--batch", callback=_int_range(1, MAX_COUNT),
    help="Batch size to measure at (default: the model's evaluation batch).")]
Repeats = Annotated[int, typer.Option(
    "--repeats", callback=_int_range(1, MAX_COUNT), help="Timed calls per measurement.")]
ProfileOut = Annotated[str | None, typer.Option("--out", help="Also write the table here.")]

# serve and worker
Host = Annotated[str, typer.Option("--host", help="Interface to listen on.")]
Port = Annotated[int, typer.Option("--port", callback=_int_range(1, 65535),
                                   help="TCP port.")]
Workers = Annotated[int | None, typer.Option(
    "--workers", callback=_int_range(0, 64),
    help="In-process worker processes (default ALLOCATOR_WORKERS or 1; 0: API only).")]
ServeDemo = Annotated[bool, typer.Option(
    "--demo/--no-demo",
    help="Submit a demo job (digits-cnn, 4bits, ilp), print it, keep serving.")]
LogLevel = Annotated[str, typer.Option(
    "--log-level", callback=_choice("critical", "error", "warning", "info", "debug", "trace"),
    help="uvicorn log level.")]
Concurrency = Annotated[int, typer.Option("--concurrency", callback=_int_range(1, 256),
                                          help="Jobs run at once (processes).")]
CeleryLogLevel = Annotated[str, typer.Option(
    "--loglevel", callback=_choice("critical", "error", "warning", "info", "debug"),
    help="Celery log level.")]


def parse_bits(text: str | None) -> tuple[int, ...]:
    """`"8,4,4, 2"` -> (8, 4, 2): the `--bits` list, duplicates dropped; None -> `DEFAULT_BITS`.

    Raises:
        InvalidSpecError: naming `--bits`, for anything but a list of bit-widths 2..8.
    """
    if text is None:
        return DEFAULT_BITS
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not all(t.isascii() and t.isdigit() for t in parts):  # int() reads "٤" and "4_0" too
        raise InvalidSpecError(
            f"`--bits` must be a comma-separated list such as 2,4,8; got {text!r}.")
    values = [int(t) for t in parts]
    if not values:
        raise InvalidSpecError(f"`--bits` must name at least one bit-width; got {text!r}.")
    return tuple(dict.fromkeys(check_bits(v, where="--bits") for v in values))


def exactly_one(first: tuple[str, object], second: tuple[str, object]) -> None:
    """Raises `CLIUsageError` unless exactly one of two (flag, value) options was given."""
    if (first[1] is None) == (second[1] is None):
        raise CLIUsageError(f"give exactly one of `{first[0]}` and `{second[0]}`.")
