"""Parsing of the project's JSON documents (`allocator.*/1` files and request bodies).

Each format is a pydantic model beside the frozen type it builds (`BitConfigDocument` in
engine, `ProblemDocument` in allocator, `LatencyDocument` in hwprofiles). The model checks
the document's shape and field types and is its JSON schema (OpenAPI); the frozen type keeps
its own invariants (checks across fields) for every way it is built. `parse_document` is the
one place where pydantic's errors become an `InvalidSpecError` of one line that names the
field path (`layers[3].omega.4`) and shows the bad value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from engine._errors import InvalidSpecError
from engine._paths import atomic_write_bytes


class Document(BaseModel):
    """Base of the format models: unknown fields are errors, parsed documents are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


D = TypeVar("D", bound=Document)


def _not_bool(value: Any) -> Any:
    # JSON `true` is no number, although Python's bool is an int.
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not a boolean")
    return value


def _integral(value: Any) -> Any:
    value = _not_bool(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # `36864.0` is the integer a JSON writer may have made of 36864
    return value


def _json_number(value: Any) -> int | float:
    value = _not_bool(value)
    if not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number")
    if not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return value


def integer(minimum: int | None = None, maximum: int | None = None, *,
            digits: bool = False) -> Any:
    """A JSON integer type (an integer-valued float such as `4.0` too; no boolean) with
    optional bounds, for annotations. `digits` also takes a string of digits (`"4"`): bit-width
    keys (JSON keys are strings) and the bit lists of problem files, always read that way."""
    # The bounds sit inside the before-validator so that they reach the JSON schema.
    if digits:
        return Annotated[int, Field(ge=minimum, le=maximum), BeforeValidator(_not_bool)]
    return Annotated[int, Strict(), Field(ge=minimum, le=maximum), BeforeValidator(_integral)]


def json_number(minimum: float | None = None, maximum: float | None = None) -> Any:
    """A finite JSON number type kept as given (`1234` stays an int, so re-saving a document
    changes no byte); no boolean, no string, no NaN or infinity."""
    schema: dict[str, Any] = {"type": "number"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return Annotated[float, PlainValidator(_json_number), Field(ge=minimum, le=maximum),
                     WithJsonSchema(schema)]


Integer = integer()
NonNegativeInt = integer(minimum=0)
PositiveInt = integer(minimum=1)
JsonNumber = json_number()
FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
"""A finite JSON number, stored as float; no boolean, no string, no NaN or infinity."""
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
NonEmptyStr = Annotated[str, Strict(), Field(min_length=1)]


def dataclass_default(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls`, so a document states it only once."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is dataclasses.MISSING:
                raise TypeError(f"{cls.__name__}.{name} has no plain default.")
            return f.default
    raise TypeError(f"{cls.__name__} has no field {name!r}.")


def parse_document(model: type[D], data: Any, *, what: str) -> D:
    """Validates `data` against a format model.

    Args:
        model: The format's `Document` subclass.
        data: The decoded JSON (a mapping).
        what: What the document is, for the message when it is no object ("a problem").

    Returns:
        The validated, frozen document.

    Raises:
        InvalidSpecError: One line naming the first bad field's path and value (and how many
            other errors there are).
    """
    if not isinstance(data, Mapping):
        raise InvalidSpecError(f"{what} must be a JSON object, got {type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        more = len(errors) - 1
        also = f" ({more} more error{'s' if more > 1 else ''} after this one)" if more else ""
        raise InvalidSpecError(f"{describe_error(errors[0], data)}{also}.") from None


T = TypeVar("T")


def load_json_file(path: str | Path, parse: Callable[[Any], T], *, what: str) -> T:
    """Reads a JSON file and builds a value from it with `parse` (e.g. a type's
    `from_dict`); every failure is an `InvalidSpecError` that names the file.

    Args:
        path: The file.
        parse: Builds the value from the decoded JSON; raises `InvalidSpecError`.
        what: What the file holds, for messages ("latency table").
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidSpecError(f"cannot read {what} `{p}`: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise InvalidSpecError(f"{what} `{p}` is not UTF-8 text: {e.reason} at byte "
                               f"{e.start}.") from e
    try:
        return parse(decode_json(text, what=what))
    except InvalidSpecError as e:
        raise InvalidSpecError(f"{what} `{p}`: {e}") from e


def decode_json(text: str, *, what: str) -> Any:
    """`json.loads` whose failures (bad JSON, nesting deeper than Python's stack) are one-line
    `InvalidSpecError`s saying what the text should have been ("bit config")."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidSpecError(f"not valid JSON: {e}") from e
    except RecursionError:
        raise InvalidSpecError(f"nested too deeply to be a {what}.") from None


class JsonFormat:
    """Base of the types a JSON format describes (bit configs, problems, latency and
    sensitivity tables). `from_dict` validates with the format's `Document` model, `from_json`
    and `load` decode text and files, `to_json` and `save` write them, every error naming the
    field (and the file); each type says only how it maps to and from a document
    (`to_dict`, `from_document`)."""

    document_model: ClassVar[type[Document]]
    #: What one document is, for messages ("bit config").
    document_name: ClassVar[str]
    #: Indent of the JSON text `to_json` and `save` write.
    json_indent: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_document(cls, doc: Any) -> Self:
        """The value of a validated document (checks across fields happen here)."""
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Validates a document of the format; the `InvalidSpecError` names the bad field's
        path and value."""
        doc = parse_document(cls.document_model, data, what=f"a {cls.document_name}")
        return cls.from_document(doc)

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            data = decode_json(text, what=cls.document_name)
        except InvalidSpecError as e:
            raise InvalidSpecError(f"{cls.document_name}: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Reads and validates a file of the format; errors name the file."""
        return load_json_file(path, cls.from_dict, what=cls.document_name)

    def to_json(self, *, indent: int | None = -1) -> str:
        """The document as JSON text (`indent`: the format's own by default, None: one line)."""
        indent = self.json_indent if indent == -1 else indent
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Writes the document atomically (readers never see half a file)."""
        p = Path(path)
        atomic_write_bytes(p, (self.to_json() + "\n").encode("utf-8"))
        return p


def field_path(loc: Sequence[str | int]) -> str:
    """`("layers", 3, "omega", "4")` -> `layers[3].omega.4`; other keys as `['a.b']`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() or part.isdigit():
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def describe_error(error: Mapping[str, Any], data: Any) -> str:
    """One pydantic error as a clause: the field path in backticks, what is wrong, the
    bad value; a list item that has a `name` is named too (`layers[3]` (layer 'fc1'))."""
    loc = tuple(error["loc"])
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc = loc[:-2] if len(loc) >= 2 else ()
    where = f"`{field_path(loc)}`{_named_item(data, loc)}" if loc else "the document"
    kind = error["type"]
    if kind == "missing":
        return f"{where} is missing"
    if kind == "extra_forbidden":
        return f"{where} is an unknown field"
    msg = str(error["msg"])
    msg = "it" + msg[5:] if msg.lower().startswith("input ") else msg[:1].lower() + msg[1:]
    if is_key:
        return f"{where} has a bad key {_short(error['loc'][-2])}: {msg}"
    return f"{where} is {_short(error.get('input'))}: {msg}"


def _named_item(data: Any, loc: Sequence[str | int]) -> str:
    """` (layer 'a')` for the last named list item on the path through `data`."""
    node, parent, hint = data, "", ""
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            parent, node = str(part), node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            name = node.get("name") if isinstance(node, Mapping) else None
            if isinstance(name, str) and name:
                noun = parent[:-1] if parent.endswith("s") else "name"
                hint = f" ({noun} {name!r})"
        else:
            break
    return hint


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
