from __future__ import annotations

import json
from dataclasses import fields

import pytest

from engine import (
    BitConfig,
    BitConfigDocument,
    InvalidSpecError,
    LayerSpec,
    UnsupportedBitWidthError,
)


def _layer(**kw):
    base = dict(name="features.0", kind="conv2d", weight_shape=(16, 3, 3, 3), params=432,
                macs=110592, input_shape=(1, 3, 8, 8), output_shape=(1, 16, 8, 8), groups=1,
                stride=(1, 1), padding=(1, 1))
    base.update(kw)
    return LayerSpec(**base)


def test_layerspec_json_round_trip():
    spec = _layer()
    again = LayerSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.in_features == 27
    assert "g1" in again.shape_signature


def test_layerspec_rejects_bad_kind_and_unknown_field():
    with pytest.raises(InvalidSpecError, match="`kind`"):
        _layer(kind="lstm")
    with pytest.raises(InvalidSpecError, match="unknown LayerSpec field"):
        LayerSpec.from_dict({**_layer().to_dict(), "colour": "red"})


def test_layerspec_is_frozen():
    with pytest.raises(AttributeError):
        _layer().params = 3


def test_bitconfig_json_round_trip():
    cfg = BitConfig(bits={"a": 8, "b.c": 4}, activation_bits=8, group_size=64, solver="ilp",
                    activation_grid="tensor",
                    status="optimal", objective=0.25, budgets=("4.5bits",),
                    cost={"avg_bits": 5.1, "size_bytes": 1234}, extra={"seed": 0})
    text = cfg.to_json()
    data = json.loads(text)
    assert data["format"] == "allocator.bitconfig/1"
    assert data["bits"] == {"a": 8, "b.c": 4}
    assert BitConfig.from_json(text) == cfg


@pytest.mark.parametrize("bits", [1, 9, 4.5, "4", True])
def test_bitconfig_rejects_bad_bits(bits):
    with pytest.raises(UnsupportedBitWidthError, match=r"bits\['a'\]"):
        BitConfig(bits={"a": bits})


@pytest.mark.parametrize(
    "data, field",
    [
        ({"bits": {"a": 4}}, "format"),
        ({"format": "allocator.bitconfig/2", "bits": {}}, "format"),
        ({"format": "allocator.bitconfig/1"}, "bits"),
        ({"format": "allocator.bitconfig/1", "bits": {}, "group_size": 100}, "group_size"),
        ({"format": "allocator.bitconfig/1", "bits": {}, "status": "great"}, "status"),
        ({"format": "allocator.bitconfig/1", "bits": {}, "colour": 1}, "colour"),
    ],
)
def test_bitconfig_errors_name_the_field(data, field):
    with pytest.raises(InvalidSpecError, match=field):
        BitConfig.from_dict(data)


def test_bitconfig_activation_grid_is_checked():
    with pytest.raises(InvalidSpecError, match="`activation_grid` must be one of"):
        BitConfig(bits={}, activation_grid="column")
    assert BitConfig(bits={}).activation_grid == "row"  # files from before the field


def test_bitconfig_from_json_rejects_garbage():
    with pytest.raises(InvalidSpecError, match="not valid JSON"):
        BitConfig.from_json("{bits:")


def test_bitconfig_round_trip_is_byte_identical():
    cfg = BitConfig(bits={"layer1.0.conv1": 3, "fc": 8}, activation_bits=None, group_size=None,
                    symmetric=True, rounding="gptq", bias_correction=True, clip_search=True,
                    calibration_inputs="sequential", smoothing_alpha=None, model="m",
                    solver="greedy", status="infeasible", objective=1, solve_s=0.5,
                    budgets=("4bits", "2ms"), cost={"size_bytes": 1234, "avg_bits": 5.5},
                    extra={"nested": {"a": [1, None, "x"]}})
    text = cfg.to_json()
    again = BitConfig.from_json(text)
    assert again == cfg
    assert again.to_json() == text  # ints stay ints (cost, objective): re-saving changes nothing


