from __future__ import annotations

import json

import pytest

from engine import BitConfig, InvalidSpecError, LayerSpec, UnsupportedBitWidthError


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


def test_bitconfig_from_json_rejects_garbage():
    with pytest.raises(InvalidSpecError, match="not valid JSON"):
        BitConfig.from_json("{bits:")
