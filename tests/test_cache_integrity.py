"""Caches are never trusted blindly (issue 18): every cached table and trained weights file
carries a checksum sidecar and its key; whatever fails verification or validation is moved
to `quarantine/` (never deleted), warned about and recomputed; a corrupt cache never yields
another answer reported as success."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
import sensitivity
from engine import CacheError, CacheQuarantineWarning, sidecar_path
from tests.zoo.conftest import need

OPTS = {"max_probes": 8, "min_probes": 4, "probes_per_batch": 4, "rounding": "rtn"}
BITS = (2, 4, 8)


def _quarantined(root: Path) -> list[str]:
    folder = root / "quarantine"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _tmp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _resign(path: Path, *, device: dict | None = None) -> None:
    """Rewrites the sidecar's checksum to match the edited file, as someone editing both
    would: only validation can refuse the file then. With `device` (a latency table's), the
    key records that device, as if the table had been profiled on it."""
    data = path.read_bytes()
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    meta["sha256"], meta["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    if device is not None:
        from hwprofiles import DeviceFingerprint

        fields = {k: v for k, v in device.items() if k in DeviceFingerprint.__dataclass_fields__}
        meta["key"]["device"] = engine.canonical_key(DeviceFingerprint(**fields).identity())
    side.write_text(json.dumps(meta))


# -- the cache files themselves (no torch work) --------------------------------------------

def _parse_ints(data: bytes) -> list[int]:
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, list) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise engine.InvalidSpecError(f"not a list of integers >= 0: {value!r}")
    return value


def test_store_then_load_is_a_hit_with_a_sidecar(tmp_path):
    path = tmp_path / "things" / "a.json"
    engine.store_cached(path, b"[1, 2, 3]", {"k": (1, 2)}, what="thing")
    side = json.loads(sidecar_path(path).read_text())
    assert side["format"] == "allocator.cache/1"
    assert side["sha256"] == hashlib.sha256(b"[1, 2, 3]").hexdigest()
    assert side["key"] == {"k": [1, 2]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert engine.load_cached(path, {"k": [1, 2]}, _parse_ints, what="thing") == [1, 2, 3]
    assert engine.load_cached(tmp_path / "things" / "b.json", {}, _parse_ints,
                              what="thing") is None
    assert _tmp_files(path.parent) == []


@pytest.mark.parametrize("damage, reason", [
    ("edit", "checksum-mismatch"),
    ("no-sidecar", "no-checksum"),
    ("other-key", "key-mismatch"),
    ("garbage-sidecar", "bad-checksum-file"),
    ("resigned-invalid", "invalid"),
    ("directory", "not-a-file"),
])
def test_failed_entry_is_moved_aside_warned_and_a_miss(tmp_path, damage, reason, caplog):
    path = tmp_path / "things" / "a.json"
    engine.store_cached(path, b"[1, 2, 3]", {"k": 1}, what="thing")
    key = {"k": 1}
    if damage == "edit":
        path.write_bytes(b"[1, 2, 4]")
    elif damage == "no-sidecar":
        sidecar_path(path).unlink()
    elif damage == "other-key":
        key = {"k": 2}
    elif damage == "garbage-sidecar":
        sidecar_path(path).write_bytes(b"\xff\x00 not json")
    elif damage == "resigned-invalid":
        path.write_bytes(b"[1, -2, 3]")
        _resign(path)
    elif damage == "directory":
        path.unlink()
        path.mkdir()
        (path / "x").write_text("x")
    with pytest.warns(CacheQuarantineWarning, match="corrupt"):
        assert engine.load_cached(path, key, _parse_ints, what="thing") is None
    assert not path.exists() and not sidecar_path(path).exists()
    moved = _quarantined(tmp_path)
    assert moved and all(name.endswith("." + reason) for name in moved)
    assert any(reason in r.getMessage() or "corrupt" in r.getMessage() for r in caplog.records)
    engine.store_cached(path, b"[7]", key, what="thing")  # and the place is usable again
    assert engine.load_cached(path, key, _parse_ints, what="thing") == [7]


def test_leftover_tmp_is_moved_aside_and_the_entry_still_served(tmp_path):
    path = tmp_path / "things" / "a.json"
    engine.store_cached(path, b"[5]", {"k": 1}, what="thing")
    leftover = path.with_name(f".{path.name}.99999.dead.tmp")
    leftover.write_bytes(b"[5")
    with pytest.warns(CacheQuarantineWarning, match="interrupted write"):
        assert engine.load_cached(path, {"k": 1}, _parse_ints, what="thing") == [5]
    assert _tmp_files(path.parent) == []
    assert [n for n in _quarantined(tmp_path) if n.endswith(".leftover-tmp")]


def test_atomic_write_over_a_directory_fails_and_leaves_no_tmp(tmp_path):
    target = tmp_path / "t.json"
    target.mkdir()
    with pytest.raises(IsADirectoryError):
        engine.atomic_write_bytes(target, b"{}")
    assert _tmp_files(tmp_path) == []


def test_what_cannot_be_moved_aside_is_a_named_cache_error(tmp_path):
    path = tmp_path / "things" / "a.json"
    engine.store_cached(path, b"[1]", {"k": 1}, what="thing")
    path.write_bytes(b"[2]")
    (tmp_path / "quarantine").write_text("a file where the quarantine folder should be")
    with pytest.raises(CacheError, match="cannot be moved"):
        engine.load_cached(path, {"k": 1}, _parse_ints, what="thing")
    assert path.read_bytes() == b"[2]"  # left in place, not deleted, not used


# -- sensitivity tables ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """The cold run: its table and the pristine bytes of its cache file and sidecar."""
    spec = need("digits-mlp")
    spec.build()  # trained weights from the shared data dir (training is the slow part)
    root = tmp_path_factory.mktemp("cold")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALLOCATOR_DATA_DIR", str(root))
        table = sensitivity.estimate(spec, "hutchinson", bits=BITS, seed=0, options=OPTS)
    (path,) = (root / "sensitivity").glob("*.json")
    return spec, table, path.name, path.read_bytes(), sidecar_path(path).read_bytes()


def _seeded(cold, root: Path) -> Path:
    """A data dir at `root` holding the cold run's cache entry; returns the table's path."""
    _, _, name, data, side = cold
    path = root / "sensitivity" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    sidecar_path(path).write_bytes(side)
    return path


def _estimate(spec):
    return sensitivity.estimate(spec, "hutchinson", bits=BITS, seed=0, options=OPTS)


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1))


def _cells(doc):
    return [(n, b) for n, layer in sorted(doc["layers"].items()) for b in sorted(layer["omega"])]


def _negate(doc, where):
    n, b = _cells(doc)[int(where * len(_cells(doc)))]
    doc["layers"][n]["omega"][b] = -abs(doc["layers"][n]["omega"][b]) - 1e-3


def _swap(doc, where):
    cells = _cells(doc)
    i = int(where * len(cells))
    (n1, b1), (n2, b2) = cells[i], cells[(i + 1) % len(cells)]
    o1, o2 = doc["layers"][n1]["omega"], doc["layers"][n2]["omega"]
    o1[b1], o2[b2] = o2[b2], o1[b1] + 1.0  # + 1: a swap of equal values still changes


def _drop(doc, where):
    names = sorted(doc["layers"])
    del doc["layers"][names[int(where * len(names))]]


def _null(doc, where):
    n, b = _cells(doc)[int(where * len(_cells(doc)))]
    doc["layers"][n]["omega"][b] = None


EDITS = {
    "negate": _negate,
    "swap": _swap,
    "drop-layer": _drop,
    "empty-layers": lambda doc, where: doc.update(layers={}),
    "null-omega": _null,
    "other-seed": lambda doc, where: doc.update(seed=1 + int(where * 100)),
    "other-model": lambda doc, where: doc.update(model="digits-cnn"),
    "other-bits": lambda doc, where: doc.update(bits=[2, 4]),
}
BYTE_DAMAGE = ("truncate", "flip", "invalid-utf8")
OTHER = ("directory", "no-sidecar", "foreign-key", "leftover-tmp")
# A re-signed swap (or a re-signed byte flip inside a number) is out of reach of any check:
# a checksum is not a signature. Every other edit must be refused even with the sidecar
# rewritten to match.
RESIGNABLE = {"negate", "drop-layer", "empty-layers", "null-omega", "other-seed",
              "other-model", "other-bits", "truncate", "invalid-utf8"}


def _corrupt(path: Path, kind: str, where: float, byte: int, resign: bool) -> None:
    data = path.read_bytes()
    at = int(where * len(data))
    if kind in EDITS:
        _edit(path, lambda doc: EDITS[kind](doc, where))
    elif kind == "truncate":
        path.write_bytes(data[:at])
    elif kind == "flip":
        path.write_bytes(data[:at] + bytes([data[at] ^ byte]) + data[at + 1:])
    elif kind == "invalid-utf8":
        path.write_bytes(data[:at] + bytes([0x80 | (byte & 0x3F), 0xFF]) + data[at:])
    elif kind == "directory":
        path.unlink()
        path.mkdir()
        (path / "inside.json").write_bytes(data)
    elif kind == "no-sidecar":
        sidecar_path(path).unlink()
    elif kind == "foreign-key":
        side = json.loads(sidecar_path(path).read_text())
        side["key"]["seed"] = 1 + int(where * 100)
        sidecar_path(path).write_text(json.dumps(side))
    elif kind == "leftover-tmp":
        path.with_name(f".{path.name}.{byte}.x.tmp").write_bytes(data[:at])
    if resign and kind in RESIGNABLE:
        _resign(path)


def _check_corruption(cold, kind: str, where: float, byte: int, resign: bool) -> None:
    spec, table, _, _, _ = cold
    root = Path(tempfile.mkdtemp(prefix="corrupt-"))
    path = _seeded(cold, root)
    _corrupt(path, kind, where, byte, resign)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALLOCATOR_DATA_DIR", str(root))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheQuarantineWarning)
            try:
                got = _estimate(spec)
            except CacheError:
                return  # a named refusal is allowed; a different answer is not
        assert got.omega() == table.omega(), f"{kind} (resigned={resign}) changed Ω"
        assert _tmp_files(path.parent) == []
        if got.created != table.created:  # recomputed: the bad entry was moved, not deleted
            assert _quarantined(root)
        with warnings.catch_warnings():  # the repaired cache is trusted again
            warnings.simplefilter("error", CacheQuarantineWarning)
            again = _estimate(spec)
        assert again.created == got.created and again.omega() == table.omega()


corruptions = st.tuples(
    st.sampled_from(sorted(EDITS) + list(BYTE_DAMAGE) + list(OTHER)),
    st.floats(0, 1, exclude_max=True), st.integers(1, 255), st.booleans())


@settings(max_examples=15, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(corruptions)
def test_corrupt_sensitivity_cache_recomputes_or_refuses_never_other_omega(cold, corruption):
    _check_corruption(cold, *corruption)


@pytest.mark.slow  # 200 corruptions, most of them recompute the table
@settings(max_examples=200, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(corruptions)
def test_corrupt_sensitivity_cache_many(cold, corruption):
    _check_corruption(cold, *corruption)


@pytest.mark.parametrize("kind", ["negate", "swap"])
def test_negative_or_swapped_omega_is_recomputed_with_a_warning(cold, tmp_path, monkeypatch,
                                                                kind):
    spec, table, _, _, _ = cold
    path = _seeded(cold, tmp_path)
    _corrupt(path, kind, 0.4, 1, resign=kind == "negate")
    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(tmp_path))
    with pytest.warns(CacheQuarantineWarning, match="corrupt"):
        got = _estimate(spec)
    assert got.omega() == table.omega()
    reason = "invalid" if kind == "negate" else "checksum-mismatch"
    assert any(n.startswith(path.name + ".") and n.endswith(reason)
               for n in _quarantined(tmp_path))


def test_table_without_sidecar_is_not_trusted(cold, tmp_path, monkeypatch):
    spec, table, _, _, _ = cold
    path = _seeded(cold, tmp_path)
    sidecar_path(path).unlink()
    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(tmp_path))
    with pytest.warns(CacheQuarantineWarning, match="no checksum file"):
        got = _estimate(spec)
    assert got.created != table.created and got.omega() == table.omega()
    assert path.is_file() and sidecar_path(path).is_file()


def test_check_cache_integrity_counts_no_wrong_answers(tmp_path):
    from sensitivity._integrity import CORRUPTIONS, check_cache_integrity

    spec = need("digits-mlp")
    report = check_cache_integrity(spec, trials=len(CORRUPTIONS), seed=3, bits=BITS,
                                   options=OPTS, scratch_dir=tmp_path)
    assert report.trials == len(CORRUPTIONS)
    assert report.wrong_answers == 0 and report.stray_tmp == 0
    assert report.other_errors == ()
    assert report.recomputed >= 1


# -- latency tables ----------------------------------------------------------------------------

class _TinySpec:
    """The smallest model `profile_model` takes: three linears, a batch of 8."""

    name = "tiny-mlp"
    skip_layers = ()

    def __init__(self):
        from allocator.testing import TinyMLP, gaussian

        torch.manual_seed(0)
        self.model = TinyMLP().eval()
        self.x = gaussian(8, 64, seed=2)

    def build(self):
        return self.model

    def latency_batch(self):
        return self.x


def _profile(spec):
    import allocator

    return allocator.profile_model(spec, (4, 8), inputs=spec.latency_batch(), repeats=2,
                                   reuse=True)


@pytest.fixture
def profiled(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(tmp_path))
    spec = _TinySpec()
    first = _profile(spec)
    assert first.profiled_now and sidecar_path(first.path).is_file()
    return spec, first


def test_intact_latency_table_is_reused(profiled):
    spec, first = profiled
    _resign(first.path, device=json.loads(first.path.read_text())["device"])  # the same device
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheQuarantineWarning)
        again = _profile(spec)
    assert not again.profiled_now and again.table == first.table
    device = first.table.device
    assert device.engine_version == engine.ENGINE_VERSION
    assert {"vnni", "fbgemm_max_code"} <= set(dict(device.int8_paths))


@pytest.mark.parametrize("damage", ["edit", "no-sidecar", "resigned-other-batch",
                                    "directory", "other-cpu", "other-int8-paths",
                                    "older-engine"])
def test_bad_latency_table_is_moved_aside_and_profiled_anew(profiled, tmp_path, damage):
    spec, first = profiled
    path = first.path
    doc = json.loads(path.read_text())
    if damage == "edit":  # times divided by 100: would make every layer look cheap
        for entry in doc["entries"].values():
            for m in entry["times"].values():
                m["p50_us"] /= 100
        path.write_text(json.dumps(doc))
    elif damage == "no-sidecar":
        sidecar_path(path).unlink()
    elif damage == "resigned-other-batch":
        doc["batch"] = 16
        path.write_text(json.dumps(doc))
        _resign(path)
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    elif damage in ("other-cpu", "other-int8-paths", "older-engine"):
        # profiled on another CPU (same name: an AVX2-only EPYC and an AVX-512 one), with
        # other int8 kernel paths, or by an engine that did not record them: re-signed as
        # if profiled there, so only the device tells it apart
        device = dict(doc["device"])
        if damage == "other-cpu":
            device["isa_flags"] = [f for f in device["isa_flags"]
                                   if not f.startswith(("avx512", "avx_vnni", "amx"))]
            device["isa_flags"] = device["isa_flags"] + ["sve"]
        elif damage == "other-int8-paths":
            device["int8_paths"] = dict(device["int8_paths"], fbgemm_max_code=-1)
        else:
            device.pop("int8_paths")
            device.pop("engine_version")
        doc["device"] = device
        path.write_text(json.dumps(doc))
        _resign(path, device=device)
    with pytest.warns(CacheQuarantineWarning, match="latency table"):
        again = _profile(spec)
    assert again.profiled_now and again.table.batch == 8
    assert [n for n in _quarantined(tmp_path) if n.startswith(path.name + ".")]
    assert path.is_file() and sidecar_path(path).is_file()
    assert _tmp_files(path.parent) == []


def test_imported_table_is_accepted_and_load_profile_refuses_a_mismatch(profiled, tmp_path):
    from hwprofiles import import_profile, load_profile

    spec, first = profiled
    outside = tmp_path / "measured-elsewhere.json"
    first.table.save(outside)
    first.path.unlink()
    sidecar_path(first.path).unlink()
    import_profile(outside, first.name)  # imported on purpose under the pipeline's name
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheQuarantineWarning)
        again = _profile(spec)
    assert not again.profiled_now and again.table == first.table
    assert load_profile(first.name) == first.table
    first.path.write_text(first.path.read_text().replace('"batch": 8', '"batch": 9'))
    with pytest.raises(engine.InvalidSpecError, match="checksum"):
        load_profile(first.name)


def test_unusable_partial_file_is_moved_aside(profiled, tmp_path):
    spec, first = profiled
    partial = first.path.with_name(f".{first.name}.partial")
    partial.write_bytes(b"\xff{not a table")
    first.path.unlink()
    with pytest.warns(CacheQuarantineWarning, match="partial"):
        again = _profile(spec)
    assert again.profiled_now and not partial.exists()
    assert [n for n in _quarantined(tmp_path) if n.startswith(partial.name + ".")]


# -- trained digits weights -------------------------------------------------------------------

@pytest.fixture
def quick_recipe(tmp_path, monkeypatch):
    """A one-epoch recipe (its own cache key), so retraining takes a fraction of a second."""
    from zoo import _digits

    need("digits-mlp")
    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(_digits, "RECIPE", {**_digits.RECIPE, "epochs": 1})
    return _digits


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("damage", ["flip", "no-sidecar", "resigned-nan", "resigned-extra",
                                    "directory"])
def test_bad_weights_are_moved_aside_and_retrained_to_the_same_model(quick_recipe, tmp_path,
                                                                      damage):
    from safetensors.torch import load, save

    digits = quick_recipe
    cold = _state(digits.DigitsMLPSpec().build())
    (path,) = (tmp_path / "models").glob("digits-mlp-*.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheQuarantineWarning)
        hit = _state(digits.DigitsMLPSpec().build())
    assert all(torch.equal(hit[k], cold[k]) for k in cold)
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:-7] + bytes([data[-7] ^ 0x40]) + data[-6:])
    elif damage == "no-sidecar":
        sidecar_path(path).unlink()
    elif damage in ("resigned-nan", "resigned-extra"):
        state = load(data)
        if damage == "resigned-nan":
            state["fc1.weight"][0, 0] = float("nan")
        else:
            state["extra"] = torch.zeros(2)
        path.write_bytes(save(state))
        _resign(path)
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    with pytest.warns(CacheQuarantineWarning, match="retraining"):
        rebuilt = _state(digits.DigitsMLPSpec().build())
    assert all(torch.equal(rebuilt[k], cold[k]) for k in cold)
    assert [n for n in _quarantined(tmp_path) if n.startswith(path.name + ".")]
    assert path.is_file() and sidecar_path(path).is_file()
    assert not [n for n in os.listdir(path.parent) if n.endswith(".tmp")]
