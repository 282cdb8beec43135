"""Models registered by name: entries of a models file (`ALLOCATOR_MODELS_FILE`) and
checkpoints uploaded to the service, each a Hugging Face checkpoint folder (`hf:` source).

Torch-free: the API process lists, checks and unpacks uploads with this module; the zoo
resolves a registered name to its `hf:` source when a model is loaded.

A models file (TOML)::

    [models.bert-small]
    source = "hf:./bert"          # a checkpoint folder, or a Hugging Face repo id (org/name)
    data = "calib.jsonl"          # relative paths resolve against the file's folder
    metric = "kl"
    estimator = "fisher"
    description = "BERT for the support tickets"

An upload lives under the data dir, written into a temporary sibling folder and renamed
into place only once complete::

    uploads/<name>/
        checkpoint/    config.json, tokenizer files, *.safetensors  (the `hf:` source)
        data.<ext>     the optional calibration data (.txt, .jsonl or .npy)
        record.json    the `RegisteredModel` fields

An archive is checked whole before anything is written (`allocator._checkpoint_archive`:
checkpoint files only, no pickles, code, links, `..` or absolute paths, no `auto_map`,
safetensors headers that parse, limits on size, compression ratio and entry count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from allocator._checkpoint_archive import MAX_ENTRIES, MAX_RATIO, CheckedArchive, check_data_file
from engine import InvalidSpecError, UnknownComponentError, atomic_write_bytes
from engine import data_dir as default_data_dir

log = logging.getLogger("allocator.models")

MODELS_FILE_ENV = "ALLOCATOR_MODELS_FILE"
UPLOADS_FOLDER = ("uploads",)  # under engine.data_dir(), apart from the built-in models
# Names the zoo registers itself; a registered model may not take one.
BUILTIN_MODELS = ("digits-mlp", "digits-cnn", "minilm", "mobilenetv2", "smollm2-135m")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# A Hugging Face repo id: `name` or `org/name`, no `--` or `..` (the Hub refuses both).
REPO_ID_PATTERN = re.compile(r"(?!.*(?:--|\.\.))[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
                             r"(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
ESTIMATOR_PATTERN = re.compile(r"[a-z0-9_-]{1,32}")
MODELS_FILE_KEYS = ("source", "data", "metric", "estimator", "description")
MAX_DESCRIPTION_CHARS = 500

RECORD_FILE = "record.json"
CHECKPOINT_FOLDER = "checkpoint"
RECORD_FORMAT = "allocator.model/1"
STALE_TEMP_S = 24 * 3600.0
_CHUNK = 2**20


class ModelExistsError(InvalidSpecError):
    """Raised when an upload asks for a name that another registration already holds."""


@dataclass(frozen=True)
class RegisteredModel:
    """A model known by name beyond the zoo's built-ins.

    Attributes:
        name: The name jobs and `--model` use (`[a-z0-9][a-z0-9._-]{0,63}`).
        source: `hf:<checkpoint folder or repo id>`; for uploads the unpacked folder's
            absolute path.
        data: Calibration data file (absolute path), or None for the model's default.
        metric: Metric to report, or None for the model's default.
        estimator: Sensitivity estimator jobs use when the request names none.
        description: One line for listings.
        origin: "models-file" or "upload".
        size_bytes: Unpacked size of an upload (checkpoint and data).
        sha256: Hex SHA-256 of the uploaded archive.
        created: When it was uploaded (ISO 8601, UTC).
    """

    name: str
    source: str
    data: str | None = None
    metric: str | None = None
    estimator: str | None = None
    description: str = ""
    origin: str = "models-file"
    size_bytes: int | None = None
    sha256: str | None = None
    created: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- names and the models file ----------------------------------------------------------------


def check_name(name: object, where: str = "`name`") -> str:
    """`name` when it can name a registered model, else `InvalidSpecError`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidSpecError(f"{where} must be 1-64 characters of a-z, 0-9, '.', '_', '-' "
                               f"starting with a letter or digit, got {name!r}.")
    if name in BUILTIN_MODELS:
        raise InvalidSpecError(f"{where} {name!r} is a built-in model; choose another name.")
    return name


def is_repo_id(text: str) -> bool:
    """Whether `text` reads as a Hugging Face repo id (`name` or `org/name`)."""
    return REPO_ID_PATTERN.fullmatch(text) is not None


