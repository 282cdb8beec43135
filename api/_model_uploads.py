"""A multipart form streamed to files: `POST /models` reads its archive (and data file)
straight from the request into a folder under the data dir, holding each file to its
limit while it arrives (413 past it), never buffering a whole file in memory or in the
system's temporary folder (checkpoints run to gigabytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api._errors import ApiError

# Longest text field (bytes); files have their own limits.
MAX_FIELD_BYTES = 2000


@dataclass(frozen=True)
class ReceivedFile:
    """A file part written to disk: where, the name the client gave it, its size."""

    path: Path
    filename: str
    size_bytes: int


@dataclass
class ReceivedForm:
    files: dict[str, ReceivedFile] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    size_bytes: int = 0
    text: bytearray = field(default_factory=bytearray)
    out: IO[bytes] | None = None
    path: Path | None = None


class _FormReader:
    """The parser's callbacks: each part checked against the allowed fields and limits as
    its headers and bytes arrive; file bytes queued for a write off the event loop."""

    def __init__(self, folder: Path, file_limits: dict[str, tuple[int, str]],
                 text_fields: tuple[str, ...]) -> None:
        self.folder, self.file_limits, self.text_fields = folder, file_limits, text_fields
        self.form = ReceivedForm()
        self.part = _Part()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.disposition = b""
        self.pending: list[tuple[IO[bytes], bytes]] = []
        self.open_files: list[IO[bytes]] = []
        self.seen: set[str] = set()

    def allowed(self) -> str:
        return ", ".join([*self.file_limits, *self.text_fields])

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self.header_field).strip().lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        where = f"body.{name}" if name else "body"
        if name not in self.file_limits and name not in self.text_fields:
            raise ApiError(422, f"`{where}`: unknown form field {name!r}; the fields are "
                                f"{self.allowed()}.", where, name)
        if name in self.seen:
            raise ApiError(422, f"`{where}` is given twice.", where, name)
        self.seen.add(name)
        filename = options.get(b"filename")
        self.part.name = name
        if name in self.file_limits:
            if filename is None:
                raise ApiError(422, f"`{where}` must be a file (a form part with a filename).",
                               where, None)
            self.part.filename = filename.decode("utf-8", "replace")
            self.part.path = self.folder / f"{name}.upload"
            self.part.out = open(self.part.path, "xb")  # noqa: SIM115  (closed in close())
            self.open_files.append(self.part.out)
        elif filename is not None:
            raise ApiError(422, f"`{where}` must be a text field, not a file.", where, None)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        part.size_bytes += end - start
        where = f"body.{part.name}"
        if part.out is not None:
            limit, setting = self.file_limits[part.name]
            if part.size_bytes > limit:
                raise ApiError(413, f"`{where}` is larger than {limit} bytes ({setting}).",
                               where, part.filename)
            self.pending.append((part.out, data[start:end]))
        else:
            if part.size_bytes > MAX_FIELD_BYTES:
                raise ApiError(422, f"`{where}` is longer than {MAX_FIELD_BYTES} bytes.",
                               where, None)
            part.text += data[start:end]

    def on_part_end(self) -> None:
        part = self.part
        if part.out is not None and part.path is not None:
            self.pending.append((part.out, b""))  # nothing more: the file is complete
            self.form.files[part.name] = ReceivedFile(part.path, part.filename or "",
                                                      part.size_bytes)
        elif part.name:
            try:
                self.form.fields[part.name] = part.text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ApiError(422, f"`body.{part.name}` is not UTF-8 text ({e.reason}).",
                               f"body.{part.name}", None) from None

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for out, chunk in pending:
            if chunk:
                out.write(chunk)

    def close(self) -> None:
        for out in self.open_files:
            out.close()


async def receive_form(request: Request, folder: Path, *,
                       file_limits: dict[str, tuple[int, str]],
                       text_fields: tuple[str, ...]) -> ReceivedForm:
    """Reads a multipart/form-data body, writing each file part to `folder`.

    Args:
        request: The request, its body not yet read.
        folder: An empty folder of the caller's, which removes it afterwards.
        file_limits: File fields -> (largest size in bytes, the setting that says so).
        text_fields: Text fields (each at most `MAX_FIELD_BYTES`).

    Raises:
        ApiError: 413 for a file past its limit; 422 for a body that is not multipart, an
            unknown or repeated field, a file where text belongs or the other way round.
    """
    content_type = request.headers.get("content-type", "")
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ApiError(422, "`header.content-type`: this endpoint takes multipart/form-data "
                            f"(fields: {', '.join([*file_limits, *text_fields])}).",
                       "header.content-type", content_type[:200])
    reader = _FormReader(folder, file_limits, text_fields)
    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": reader.on_part_begin, "on_part_data": reader.on_part_data,
            "on_part_end": reader.on_part_end, "on_header_field": reader.on_header_field,
            "on_header_value": reader.on_header_value, "on_header_end": reader.on_header_end,
            "on_headers_finished": reader.on_headers_finished})
        async for chunk in request.stream():
            parser.write(chunk)
            if reader.pending:
                await run_in_threadpool(reader.flush)
        parser.finalize()
    except FormParserError as e:
        raise ApiError(422, f"`body` is not a valid multipart/form-data body: {e}.", "body",
                       None) from None
    finally:
        reader.close()
    if reader.part.out is not None and reader.part.name not in reader.form.files:
        raise ApiError(422, f"`body.{reader.part.name}` ends before its part does (a cut "
                            "multipart body).", f"body.{reader.part.name}", None)
    return reader.form
