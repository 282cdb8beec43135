"""`check_cache_integrity`: corrupts a cached sensitivity table at random, many times, and
counts how often `estimate` then answered with Ω other than the cold run's (must be 0).

What the robustness benchmark reports as `wrong_answers_from_corrupt_cache`. Each trial
restores the cold run's cache file and sidecar, applies one corruption of `CORRUPTIONS`
(chosen by a seeded generator) and calls `estimate` again: the answer must be exactly the
cold table's Ω (served from a cache that was left intact, or recomputed after the corrupt
file was moved to quarantine), or a named `engine.CacheError`. Everything happens in a
scratch folder, never in the user's data dir.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import engine
from sensitivity._estimate import estimate


def _edit_json(path: Path, edit: Callable[[dict[str, Any], random.Random], None],
               rng: random.Random, *, resign: bool) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    edit(doc, rng)
    data = (json.dumps(doc, indent=1) + "\n").encode()
    path.write_bytes(data)
    if resign:  # the sidecar edited to match: only validation can catch it now
        side = engine.sidecar_path(path)
        meta = json.loads(side.read_text(encoding="utf-8"))
        meta["sha256"] = hashlib.sha256(data).hexdigest()
        meta["size_bytes"] = len(data)
        side.write_text(json.dumps(meta))


def _omega_cells(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, b) for name, layer in doc["layers"].items() for b in layer["omega"]]


def _negate(doc: dict[str, Any], rng: random.Random) -> None:
    name, b = rng.choice(_omega_cells(doc))
    doc["layers"][name]["omega"][b] = -abs(doc["layers"][name]["omega"][b]) - 1.0


def _swap(doc: dict[str, Any], rng: random.Random) -> None:
    cells = _omega_cells(doc)
    (n1, b1), (n2, b2) = rng.sample(cells, 2)
    o1, o2 = doc["layers"][n1]["omega"], doc["layers"][n2]["omega"]
    o1[b1], o2[b2] = o2[b2], o1[b1]
    if o1[b1] == o2[b2]:  # equal values: make the edit visible
        o1[b1] = o1[b1] * 2 + 1.0


def _drop_layer(doc: dict[str, Any], rng: random.Random) -> None:
    del doc["layers"][rng.choice(sorted(doc["layers"]))]


def _empty_layers(doc: dict[str, Any], rng: random.Random) -> None:
    doc["layers"] = {}


def _null_omega(doc: dict[str, Any], rng: random.Random) -> None:
    name, b = rng.choice(_omega_cells(doc))
    doc["layers"][name]["omega"][b] = None


def _other_seed(doc: dict[str, Any], rng: random.Random) -> None:
    doc["seed"] = (doc.get("seed") or 0) + 1 + rng.randrange(100)


def _truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data))])


def _flip_byte(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def _invalid_utf8(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    i = rng.randrange(len(data))
    path.write_bytes(data[:i] + b"\xff\xfe" + data[i:])


def _directory(path: Path, rng: random.Random) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside.json").write_text("{}")


def _delete_sidecar(path: Path, rng: random.Random) -> None:
    engine.sidecar_path(path).unlink()


def _foreign_sidecar(path: Path, rng: random.Random) -> None:
    side = engine.sidecar_path(path)
    meta = json.loads(side.read_text(encoding="utf-8"))
    meta["key"]["seed"] = int(meta["key"].get("seed") or 0) + 1
    side.write_text(json.dumps(meta))


def _leftover_tmp(path: Path, rng: random.Random) -> None:
    tmp = path.with_name(f".{path.name}.{rng.randrange(1 << 30)}.dead.tmp")
    tmp.write_bytes(path.read_bytes()[: rng.randrange(1, 64)])


def _json_edit(edit: Callable[[dict[str, Any], random.Random], None], *,
               resign: bool) -> Callable[[Path, random.Random], None]:
    return lambda path, rng: _edit_json(path, edit, rng, resign=resign)


CORRUPTIONS: dict[str, Callable[[Path, random.Random], None]] = {
    "truncate": _truncate,
    "flip-byte": _flip_byte,
    "invalid-utf8": _invalid_utf8,
    "negate-omega": _json_edit(_negate, resign=False),
    "swap-omega": _json_edit(_swap, resign=False),
    "drop-layer": _json_edit(_drop_layer, resign=False),
    "empty-layers": _json_edit(_empty_layers, resign=False),
    "null-omega": _json_edit(_null_omega, resign=False),
    "negate-omega-resigned": _json_edit(_negate, resign=True),
    "drop-layer-resigned": _json_edit(_drop_layer, resign=True),
    "empty-layers-resigned": _json_edit(_empty_layers, resign=True),
    "null-omega-resigned": _json_edit(_null_omega, resign=True),
    "other-seed-resigned": _json_edit(_other_seed, resign=True),
    "directory": _directory,
    "delete-sidecar": _delete_sidecar,
    "foreign-sidecar": _foreign_sidecar,
    "leftover-tmp": _leftover_tmp,
}
"""Corruption name -> what it does to the cache file at a path (seeded by `rng`).
`-resigned` variants also rewrite the sidecar's checksum, as someone editing both would, so
validation alone must refuse them. A swap re-signed this way is out of reach of any check
(a checksum is not a signature) and is not among them."""


@dataclass(frozen=True)
class IntegrityReport:
    """What `check_cache_integrity` found.

    Attributes:
        trials: Corruptions tried.
        wrong_answers: Answers whose Ω differ from the cold run's (must be 0).
        cache_errors: Trials that ended in a named `engine.CacheError` (allowed).
        other_errors: Trials that raised anything else (a bug), as `type: message`.
        recomputed: Trials whose table was computed anew.
        stray_tmp: Trials that left a `.tmp` file in the cache folder (must be 0).
        by_kind: Corruption name -> trials.
    """

    trials: int
    wrong_answers: int
    cache_errors: int
    other_errors: tuple[str, ...]
    recomputed: int
    stray_tmp: int
    by_kind: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "wrong_answers": self.wrong_answers,
                "cache_errors": self.cache_errors, "other_errors": list(self.other_errors),
                "recomputed": self.recomputed, "stray_tmp": self.stray_tmp,
                "by_kind": dict(self.by_kind)}


def _restore(path: Path, pristine: bytes, sidecar: bytes) -> None:
    for p in path.parent.iterdir():
        if p.name.endswith(".tmp"):
            p.unlink()
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    path.write_bytes(pristine)
    engine.sidecar_path(path).write_bytes(sidecar)


def check_cache_integrity(spec: Any, *, trials: int = 200, seed: int = 0,
                          estimator: str = "hutchinson", bits: Sequence[int] = (2, 4, 8),
                          options: Mapping[str, Any] | None = None,
                          kinds: Sequence[str] | None = None,
                          scratch_dir: str | Path | None = None) -> IntegrityReport:
    """Corrupts the cached table of `spec` `trials` times and counts wrong answers.

    Args:
        spec: The model (a small one: each corrupt trial recomputes its table).
        trials: How many corruptions to try.
        seed: Seed of the choice of corruptions and their positions (and of the estimator).
        estimator, bits, options: What `estimate` runs.
        kinds: Corruptions to draw from (default: all of `CORRUPTIONS`).
        scratch_dir: The cache folder's parent (default: a temporary folder, removed after).
    """
    names = list(kinds or CORRUPTIONS)
    unknown = sorted(set(names) - set(CORRUPTIONS))
    if unknown:
        raise engine.InvalidSpecError(f"`kinds` has unknown corruptions {unknown}; known: "
                                      f"{sorted(CORRUPTIONS)}.")
    with tempfile.TemporaryDirectory(prefix="allocator-cache-check-") as tmp:
        root = Path(scratch_dir) if scratch_dir is not None else Path(tmp)
        folder = root / "sensitivity"

        def run() -> Any:
            return estimate(spec, estimator, bits=bits, seed=seed, options=options,
                            cache_dir=folder)

        cold = run()
        (path,) = [p for p in folder.glob("*.json")]
        pristine, sidecar = path.read_bytes(), engine.sidecar_path(path).read_bytes()
        rng = random.Random(seed)
        wrong = errors = recomputed = stray = 0
        others: list[str] = []
        by_kind: dict[str, int] = {}
        for _ in range(trials):
            _restore(path, pristine, sidecar)
            kind = rng.choice(names)
            by_kind[kind] = by_kind.get(kind, 0) + 1
            CORRUPTIONS[kind](path, rng)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", engine.CacheQuarantineWarning)
                    got = run()
            except engine.CacheError:
                errors += 1
                continue
            except Exception as e:  # a bug: counted and reported, the run goes on
                others.append(f"{kind}: {type(e).__name__}: {e}")
                continue
            wrong += got.omega() != cold.omega()
            recomputed += got.created != cold.created
            stray += any(p.name.endswith(".tmp") for p in folder.iterdir())
        return IntegrityReport(trials, wrong, errors, tuple(others), recomputed, stray,
                               by_kind)
