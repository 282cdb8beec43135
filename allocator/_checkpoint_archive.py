"""Checks of an uploaded Hugging Face checkpoint archive, made whole before anything is
written, and its unpacking.

Rules: a zip or tar (plain, gzip, bzip2, xz) whose files sit at its top or in one common
folder and are all checkpoint files (config.json, tokenizer files, *.safetensors and their
index); no pickles, no code, no links, devices or other special entries, no absolute paths,
no `..`; no JSON file with `auto_map` (it names code to import); every safetensors header
parses; limits on the entry count, the unpacked size and the compression ratio (a zip
bomb is refused from its headers, before it is inflated). Calibration data beside it is
text, JSON lines or a NumPy array without objects (never a pickle).

Every refusal is an `InvalidSpecError` naming the entry (or file) and the rule.
"""

from __future__ import annotations

import gzip
import json
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine import InvalidSpecError

TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "merges.txt", "vocab.json", "tokenizer.model", "generation_config.json",
    "preprocessor_config.json", "added_tokens.json",
})
INDEX_FILE = "model.safetensors.index.json"
CHECKPOINT_FILES = frozenset({"config.json", INDEX_FILE}) | TOKENIZER_FILES
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so")
DATA_SUFFIXES = (".txt", ".jsonl", ".npy")
_SAFETENSORS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.safetensors")

MAX_ENTRIES = 1000
MAX_RATIO = 100.0  # unpacked / packed bytes, for the archive and for each zip entry
RATIO_FLOOR_BYTES = 2**20  # smaller totals (or entries) are not held to the ratio
MAX_JSON_BYTES = 64 * 2**20  # one JSON file of the checkpoint (tokenizer.json is the big one)
MAX_SAFETENSORS_HEADER_BYTES = 100 * 2**20
_CHUNK = 2**20


@dataclass(frozen=True)
class _Entry:
    """One archive member, as its headers describe it."""

    name: str
    kind: str  # file, dir, symlink, hardlink, device, other
    size_bytes: int
    packed_bytes: int | None  # zip: the compressed size; tar: unknown
    handle: Any


class _Archive:
    """A zip or tar (plain, gzip, bzip2, xz) read entry by entry, with bounded listing."""

    def __init__(self, path: Path, *, max_entries: int, max_bytes: int) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        try:
            if zipfile.is_zipfile(path):
                _check_central_directory(path, max_entries)
                self._zip = zipfile.ZipFile(path)
                self.entries = self._zip_entries(max_entries)
            else:
                self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115  (closed in close())
                self.entries = self._tar_entries(max_entries, max_bytes)
        except InvalidSpecError:
            self.close()
            raise
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError,
                ValueError, UnicodeDecodeError, NotImplementedError) as e:
            self.close()
            raise InvalidSpecError(f"archive: not a readable zip or tar ({type(e).__name__}: "
                                   f"{str(e)[:200]}).") from None

    def _zip_entries(self, max_entries: int) -> list[_Entry]:
        assert self._zip is not None  # its central directory was held to the limit first
        infos = self._zip.infolist()
        if len(infos) > max_entries:
            raise InvalidSpecError(f"archive: {len(infos)} entries, more than the limit of "
                                   f"{max_entries}.")
        entries = []
        for info in infos:
            mode = info.external_attr >> 16
            if info.flag_bits & 0x1:
                kind = "encrypted"
            elif info.create_system == 3 and stat.S_ISLNK(mode):
                kind = "symlink"
            elif info.create_system == 3 and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                                              or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                kind = "device"
            elif info.is_dir():
                kind = "dir"
            else:
                kind = "file"
            entries.append(_Entry(info.filename, kind, info.file_size, info.compress_size,
                                  info))
        return entries

    def _tar_entries(self, max_entries: int, max_bytes: int) -> list[_Entry]:
        assert self._tar is not None
        entries: list[_Entry] = []
        total = 0
        # One member at a time: a compressed stream is decompressed only as far as the
        # members read so far allow (a bomb is refused at its header, not after it).
        while (member := self._tar.next()) is not None:
            if len(entries) >= max_entries:
                raise InvalidSpecError(f"archive: more entries than the limit of "
                                       f"{max_entries}.")
            if member.issym():
                kind = "symlink"
            elif member.islnk():
                kind = "hardlink"
            elif member.ischr() or member.isblk() or member.isfifo():
                kind = "device"
            elif member.isdir():
                kind = "dir"
            elif member.isreg() and not member.issparse():
                kind = "file"
            else:
                kind = "other"
            entries.append(_Entry(member.name, kind, member.size, None, member))
            total += member.size if kind == "file" else 0
            if total > max_bytes:
                raise InvalidSpecError(f"archive: entry `{member.name}`: unpacked size passes "
                                       f"the limit of {max_bytes} bytes.")
        return entries

    @contextmanager
    def open(self, entry: _Entry) -> Iterator[IO[bytes]]:
        if self._zip is not None:
            with self._zip.open(entry.handle) as f:
                yield f
            return
        assert self._tar is not None
        f = self._tar.extractfile(entry.handle)
        if f is None:
            raise InvalidSpecError(f"archive: entry `{entry.name}` cannot be read.")
        with f:
            yield f

    def close(self) -> None:
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()


