"""Estimator lookup by name and config type, config validation and the table cache key."""

from __future__ import annotations

import pytest
import torch

from engine import InvalidSpecError, UnknownComponentError
from sensitivity import (
    ESTIMATORS,
    FracBitsConfig,
    FracBitsEstimator,
    HutchinsonConfig,
    HutchinsonEstimator,
    MeasuredConfig,
    MeasuredEstimator,
    estimator_for,
    hash_tensors,
    make_config,
)
from sensitivity._estimate import cache_key
from zoo import Batch


class _Toy:
    """Fixed weights and data (no RNG), so that hashes are the same on every machine."""

    name = "toy"

    def build(self) -> torch.nn.Module:
        m = torch.nn.Linear(3, 2)
        with torch.no_grad():
            m.weight.copy_(torch.arange(6.0).reshape(2, 3))
            m.bias.copy_(torch.tensor([0.5, -1.0]))
        return m

    def calibration_batches(self) -> list[Batch]:
        x = torch.linspace(-1, 1, 12).reshape(4, 3)
        return [Batch(x, torch.tensor([0, 1, 1, 0]), 4)]


def test_registry_lists_the_builtins_in_order_with_descriptions():
    assert ESTIMATORS.names() == ["hutchinson", "measured", "fracbits", "fisher"]
    assert all(e.description and e.available() for e in ESTIMATORS)


@pytest.mark.parametrize(("config", "cls"), [
    (HutchinsonConfig(), HutchinsonEstimator),
    (MeasuredConfig(rounding="rtn"), MeasuredEstimator),
    (FracBitsConfig(steps=3), FracBitsEstimator),
])
def test_estimator_for_dispatches_on_the_config_type(config, cls):
    runner = estimator_for(config)
    assert type(runner) is cls
    assert runner.config is config
    assert ESTIMATORS.get(runner.name) is cls


def test_estimator_for_an_unknown_config_lists_the_known_ones():
    with pytest.raises(UnknownComponentError, match="MeasuredConfig"):
        estimator_for(object())


def test_estimator_refuses_another_estimators_config():
    with pytest.raises(InvalidSpecError, match="HutchinsonConfig"):
        HutchinsonEstimator(MeasuredConfig())


def test_make_config_builds_the_named_config_and_refuses_unknown_names():
    assert make_config("measured", {"rounding": "rtn"}) == MeasuredConfig(rounding="rtn")
    with pytest.raises(UnknownComponentError, match="unknown estimator 'magic'"):
        make_config("magic")
    with pytest.raises(InvalidSpecError, match="no option"):
        make_config("measured", {"max_probes": 3})


@pytest.mark.parametrize(("cls", "field", "value"), [
    (MeasuredConfig, "rounding", "nearest"),
    (MeasuredConfig, "group_size", 100),
    (MeasuredConfig, "samples", 0),
    (MeasuredConfig, "samples", True),
    (HutchinsonConfig, "rounding", "nearest"),
    (HutchinsonConfig, "group_size", 7),
    (HutchinsonConfig, "rel_tol", 0.0),
    (HutchinsonConfig, "probes_per_batch", 0),
    (HutchinsonConfig, "time_limit_s", -1.0),
    (FracBitsConfig, "rounding", "nearest"),
    (FracBitsConfig, "group_size", 7),
    (FracBitsConfig, "steps", 0),
    (FracBitsConfig, "lr", 0.0),
    (FracBitsConfig, "time_limit_s", 0.0),
    (FracBitsConfig, "momentum", 1.0),
    (FracBitsConfig, "budget_bits", -2.0),
])
def test_configs_name_the_bad_field_and_value(cls, field, value):
    with pytest.raises(InvalidSpecError, match=f"`{field}`.*{value!r}"):
        cls(**{field: value})


def test_hutchinson_probe_bounds_are_checked():
    with pytest.raises(InvalidSpecError, match="`min_probes` <= `max_probes`"):
        HutchinsonConfig(min_probes=10, max_probes=5)


def test_hash_tensors_depends_on_values_dtype_and_keys_not_key_order():
    a = hash_tensors({"w": torch.arange(4, dtype=torch.int32), "b": [torch.ones(2), 3]})
    # the digest the table cache and the pipeline's records have always used
    assert a == "975143caaed43a5fd54970355e3f8d9137e14c5570de875a097aab28dbf7ee5f"
    assert hash_tensors({"b": [torch.ones(2), 3], "w": torch.arange(4, dtype=torch.int32)}) == a
    assert hash_tensors({"w": torch.arange(4, dtype=torch.int64), "b": [torch.ones(2), 3]}) != a
    assert hash_tensors({"w": torch.arange(4, dtype=torch.int32), "b": [torch.zeros(2), 3]}) != a


@pytest.mark.parametrize(("estimator", "options", "key"), [
    ("hutchinson", {}, "53fbd67846c655370e5b"),
    ("measured", {"rounding": "rtn"}, "f65b95371f8b4d787a6d"),
    ("fracbits", {"steps": 7}, "b64053bc81d8178c0da5"),
])
def test_cache_key_is_stable_so_earlier_tables_still_hit(estimator, options, key):
    # Pinned with engine version "2": renaming a config field, changing a default or the
    # hashing would orphan every cached table.
    config = make_config(estimator, options)
    assert cache_key(_Toy(), estimator, config, 3, [2, 4, 8]) == key