def read_models_file(path: str | Path) -> list[RegisteredModel]:
    """The models a TOML models file registers (see the module docstring).

    Args:
        path: The file; relative `source` folders and `data` paths resolve against its folder.

    Returns:
        One `RegisteredModel` per `[models.<name>]` table, in file order.

    Raises:
        InvalidSpecError: The file cannot be read or is not TOML (the line is named), or a
            model breaks a rule (the file, the model and the field are named).
    """
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidSpecError(f"models file `{path}`: cannot read it: "
                               f"{e.strerror or e}.") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidSpecError(f"models file `{path}`: not UTF-8 text (byte {e.start}).") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidSpecError(f"models file `{path}`: not valid TOML: {e}.") from None
    for key in doc:
        if key != "models":
            raise InvalidSpecError(f"models file `{path}`: unknown key `{key}` (a models file "
                                   "holds only `[models.<name>]` tables).")
    tables = doc.get("models", {})
    if not isinstance(tables, dict):
        raise InvalidSpecError(f"models file `{path}`: `models` must be a table of "
                               f"`[models.<name>]` tables, got {type(tables).__name__}.")
    folder = path.resolve().parent
    return [_model_from_table(path, folder, name, table) for name, table in tables.items()]


def _model_from_table(path: Path, folder: Path, name: str, table: object) -> RegisteredModel:
    where = f"models file `{path}`: model `{name}`"
    check_name(name, where=f"{where}: the name")
    if not isinstance(table, dict):
        raise InvalidSpecError(f"{where}: must be a table (`[models.{name}]`), got "
                               f"{type(table).__name__}.")
    for key in table:
        if key not in MODELS_FILE_KEYS:
            raise InvalidSpecError(f"{where}: unknown key `{key}` (allowed: "
                                   f"{', '.join(MODELS_FILE_KEYS)}).")
    for key, value in table.items():
        if not isinstance(value, str) or not value.strip():
            raise InvalidSpecError(f"{where}: `{key}` must be a non-empty string, got "
                                   f"{value!r}.")
    if "source" not in table:
        raise InvalidSpecError(f"{where}: `source` is missing (`hf:<folder or repo id>`).")
    estimator = table.get("estimator")
    if estimator is not None and not ESTIMATOR_PATTERN.fullmatch(estimator):
        raise InvalidSpecError(f"{where}: `estimator` must be an estimator name (a-z, 0-9, "
                               f"'_', '-'), got {estimator!r}.")
    description = table.get("description", "")
    if len(description) > MAX_DESCRIPTION_CHARS or "\n" in description:
        raise InvalidSpecError(f"{where}: `description` must be one line of at most "
                               f"{MAX_DESCRIPTION_CHARS} characters.")
    data = table.get("data")
    return RegisteredModel(
        name=name, source=_resolve_source(where, folder, table["source"]),
        data=None if data is None else str(_resolve_path(folder, data)),
        metric=table.get("metric"), estimator=estimator, description=description)


