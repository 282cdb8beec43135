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
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, NamedTuple, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine._errors import InvalidSpecError
from engine._paths import atomic_write_bytes

# Deepest nesting of arrays and objects a document may have (the formats need fewer than 10):
# deeper input is refused before any recursive code (validation, serialization) sees it.
MAX_JSON_DEPTH = 32
# Error types of `json_fault`, as pydantic error types.
JSON_FAULT_KINDS = ("json_too_deep", "string_not_unicode", "number_not_finite")


class JsonFault(NamedTuple):
    """Where decoded JSON breaks a rule every document follows, and which.

    Attributes:
        loc: Path to the bad value (keys and list indices) from the document's root.
        kind: One of `JSON_FAULT_KINDS`.
        message: What is wrong, as a clause after the field ("is nested deeper than ...").
        value: The bad value (a string or number; None for nesting).
    """

    loc: tuple[str | int, ...]
    kind: str
    message: str
    value: Any


def json_fault(data: Any, *, max_depth: int = MAX_JSON_DEPTH,
               finite: bool = True) -> JsonFault | None:
    """A place where decoded JSON is nested deeper than `max_depth` arrays and objects,
    holds a string (value or key) that is not valid Unicode (a lone surrogate such as
    `"\\ud800"`: it can be neither stored nor sent as UTF-8), or (with `finite`) a NaN or
    infinite number; None when there is none.

    Iterative (no depth of input exhausts the stack) and linear in the size of `data`, with
    a fast path for the plain types JSON decodes to (it runs on every request body and
    document); values of other types (already built models) are leaves.
    """
    fault = _scalar_fault(data, finite)
    if fault is not None:
        return JsonFault((), *fault)
    # Containers still to read: (container, its depth, its path as (parent, key) links).
    stack: list[tuple[Any, int, tuple | None]] = [(data, 1, None)]
    while stack:
        container, depth, path = stack.pop()
        if not _is_container(container):
            continue
        if depth > max_depth:  # named by its first keys: the path is `max_depth` long
            return JsonFault(_loc(path)[:3], "json_too_deep", "holds arrays and objects "
                             f"nested deeper than {max_depth} levels", None)
        is_map = isinstance(container, Mapping)
        if is_map and not _ascii_keys(container):
            for key in container:
                if isinstance(key, str) and not key.isascii() and not _is_unicode(key):
                    return JsonFault(_loc(path), "string_not_unicode", "has a key that is "
                                     "not valid Unicode text (it holds a lone surrogate)", key)
        nested = False
        for item in (container.values() if is_map else container):
            kind = type(item)
            if kind is str:
                if item.isascii():
                    continue
            elif kind is float:
                if not finite or math.isfinite(item):
                    continue
            elif kind is dict or kind is list:
                nested = True
                continue
            elif kind is int or kind is bool or item is None:
                continue
            elif not isinstance(item, str | float):
                nested = nested or _is_container(item)
                continue
            fault = _scalar_fault(item, finite)
            if fault is not None:
                key = next(k for k, v in _items(container) if v is item)
                return JsonFault(_loc((path, key)), *fault)
        if nested:
            stack.extend(reversed([(v, depth + 1, (path, k)) for k, v in _items(container)
                                   if _is_container(v)]))
    return None


_PLAIN_CONTAINERS = (dict, list, tuple)
_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _is_container(value: Any) -> bool:
    kind = type(value)
    return kind in _PLAIN_CONTAINERS or (kind not in _PLAIN_SCALARS
                                         and isinstance(value, Mapping | list | tuple))


def _ascii_keys(mapping: Mapping) -> bool:
    """Whether every key is an ASCII string (the common case, checked at C speed)."""
    try:
        return all(map(str.isascii, mapping))
    except TypeError:  # a key that is not a string (Python-built data)
        return False


def _items(container: Any) -> Any:
    return container.items() if isinstance(container, Mapping) else enumerate(container)


