"""Where the project keeps caches, trained models and tables (`ALLOCATOR_DATA_DIR`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def data_dir() -> Path:
    """`$ALLOCATOR_DATA_DIR`, else `$XDG_CACHE_HOME/allocator`, else `~/.cache/allocator`."""
    env = os.environ.get("ALLOCATOR_DATA_DIR")
    if env:
        base = Path(env).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache) / "allocator"
    base.mkdir(parents=True, exist_ok=True)
    return base


def content_hash(*parts: bytes | str, length: int = 16) -> str:
    """Hex SHA-256 prefix of the concatenated parts (strings as UTF-8)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\x00")
    return h.hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
