"""Stored latency tables: JSON files under `engine.data_dir() / "hwprofiles"`.

    hwprofiles/<name>.json          an `allocator.latency/1` table
    hwprofiles/<name>.json.sha256   its sidecar: SHA-256 of the file and the key it was
                                    stored for (see `engine._cache`)

A profile's name is its file name without `.json`. Every table the program stores gets a
sidecar: `save_profile` records `{"cache": "latency", "origin": "imported", "name": ...}`
unless told another key (the pipeline's profiler records `"origin": "profiled"` with the
model, batch and activation mode). Importing a table measured elsewhere is validating it
(`LatencyTable.load`) and copying it in (`import_profile`). `load_profile(name, key=...)` is
the pipeline's read: the table is used only when its sidecar vouches for it, else it is
moved to `<data dir>/quarantine/` and profiled anew; `load_profile` without a key (an
explicit name or path) refuses a table whose sidecar disagrees with it and accepts one
without a sidecar (a file placed by hand).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine
from engine import InvalidSpecError, UnknownComponentError
from hwprofiles._fingerprint import DeviceFingerprint
from hwprofiles._table import LatencyTable

PROFILE_DIR = "hwprofiles"
WHAT = "latency table"


def profiles_dir() -> Path:
    """Where stored tables live (created on first use)."""
    path = engine.data_dir() / PROFILE_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def profile_name(model: str | None, batch: int, device: DeviceFingerprint) -> str:
    """`{model}-b{batch}-{cpu short name}`, e.g. `minilm-b32-xeon-t2`."""
    stem = (model or "model").replace(":", "-").replace("/", "-").replace(".", "-")
    return f"{stem}-b{batch}-{device.short_name}"


def _check_name(name: str) -> str:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise InvalidSpecError(f"`name` of a profile must be a plain file name, got {name!r}.")
    return name[:-5] if name.endswith(".json") else name


def imported_key(name: str) -> dict[str, Any]:
    """The sidecar key of a table stored on purpose (`import_profile`, `save_profile`)."""
    return {"cache": "latency", "origin": "imported", "name": name}


def save_profile(table: LatencyTable, name: str | None = None, *,
                 key: Mapping[str, Any] | None = None) -> Path:
    """Stores `table` in the registry (default name: `profile_name`) with its checksum
    sidecar recording `key` (default: `imported_key(name)`); returns its path.

    Raises:
        CacheError: The table cannot be written.
    """
    name = _check_name(name or profile_name(table.model, table.batch, table.device))
    path = profiles_dir() / f"{name}.json"
    data = (table.to_json() + "\n").encode("utf-8")
    return engine.store_cached(path, data, key or imported_key(name), what=WHAT)


def import_profile(path: str | Path, name: str | None = None) -> Path:
    """Validates an external table file and stores a copy in the registry."""
    table = LatencyTable.load(path)
    return save_profile(table, name or Path(path).stem)


def _parse(data: bytes, path: Path) -> LatencyTable:
    """A table from a file's bytes; errors name the file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidSpecError(f"{WHAT} `{path}` is not UTF-8 text: {e.reason} at byte "
                               f"{e.start}.") from None
    try:
        return LatencyTable.from_json(text)
    except InvalidSpecError as e:
        raise InvalidSpecError(f"{WHAT} `{path}`: {e}") from None


def _load_checked(path: Path) -> LatencyTable:
    """A table file, refused when a sidecar beside it disagrees with its bytes."""
    try:
        data = path.read_bytes()
    except OSError:
        return LatencyTable.load(path)  # raises the named error
    problem = engine.verify_sidecar(path, data)
    if problem is not None:
        raise InvalidSpecError(f"{WHAT} `{path}` does not match its checksum file ({problem}); "
                               "re-import or re-profile it.")
    return _parse(data, path)


def _load_stored(name: str, key: Mapping[str, Any],
                 check: Callable[[LatencyTable], None] | None) -> LatencyTable | None:
    """The stored profile `name` when its sidecar vouches for it (made for `key`, or
    imported on purpose) and it validates; None when there is none or it failed and was
    moved to `quarantine/` (logged, with an `engine.CacheQuarantineWarning`)."""
    path = profiles_dir() / f"{_check_name(name)}.json"

    def parse(data: bytes) -> LatencyTable:
        table = _parse(data, path)
        if check is not None:
            check(table)
        return table

    return engine.load_cached(path, key, parse, what=WHAT, also_accept=[imported_key(name)],
                              action="profiling anew")


def load_profile(name_or_path: str | Path, *, key: Mapping[str, Any] | None = None,
                 check: Callable[[LatencyTable], None] | None = None) -> LatencyTable:
    """A stored profile by name, or any table file by path.

    Args:
        name_or_path: A stored profile's name, or a table file.
        key: Read the stored profile `name_or_path` as a trusted cache: only when its
            sidecar records `key` (or an import) and its checksum matches; one that fails
            is moved to `<data dir>/quarantine/` (logged and warned about) and reported as
            not stored.
        check: With `key`, what the table must also pass (raises `InvalidSpecError`), e.g.
            the batch the caller needs; a table that fails it is moved aside too.

    Raises:
        UnknownComponentError: No (trusted, with `key`) stored profile has that name, and
            no such file exists.
        InvalidSpecError: The file is not a valid `allocator.latency/1` table, or its
            checksum sidecar disagrees with it.
        CacheError: With `key`, a table that failed cannot be moved aside.
    """
    if key is not None:
        table = _load_stored(str(name_or_path), key, check)
        if table is None:
            raise UnknownComponentError(f"no trusted stored profile {str(name_or_path)!r}.")
        return table
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return _load_checked(path)
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        stored = profiles_dir() / f"{_check_name(text)}.json"
        if stored.is_file():
            return _load_checked(stored)
    if path.is_file():
        return _load_checked(path)
    names = ", ".join(p.name for p in list_profiles()) or "none stored"
    raise UnknownComponentError(f"unknown profile {text!r}; stored profiles: {names}.")


@dataclass(frozen=True)
class ProfileInfo:
    """One stored table, as `list_profiles` reports it."""

    name: str
    path: Path
    device: str
    batch: int
    entries: int
    created: str
    model: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "device": self.device,
                "batch": self.batch, "entries": self.entries, "created": self.created,
                "model": self.model, "error": self.error}


def list_profiles() -> list[ProfileInfo]:
    """Every table under the registry folder, by name; unreadable ones carry `error`."""
    out = []
    for path in sorted(profiles_dir().glob("*.json")):
        try:
            t = _load_checked(path)
        except InvalidSpecError as e:
            out.append(ProfileInfo(path.stem, path, "?", 0, 0, "", error=str(e)))
            continue
        runtime = (f"torch {t.device.torch_version}" if t.device.runtime is None
                   else t.device.runtime_label)
        device = f"{t.device.cpu_model}, {t.device.torch_threads} threads, {runtime}" \
                 + (f", {t.device.gpu}" if t.device.gpu else "")
        out.append(ProfileInfo(path.stem, path, device, t.batch, len(t.entries), t.created,
                               t.model))
    return out