# Bytes of central directory allowed per entry: its 46-byte header, a name, extra fields.
_DIRECTORY_BYTES_PER_ENTRY = 1024


def _check_central_directory(path: Path, max_entries: int) -> None:
    """Refuses a zip whose central directory is too big for `max_entries` entries, before
    `zipfile` reads all of it into memory (millions of tiny entries)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - (22 + 65535)))  # the end record, after at most a 64 KiB comment
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return  # not found: zipfile refuses it
        directory_bytes = int.from_bytes(tail[at + 12:at + 16], "little")
        locator = tail.rfind(b"PK\x06\x07", 0, at)  # zip64: the sizes are in its own record
        if directory_bytes == 0xFFFFFFFF and locator >= 0 and len(tail) - locator >= 20:
            f.seek(int.from_bytes(tail[locator + 8:locator + 16], "little"))
            record = f.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                directory_bytes = int.from_bytes(record[40:48], "little")
    if directory_bytes > max_entries * _DIRECTORY_BYTES_PER_ENTRY:
        raise InvalidSpecError(f"archive: a central directory of {directory_bytes} bytes, more "
                               f"than {max_entries} entries (the limit) can need.")


def _relative_parts(entry: _Entry) -> tuple[str, ...]:
    """The entry's path as parts, `.` and empty parts dropped; refuses absolute paths,
    `..`, backslashes and control characters."""
    name = entry.name
    rule = None
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        rule = "an absolute path"
    elif any(part == ".." for part in re.split(r"[/\\]", name)):
        rule = "a path through `..` (outside the folder)"
    elif "\\" in name:
        rule = "a backslash in its path"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        rule = "a control character in its path"
    if rule is not None:
        raise InvalidSpecError(f"archive entry {name!r}: {rule} is refused.")
    return tuple(part for part in name.split("/") if part not in ("", "."))


def _file_rule(basename: str) -> str | None:
    """Why a file of this name may not be in a checkpoint, or None."""
    lower = basename.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        return ("a pickle file (.bin .pt .pth .pkl .ckpt .pickle) is refused: unpickling "
                "runs code; convert the weights to safetensors")
    if lower.endswith(CODE_SUFFIXES):
        return "code (.py and compiled modules) is refused: a checkpoint holds data only"
    if basename in CHECKPOINT_FILES or _SAFETENSORS_NAME.fullmatch(basename):
        return None
    return ("not a checkpoint file (allowed: config.json, tokenizer files, *.safetensors, "
            f"{INDEX_FILE})")


def _check_entries(archive: _Archive, *, max_bytes: int, archive_bytes: int,
                   max_ratio: float) -> dict[str, _Entry]:
    """The archive's files by base name, after every rule on names, kinds and sizes."""
    files: dict[str, _Entry] = {}
    file_folders: set[str] = set()  # "" for the top
    dir_names: set[str] = set()
    total = 0
    for entry in archive.entries:
        parts = _relative_parts(entry)
        where = f"archive entry {entry.name!r}"
        if entry.kind in ("symlink", "hardlink"):
            raise InvalidSpecError(f"{where}: a link ({entry.kind}) is refused.")
        if entry.kind == "device":
            raise InvalidSpecError(f"{where}: a device or pipe is refused.")
        if entry.kind == "encrypted":
            raise InvalidSpecError(f"{where}: an encrypted entry is refused.")
        if entry.kind == "other":
            raise InvalidSpecError(f"{where}: only plain files and folders are allowed.")
        if entry.kind == "dir":
            if len(parts) > 1:
                raise InvalidSpecError(f"{where}: nested folders are refused (files go at "
                                       "the top or in one common folder).")
            dir_names.update(parts)
            continue
        if not parts or len(parts) > 2:
            raise InvalidSpecError(f"{where}: files go at the top of the archive or in one "
                                   "common folder, not deeper.")
        file_folders.add(parts[0] if len(parts) == 2 else "")
        if len(file_folders) > 1:
            raise InvalidSpecError(f"{where}: files go at the top or in one common folder; "
                                   "this archive mixes several.")
        rule = _file_rule(parts[-1])
        if rule is not None:
            raise InvalidSpecError(f"{where}: {rule}.")
        if parts[-1] in files:
            raise InvalidSpecError(f"{where}: a second entry for `{parts[-1]}`.")
        if entry.size_bytes < 0:
            raise InvalidSpecError(f"{where}: a negative size.")
        total += entry.size_bytes
        if total > max_bytes:
            raise InvalidSpecError(f"{where}: the unpacked checkpoint passes the limit of "
                                   f"{max_bytes} bytes.")
        packed = entry.packed_bytes
        if (packed is not None and entry.size_bytes > RATIO_FLOOR_BYTES
                and entry.size_bytes > max_ratio * max(packed, 1)):
            raise InvalidSpecError(f"{where}: compression ratio "
                                   f"{entry.size_bytes / max(packed, 1):.0f}:1 passes the "
                                   f"limit of {max_ratio:.0f}:1 (a zip bomb?).")
        files[parts[-1]] = entry
    extra = dir_names - file_folders
    if extra:
        raise InvalidSpecError(f"archive entry {sorted(extra)[0] + '/'!r}: a folder without "
                               "checkpoint files is refused (files go at the top or in one "
                               "common folder).")
    if total > RATIO_FLOOR_BYTES and total > max_ratio * max(archive_bytes, 1):
        raise InvalidSpecError(f"archive: compression ratio {total / max(archive_bytes, 1):.0f}"
                               f":1 passes the limit of {max_ratio:.0f}:1 (a zip bomb?).")
    if "config.json" not in files:
        raise InvalidSpecError("archive: config.json is missing (a Hugging Face checkpoint "
                               "folder has one at its top).")
    if not any(name.endswith(".safetensors") for name in files):
        raise InvalidSpecError("archive: no *.safetensors weights.")
    return files