def _scalar_fault(value: Any, finite: bool) -> tuple[str, str, Any] | None:
    if isinstance(value, str):
        if not value.isascii() and not _is_unicode(value):
            return ("string_not_unicode",
                    "is not valid Unicode text (it holds a lone surrogate)", value)
    elif isinstance(value, float) and finite and not math.isfinite(value):
        return "number_not_finite", "is not a finite number", value
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _loc(path: tuple | None) -> tuple[str | int, ...]:
    """The keys of a path of (parent, key) links, root first; a key that is not valid
    Unicode spelled with escapes (`'\\ud800'`), so the path can be shown and sent."""
    out: list[str | int] = []
    while path is not None:
        path, key = path
        if isinstance(key, str) and not _is_unicode(key):
            key = key.encode("utf-8", "backslashreplace").decode("utf-8")
        out.append(key)
    return tuple(reversed(out))


# Set while a model's input is validated after its whole tree was checked: the models nested
# in it (layers of a problem) need no second walk.
_TREE_CHECKED: ContextVar[bool] = ContextVar("tree_checked", default=False)


class Document(BaseModel):
    """Base of the format models: unknown fields are errors, parsed documents are frozen.

    Before any field is read, the whole input is checked once (`json_fault`): nesting at most
    `MAX_JSON_DEPTH` deep, every string valid Unicode and, where `finite_numbers` is set
    (client input), every number finite; a failure is a validation error of type
    `json_too_deep`, `string_not_unicode` or `number_not_finite` whose `ctx["loc"]` is the
    path below the model to the bad value (`describe_error` joins the two) and `ctx["shown"]`
    the value's `repr` (or None).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Also refuse NaN and infinities anywhere, free-form fields included.
    finite_numbers: ClassVar[bool] = False

    @model_validator(mode="wrap")
    @classmethod
    def _check_json_tree(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if _TREE_CHECKED.get():
            return handler(data)
        fault = json_fault(data, finite=cls.finite_numbers)
        if fault is not None:
            # `ctx` holds only valid text: pydantic cannot report a lone surrogate.
            shown = None if fault.value is None else _short(fault.value)
            raise PydanticCustomError(fault.kind, fault.message,
                                      {"loc": fault.loc, "shown": shown})
        token = _TREE_CHECKED.set(True)
        try:
            return handler(data)
        finally:
            _TREE_CHECKED.reset(token)

    @classmethod
    def from_json_text(cls, text: str, *, what: str) -> Self:
        """The document of a JSON text (`decode_json`, then `parse_document`): every failure
        is one `InvalidSpecError` naming the field."""
        return parse_document(cls, decode_json(text, what=what), what=what)


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
    """`json.loads` whose failures are one-line `InvalidSpecError`s saying what the text
    should have been ("bit config"): bad JSON, nesting deeper than `MAX_JSON_DEPTH` (or than
    Python's stack), a string that is not valid Unicode, a NaN or infinite number (`NaN`,
    `Infinity`, `1e999`), an integer too long to convert."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidSpecError(f"not valid JSON: {e}") from e
    except RecursionError:
        raise InvalidSpecError(f"nested too deeply to be a {what} (at most {MAX_JSON_DEPTH} "
                               "levels of arrays and objects).") from None
    except ValueError as e:  # an integer past `sys.get_int_max_str_digits()`
        raise InvalidSpecError(f"not valid JSON for a {what}: {e}") from e
    fault = json_fault(data)
    if fault is not None:
        where = f"`{field_path(fault.loc)}`" if fault.loc else "the document"
        shown = f" ({_short(fault.value)})" if fault.value is not None else ""
        raise InvalidSpecError(f"{where}{shown} {fault.message}.")
    return data


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
    kind = error["type"]
    if kind in JSON_FAULT_KINDS:  # found by the document's walk: the path below it is in ctx
        ctx = error.get("ctx") or {}
        loc += tuple(ctx.get("loc", ()))
        where = f"`{field_path(loc)}`" if loc else "the document"
        shown = f" ({ctx['shown']})" if ctx.get("shown") is not None else ""
        return f"{where}{shown} {error['msg']}"
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc = loc[:-2] if len(loc) >= 2 else ()
    where = f"`{field_path(loc)}`{_named_item(data, loc)}" if loc else "the document"
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
