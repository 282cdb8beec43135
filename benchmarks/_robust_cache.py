"""Corrupt cached sensitivity tables for `benchmarks.robustness`.

A user model (`allocator.testing:TinyMLP` on seeded inputs) gets its Hutchinson table
computed cold into a temporary `ALLOCATOR_DATA_DIR`; then, many times over, the cache folder
is restored to that state, one seeded corruption is applied (truncation, flipped bytes,
invalid UTF-8, negated / swapped / scaled Ω, a dropped or added layer, nulls, NaN, a
directory at the path, another key's table with or without its sidecar, an edited sidecar,
...), and `sensitivity.estimate` runs again through the public API. It must return exactly
the cold Ω or raise a named `AllocatorError`; any other answer or exception is counted in
`wrong_answers_from_corrupt_cache`. Stray `.tmp` files and corrupt files deleted instead of
moved aside are reported too.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._robust_common import Tally, log, short

MODEL = "allocator.testing:TinyMLP"
BITS = (2, 4, 8)
OPTIONS = {"min_probes": 2, "max_probes": 4}  # a cheap table: each rerun may recompute it


@dataclass
class Pristine:
    """The cache folder's files after the cold run, and tables of other keys."""

    folder: Path
    table: Path
    files: dict[str, bytes]  # name -> bytes, the whole folder
    other_key: dict[str, bytes]  # the same model's table and sidecar for another seed

    @property
    def sidecars(self) -> list[str]:
        return [n for n in self.files if n != self.table.name and not n.startswith(".")]


def _mutate_json(path: Path, edit: Callable[[dict[str, Any], random.Random], Any],
                 rng: random.Random) -> str:
    doc = json.loads(path.read_text())
    what = edit(doc, rng)
    path.write_text(json.dumps(doc, indent=1, allow_nan=True))
    return str(what)


def _omega_cells(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(layer, bits) for layer, row in doc["layers"].items() for bits in row["omega"]]


def _negate(doc, rng):
    layer, bits = rng.choice(_omega_cells(doc))
    doc["layers"][layer]["omega"][bits] = -abs(doc["layers"][layer]["omega"][bits]) - 1e-3
    return f"omega[{layer}][{bits}] negated"


def _swap(doc, rng):
    (la, ba), (lb, bb) = rng.sample(_omega_cells(doc), 2)
    oa, ob = doc["layers"][la]["omega"], doc["layers"][lb]["omega"]
    oa[ba], ob[bb] = ob[bb], oa[ba]
    return f"swapped omega[{la}][{ba}] and omega[{lb}][{bb}]"


def _scale(doc, rng):
    layer, bits = rng.choice(_omega_cells(doc))
    factor = rng.choice([0.5, 2.0, 10.0, 1e-6, 1.0000001])
    doc["layers"][layer]["omega"][bits] *= factor
    return f"omega[{layer}][{bits}] x {factor}"


def _set_cell(value: Any) -> Callable[[dict, random.Random], str]:
    def edit(doc, rng):
        layer, bits = rng.choice(_omega_cells(doc))
        doc["layers"][layer]["omega"][bits] = value
        return f"omega[{layer}][{bits}] = {value!r}"
    return edit


def _drop_layer(doc, rng):
    name = rng.choice(list(doc["layers"]))
    del doc["layers"][name]
    return f"layer {name} dropped"


def _add_layer(doc, rng):
    name = rng.choice(list(doc["layers"]))
    doc["layers"]["extra"] = json.loads(json.dumps(doc["layers"][name]))
    return "layer 'extra' added"


def _rename_layer(doc, rng):
    name = rng.choice(list(doc["layers"]))
    doc["layers"][name + "_x"] = doc["layers"].pop(name)
    return f"layer {name} renamed"


def _drop_bits(doc, rng):
    layer, bits = rng.choice(_omega_cells(doc))
    del doc["layers"][layer]["omega"][bits]
    return f"omega[{layer}][{bits}] removed"


def _set_top(key: str, value: Any) -> Callable[[dict, random.Random], str]:
    def edit(doc, rng):
        doc[key] = value
        return f"{key} = {short(value, 40)}"
    return edit


def _set_trace(doc, rng):
    layer = rng.choice(list(doc["layers"]))
    doc["layers"][layer]["trace"] = -1.0
    return f"trace of {layer} = -1"