def _read_bounded(f: IO[bytes], limit: int, where: str) -> bytes:
    data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidSpecError(f"{where}: larger than {limit} bytes.")
    return data


def _find_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_find_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_find_key(v, key) for v in value)
    return False


def _check_json(archive: _Archive, entry: _Entry) -> Any:
    where = f"archive entry {entry.name!r}"
    with archive.open(entry) as f:
        raw = _read_bounded(f, MAX_JSON_BYTES, where)
    try:
        doc = json.loads(raw)
        has_auto_map = _find_key(doc, "auto_map")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InvalidSpecError(f"{where}: not valid JSON ({type(e).__name__}: "
                               f"{str(e)[:200]}).") from None
    if has_auto_map:
        raise InvalidSpecError(f"{where}: `auto_map` is refused: it names code to import "
                               "(remote code), and uploads carry none.")
    return doc


def _check_safetensors(archive: _Archive, entry: _Entry) -> None:
    """The header parses: an 8-byte little-endian length, then a JSON object whose tensors
    lie inside the file."""
    where = f"archive entry {entry.name!r}"
    size = entry.size_bytes
    with archive.open(entry) as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidSpecError(f"{where}: not a safetensors file (shorter than its 8-byte "
                                   "header length).")
        n = int.from_bytes(head, "little")
        if n < 2 or n > MAX_SAFETENSORS_HEADER_BYTES or 8 + n > size:
            raise InvalidSpecError(f"{where}: not a safetensors file (header length {n} "
                                   f"does not fit the file of {size} bytes).")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InvalidSpecError(f"{where}: the safetensors header is not JSON "
                               f"({type(e).__name__}).") from None
    if not isinstance(header, dict):
        raise InvalidSpecError(f"{where}: the safetensors header is not a JSON object.")
    body = size - 8 - n
    for tensor, meta in header.items():
        if tensor == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        ok = (isinstance(meta, dict) and isinstance(meta.get("dtype"), str)
              and isinstance(meta.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in meta["shape"])
              and isinstance(offsets, list) and len(offsets) == 2
              and all(isinstance(o, int) for o in offsets)
              and 0 <= offsets[0] <= offsets[1] <= body)
        if not ok:
            raise InvalidSpecError(f"{where}: the safetensors header entry of tensor "
                                   f"{tensor!r} is malformed or points outside the file.")


