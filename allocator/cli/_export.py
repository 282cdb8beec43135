"""`allocator export`: a solved BitConfig applied on the engine and written in a deployment
format (ONNX, compressed-tensors, GGUF), checked by the format's own library first.

The config must have been solved for the format (`solve --target F`): its quantization
settings must be the ones `target_settings(F, ...)` gives, so that the exported integers
are the ones the solve measured. A config solved for another target is refused (exit 2)
with the command that fixes it, rather than silently re-quantized under other schemes.
Nothing is left at `--out` when anything fails.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from allocator._project import load_project
from allocator.cli import _render as render
from allocator.cli._app import app
from allocator.cli._config import require_model
from allocator.cli._files import check_input, check_output
from allocator.cli._models import model_spec
from allocator.cli._options import AsJson, DataFile, Device, ModelName, RequiredConfigFile
from engine import BitConfig, InvalidSpecError

if TYPE_CHECKING:
    from allocator.export import ExportReport

FORMATS = ("onnx", "compressed-tensors", "gguf")
"""`--format` values: the deployment targets that have a file format (not `engine`)."""
FOLDER_FORMATS = ("compressed-tensors",)
# llama.cpp's pre-tokenizer name of the zoo's causal LMs (GGUF `tokenizer.ggml.pre`).
TOKENIZER_PRE = {"smollm2-135m": "smollm"}

ExportFormat = Annotated[str, typer.Option(
    "--format", metavar="FORMAT",
    help="onnx (a .onnx file), compressed-tensors (a checkpoint folder vLLM loads) or gguf "
    "(a .gguf file llama.cpp loads).")]
ExportOut = Annotated[str, typer.Option(
    "--out", help="The .onnx / .gguf file, or the new (or empty) compressed-tensors folder.")]


def check_format(value: str) -> str:
    """`value` as an export format.

    Raises:
        InvalidSpecError: naming `--format` and the value, for anything but `FORMATS`.
    """
    if value not in FORMATS:
        hint = " (`engine` is solve's default target; it has no file format)" \
            if value == "engine" else ""
        raise InvalidSpecError(f"`--format` must be one of {', '.join(FORMATS)}; got "
                               f"{value!r}{hint}.")
    return value


_SETTING_FIELDS = ("rounding", "group_size", "group_size_8bit", "symmetric",
                   "symmetric_8bit", "activation_bits", "smoothing_alpha")


def check_solved_for(fmt: str, config: BitConfig) -> None:
    """Refuses a config whose quantization settings are not the `fmt` target's: exporting it
    would ship other integers than the solve measured.

    Raises:
        InvalidSpecError: The config says it was solved for another target, or its settings
            differ from `target_settings(fmt, config)` (the message names the settings and
            the command that re-solves it).
    """
    from allocator.export import get_target, target_settings

    solved_for = config.extra.get("target", "engine") if isinstance(config.extra, dict) \
        else "engine"
    if solved_for not in (fmt,) and solved_for != "engine":
        raise InvalidSpecError(
            f"`--config` was solved for target {solved_for!r}, not {fmt!r}: its widths and "
            f"sizes are that target's; re-solve with `allocator solve --target {fmt}`.")
    wanted = target_settings(fmt, config)
    differ = [f"{name} {getattr(config, name)!r} (the {fmt} target uses "
              f"{getattr(wanted, name)!r})" for name in _SETTING_FIELDS
              if hasattr(config, name) and getattr(config, name) != getattr(wanted, name)]
    other = [f.name for f in dataclasses.fields(config)
             if f.name not in _SETTING_FIELDS and f.name not in get_target(fmt).holds_any
             and getattr(config, f.name) != getattr(wanted, f.name)]
    if differ or other:
        raise InvalidSpecError(
            f"`--config` was not quantized with the {fmt} target's settings: "
            f"{'; '.join(differ or other)}; re-solve with `allocator solve --target {fmt}` "
            "so that what is exported is what was measured.")


def _checkpoint_folder(spec: Any) -> Path | None:
    """The Hugging Face checkpoint folder of an `hf:` or zoo LLM spec (tokenizer files)."""
    folder = getattr(spec, "checkpoint_folder", None)
    return Path(folder()) if callable(folder) else None


def run_export(spec: Any, config: BitConfig, fmt: str, out: str) -> ExportReport:
    """Quantizes `spec`'s model with `config` on the engine and writes it as `fmt` at `out`
    (checked by the format's library before it is published).

    Raises:
        InvalidSpecError: A bad format, a config for another target, an unknown layer or a
            width the format cannot hold (nothing written).
        ExportError: The format's check failed (nothing written).
    """
    from allocator import export

    check_format(fmt)
    check_solved_for(fmt, config)
    export.check_config(fmt, config, spec.layers())
    model = spec.build()
    qmodel = spec.quantize(config)
    if fmt == "onnx":
        return export.export_onnx(model, qmodel, config, spec.example_inputs(), out)
    folder = _checkpoint_folder(spec)
    if fmt == "compressed-tensors":
        return export.export_compressed_tensors(model, qmodel, config, out, source_dir=folder)
    return export.export_gguf(model, qmodel, config, out, tokenizer_dir=folder,
                              tokenizer_pre=TOKENIZER_PRE.get(spec.name))


def summary_line(report: ExportReport) -> str:
    """One line: what was written, how big, and how its check went."""
    check = report.check
    library = check.get("library") or check.get("runtime") or report.format
    return (f"exported {len(report.layers)} quantized layer(s) as {report.format} to "
            f"{report.path} ({report.size_bytes / 2**20:.2f} MiB; quantized weights "
            f"{report.quantized_bytes:,} B); checked by {library}: "
            f"{'passed' if check.get('passed', True) else 'FAILED'}")


@app.command("export")
def export_command(config: RequiredConfigFile, fmt: ExportFormat, out: ExportOut,
                   model: ModelName = None, device: Device = "cpu", data: DataFile = None,
                   as_json: AsJson = False) -> None:
    """Write a solved config as an ONNX, compressed-tensors or GGUF model, checked by the
    format's own library (solve it with `--target FORMAT` first)."""
    check_format(fmt)
    check_input("--config", config)
    check_output("--out", out, folder=fmt in FOLDER_FORMATS)
    cfg = BitConfig.load(config)
    check_solved_for(fmt, cfg)
    spec = model_spec(*require_model(load_project(), model, data, None), device=device)
    with render.status(f"quantizing {spec.name} and exporting it as {fmt}..."):
        report = run_export(spec, cfg, fmt, out)
    if as_json:
        render.print_json(report.to_dict())
    else:
        typer.echo(summary_line(report))
