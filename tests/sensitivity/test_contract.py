"""`BaseSensitivityEstimator`'s contract, checked for every registered estimator."""

from __future__ import annotations

import dataclasses
import math

import pytest

import sensitivity
from sensitivity import ESTIMATORS, estimator_for, hash_tensors, make_config
from tests.zoo.conftest import need

BITS = [2, 4, 8]
# A small, fast config per estimator: a new estimator must add one here to be checked.
FAST = {
    "hutchinson": {"min_probes": 4, "max_probes": 8, "rounding": "rtn"},
    "measured": {"rounding": "rtn"},
    "fracbits": {"steps": 10, "rounding": "rtn"},
    "fisher": {"rounding": "rtn"},
}


def test_every_registered_estimator_has_a_fast_config():
    assert set(ESTIMATORS.names()) == set(FAST)


@pytest.mark.parametrize("name", ESTIMATORS.names(only_available=True))
class TestEstimatorContract:
    def run(self, name: str, seed: int = 0):
        spec = need("digits-mlp")
        runner = estimator_for(make_config(name, FAST[name]))
        done: list[int] = []
        table = runner.estimate(spec, BITS, seed=seed, progress=done.append)
        return spec, runner, table, done

    def test_covers_every_layer_and_bit_width(self, name):
        spec, _, table, _ = self.run(name)
        assert list(table.layers) == [x.name for x in spec.layers()]
        assert list(table.bits) == BITS
        for layer in table.layers.values():
            assert sorted(layer.omega) == BITS

    def test_omega_is_finite_and_nonnegative(self, name):
        _, _, table, _ = self.run(name)
        for layer in table.layers.values():
            assert all(math.isfinite(v) and v >= 0 for v in layer.omega.values())

    def test_same_seed_same_table(self, name):
        _, _, a, _ = self.run(name, seed=5)
        _, _, b, _ = self.run(name, seed=5)
        assert a.to_dict()["layers"] == b.to_dict()["layers"]

    def test_table_names_the_estimator_and_its_config(self, name):
        spec, runner, table, _ = self.run(name)
        assert runner.name == table.estimator == name
        assert table.model == spec.name
        assert dict(table.config) == dataclasses.asdict(runner.config)

    def test_progress_stays_within_its_total(self, name):
        spec, runner, _, done = self.run(name)
        assert all(n > 0 for n in done)
        assert 0 < sum(done) <= runner.progress_total(spec, BITS)

    def test_model_is_left_unchanged(self, name):
        model = need("digits-mlp").build()  # the spec's shared model
        weights = hash_tensors(dict(model.state_dict()))
        flags = [(p.requires_grad, p.grad is None) for p in model.parameters()]
        self.run(name)
        assert hash_tensors(dict(model.state_dict())) == weights
        assert [(p.requires_grad, p.grad is None) for p in model.parameters()] == flags


def test_progress_bar_run_gives_the_same_table():
    spec = need("digits-mlp")
    opts = FAST["measured"]
    quiet = sensitivity.estimate(spec, "measured", bits=BITS, options=opts, use_cache=False)
    shown = sensitivity.estimate(spec, "measured", bits=BITS, options=opts, use_cache=False,
                                 progress=True)
    assert quiet.to_dict()["layers"] == shown.to_dict()["layers"]
