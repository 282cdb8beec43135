from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import sensitivity
from sensitivity import HutchinsonConfig, SensitivityTable, exact_traces, hessian_traces
from tests.zoo.conftest import need
from zoo import Batch


class _QuadraticSpec:
    """A tiny MLP with a KL-to-teacher loss: small enough for exact float64 Hessians."""

    name = "tiny"

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                         torch.nn.Linear(5, 3)).double()
        self.x = torch.randn(40, 6, dtype=torch.float64)
        self.y = torch.randn(40, 3, dtype=torch.float64)

    def build(self):
        return self.model

    def calibration_batches(self):
        return [Batch(self.x, self.y, 40)]

    def loss(self, model, batch):
        return F.mse_loss(model(batch.inputs), batch.target)


def test_hutchinson_traces_match_exact_within_error_bars():
    spec = _QuadraticSpec()
    names = ["0", "2"]
    cfg = HutchinsonConfig(min_probes=64, max_probes=2000, rel_tol=0.02)
    est = hessian_traces(spec, names, cfg, seed=0)
    params = [spec.model[0].weight, spec.model[2].weight]

    def loss_with(ps):
        h = torch.tanh(F.linear(spec.x, ps[0], spec.model[0].bias))
        return F.mse_loss(F.linear(h, ps[1], spec.model[2].bias), spec.y)

    exact = exact_traces(loss_with, params)
    for name, truth in zip(names, exact, strict=True):
        samples, reason = est[name]
        assert reason == "converged"
        assert abs(samples.mean - truth) <= 4 * samples.std_error + 1e-9


def test_same_seed_same_table_and_json_round_trip(tmp_path):
    spec = need("digits-mlp")
    opts = {"max_probes": 32, "min_probes": 8}
    a = sensitivity.estimate(spec, "hutchinson", seed=3, options=opts, use_cache=False)
    b = sensitivity.estimate(spec, "hutchinson", seed=3, options=opts, use_cache=False)
    assert a.omega() == b.omega()
    a.save(tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["format"] == "allocator.sensitivity/1"
    assert set(data["layers"]["fc1"]) >= {"omega", "trace", "std_error", "probes", "stop_reason"}
    again = SensitivityTable.load(tmp_path / "t.json")
    assert again.omega() == a.omega()
    for layer in again.layers.values():
        assert all(v >= 0 for v in layer.omega.values())
        assert layer.omega[2] >= layer.omega[8]


def test_cache_is_reused_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(tmp_path))
    spec = need("digits-mlp")
    opts = {"max_probes": 16, "min_probes": 8}
    first = sensitivity.estimate(spec, "hutchinson", seed=1, options=opts)
    files = list((tmp_path / "sensitivity").glob("*.json"))
    assert len(files) == 1
    assert sensitivity.estimate(spec, "hutchinson", seed=1, options=opts).created == first.created
    files[0].write_text("{broken")
    with pytest.warns(UserWarning, match="corrupt"):
        rebuilt = sensitivity.estimate(spec, "hutchinson", seed=1, options=opts)
    assert rebuilt.omega() == first.omega()
    other = sensitivity.estimate(spec, "hutchinson", seed=2, options=opts)
    assert other.omega() != first.omega()


def test_hutchinson_ranks_like_measured_on_digits_cnn():
    spec = need("digits-cnn")
    h = sensitivity.estimate(spec, "hutchinson", seed=0)
    m = sensitivity.estimate(spec, "measured", seed=0)
    names = list(h.layers)
    rho = spearmanr([h.layers[n].omega[4] for n in names],
                    [m.layers[n].extra["delta_loss"]["4"] for n in names]).statistic
    assert rho >= 0.8