def _resolve_path(folder: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (folder / path).resolve()


def _resolve_source(where: str, folder: Path, source: str) -> str:
    """`hf:<absolute folder>` for a path (explicit, or an existing folder relative to the
    file's), `hf:<repo id>` for a repo id."""
    if not source.startswith("hf:") or not source[3:]:
        raise InvalidSpecError(f"{where}: `source` must start with 'hf:' (a checkpoint folder "
                               f"or a Hugging Face repo id), got {source!r}.")
    rest = source[3:]
    explicit = rest.startswith(("/", "./", "../", "~")) or rest in (".", "..")
    if explicit or (folder / rest).is_dir():
        return f"hf:{_resolve_path(folder, rest)}"
    if is_repo_id(rest):
        return source
    raise InvalidSpecError(f"{where}: `source` {source!r} is neither a folder (relative to "
                           "the file's folder: start it with './') nor a Hugging Face repo id "
                           "('org/name').")


# -- the registry -------------------------------------------------------------------------------


def uploads_dir(data_dir: Path | None = None) -> Path:
    """`<data dir>/uploads` (created)."""
    folder = (data_dir if data_dir is not None else default_data_dir()).joinpath(*UPLOADS_FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def uploaded_models(data_dir: Path | None = None) -> list[RegisteredModel]:
    """Every complete upload under `data_dir` (default: the engine's data dir), by name.

    A folder whose record cannot be read is skipped with a warning, so that one damaged
    upload does not hide the others."""
    folder = (data_dir if data_dir is not None else default_data_dir()).joinpath(*UPLOADS_FOLDER)
    if not folder.is_dir():
        return []
    models = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue  # temporary folders of uploads and deletions under way
        try:
            models.append(_read_record(child))
        except InvalidSpecError as e:
            log.warning("upload `%s` skipped: %s", child, e)
    return models


def _read_record(folder: Path) -> RegisteredModel:
    path = folder / RECORD_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InvalidSpecError(f"upload record `{path}` cannot be read: {e}.") from None
    fields = {f.name for f in dataclasses.fields(RegisteredModel)}
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
        raise InvalidSpecError(f"upload record `{path}` is not an {RECORD_FORMAT} document.")
    if doc.get("name") != folder.name:
        raise InvalidSpecError(f"upload record `{path}` names {doc.get('name')!r}, not the "
                               f"folder's name {folder.name!r}.")
    check_name(folder.name, where=f"upload `{folder}`")
    values = {k: v for k, v in doc.items() if k in fields}
    for key, value in values.items():
        kind = int if key == "size_bytes" else str
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise InvalidSpecError(f"upload record `{path}`: `{key}` must be a "
                                   f"{kind.__name__}, got {value!r}.")
    data = values.get("data")
    # Paths follow the folder, wherever the data dir is now.
    return RegisteredModel(**{
        **values, "origin": "upload", "source": f"hf:{folder.resolve() / CHECKPOINT_FOLDER}",
        "data": None if not data else str(folder.resolve() / Path(data).name)})


def _models_file(models_file: str | Path | None) -> str | Path | None:
    return models_file if models_file is not None else (os.environ.get(MODELS_FILE_ENV) or None)


def registered_models(*, data_dir: Path | None = None,
                      models_file: str | Path | None = None) -> dict[str, RegisteredModel]:
    """Every registered model (the models file's and the uploads), sorted by name; where an
    upload has a models-file entry's name, the entry wins (with a warning).

    Read fresh on every call (uploads come and go while the service runs).

    Args:
        data_dir: The data dir of the uploads (default: the engine's).
        models_file: The models file (default: `$ALLOCATOR_MODELS_FILE`, if set).

    Raises:
        InvalidSpecError: The models file is unreadable or breaks a rule.
    """
    models: dict[str, RegisteredModel] = {}
    path = _models_file(models_file)
    if path is not None:
        models = {m.name: m for m in read_models_file(path)}
    for model in uploaded_models(data_dir):
        if model.name in models:
            log.warning("upload %r is shadowed by the models file's entry of that name",
                        model.name)
            continue
        models[model.name] = model
    return dict(sorted(models.items()))


def find_registered(name: str, *, data_dir: Path | None = None,
                    models_file: str | Path | None = None) -> RegisteredModel | None:
    """The registered model called `name`, or None (built-in names are never registered)."""
    if not NAME_PATTERN.fullmatch(name) or name in BUILTIN_MODELS:
        return None
    return registered_models(data_dir=data_dir, models_file=models_file).get(name)


# -- uploads ------------------------------------------------------------------------------


def _existing(folder: Path, name: str, sha256: str) -> RegisteredModel | None:
    """The upload already in `folder` when it holds this archive; `ModelExistsError` when it
    holds another; None when there is none."""
    if not folder.exists():
        return None
    try:
        model = _read_record(folder)
    except InvalidSpecError:
        model = None
    if model is not None and model.sha256 == sha256:
        return model
    raise ModelExistsError(f"`name` {name!r} is already registered (another archive); delete "
                           "it first or choose another name.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _remove_stale(uploads: Path) -> None:
    """Temporary folders a killed process left behind, a day or more old."""
    now = time.time()
    for child in uploads.iterdir():
        if child.name.startswith((".tmp-", ".incoming-", ".deleting-")):
            try:
                if now - child.stat().st_mtime > STALE_TEMP_S:
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:
                pass


def register_upload(archive: Path, *, data: Path | None = None, data_dir: Path | None = None,
                    max_bytes: int, name: str | None = None, description: str = "",
                    data_filename: str | None = None, models_file: str | Path | None = None,
                    max_entries: int = MAX_ENTRIES, max_ratio: float = MAX_RATIO,
                    ) -> RegisteredModel:
    """Checks an uploaded checkpoint archive whole, then unpacks and registers it.

    Args:
        archive: A zip or tar (plain or compressed) of a Hugging Face checkpoint folder.
        data: Optional calibration data file (.txt, .jsonl or .npy), stored beside it.
        data_dir: Data dir of the uploads (default: the engine's).
        max_bytes: Limit on the archive, the unpacked checkpoint and the data file.
        name: The name to register (default `upload-<first 12 hex of the archive's sha256>`).
        description: One line for listings.
        data_filename: The data file's original name (its suffix says its kind; default
            `data`'s own name).
        models_file: The models file whose names an upload may not take (default
            `$ALLOCATOR_MODELS_FILE`).
        max_entries: Limit on the archive's entries.
        max_ratio: Limit on unpacked / packed bytes (past 1 MiB).

    Returns:
        The registration; the existing one when this archive was uploaded under this name
        before (the data file of the repeat is not used).

    Raises:
        InvalidSpecError: A rule broken, naming the entry (or file) and the rule; nothing is
            left behind.
        ModelExistsError: `name` is registered already, for another archive.
    """
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS \
            or "\n" in description:
        raise InvalidSpecError(f"`description` must be one line of at most "
                               f"{MAX_DESCRIPTION_CHARS} characters.")
    uploads = uploads_dir(data_dir)
    _remove_stale(uploads)
    if archive.stat().st_size > max_bytes:
        raise InvalidSpecError(f"archive: {archive.stat().st_size} bytes, more than the limit "
                               f"of {max_bytes}.")
    sha256 = _sha256(archive)
    if name is None:
        name = f"upload-{sha256[:12]}"
    check_name(name)
    path = _models_file(models_file)
    if path is not None and name in {m.name for m in read_models_file(path)}:
        raise ModelExistsError(f"`name` {name!r} is registered by the models file; choose "
                               "another name.")
    final = uploads / name
    existing = _existing(final, name, sha256)
    if existing is not None:
        return existing
    tmp = uploads / f".tmp-{name}-{secrets.token_hex(4)}"
    try:
        with CheckedArchive(archive, max_bytes=max_bytes, max_entries=max_entries,
                            max_ratio=max_ratio) as checked:
            suffix = (check_data_file(data, data_filename or data.name, max_bytes)
                      if data is not None else None)
            tmp.mkdir()
            size = checked.extract(tmp / CHECKPOINT_FOLDER)
        record = {"format": RECORD_FORMAT, "name": name, "data": None,
                  "description": description, "size_bytes": size, "sha256": sha256,
                  "created": datetime.now(UTC).isoformat(timespec="seconds")}
        if data is not None and suffix is not None:
            record["data"] = f"data{suffix}"
            shutil.copyfile(data, tmp / record["data"])
            record["size_bytes"] = size + (tmp / record["data"]).stat().st_size
        atomic_write_bytes(tmp / RECORD_FILE, json.dumps(record, indent=1).encode())
        try:
            os.rename(tmp, final)
        except OSError:  # another request registered this name meanwhile
            existing = _existing(final, name, sha256)
            if existing is None:
                raise
            return existing
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _read_record(final)


def delete_upload(name: str, data_dir: Path | None = None) -> None:
    """Removes an uploaded model (a job running on it fails).

    Raises:
        InvalidSpecError: `name` is built-in or not a valid name.
        UnknownComponentError: No upload has that name.
    """
    check_name(name)
    uploads = uploads_dir(data_dir)
    folder = uploads / name
    if not (folder / RECORD_FILE).is_file():
        raise UnknownComponentError(f"no uploaded model {name!r}.")
    # Out of sight at once (a rename), then removed.
    doomed = uploads / f".deleting-{name}-{secrets.token_hex(4)}"
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:
        raise UnknownComponentError(f"no uploaded model {name!r}.") from None
    shutil.rmtree(doomed, ignore_errors=True)


__all__ = [
    "BUILTIN_MODELS", "MODELS_FILE_ENV", "UPLOADS_FOLDER", "ModelExistsError",
    "RegisteredModel", "check_name", "delete_upload", "find_registered", "is_repo_id",
    "read_models_file", "register_upload", "registered_models", "uploaded_models",
    "uploads_dir",
]