def test_bitconfig_lenient_documents_still_read():
    cfg = BitConfig.from_dict({"format": "allocator.bitconfig/1", "bits": {"a": 4.0},
                               "budgets": None})
    assert cfg.bits == {"a": 4} and isinstance(cfg.bits["a"], int)
    assert cfg.budgets == () and cfg == BitConfig(bits={"a": 4})


def test_bitconfig_document_fields_are_the_dataclass_fields():
    assert set(BitConfigDocument.model_fields) == {f.name for f in fields(BitConfig)} | {
        "format"}
    defaults = BitConfig(bits={})
    doc = BitConfigDocument(format="allocator.bitconfig/1", bits={})
    for name in ("activation_bits", "group_size", "rounding", "smoothing_alpha", "status"):
        assert getattr(doc, name) == getattr(defaults, name)


def test_bitconfig_document_json_schema():
    schema = BitConfigDocument.model_json_schema()
    props = schema["properties"]
    assert schema["required"] == ["format", "bits"]
    assert schema["additionalProperties"] is False
    assert props["bits"]["additionalProperties"] == {"maximum": 8, "minimum": 2,
                                                     "type": "integer"}
    assert props["group_size"]["anyOf"][0]["enum"] == [32, 64, 128, 256]
    assert props["status"]["anyOf"][0]["enum"] == ["optimal", "feasible", "infeasible"]
    assert props["smoothing_alpha"]["anyOf"][0] == {"maximum": 1.0, "minimum": 0.0,
                                                    "type": "number"}
    assert all(p.get("description") for p in props.values())
    assert BitConfig.from_dict(schema["examples"][0]).bits == {"layer1.0.conv1": 4, "fc": 8}


DOC = {"format": "allocator.bitconfig/1", "bits": {"a": 4}}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bits": {"a": 9}}, "`bits.a` is 9"),
        ({"bits": {"layer1.0.fc": 4.5}}, r"`bits\['layer1\.0\.fc'\]` is 4\.5"),
        ({"bits": {"a": "4"}}, "`bits.a` is '4'"),
        ({"bits": {"a": True}}, "`bits.a` is True: .*not a boolean"),
        ({"bits": {"": 4}}, "`bits` has a bad key ''"),
        ({"activation_bits": 16}, "`activation_bits` is 16"),
        ({"objective": float("nan")}, "`objective` is nan"),
        ({"cost": {"avg_bits": float("inf")}}, "`cost.avg_bits` is inf"),
        ({"cost": {"avg_bits": False}}, "`cost.avg_bits` is False"),
        ({"smoothing_alpha": 1.5}, "`smoothing_alpha` is 1.5"),
        ({"symmetric": "yes"}, "`symmetric` is 'yes'"),
        ({"rounding": "floor"}, "`rounding` is 'floor'"),
        ({"activation_grid": "column"}, "`activation_grid` is 'column'"),
        ({"budgets": [4]}, r"`budgets\[0\]` is 4"),
        ({"extra": None}, "`extra` is None"),
        ({"colour": 1}, "`colour` is an unknown field"),
    ],
)
def test_bitconfig_document_refusals_name_path_and_value(changes, message):
    with pytest.raises(InvalidSpecError, match=message) as info:
        BitConfig.from_dict({**DOC, **changes})
    assert "\n" not in str(info.value)


def test_bitconfig_load_names_the_file(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({**DOC, "bits": {"a": 1}}))
    with pytest.raises(InvalidSpecError, match=r"cfg\.json.*`bits\.a` is 1"):
        BitConfig.load(path)
    path.write_text(BitConfig(bits={"a": 4}).to_json())
    assert BitConfig.load(path) == BitConfig(bits={"a": 4})


def test_files_written_before_the_seconds_rename_still_read():
    old = {**DOC, "solve_seconds": 0.25}
    config = BitConfig.from_dict(old)
    assert config.solve_s == 0.25
    assert "solve_seconds" not in config.to_dict() and config.to_dict()["solve_s"] == 0.25
