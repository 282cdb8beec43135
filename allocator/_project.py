"""The project settings file: `allocator.toml`, or `[tool.allocator]` in `pyproject.toml`.

A pipeline keeps its settings (model, data, candidate widths, estimator, budget, ...) in
the project instead of on every command line; a command takes a setting from here when its
flag is not given, and `allocator config show` prints what will be used and from where.
Torch-free: reading the file imports nothing heavy.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from allocator._budget import parse_budgets
from allocator._rules import parse_fix, parse_tie
from engine import DEFAULT_BITS, InvalidSpecError, check_bits

PROJECT_FILE = "allocator.toml"
PYPROJECT_FILE = "pyproject.toml"
PYPROJECT_TABLE = ("tool", "allocator")

SOURCE_PROJECT = PROJECT_FILE
SOURCE_PYPROJECT = f"{PYPROJECT_FILE} [tool.allocator]"
SOURCE_DEFAULT = "default"

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds both take it

DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "model": None,  # none: `--model` (or `--problem`) is needed
    "data": None,
    "weights": None,
    "bits": DEFAULT_BITS,
    "estimator": None,  # the model's own (`allocator sensitivity`: hutchinson)
    "solver": "ilp",
    "target": "engine",  # this product's own engine
    "rounding": "gptq",
    "group_size": None,  # the model's own (128; 64 where rows are not multiples of 128)
    "weight_only": None,  # the model's own
    "seed": 0,
    "budget": None,  # none: `solve` needs `--budget`
    "time_limit_s": 60.0,
    "tie": None,  # no tie rules
    "fix": None,  # no pinned layers
})
"""What the commands use when neither a flag nor the project sets a value (None: nothing,
or the model's own default where the model has one)."""


class ProjectSettings(BaseModel):
    """The settings of a project file; every field is optional and unknown keys are refused.

    Values are checked as they are read (types strictly: `seed = "3"` is an error, not 3);
    `bits` and `budget` are normalized to lists.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str | None = Field(None, description="Registered model, module:factory or hf:DIR.")
    data: str | None = Field(None, description="User model inputs (.pt or .npy).")
    weights: str | None = Field(None, description="User model weights (.safetensors).")
    bits: str | list[int] | None = Field(
        None, description='Candidate bit-widths: [2, 4, 8] or "2,4,8".')
    estimator: str | None = Field(None, description="hutchinson, measured, fracbits or fisher.")
    solver: str | None = Field(None, description="Solver name (ilp, greedy, ...).")
    target: str | None = Field(
        None, description="Deployment target of `solve`, `pareto` and `export`: engine, onnx, "
        "compressed-tensors or gguf.")
    rounding: str | None = Field(None, description="gptq (calibrated) or rtn.")
    group_size: int | None = Field(None, description="Scale group size; 0: per channel.")
    weight_only: bool | None = Field(None, description="Keep activations float.")
    seed: int | None = Field(None, description="Seed of every stochastic step.")
    budget: list[str] | str | None = Field(
        None, description='Budgets of `solve`: "4.5bits" or ["4.5bits", "12MB"].')
    time_limit_s: float | None = Field(None, description="Solver time limit in seconds.")
    tie: list[str] | str | None = Field(
        None, description='Tie rules of model solves: "re:\\.(q|k|v)_proj$" or a list.')
    fix: list[str] | str | None = Field(
        None, description='Pinned layers of model solves: "lm_head=8" or a list.')

    @field_validator("bits")
    @classmethod
    def _bits(cls, value: str | list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if isinstance(value, str):
            texts = [t.strip() for t in value.split(",")]
            if not all(t.isascii() and t.isdigit() for t in texts):  # int() reads "٤" too
                raise ValueError(f"`bits` must be a list such as [2, 4, 8] or \"2,4,8\"; "
                                 f"got {value!r}.")
            value = [int(t) for t in texts]
        widths = [check_bits(b, where="bits") for b in value]
        if not widths:
            raise ValueError("`bits` must name at least one bit-width; got none.")
        return list(dict.fromkeys(widths))

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: list[str] | str | None) -> list[str] | None:
        if value is None:
            return None
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise ValueError("`budget` must name at least one budget, e.g. \"4.5bits\".")
        parse_budgets(texts)  # a unit or value error names the budget
        return texts

    @field_validator("tie", "fix")
    @classmethod
    def _rules(cls, value: list[str] | str | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        texts = [value] if isinstance(value, str) else list(value)
        parse = parse_tie if info.field_name == "tie" else parse_fix
        for text in texts:
            parse(text, str(info.field_name))  # a bad rule names the key and the text
        return texts

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_SEED:
            raise ValueError(f"`seed` must be between 0 and {MAX_SEED}, got {value}.")
        return value

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError(f"`group_size` must be 0 (per channel) or a group size such as "
                             f"128, got {value}.")
        return value

    @field_validator("time_limit_s")
    @classmethod
    def _time_limit(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"`time_limit_s` must be a finite number of seconds above 0, "
                             f"got {value}.")
        return value

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        from allocator.export._targets import TARGETS

        if value is not None and value not in TARGETS:
            raise ValueError(f"`target` must be one of {', '.join(TARGETS.names())}; "
                             f"got {value!r}.")
        return value

    @field_validator("model", "data", "weights", "estimator", "solver", "target", "rounding")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty.")
        return value


@dataclass(frozen=True)
class LoadedProject:
    """The project settings of a folder and where each came from.

    Attributes:
        settings: The values the file sets (relative paths already resolved against the
            file's folder).
        path: The file read, or None when the folder has no project file.
        source: How `allocator config show` names that file (`SOURCE_PROJECT`,
            `SOURCE_PYPROJECT`), or `SOURCE_DEFAULT` without one.
    """

    settings: ProjectSettings = field(default_factory=ProjectSettings)
    path: Path | None = None
    source: str = SOURCE_DEFAULT

    def is_set(self, key: str) -> bool:
        """True when the project file sets `key`."""
        return key in self.settings.model_fields_set

    def value(self, key: str) -> Any:
        """The project's value of `key`, else its default (`DEFAULTS`)."""
        return getattr(self.settings, key) if self.is_set(key) else DEFAULTS[key]

    def pick(self, key: str, flag: Any) -> Any:
        """The flag's value when given (not None): flags win; else `value(key)`."""
        return flag if flag is not None else self.value(key)

    @property
    def sources(self) -> dict[str, str]:
        """Every setting, in declaration order, mapped to where its value comes from."""
        return {key: self.source if self.is_set(key) else SOURCE_DEFAULT
                for key in ProjectSettings.model_fields}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidSpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
    except OSError as e:
        raise InvalidSpecError(f"{path}: {e.strerror or type(e).__name__}.") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # its message ends "(at line N, column M)"
        last = f"(at the end of the file, line {max(1, len(text.splitlines()))})"
        message = str(e).replace("(at end of document)", last)
        raise InvalidSpecError(f"{path}: invalid TOML: {message}.") from None


def _locate(start: Path) -> tuple[Path, dict[str, Any], str] | None:
    """The project file in `start`, its settings table and its source label."""
    own = start / PROJECT_FILE
    if own.exists():
        return own, _read_toml(own), SOURCE_PROJECT
    pyproject = start / PYPROJECT_FILE
    if not pyproject.is_file():
        return None
    table: Any = _read_toml(pyproject)
    for part in PYPROJECT_TABLE:
        if not isinstance(table, dict) or part not in table:
            return None
        table = table[part]
    if not isinstance(table, dict):
        raise InvalidSpecError(f"{pyproject}: `tool.allocator` must be a table "
                               f"([tool.allocator]), got {table!r}.")
    return pyproject, table, SOURCE_PYPROJECT


def find_project_file(start: Path) -> Path | None:
    """The project file of the folder `start`: its `allocator.toml`, else its
    `pyproject.toml` when that has a `[tool.allocator]` table, else None.

    Only `start` itself is searched, never its parents: a command run in a subfolder of a
    project does not pick up settings it cannot see.

    Raises:
        InvalidSpecError: the file is not readable TOML (naming the file and the line).
    """
    found = _locate(Path(start))
    return None if found is None else found[0]


def _line_of(path: Path, key: str, table: str | None) -> int | None:
    """The line where `key` is set in `table` (None: the top level), when it can be found."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    here: str | None = None
    assign = re.compile(rf"""\s*(["']?){re.escape(key)}\1\s*=""")
    for number, line in enumerate(lines, start=1):
        header = re.match(r"\s*\[+([^\]]+)\]", line)
        if header:
            name = re.sub(r"""[\s"']""", "", header.group(1))
            if name == (f"{table}.{key}" if table else key):
                return number
            here = name
        elif here == table and assign.match(line):
            return number
    return None


def _settings_error(err: ValidationError, path: Path, source: str) -> InvalidSpecError:
    """The first problem of `err` as one line naming the file, the key and the line."""
    first = err.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else "?"
    table = "tool.allocator" if source == SOURCE_PYPROJECT else None
    where = f"{path} [tool.allocator]" if table else str(path)
    line = _line_of(path, key, table)
    where += f" line {line}" if line else ""
    if first["type"] == "extra_forbidden":
        known = ", ".join(ProjectSettings.model_fields)
        return InvalidSpecError(f"{where}: unknown key `{key}` (known keys: {known}).")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, Exception) and str(cause).startswith("`"):
        return InvalidSpecError(f"{where}: {cause}")
    message = str(cause) if cause is not None else first["msg"]
    return InvalidSpecError(f"{where}: `{key}` {message.rstrip('.').lower()}, "
                            f"got {first['input']!r}.")


_EXPLICIT_RELATIVE = ("./", "../", ".\\", "..\\", "~")


def _resolve(value: str, folder: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else folder / path)


def _resolve_model(model: str, folder: Path) -> str:
    """`hf:./dir` (or an `hf:` folder that exists beside the file) made absolute; any other
    model name (registered, module:factory, a hub id) unchanged."""
    if not model.startswith("hf:"):
        return model
    rest = model[3:]
    if Path(rest).is_absolute():
        return model
    if rest.startswith(_EXPLICIT_RELATIVE) or rest in (".", "..") or (folder / rest).exists():
        return "hf:" + _resolve(rest, folder)
    return model


def load_project(cwd: Path | str | None = None) -> LoadedProject:
    """The project settings of the folder `cwd` (default: the working directory).

    Relative `data`, `weights` and `model = "hf:./dir"` paths are resolved against the
    file's folder. Without a project file, every setting is its default.

    Raises:
        InvalidSpecError: the file is not valid TOML (naming the file and the line), or a
            key is unknown or has a bad value (naming the key and the file).
    """
    folder = Path.cwd() if cwd is None else Path(cwd)
    found = _locate(folder)
    if found is None:
        return LoadedProject()
    path, table, source = found
    try:
        settings = ProjectSettings.model_validate(table)
    except ValidationError as err:
        raise _settings_error(err, path, source) from None
    base = path.parent.absolute()
    resolved: dict[str, str] = {}
    for key in ("data", "weights"):
        if getattr(settings, key) is not None:
            resolved[key] = _resolve(getattr(settings, key), base)
    if settings.model is not None:
        resolved["model"] = _resolve_model(settings.model, base)
    if resolved:  # model_copy keeps model_fields_set, so the sources stay right
        settings = settings.model_copy(update=resolved)
    return LoadedProject(settings=settings, path=path, source=source)