def _check_contents(archive: _Archive, files: dict[str, _Entry]) -> None:
    for name, entry in files.items():
        if name.endswith(".json"):
            doc = _check_json(archive, entry)
            if name == "config.json" and not isinstance(doc, dict):
                raise InvalidSpecError(f"archive entry {entry.name!r}: config.json must be a "
                                       "JSON object.")
            if name == INDEX_FILE:
                _check_index(entry, doc, files)
        elif name.endswith(".safetensors"):
            _check_safetensors(archive, entry)


def _check_index(entry: _Entry, doc: Any, files: dict[str, _Entry]) -> None:
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise InvalidSpecError(f"archive entry {entry.name!r}: `weight_map` is missing.")
    for shard in set(weight_map.values()):
        if not isinstance(shard, str) or shard not in files:
            raise InvalidSpecError(f"archive entry {entry.name!r}: `weight_map` names "
                                   f"{shard!r}, which the archive does not hold.")


def _check_data(path: Path, filename: str, max_bytes: int) -> str:
    """The suffix the data file is stored with, after checking its content."""
    where = f"data file {filename!r}"
    suffix = Path(filename).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise InvalidSpecError(f"{where}: a pickle file is refused (unpickling runs code); "
                               f"use {', '.join(DATA_SUFFIXES)}.")
    if suffix not in DATA_SUFFIXES:
        raise InvalidSpecError(f"{where}: calibration data must be "
                               f"{', '.join(DATA_SUFFIXES)} (text, JSON lines, a NumPy array), "
                               f"got {suffix or 'no suffix'!r}.")
    size = path.stat().st_size
    if size > max_bytes:
        raise InvalidSpecError(f"{where}: {size} bytes, more than the limit of {max_bytes}.")
    if size == 0:
        raise InvalidSpecError(f"{where}: empty.")
    if suffix == ".npy":
        _check_npy(path, where, size)
        return suffix
    with open(path, encoding="utf-8", newline="") as f:
        try:
            for number, line in enumerate(f, 1):
                if suffix == ".jsonl" and line.strip():
                    try:
                        json.loads(line)
                    except (json.JSONDecodeError, RecursionError) as e:
                        raise InvalidSpecError(f"{where}: line {number} is not JSON "
                                               f"({type(e).__name__}).") from None
        except UnicodeDecodeError as e:
            raise InvalidSpecError(f"{where}: not UTF-8 text ({e.reason}).") from None
    return suffix


def _check_npy(path: Path, where: str, size: int) -> None:
    import numpy as np
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = npy.read_array_header_2_0(f)
            else:
                raise ValueError(f"format version {version} is not read here")
            offset = f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise InvalidSpecError(f"{where}: not a NumPy .npy file ({str(e)[:200]}).") from None
    if dtype.hasobject:
        raise InvalidSpecError(f"{where}: an object array is refused (it needs pickle).")
    if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
        raise InvalidSpecError(f"{where}: the array's shape {shape} and dtype {dtype} do not "
                               f"match the file's size.")