def _bytes_edit(kind: str) -> Callable[[Path, random.Random], str]:
    def edit(path: Path, rng: random.Random) -> str:
        data = bytearray(path.read_bytes())
        if kind == "truncate":
            at = rng.randrange(len(data))
            path.write_bytes(bytes(data[:at]))
            return f"truncated at {at}/{len(data)}"
        if kind == "flip":
            at = rng.randrange(len(data))
            data[at] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            return f"bit flipped at byte {at}"
        if kind == "flip-digit":
            digits = [i for i, c in enumerate(data) if chr(c).isdigit()]
            at = rng.choice(digits)
            data[at] = ord(str((int(chr(data[at])) + rng.randrange(1, 10)) % 10))
            path.write_bytes(bytes(data))
            return f"digit changed at byte {at}"
        if kind == "utf8":
            at = rng.randrange(len(data))
            data[at:at] = b"\xff\xfe\xc3"
            path.write_bytes(bytes(data))
            return f"invalid UTF-8 at byte {at}"
        if kind == "empty":
            path.write_bytes(b"")
            return "emptied"
        if kind == "bom":
            path.write_bytes(b"\xef\xbb\xbf" + bytes(data))
            return "UTF-8 BOM prepended"
        if kind == "whitespace":
            path.write_bytes(bytes(data) + b"\n\n ")
            return "whitespace appended"
        if kind == "nul":
            path.write_bytes(b"\x00" * len(data))
            return "zeroed"
        if kind == "deep":
            path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
            return "100000 nested arrays"
        if kind == "duplicate-key":
            text = bytes(data).decode()
            path.write_text(text.replace("{", '{"layers": {},', 1))
            return "duplicate 'layers' key"
        raise ValueError(kind)
    return edit


JSON_EDITS: list[tuple[str, Callable[[dict, random.Random], Any]]] = [
    ("negate", _negate), ("swap", _swap), ("scale", _scale), ("null", _set_cell(None)),
    ("string", _set_cell("0.1")), ("nan", _set_cell(float("nan"))),
    ("inf", _set_cell(float("inf"))), ("1e308", _set_cell(1e308)), ("zero", _set_cell(0.0)),
    ("list", _set_cell([0.1])), ("drop-layer", _drop_layer), ("add-layer", _add_layer),
    ("rename-layer", _rename_layer), ("drop-bits", _drop_bits),
    ("layers-empty", _set_top("layers", {})), ("layers-list", _set_top("layers", [])),
    ("format", _set_top("format", "allocator.sensitivity/9")),
    ("model", _set_top("model", "digits-cnn")), ("seed", _set_top("seed", 1)),
    ("estimator", _set_top("estimator", "measured")), ("bits", _set_top("bits", [2, 4])),
    ("config", _set_top("config", {})), ("trace", _set_trace),
]
BYTE_EDITS = ["truncate", "flip", "flip-digit", "utf8", "empty", "bom", "whitespace", "nul",
              "deep", "duplicate-key"]


def _corrupt(p: Pristine, rng: random.Random) -> str:
    """Applies one seeded corruption to the cache folder; says what it did."""
    choice = rng.random()
    table = p.table
    sidecar = p.folder / p.sidecars[0] if p.sidecars else None
    if choice < 0.40:
        name, edit = rng.choice(JSON_EDITS)
        return f"table json {name}: {_mutate_json(table, edit, rng)}"
    if choice < 0.65:
        kind = rng.choice(BYTE_EDITS)
        return f"table bytes {kind}: {_bytes_edit(kind)(table, rng)}"
    if choice < 0.72:
        table.unlink()
        table.mkdir()
        (table / "x").write_text("{}")
        return "a directory at the table's path"
    if choice < 0.77 and p.other_key:
        for name, data in p.other_key.items():
            is_side = not name.endswith(".json")
            if is_side and rng.random() < 0.5:
                continue
            target = (sidecar if is_side and sidecar else table)
            target.write_bytes(data)
        return "another seed's table copied over (with or without its sidecar)"
    if choice < 0.80:
        table.unlink()
        table.symlink_to(p.folder.parent / "elsewhere.json")
        (p.folder.parent / "elsewhere.json").write_bytes(p.files[table.name])
        return "table replaced by a symlink to an identical copy"
    if choice < 0.83:
        (p.folder / f".{table.name}.123.0badc0de.tmp").write_bytes(b"{half")
        return "a stray .tmp beside the table"
    if sidecar is None:
        kind = rng.choice(BYTE_EDITS)
        return f"table bytes {kind}: {_bytes_edit(kind)(table, rng)}"
    if choice < 0.88:
        sidecar.unlink()
        return "sidecar deleted"
    if choice < 0.93:
        kind = rng.choice(["truncate", "flip", "flip-digit", "utf8", "empty", "deep"])
        return f"sidecar bytes {kind}: {_bytes_edit(kind)(sidecar, rng)}"
    doc = json.loads(sidecar.read_text())
    key = rng.choice(list(doc))
    doc[key] = rng.choice([None, "x", 0, {"seed": 1}, [], -1])
    sidecar.write_text(json.dumps(doc))
    return f"sidecar field {key!r} = {short(doc[key], 30)}"


