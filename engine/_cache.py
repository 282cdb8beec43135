"""Trusted cache files: written atomically with a SHA-256 sidecar, verified and validated
before use, moved aside (quarantined) when anything is wrong, then recomputed by the caller.

A wrong answer reported as success is the worst outcome this product can have, so nothing
the program cached is used on its word: a cache file is used only when its bytes match the
checksum its sidecar records, the sidecar's key is the one the caller computed for what it
needs now, and the caller's `parse` (schema plus semantic checks, as for client input)
accepts the bytes.

Layout under the data dir (`ALLOCATOR_DATA_DIR`):

    sensitivity/<model>-<estimator>-<key>.json             allocator.sensitivity/1
    hwprofiles/<model>-b<batch>-<cpu>[-weight-only].json   allocator.latency/1
    models/<model>-<key>.safetensors                       trained digits weights
    <folder>/<cache file>.sha256                           its sidecar (below)
    <folder>/.lock                                         serializes writers and repairs
    quarantine/<file name>.<UTC time>.<reason>             what failed; never deleted

The cache file keeps its own documented format (`SensitivityTable.load` and
`LatencyTable.load` read it as before); the sidecar beside it is JSON:

    {"format": "allocator.cache/1", "sha256": "<hex of the file's bytes>",
     "size_bytes": 1234, "key": {...what the file was made for...}, "created": "<UTC>"}

`load_cached` treats a missing file as a miss. Anything else that is not a regular file
with a matching sidecar (a directory, no sidecar, another checksum, size or key, bytes the
caller's `parse` refuses) and any `.tmp` leftover of an interrupted write is moved to
`quarantine/` (reason in the name), logged and warned about (`CacheQuarantineWarning`),
and the call answers "miss" so the caller recomputes and stores anew. What cannot be moved
aside is a `CacheError`: the program never overwrites or deletes it, and never uses it.

Writers (`store_cached`) hold an exclusive `flock` on the folder's `.lock` while they
replace the file and its sidecar, readers a shared one while they read both, so no reader
sees a new file with an old sidecar (where `fcntl` is missing, no locking).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from engine._errors import AllocatorError, InvalidSpecError
from engine._paths import TMP_SUFFIX, atomic_write_bytes, file_lock, tmp_prefix

log = logging.getLogger(__name__)

CACHE_FORMAT = "allocator.cache/1"
SIDECAR_SUFFIX = ".sha256"
QUARANTINE_DIR = "quarantine"
LOCK_NAME = ".lock"
MAX_SIDECAR_BYTES = 1 << 20

T = TypeVar("T")


class CacheError(AllocatorError, RuntimeError):
    """Raised when a cache file failed verification and cannot be moved aside, or a cache
    entry cannot be written; the message names the file and the cause."""


class CacheQuarantineWarning(UserWarning):
    """A cache file failed verification: it was moved to `quarantine/` and is recomputed."""


class _Rejected(Exception):
    """Why a cache entry is not trusted: a short `reason` (file-name safe) and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def sidecar_path(path: Path) -> Path:
    """The checksum sidecar of cache file `path` (`<file>.sha256`)."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def quarantine_dir(path: Path) -> Path:
    """Where a cache file of `path` goes when it fails: `quarantine/` beside its folder (the
    data dir's, as every cache folder sits directly in the data dir)."""
    return path.parent.parent / QUARANTINE_DIR


def _plain(value: Any) -> Any:
    """JSON data for `value`: non-finite floats as their names, anything else JSON cannot
    write as its `repr`."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    return repr(value)


def canonical_key(key: Mapping[str, Any]) -> dict[str, Any]:
    """`key` as JSON reads it back (tuples become lists, keys strings, NaN and infinities
    their names), so a key computed now compares equal to the one a sidecar recorded."""
    return json.loads(json.dumps(_plain(key), sort_keys=True, allow_nan=False))


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


@contextlib.contextmanager
def _locked(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """Holds the folder's `.lock` (shared or exclusive) where it can be opened."""
    with contextlib.ExitStack() as stack:
        if folder.is_dir():
            try:
                stack.enter_context(file_lock(folder / LOCK_NAME, exclusive=exclusive))
            except OSError:  # read-only folder: nobody can write there either
                pass
        yield


def _leftovers(path: Path) -> list[Path]:
    """`.tmp` files of interrupted writes to `path` or its sidecar (writers hold the
    exclusive lock while theirs exist, so under that lock every one is a leftover)."""
    prefix = tmp_prefix(path)
    try:
        return sorted(p for p in path.parent.iterdir()
                      if p.name.startswith(prefix) and p.name.endswith(TMP_SUFFIX))
    except OSError:
        return []


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.exists() and not side.is_symlink():
        raise _Rejected("no-checksum", f"no checksum file `{side.name}` beside it")
    if not side.is_file():
        raise _Rejected("bad-checksum-file", f"`{side.name}` is not a regular file")
    try:
        if side.stat().st_size > MAX_SIDECAR_BYTES:
            raise _Rejected("bad-checksum-file", f"`{side.name}` is larger than "
                                                 f"{MAX_SIDECAR_BYTES} bytes")
        doc = json.loads(side.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise _Rejected("bad-checksum-file", f"`{side.name}` is unreadable: {e}") from None
    if (not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT
            or not isinstance(doc.get("sha256"), str) or not isinstance(doc.get("key"), dict)
            or isinstance(doc.get("size_bytes"), bool)
            or not isinstance(doc.get("size_bytes"), int)):
        raise _Rejected("bad-checksum-file",
                        f"`{side.name}` is not an {CACHE_FORMAT} document")
    return doc


def _verified_bytes(path: Path, keys: Sequence[Mapping[str, Any]] | None) -> bytes | None:
    """The bytes of `path` when its sidecar vouches for them (and, unless `keys` is None,
    records one of `keys`); None when nothing is there. Raises `_Rejected` otherwise."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise _Rejected("not-a-file", "it is not a regular file")
    side = _read_sidecar(path)
    if keys is not None and side["key"] not in keys:
        raise _Rejected("key-mismatch", f"it was made for {_short(side['key'])}, not "
                                        f"{_short(keys[0])}")
    try:
        size = path.stat().st_size
        if size != side["size_bytes"]:
            raise _Rejected("checksum-mismatch", f"it has {size} bytes, its checksum file "
                                                 f"says {side['size_bytes']}")
        data = path.read_bytes()
    except OSError as e:
        raise _Rejected("unreadable", f"cannot read it: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != side["sha256"]:
        raise _Rejected("checksum-mismatch", f"its SHA-256 is {digest[:16]}..., its checksum "
                                             f"file says {side['sha256'][:16]}...")
    return data


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _move_aside(path: Path, reason: str) -> Path:
    """Moves `path` (file, directory or link) into the quarantine folder; returns where."""
    folder = quarantine_dir(path)
    stamp = _utc_stamp()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{path.name}.{stamp}.{reason}"
        n = 1
        while dest.exists() or dest.is_symlink():
            dest = folder / f"{path.name}.{stamp}-{n}.{reason}"
            n += 1
        try:
            os.replace(path, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.move(str(path), str(dest))  # another file system: copy, then remove
    except OSError as e:
        raise CacheError(f"cache file `{path}` failed verification ({reason}) and cannot be "
                         f"moved to `{folder}`: {e.strerror or e}.") from None
    return dest


def quarantine(path: Path, reason: str, detail: str, *, what: str,
               action: str = "recomputing") -> Path:
    """Moves a cache file and its sidecar aside, logs and warns why; returns the new path.

    Args:
        path: The cache file (anything at that path: file, directory, link).
        reason: A short, file-name-safe word for the file name (`checksum-mismatch`).
        detail: The one-line cause for the log and the warning.
        what: What the file holds ("sensitivity table").
        action: What happens next, for the message ("retraining").

    Raises:
        CacheError: It cannot be moved (it is then left where it is, and not used).
    """
    dest = _move_aside(path, reason)
    side = sidecar_path(path)
    if side.exists() or side.is_symlink():
        _move_aside(side, reason)
    message = (f"{what} cache `{path}` is corrupt or untrusted ({detail.rstrip('.')}); "
               f"moved to `{dest}`; {action}.")
    log.warning(message)
    warnings.warn(message, CacheQuarantineWarning, stacklevel=3)
    return dest


def _sweep(path: Path, *, what: str) -> None:
    for tmp in _leftovers(path):
        dest = _move_aside(tmp, "leftover-tmp")
        message = f"{what} cache: leftover of an interrupted write `{tmp}` moved to `{dest}`."
        log.warning(message)
        warnings.warn(message, CacheQuarantineWarning, stacklevel=3)


def _attempt(path: Path, keys: Sequence[Mapping[str, Any]],
             parse: Callable[[bytes], T]) -> T | None:
    data = _verified_bytes(path, keys)
    if data is None:
        return None
    try:
        return parse(data)
    except Exception as e:  # whatever the content makes `parse` raise: it is not trusted
        detail = str(e) if isinstance(e, InvalidSpecError) else f"{type(e).__name__}: {e}"
        raise _Rejected("invalid", detail) from None


def load_cached(path: Path, key: Mapping[str, Any], parse: Callable[[bytes], T], *,
                what: str, also_accept: Sequence[Mapping[str, Any]] = (),
                action: str = "recomputing") -> T | None:
    """The value cached at `path`, or None when the caller must compute it.

    Args:
        path: The cache file.
        key: What the file must have been made for (compared with its sidecar's `key`).
        parse: Builds the value from the verified bytes and validates it like client input
            (schema and semantic checks); raises `InvalidSpecError` (any `ValueError`) when
            it refuses them.
        what: What the file holds, for messages ("sensitivity table").
        also_accept: Other keys that vouch for the file (e.g. a table imported on purpose).
        action: What the caller does on a miss, for the message ("retraining").

    Returns:
        The parsed value; None when nothing is cached, or when what was cached failed and
        was moved to `quarantine/` (with a log line and a `CacheQuarantineWarning`).

    Raises:
        CacheError: A file that failed cannot be moved aside.
    """
    keys = [canonical_key(k) for k in (key, *also_accept)]
    with _locked(path.parent, exclusive=False):
        leftovers = bool(_leftovers(path))
        try:
            value = _attempt(path, keys, parse)
            if not leftovers:
                return value
        except _Rejected:
            pass
    # Something to repair: look again under the exclusive lock (a writer may have replaced
    # the entry meanwhile), then move aside what still fails.
    with _locked(path.parent, exclusive=True):
        _sweep(path, what=what)
        try:
            return _attempt(path, keys, parse)
        except _Rejected as r:
            quarantine(path, r.reason, r.detail, what=what, action=action)
            return None


def store_cached(path: Path, data: bytes, key: Mapping[str, Any], *, what: str) -> Path:
    """Writes `data` to `path` and its sidecar (checksum and `key`), each atomically.

    Whatever occupies the path and is not a regular file (a directory) and any `.tmp`
    leftover of an earlier write are moved to `quarantine/` first.

    Raises:
        CacheError: The entry cannot be written (the message names the path and cause).
    """
    side = sidecar_path(path)
    doc = {"format": CACHE_FORMAT, "sha256": hashlib.sha256(data).hexdigest(),
           "size_bytes": len(data), "key": canonical_key(key),
           "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.parent, exclusive=True):
            _sweep(path, what=what)
            for p in (path, side):
                if (p.exists() or p.is_symlink()) and not p.is_file():
                    quarantine(p, "not-a-file", "it is not a regular file", what=what,
                               action="writing it anew")
            atomic_write_bytes(path, data)
            atomic_write_bytes(side, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
    except OSError as e:
        raise CacheError(f"cannot write {what} cache `{path}`: {e.strerror or e}.") from None
    return path


def verify_sidecar(path: Path, data: bytes) -> str | None:
    """Why `data` (the bytes read from `path`) disagrees with the sidecar beside `path`, or
    None when it agrees or there is no sidecar (a file placed or imported by hand)."""
    side = sidecar_path(path)
    if not side.exists() and not side.is_symlink():
        return None
    try:
        doc = _read_sidecar(path)
    except _Rejected as r:
        return r.detail
    digest = hashlib.sha256(data).hexdigest()
    if doc["sha256"] != digest or doc["size_bytes"] != len(data):
        return (f"its SHA-256 is {digest[:16]}..., its checksum file `{side.name}` says "
                f"{doc['sha256'][:16]}...")
    return None
