from __future__ import annotations

import copy
import json
import time

import pytest

from allocator import ProblemDocument
from allocator._budget import parse_budgets
from allocator._problem import MAX_COUNT, MAX_TABLE_VALUE, Problem
from allocator.testing_problems import random_problem
from engine import InvalidSpecError

BASE = {"format": "allocator.problem/1", "model": "m", "bits": [2, 4, 8], "activation_bits": 8,
        "layers": [
            {"name": "a", "params": 100, "macs": 1000, "omega": {"2": 1.0, "4": 0.1, "8": 0.0},
             "latency_us": {"4": 3.0, "8": 4.0}},
            {"name": "b", "params": 300, "macs": 9000, "omega": {"2": 2.0, "4": 0.3, "8": 0.01},
             "latency_us": {"2": 1.0, "4": 2.0, "8": 3.0}}]}


def _with(**changes):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = data
        keys = path.split(".")
        for k in keys[:-1]:
            target = target[int(k)] if k.isdigit() else target[k]
        last = keys[-1]
        target[int(last) if last.isdigit() else last] = value
    return data


def test_round_trip():
    p = Problem.from_dict(BASE)
    text = json.dumps(p.to_dict())
    again = Problem.from_dict(json.loads(text))
    assert again == p
    assert json.dumps(again.to_dict()) == text


def test_random_problems_round_trip_byte_identical():
    for n_layers in (1, 7, 60):
        p = random_problem(n_layers, seed=n_layers)
        text = json.dumps(p.to_dict(), indent=1)
        again = Problem.from_dict(json.loads(text))
        assert again == p
        assert json.dumps(again.to_dict(), indent=1) == text


def test_save_load(tmp_path):
    p = Problem.from_dict(_with(ties=[["a", "b"]], latency_offset_us=2.5))
    p.save(tmp_path / "p.json")
    assert Problem.load(tmp_path / "p.json") == p
    assert Problem.load(tmp_path / "p.json").to_dict() == p.to_dict()


def test_lenient_documents_still_read():
    # Integer-valued floats for counts, digit strings in bit lists and keys, ignored
    # informational fields: all were accepted by the hand validator and still are.
    data = _with(**{"bits": ["4", 2.0, 8, 8], "layers.0.params": 100.0,
                    "layers.0.allowed_bits": ["8", 4], "layers.0.kind": "linear",
                    "layers.0.trace": 1.5, "meta": {"by": "me"}})
    p = Problem.from_dict(data)
    assert p.bits == (2, 4, 8)
    assert p.layers[0].params == 100 and isinstance(p.layers[0].params, int)
    assert p.layers[0].allowed_bits == (4, 8)
    assert p.layers[0].omega == {2: 1.0, 4: 0.1, 8: 0.0}


