"""The float-prefix-once evaluator: the same losses as whole forwards, or no evaluator."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sensitivity
from sensitivity._estimate import cache_key
from sensitivity._suffix import SuffixLosses
from tests.zoo.conftest import need
from zoo import Batch


class _Net(nn.Module):
    """A residual block and a layer called twice (its second call is in the suffix)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = h + self.b(h)
        return self.c(torch.tanh(self.b(h)))


class _Branchy(_Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: not traceable
            return self.c(self.a(x))
        return self.c(self.b(x))


class _Spec:
    name = "tiny"

    def __init__(self, model: nn.Module, calls: int = 1) -> None:
        torch.manual_seed(0)
        self.model = model
        self.calls = calls
        self.batches = [Batch(torch.randn(8, 6), torch.randn(8, 3), 8),
                        Batch(torch.randn(5, 6), torch.randn(5, 3), 5)]

    def build(self) -> nn.Module:
        return self.model

    def calibration_batches(self) -> list[Batch]:
        return self.batches

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        out = sum(model(batch.inputs) for _ in range(self.calls))
        return F.mse_loss(out / self.calls, batch.target)


@torch.no_grad()
def _whole_loss(spec: _Spec, model: nn.Module) -> float:
    total = math.fsum(float(spec.loss(model, b)) * b.size for b in spec.batches)
    return total / sum(b.size for b in spec.batches)


def test_suffix_losses_equal_whole_forwards_with_residuals_and_shared_layers():
    torch.manual_seed(1)
    spec = _Spec(_Net())
    replacements = {}
    for name in ("a", "b", "c"):
        for scale in (0.5, 2.0):
            changed = copy.deepcopy(getattr(spec.model, name))
            changed.weight.data.mul_(scale)
            replacements.setdefault(name, {})[scale] = changed
    suffixes = SuffixLosses.build(spec, spec.model)
    assert suffixes is not None
    calls = []
    base, losses = suffixes.losses(replacements, progress=calls.append)
    assert len(calls) == 3 * 2 * len(spec.batches)
    assert base == pytest.approx(_whole_loss(spec, spec.model), rel=1e-6)
    for name, by_scale in replacements.items():
        for scale, module in by_scale.items():
            model = copy.deepcopy(spec.model)
            setattr(model, name, module)
            assert losses[name][scale] == pytest.approx(_whole_loss(spec, model), rel=1e-6)
            assert losses[name][scale] != pytest.approx(base, rel=1e-3)


class _ReadsTheModel(_Spec):
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.mse_loss(model(batch.inputs) * model.a.weight.mean(), batch.target)


def test_no_evaluator_for_untraceable_models_or_losses_that_need_the_model():
    assert SuffixLosses.build(_Spec(_Branchy()), _Branchy()) is None
    twice = _Spec(_Net(), calls=2)
    assert SuffixLosses.build(twice, twice.model) is None
    reads = _ReadsTheModel(_Net())  # the stand-in has no `a`: whole forwards instead
    assert SuffixLosses.build(reads, reads.model) is None


def test_measured_estimator_matches_one_layer_engine_applies_on_digits_cnn():
    """The suffix path against the whole-model path (a lone layer applied on the engine)."""
    spec = need("digits-cnn")
    runner = sensitivity.estimator_for(sensitivity.MeasuredConfig())
    model = spec.build()
    names = [x.name for x in spec.layers()]
    suffixes = SuffixLosses.build(spec, model)
    assert suffixes is not None
    base, fast = runner._suffix_losses(spec, model, suffixes, [2, 4], names, None)
    whole_base, whole = runner._whole_model_losses(spec, model, [2, 4], names, None)
    assert base == pytest.approx(whole_base, abs=1e-7)
    for n in names:
        for b in (2, 4):
            delta, expected = fast[n][b] - base, whole[n][b] - whole_base
            assert delta == pytest.approx(expected, rel=0.5, abs=5e-8), (n, b)


def test_measured_samples_take_the_first_batches_and_key_the_cache():
    """`samples` measures Δloss on the first batches holding that many samples; left at
    None it keeps the key tables made before the field existed."""
    spec = need("digits-cnn")
    sizes = [b.size for b in spec.calibration_batches()]
    runner = sensitivity.estimator_for(sensitivity.MeasuredConfig(samples=sizes[0]))
    assert len(runner._batches(spec)) == 1
    every = sensitivity.estimator_for(sensitivity.MeasuredConfig())
    assert len(every._batches(spec)) == len(sizes)
    one = cache_key(spec, "measured", sensitivity.MeasuredConfig(samples=1), 0, [4])
    none = cache_key(spec, "measured", sensitivity.MeasuredConfig(), 0, [4])
    assert one != none
