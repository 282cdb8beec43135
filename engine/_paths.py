"""Where the project keeps caches, trained models and tables (`ALLOCATOR_DATA_DIR`), and
the one way files are written there (atomically).

The data dir's layout (each cache file with its checksum sidecar, see `engine._cache`):

    sensitivity/   allocator.sensitivity/1 tables, `<model>-<estimator>-<key>.json`
    hwprofiles/    allocator.latency/1 tables, `<model>-b<batch>-<cpu>[-weight-only].json`
    models/        trained digits weights, `<model>-<key>.safetensors`
    quarantine/    cache files that failed verification, moved aside, never deleted
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]

from engine._errors import InvalidSpecError

TMP_SUFFIX = ".tmp"


def data_dir() -> Path:
    """`$ALLOCATOR_DATA_DIR`, else `$XDG_CACHE_HOME/allocator`, else `~/.cache/allocator`."""
    env = os.environ.get("ALLOCATOR_DATA_DIR")
    if env:
        base = Path(env).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache) / "allocator"
    where = "ALLOCATOR_DATA_DIR" if env else "the data folder"
    if base.exists() and not base.is_dir():
        raise InvalidSpecError(f"{where} `{base}` is not a folder.")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidSpecError(f"cannot create {where} `{base}`: {e.strerror or e}.") from e
    return base


def content_hash(*parts: bytes | str, length: int = 16) -> str:
    """Hex SHA-256 prefix of the concatenated parts (strings as UTF-8)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\x00")
    return h.hexdigest()[:length]


def tmp_prefix(path: Path) -> str:
    """How the temporary files of writes to `path` begin (`.<name>.`); they end in `.tmp`."""
    return f".{path.name}."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes via a temporary file, flushed to disk, and a rename, so readers never see
    half a file. The temporary name is unique per call (`.<name>.<pid>.<random>.tmp`, so
    threads and processes writing the same path never share one) and is removed when the
    write or the rename fails (e.g. a directory sits at `path`); the `OSError` is raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{tmp_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | Path, *, exclusive: bool = True) -> Iterator[None]:
    """Holds an advisory `flock` on `path` (created if need be) until the block ends, so
    that processes building or writing the same thing take turns; a no-op where the
    platform has no `flock`.

    Raises:
        OSError: The lock file cannot be opened (a read-only folder, say).
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock
