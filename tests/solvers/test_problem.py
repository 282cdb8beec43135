from __future__ import annotations

import copy
import json

import pytest

from allocator._budget import parse_budgets
from allocator._problem import Problem
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
        target[keys[-1]] = value
    return data


def test_round_trip():
    p = Problem.from_dict(BASE)
    assert Problem.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("changes, message", [
    ({"layers.0.omega": {"2": float("nan"), "4": 0.1, "8": 0.0}}, r"layers\['a'\].omega\[2\]"),
    ({"layers.0.omega": {"2": -1, "4": 0.1, "8": 0.0}}, r"layers\['a'\].omega\[2\]"),
    ({"layers.1.omega": {"3": 1.0}}, r"layers\['b'\]` has no usable bit-width"),
    ({"ties": [["a", "zz"]]}, "unknown layer 'zz'"),
    ({"bits": []}, "`bits`"),
    ({"format": "allocator.problem/9"}, "format"),
    ({"layers.0.params": -5}, r"layers\['a'\].params"),
    ({"layers.0.colour": 1}, "unknown field"),
])
def test_validation_names_layer_and_field(changes, message):
    with pytest.raises(InvalidSpecError, match=message):
        Problem.from_dict(_with(**changes))


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
