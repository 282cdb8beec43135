"""Stored latency tables: JSON files under `engine.data_dir() / "hwprofiles"`.

A profile's name is its file name without `.json`. Importing a table measured elsewhere is
validating it (`LatencyTable.load`) and copying it in (`save_profile`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import engine
from engine import InvalidSpecError, UnknownComponentError
from hwprofiles._fingerprint import DeviceFingerprint
from hwprofiles._table import LatencyTable

PROFILE_DIR = "hwprofiles"


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


def save_profile(table: LatencyTable, name: str | None = None) -> Path:
    """Stores `table` in the registry (default name: `profile_name`); returns its path."""
    name = _check_name(name or profile_name(table.model, table.batch, table.device))
    return table.save(profiles_dir() / f"{name}.json")


def import_profile(path: str | Path, name: str | None = None) -> Path:
    """Validates an external table file and stores a copy in the registry."""
    table = LatencyTable.load(path)
    return save_profile(table, name or Path(path).stem)


def load_profile(name_or_path: str | Path) -> LatencyTable:
    """A stored profile by name, or any table file by path.

    Raises:
        UnknownComponentError: No stored profile has that name (and no such file exists).
        InvalidSpecError: The file is not a valid `allocator.latency/1` table.
    """
    path = Path(name_or_path)
    if path.suffix == ".json" and path.is_file():
        return LatencyTable.load(path)
    text = str(name_or_path)
    if "/" not in text and "\\" not in text:
        stored = profiles_dir() / f"{_check_name(text)}.json"
        if stored.is_file():
            return LatencyTable.load(stored)
    if path.is_file():
        return LatencyTable.load(path)
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
            t = LatencyTable.load(path)
        except InvalidSpecError as e:
            out.append(ProfileInfo(path.stem, path, "?", 0, 0, "", error=str(e)))
            continue
        device = f"{t.device.cpu_model}, {t.device.torch_threads} threads, torch " \
                 f"{t.device.torch_version}" + (f", {t.device.gpu}" if t.device.gpu else "")
        out.append(ProfileInfo(path.stem, path, device, t.batch, len(t.entries), t.created,
                               t.model))
    return out