def _extract(archive: _Archive, files: dict[str, _Entry], folder: Path) -> int:
    """Writes each file under `folder` (flat), holding it to its declared size."""
    folder.mkdir()
    total = 0
    for name, entry in files.items():
        written = 0
        with archive.open(entry) as src, open(folder / name, "xb") as dst:
            while chunk := _read_chunk(src, entry):
                written += len(chunk)
                if written > entry.size_bytes:
                    raise InvalidSpecError(f"archive entry {entry.name!r}: more bytes than its "
                                           f"declared size of {entry.size_bytes}.")
                dst.write(chunk)
        if written != entry.size_bytes:
            raise InvalidSpecError(f"archive entry {entry.name!r}: {written} bytes, not its "
                                   f"declared size of {entry.size_bytes}.")
        total += written
    return total


def _read_chunk(src: IO[bytes], entry: _Entry) -> bytes:
    try:
        return src.read(_CHUNK)
    except OSError as e:  # a damaged archive (the writes' errors are the disk's)
        raise InvalidSpecError(f"archive entry {entry.name!r} cannot be read "
                               f"({type(e).__name__}: {str(e)[:200]}).") from None


@contextmanager
def _reading_archive(*, writing: bool = False) -> Iterator[None]:
    """Turns what a damaged archive raises while it is read into `InvalidSpecError`; an
    `OSError` too, unless files are being written (then it is the disk's)."""
    damaged: tuple[type[BaseException], ...] = (
        tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError,
        gzip.BadGzipFile, NotImplementedError, ValueError)
    if not writing:
        damaged += (OSError,)
    try:
        yield
    except InvalidSpecError:
        raise
    except damaged as e:
        raise InvalidSpecError(f"archive: cannot be read ({type(e).__name__}: "
                               f"{str(e)[:200]}).") from None


class CheckedArchive:
    """An archive that passed every rule; `extract` writes its files, `close` releases it.

    Args:
        path: The archive.
        max_bytes: Limit on the unpacked files (and on the archive itself).
        max_entries: Limit on the archive's entries.
        max_ratio: Limit on unpacked / packed bytes (past 1 MiB).

    Raises:
        InvalidSpecError: A rule broken (the entry and the rule are named).
    """

    def __init__(self, path: Path, *, max_bytes: int, max_entries: int = MAX_ENTRIES,
                 max_ratio: float = MAX_RATIO) -> None:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidSpecError(f"archive: {size} bytes, more than the limit of "
                                   f"{max_bytes}.")
        with _reading_archive():
            self._archive = _Archive(path, max_entries=max_entries, max_bytes=max_bytes)
        try:
            with _reading_archive():
                self.files = _check_entries(self._archive, max_bytes=max_bytes,
                                            archive_bytes=size, max_ratio=max_ratio)
                _check_contents(self._archive, self.files)
        except BaseException:
            self.close()
            raise

    @property
    def size_bytes(self) -> int:
        """The unpacked size of its files."""
        return sum(e.size_bytes for e in self.files.values())

    def extract(self, folder: Path) -> int:
        """Writes the files into the new folder `folder`, flat (the common folder dropped),
        each held to its declared size; returns the bytes written."""
        with _reading_archive(writing=True):
            return _extract(self._archive, self.files, folder)

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> CheckedArchive:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def check_data_file(path: Path, filename: str, max_bytes: int) -> str:
    """The suffix a calibration data file is stored with (.txt, .jsonl, .npy), after
    checking its content: UTF-8 text, a JSON document per line, or an .npy array without
    objects. `filename` is the name the client gave it (its suffix says its kind).

    Raises:
        InvalidSpecError: Naming the file and the rule it broke.
    """
    return _check_data(path, filename, max_bytes)


__all__ = ["CHECKPOINT_FILES", "DATA_SUFFIXES", "PICKLE_SUFFIXES", "CheckedArchive",
           "check_data_file"]