def test_document_json_schema():
    schema = ProblemDocument.model_json_schema()
    assert schema["required"] == ["format", "bits", "layers"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["format"]["const"] == "allocator.problem/1"
    assert schema["properties"]["bits"]["items"] == {"maximum": 8, "minimum": 2,
                                                     "type": "integer"}
    layer = schema["$defs"]["ProblemLayerDocument"]
    assert layer["required"] == ["name", "omega"]
    assert layer["properties"]["omega"]["patternProperties"] == {
        "^[2-8]$": {"maximum": MAX_TABLE_VALUE, "minimum": 0, "type": "number"}}
    assert layer["properties"]["params"]["maximum"] == MAX_COUNT
    assert all(f.get("description") for f in layer["properties"].values())
    example = schema["examples"][0]
    assert Problem.from_dict(example).to_dict()["layers"][0]["omega"] == \
        example["layers"][0]["omega"]


@pytest.mark.parametrize("changes, message", [
    # non-finite and negative numbers
    ({"layers.0.omega": {"2": float("nan"), "4": 0.1, "8": 0.0}},
     r"`layers\[0\]\.omega\.2` \(layer 'a'\) is nan"),
    ({"layers.0.omega": {"2": -1, "4": 0.1, "8": 0.0}},
     r"`layers\[0\]\.omega\.2` \(layer 'a'\) is -1: it should be greater than or equal to 0"),
    ({"layers.1.latency_us": {"4": float("inf")}}, r"`layers\[1\]\.latency_us\.4` \(layer 'b'\)"),
    ({"latency_offset_us": -2.0}, "`latency_offset_us` is -2.0"),
    ({"layers.0.params": -5}, r"`layers\[0\]\.params` \(layer 'a'\) is -5"),
    # booleans are no numbers
    ({"layers.0.macs": True}, r"`layers\[0\]\.macs` \(layer 'a'\) is True: .*not a boolean"),
    ({"layers.0.omega": {"2": False}}, r"`layers\[0\]\.omega\.2`.* is False"),
    ({"bits": [2, True]}, r"`bits\[1\]` is True"),
    # non-integer bits and counts, bit-widths out of range
    ({"bits": [2, 4.5]}, r"`bits\[1\]` is 4\.5"),
    ({"bits": [2, 9]}, r"`bits\[1\]` is 9"),
    ({"layers.0.fixed_bits": 4.5}, r"`layers\[0\]\.fixed_bits` \(layer 'a'\) is 4\.5"),
    ({"layers.0.params": 10.5}, r"`layers\[0\]\.params` \(layer 'a'\) is 10\.5"),
    ({"layers.0.omega": {"9": 1.0}}, r"`layers\[0\]\.omega` \(layer 'a'\) has a bad key '9'"),
    ({"layers.0.omega": {"x": 1.0}}, r"`layers\[0\]\.omega` \(layer 'a'\) has a bad key 'x'"),
    ({"activation_bits": 0}, "`activation_bits` is 0"),
    # unknown and missing fields, wrong shapes
    ({"layers.0.colour": 1}, r"`layers\[0\]\.colour` \(layer 'a'\) is an unknown field"),
    ({"colour": 1}, "`colour` is an unknown field"),
    ({"format": "allocator.problem/9"}, "`format` is 'allocator.problem/9'"),
    ({"bits": []}, "`bits`"),
    ({"layers": []}, "`layers`"),
    ({"layers.0.omega": {}}, r"`layers\[0\]\.omega`"),
    ({"layers.0.name": ""}, r"`layers\[0\]\.name` is ''"),
    ({"layers.1": 5}, r"`layers\[1\]` is 5"),
    ({"model": 5}, "`model` is 5"),
    ({"ties": ["a"]}, r"`ties\[0\]` is 'a'"),
    # checks across fields, made by `Problem` itself
    ({"layers.1.omega": {"3": 1.0}}, r"layers\['b'\]` has no usable bit-width"),
    ({"layers.1.name": "a"}, r"`layers` has duplicate names \['a'\]"),
    ({"ties": [["a", "zz"]]}, "unknown layer 'zz'"),
    ({"ties": [["a"], ["a", "b"]]}, "layer 'a' is in more than one group"),
    ({"ties": [[]]}, "`ties` has an empty group"),
])
def test_validation_names_layer_and_field(changes, message):
    with pytest.raises(InvalidSpecError, match=message) as info:
        Problem.from_dict(_with(**changes))
    assert "\n" not in str(info.value)


def test_missing_fields_and_non_objects():
    data = _with()
    del data["layers"][0]["omega"]
    with pytest.raises(InvalidSpecError, match=r"`layers\[0\]\.omega` \(layer 'a'\) is missing"):
        Problem.from_dict(data)
    with pytest.raises(InvalidSpecError, match="a problem must be a JSON object, got list"):
        Problem.from_dict([BASE])


def test_several_errors_are_counted_in_one_line():
    with pytest.raises(InvalidSpecError, match=r"\(2 more errors after this one\)\.$"):
        Problem.from_dict(_with(**{"bits": [1], "layers.0.params": -1, "layers.1.macs": -1}))


def test_validation_is_linear_in_layers():
    def parse_s(n_layers: int) -> float:
        layers = [dict(BASE["layers"][i % 2], name=f"l{i}") for i in range(n_layers)]
        ties = [[f"l{i}", f"l{i + 1}"] for i in range(0, n_layers, 2)]
        data = _with(layers=layers, ties=ties)
        t0 = time.perf_counter()
        Problem.from_dict(data)
        return time.perf_counter() - t0

    parse_s(500)  # warm-up
    small, large = min(parse_s(1_000) for _ in range(5)), min(parse_s(20_000) for _ in range(2))
    # 20x the layers: ~20x the time when linear, ~400x when quadratic (room for a busy CPU)
    assert large < 80 * small, (small, large)


def test_budget_on_missing_cost_is_an_error():
    data = _with(**{"layers.0.latency_us": None})
    del data["layers"][0]["latency_us"]
    p = Problem.from_dict(data)
    with pytest.raises(InvalidSpecError, match=r"latency.*layers\['a'\].latency_us"):
        p.units(parse_budgets(["5us"]))


def test_latency_budget_limits_choices_to_measured_bits():
    p = Problem.from_dict(BASE)
    unit_a = p.units(parse_budgets(["5us"]))[0]
    assert unit_a.choices == (4, 8)
    assert p.units()[0].choices == (2, 4, 8)


def test_default_costs():
    p = Problem.from_dict(BASE)
    obj, cost = p.evaluate({"a": 4, "b": 8})
    assert obj == pytest.approx(0.11)
    assert cost["avg_bits"] == pytest.approx((400 + 2400) / 400)
    assert cost["size_bytes"] == pytest.approx(100 * 4 / 8 + 300)
    assert cost["bops"] == pytest.approx(1000 * 4 * 8 + 9000 * 8 * 8)
    assert cost["latency_us"] == pytest.approx(3.0 + 3.0)