def _restore(p: Pristine) -> None:
    for folder in (p.folder, p.folder.parent / "quarantine"):
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)
    p.folder.mkdir(parents=True)
    for name, data in p.files.items():
        (p.folder / name).write_bytes(data)


def _quarantined(data_dir: Path) -> int:
    folder = data_dir / "quarantine"
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def run_cache_corruptions(folder: Path, tally: Tally, rng: random.Random, *, n: int) -> None:
    """`n` seeded corruptions of a cached table, each followed by a rerun judged against the
    cold answer (in this process, with `ALLOCATOR_DATA_DIR` pointed at `folder`)."""
    os.environ["ALLOCATOR_DATA_DIR"] = str(folder)
    import torch

    import sensitivity
    import zoo

    torch.set_num_threads(1)  # a tiny model: more threads only contend on a shared machine

    data = folder.parent / "cache-inputs.npy"
    np.save(data, np.random.RandomState(0).randn(16, 64).astype(np.float32))
    spec = zoo.get_model(MODEL, data=str(data))

    def estimate(seed: int = 0) -> Any:
        return sensitivity.estimate(spec, "hutchinson", bits=BITS, seed=seed, options=OPTIONS)

    cold = estimate().omega()
    if sensitivity.estimate(spec, "hutchinson", bits=BITS, seed=0, options=OPTIONS,
                            use_cache=False).omega() != cold:
        log("  note: the estimator is not bitwise deterministic here; comparing exactly anyway")
    table_dir = folder / "sensitivity"
    files = {f.name: f.read_bytes() for f in table_dir.iterdir() if f.is_file()}
    table = next(table_dir / n for n in files if n.endswith(".json"))
    estimate(seed=1)  # another key's table and sidecar, for the swap corruptions
    other = {f.name: f.read_bytes() for f in table_dir.iterdir()
             if f.is_file() and f.name not in files}
    other_key = {("t.json" if name.endswith(".json") else "t.sidecar"): data
                 for name, data in other.items()}
    pristine = Pristine(table_dir, table, files, other_key)
    log(f"  cold table {table.name}; sidecars: {pristine.sidecars or 'none'}")
    logging.disable(logging.WARNING)  # one quarantine line per corruption: the failures matter
    try:
        _corruptions(pristine, folder, tally, rng, n, estimate, cold)
    finally:
        logging.disable(logging.NOTSET)


def _corruptions(pristine: Pristine, folder: Path, tally: Tally, rng: random.Random, n: int,
                 estimate: Callable[[], Any], cold: Any) -> None:
    from engine import AllocatorError

    table, table_dir, files = pristine.table, pristine.folder, pristine.files
    for i in range(n):
        _restore(pristine)
        what = _corrupt(pristine, rng)
        corrupted = table.read_bytes() if table.is_file() and not table.is_symlink() else None
        before = _quarantined(folder)
        tally.add("cache_corruptions_tried")
        tally.add("bad_inputs_tried")
        where = f"sensitivity.estimate (corruption {i})"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                answer = estimate().omega()
        except AllocatorError as e:
            tally.add("cache_named_errors")
            log(f"  named error after {what}: {type(e).__name__}: {short(str(e), 120)}")
            continue
        except Exception as e:  # noqa: BLE001  (an unnamed error is a failure to report)
            tally.fail("wrong_answers_from_corrupt_cache", where, what,
                       f"unnamed error {type(e).__name__}: {short(str(e), 160)}")
            continue
        if answer != cold:
            diff = [(layer, b) for layer in set(cold) | set(answer)
                    for b in set(cold.get(layer, {})) | set(answer.get(layer, {}))
                    if cold.get(layer, {}).get(b) != answer.get(layer, {}).get(b)]
            tally.fail("wrong_answers_from_corrupt_cache", where, what,
                       f"returned a different table as success ({len(diff)} cells differ, "
                       f"e.g. {diff[:2]})")
            continue
        leftovers = [f.name for f in table_dir.iterdir() if f.name.endswith(".tmp")]
        if leftovers:
            tally.fail("cache_tmp_left", where, what, f"stray files left: {leftovers}")
        recomputed = table.is_file() and table.read_bytes() != corrupted
        if corrupted is not None and corrupted != files[table.name] and recomputed \
                and _quarantined(folder) <= before:
            tally.fail("cache_not_quarantined", where, what,
                       "the corrupt file was replaced without a copy in quarantine/")
