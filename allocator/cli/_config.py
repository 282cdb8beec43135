"""The project file on the command line: `allocator config show`, and the model a command
takes from the project when `--model` is not given.

Every command reads the working directory's project file (`allocator._project`) and uses a
setting only where its flag is not given: flags win. The project's `data` and `weights`
belong to the project's `model`, so they apply only when that model runs; `--problem`
ignores the project's model and its model settings (`bits`, `estimator`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from allocator._project import (
    PROJECT_FILE,
    SOURCE_DEFAULT,
    LoadedProject,
    ProjectSettings,
    load_project,
)
from allocator.cli import _render as render
from allocator.cli._app import app
from allocator.cli._models import is_user_model
from allocator.cli._options import AsJson
from engine import CLIUsageError, InvalidSpecError

config_app = typer.Typer(
    name="config", no_args_is_help=True,
    help=f"The project settings: {PROJECT_FILE}, or the tool.allocator table of "
    "pyproject.toml.")
app.add_typer(config_app, name="config")

# What a default of None means, for `config show`.
_NONE_MEANS = {"model": "none (give --model)", "budget": "none (give --budget)",
               "estimator": "the model's own (sensitivity: hutchinson)",
               "weight_only": "the model's own", "group_size": "the model's own"}

NO_MODEL_HINT = f'add `model = "..."` to {PROJECT_FILE}'


@dataclass(frozen=True)
class ModelChoice:
    """The model a command runs, with its data and weights files (None: not given)."""

    model: str | None
    data: str | None = None
    weights: str | None = None


def choose_model(project: LoadedProject, model: str | None, data: str | None,
                 weights: str | None) -> ModelChoice:
    """`--model` with its files, else the project's model with the project's files.

    Each of `--data` / `--weights` wins over the project's; the project's apply only to the
    project's own model (not to a different `--model`).

    Raises:
        InvalidSpecError: naming the project file, when it gives `data` or `weights` to a
            registered model (which brings its own).
    """
    own = model is None or model == project.settings.model
    chosen = project.pick("model", model)
    flags = {"data": data, "weights": weights}
    files = {key: flag if flag is not None or not own else project.value(key)
             for key, flag in flags.items()}
    from_file = [key for key, flag in flags.items() if flag is None and files[key] is not None]
    if chosen is not None and from_file and not is_user_model(chosen):
        raise InvalidSpecError(f"{project.path}: `{from_file[0]}` applies to user models "
                               f"(module:factory, hf:DIR); {chosen!r} brings its own.")
    return ModelChoice(chosen, files["data"], files["weights"])


def require_model(project: LoadedProject, model: str | None, data: str | None,
                  weights: str | None) -> tuple[str, str | None, str | None]:
    """`choose_model` as `model_spec`'s arguments, refusing a command line and project
    that name no model.

    Raises:
        CLIUsageError: neither `--model` nor the project's `model` is given.
    """
    choice = choose_model(project, model, data, weights)
    if choice.model is None:
        raise CLIUsageError(f"give `--model`, or {NO_MODEL_HINT}.")
    return choice.model, choice.data, choice.weights


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def settings_document(project: LoadedProject) -> dict[str, Any]:
    """What `config show --json` prints: the file read and every setting's value and source."""
    sources = project.sources
    return {"file": None if project.path is None else str(project.path),
            "source": project.source,
            "settings": {key: {"value": _jsonable(project.value(key)), "source": sources[key]}
                         for key in ProjectSettings.model_fields}}


def _shown(key: str, value: Any) -> str:
    if value is None:
        return f"[dim]{_NONE_MEANS.get(key, 'none')}[/dim]"
    if isinstance(value, list | tuple):
        return escape(", ".join(map(str, value)))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value))


def settings_view(doc: render.Document) -> list[RenderableType]:
    """`allocator config show`: one row per setting, with its value and source."""
    file = doc["file"] or f"no {PROJECT_FILE} or [tool.allocator] here: defaults"
    table = Table(title=escape(f"project settings ({file})"))
    for column in ("setting", "value", "source"):
        table.add_column(column)
    for key, row in doc["settings"].items():
        source = row["source"]
        table.add_row(key, _shown(key, row["value"]),
                      f"[dim]{source}[/dim]" if source == SOURCE_DEFAULT else escape(source))
    return [table]


@config_app.command("show")
def show(as_json: AsJson = False) -> None:
    """Print every project setting the commands will use, and where each comes from."""
    render.emit(settings_document(load_project()), as_json, settings_view)
