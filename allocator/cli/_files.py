"""The files a command reads and writes, checked before any work starts.

An input file that is missing, a folder or a device, or an `--out` that cannot be written,
is one `error:` line naming the flag and the path, before a model is loaded or a solver
runs (a ten-minute solve should not end in "cannot write"). A write that still fails at
the end (disk full, the folder removed meanwhile) is one line too, exit 1.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine import AllocatorError, InvalidSpecError


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _show(path: str) -> str:
    """The path as it appears in a message (repr: control characters escaped)."""
    return repr(path)


def check_input(flag: str, path: str | None) -> None:
    """Raises `InvalidSpecError` naming `flag` unless `path` is a readable file (a regular
    file or a pipe such as /dev/stdin); None passes (the flag was not given)."""
    if path is None:
        return
    if not path or "\x00" in path:
        raise InvalidSpecError(f"`{flag}` must name a file, got {_show(path)}.")
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise InvalidSpecError(f"`{flag}` {_show(path)}: {_reason(e)}.") from None
    if stat.S_ISDIR(mode):
        raise InvalidSpecError(f"`{flag}` {_show(path)} is a folder, not a file.")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise InvalidSpecError(f"`{flag}` {_show(path)} is not a regular file.")
    if not os.access(path, os.R_OK):
        raise InvalidSpecError(f"`{flag}` {_show(path)}: permission denied.")


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above `path` that exists (where missing folders would be made)."""
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path.cwd()


def _probe_writable(folder: Path) -> str | None:
    """Why no file can be created in `folder`, or None when one can (by creating and removing
    one: permission bits do not tell root, or a read-only or virtual file system, apart)."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".allocator-probe-"):
            return None
    except OSError as e:
        return _reason(e)


def check_output(flag: str, path: str | None, *, folder: bool = False) -> None:
    """Raises `InvalidSpecError` naming `flag` unless `path` can be written: a file (or with
    `folder`, a folder that holds the output files) whose missing parent folders can be made.
    None passes (the flag was not given)."""
    if path is None:
        return
    if not path or "\x00" in path:
        raise InvalidSpecError(f"`{flag}` must name a {'folder' if folder else 'file'}, "
                               f"got {_show(path)}.")
    p = Path(path)
    try:
        if p.exists():
            if folder and not p.is_dir():
                raise InvalidSpecError(f"`{flag}` {_show(path)} is a file, not a folder.")
            if not folder and p.is_dir():
                raise InvalidSpecError(f"`{flag}` {_show(path)} is a folder, not a file.")
        base = p if folder and p.is_dir() else (
            p.parent if p.parent.is_dir() else _existing_ancestor(p))
        if not base.is_dir():
            raise InvalidSpecError(f"`{flag}` {_show(path)}: {str(base)!r} is not a folder.")
        why = _probe_writable(base)
    except OSError as e:  # a name too long, a loop of links
        raise InvalidSpecError(f"`{flag}` {_show(path)}: {_reason(e)}.") from None
    if why is not None:
        raise InvalidSpecError(f"`{flag}` {_show(path)} cannot be written: {why} "
                               f"(in {str(base)!r}).")


@contextmanager
def writing(flag: str, path: str) -> Iterator[None]:
    """Turns an `OSError` while writing `path` into one `AllocatorError` line (exit 1)."""
    try:
        yield
    except OSError as e:
        raise AllocatorError(f"cannot write `{flag}` {_show(path)}: {_reason(e)}.") from None
