from __future__ import annotations

import pytest
import torch

from allocator.testing import TinyCNN, TinyMLP
from engine import discover_layers, mean_bits


def test_discovers_every_conv_and_linear_with_macs():
    model = TinyCNN()
    x = torch.randn(2, 3, 8, 8)
    specs = {s.name: s for s in discover_layers(model, x)}
    assert list(specs) == ["stem", "dw", "pw", "fc1", "fc2"]
    assert specs["stem"].macs == 2 * 16 * 8 * 8 * 3 * 9
    assert specs["dw"].is_depthwise and specs["dw"].macs == 2 * 16 * 8 * 8 * 9
    assert specs["pw"].params == 32 * 16
    assert specs["fc1"].macs == 2 * 512 * 64
    assert specs["fc2"].input_shape == (2, 64)
    assert specs["stem"].padding == (1, 1)


def test_calls_are_summed_and_skip_patterns_apply():
    model = TinyMLP()
    specs = {s.name: s for s in discover_layers(model, torch.randn(3, 64), skip=["out"])}
    assert set(specs) == {"inp", "shared"}
    assert specs["shared"].calls == 2
    assert specs["shared"].macs == 2 * 3 * 128 * 128


def test_model_mode_is_restored():
    model = TinyMLP().train()
    discover_layers(model, torch.randn(1, 64))
    assert model.training


def test_mean_bits_is_parameter_weighted():
    specs = discover_layers(TinyMLP(), torch.randn(1, 64))
    bits = {s.name: 4 for s in specs}
    assert mean_bits(specs, bits) == pytest.approx(4.0)
    bits["inp"] = 8
    n = sum(s.params for s in specs)
    assert mean_bits(specs, bits) == pytest.approx((8 * 64 * 128 + 4 * (n - 64 * 128)) / n)
