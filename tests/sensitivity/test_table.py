"""`allocator.sensitivity/1`: saved byte for byte as loaded, bad documents named."""

from __future__ import annotations

import copy
import json

import pytest

from engine import InvalidSpecError
from sensitivity import LayerSensitivity, SensitivityTable


def _table() -> SensitivityTable:
    layers = {
        "conv1": LayerSensitivity({2: 0.5, 4: 0.01, 8: 1e-5}, trace=12.5, std_error=0.25,
                                  probes=16, stop_reason="converged", params=288),
        "fc": LayerSensitivity({2: 0.2, 4: 0.0, 8: 0.0}, trace=-0.5, probes=256,
                               stop_reason="max_probes", params=640,
                               flags=("negative_trace",), extra={"note": [1, 2]}),
    }
    return SensitivityTable(layers, (2, 4, 8), "hutchinson", 0, "toy",
                            {"rounding": "gptq", "group_size": 128}, 1.5, 1700000000.25)


def test_save_load_save_is_byte_identical(tmp_path):
    _table().save(tmp_path / "a.json")
    SensitivityTable.load(tmp_path / "a.json").save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_loaded_table_equals_the_saved_one(tmp_path):
    table = _table()
    table.save(tmp_path / "a.json")
    assert SensitivityTable.load(tmp_path / "a.json") == table


@pytest.mark.parametrize(("path", "value", "message"), [
    (("layers", "fc", "omega", "2"), None, "`layers.fc.omega.2`"),
    (("layers", "fc", "omega", "2"), -0.1, "`layers.fc.omega.2`"),
    (("layers", "fc", "probes"), -1, "`layers.fc.probes`"),
    (("layers", "fc", "stop_reason"), "bored", "`layers.fc.stop_reason`"),
    (("bits",), [1, 4, 8], r"`bits\[0\]`"),
    (("format",), "allocator.sensitivity/2", "`format`"),
    (("layers",), {}, "`layers`"),
])
def test_bad_fields_are_named(path, value, message):
    data = json.loads(json.dumps(_table().to_dict()))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(InvalidSpecError, match=message):
        SensitivityTable.from_dict(data)


@pytest.mark.parametrize("key", ["layers", "bits", "estimator", "format"])
def test_missing_required_fields_are_named(key):
    data = _table().to_dict()
    del data[key]
    with pytest.raises(InvalidSpecError, match=f"`{key}` is missing"):
        SensitivityTable.from_dict(data)


def test_a_layer_without_omega_at_every_bit_width_is_refused():
    data = copy.deepcopy(_table().to_dict())
    del data["layers"]["conv1"]["omega"]["4"]
    with pytest.raises(InvalidSpecError, match=r"`layers\['conv1'\].omega` has no value for "
                                               r"bits \[4\]"):
        SensitivityTable.from_dict(data)


def test_unreadable_files_are_invalid_specs(tmp_path):
    (tmp_path / "t.json").write_text("{broken")
    with pytest.raises(InvalidSpecError, match="not valid JSON"):
        SensitivityTable.load(tmp_path / "t.json")
    with pytest.raises(InvalidSpecError, match="cannot read"):
        SensitivityTable.load(tmp_path / "missing.json")


def test_tables_written_before_the_seconds_rename_still_read(tmp_path):
    data = _table().to_dict()
    data["seconds"] = data.pop("elapsed_s")
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert SensitivityTable.load(tmp_path / "old.json").elapsed_s == 1.5
