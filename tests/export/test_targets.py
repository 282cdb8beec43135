from __future__ import annotations

import dataclasses

import pytest

import engine
from allocator.export import (
    TARGETS,
    TargetWidthError,
    check_config,
    get_target,
    target_costs,
    target_settings,
)
from engine import (
    BitConfig,
    InvalidSpecError,
    LayerSpec,
    QuantScheme,
    UnknownComponentError,
    UnknownLayerError,
    scheme_for,
)

K = 4096


def linear(name: str, n: int = 64, k: int = K) -> LayerSpec:
    return LayerSpec(name, "linear", (n, k), n * k, n * k)


def bits_per_weight(target: str, bits: int, settings: BitConfig, n: int = 64, k: int = K
                    ) -> float:
    t = get_target(target)
    return t.layer_bytes((n, k), bits, t.settings(settings)) * 8 / (n * k)


def test_registry_lists_the_four_targets_and_names_unknown_ones():
    assert TARGETS.names() == ["engine", "onnx", "compressed-tensors", "gguf"]
    with pytest.raises(UnknownComponentError, match="'tflite'.*engine, onnx"):
        get_target("tflite")
    assert get_target("gguf").widths == (4, 5, 8)
    assert get_target("compressed-tensors").widths == (4, 8)
    assert get_target("engine").widths == (2, 3, 4, 5, 6, 7, 8)


@pytest.mark.parametrize(("symmetric", "bits", "expected"), [
    (True, 4, 4.5), (False, 4, 5.0), (True, 5, 5.5), (False, 5, 6.0), (True, 8, 8.5),
    (False, 8, 8.5)])  # Q8_0 is symmetric whatever the config says
def test_gguf_bits_per_weight_count_the_fp16_block_scales(symmetric, bits, expected):
    assert bits_per_weight("gguf", bits, BitConfig(bits={}, symmetric=symmetric)) == expected


def test_compressed_tensors_and_onnx_bytes_follow_their_layouts():
    g128_sym = BitConfig(bits={}, symmetric=True, activation_bits=None)
    g128_asym = dataclasses.replace(g128_sym, symmetric=False)
    shape_words = 16 * 8 / (64 * K)  # the int64 weight_shape
    # int32 words of codes + one fp16 scale per 128 (+ 4-bit zero points packed along N)
    assert bits_per_weight("compressed-tensors", 4, g128_sym) == pytest.approx(
        4 + 16 / 128 + shape_words)
    assert bits_per_weight("compressed-tensors", 4, g128_asym) == pytest.approx(
        4 + 16 / 128 + 4 / 128 + shape_words)
    assert bits_per_weight("compressed-tensors", 8, g128_sym) == pytest.approx(
        8 + 16 / K + shape_words)
    w8a8 = BitConfig(bits={}, activation_bits=8)
    assert bits_per_weight("compressed-tensors", 8, w8a8) == pytest.approx(8 + 16 / K)
    # MatMulNBits: fp32 scale per block, 4-bit zero points packed two per byte
    assert bits_per_weight("onnx", 4, dataclasses.replace(g128_asym, group_size=32)) == \
        pytest.approx(4 + 32 / 32 + 4 / 32)
    assert bits_per_weight("onnx", 8, g128_sym) == pytest.approx(8 + 32 / K)


def test_engine_target_costs_what_the_engine_stores():
    settings = BitConfig(bits={}, activation_bits=None)
    t = get_target("engine")
    for b in t.widths:
        assert t.layer_bytes((48, 200), b, settings) == engine.packed_weight_bytes(
            (48, 200), scheme_for(settings, b))


def test_target_settings_make_the_engine_scheme_the_shipped_one():
    base = BitConfig(bits={"a": 4}, group_size=128, symmetric=False, activation_bits=8)
    gguf = target_settings("gguf", base)
    assert gguf.bits == {"a": 4} and gguf.activation_bits is None
    assert scheme_for(gguf, 4) == QuantScheme(4, symmetric=False, group_size=32)
    assert scheme_for(gguf, 8) == QuantScheme(8, symmetric=True, group_size=32)
    ct = target_settings("compressed-tensors", base)
    assert ct.smoothing_alpha is None and ct.activation_bits == 8
    assert scheme_for(ct, 8) == QuantScheme(8, symmetric=True, group_size=None)
    # vLLM's W8A8 rounds per token: the engine's row grid; ONNX Runtime's fastest int8
    # linear (DynamicQuantizeMatMul) rounds on one grid per call
    assert ct.activation_grid == "row"
    assert target_settings("compressed-tensors",
                           dataclasses.replace(base, activation_grid="tensor")).activation_grid \
        == "row"
    assert target_settings("onnx", base).activation_grid == "tensor"
    assert target_settings("engine", base) == base


def test_target_costs_keep_holdable_widths_and_skip_layers_with_reasons():
    layers = [linear("fc1"), linear("odd", k=100),
              LayerSpec("conv", "conv2d", (8, 4, 3, 3), 288, 288)]
    costs = target_costs("gguf", layers, [2, 4, 8], BitConfig(bits={}))
    assert costs.bits == (4, 8)
    assert costs.size_bytes["fc1"] == {4: 64 * K / 32 * 20, 8: 64 * K / 32 * 34}
    assert costs.allowed_bits("fc1") == (4, 8) and costs.allowed_bits("odd") == ()
    assert "blocks of 32" in costs.skipped["odd"] and "linear layers only" in \
        costs.skipped["conv"]
    with pytest.raises(TargetWidthError, match="target 'gguf' holds 4, 5, 8 bits only"):
        target_costs("gguf", layers, [2, 3], BitConfig(bits={}))
    engine_costs = target_costs("engine", layers, [2, 4], BitConfig(bits={}))
    assert set(engine_costs.size_bytes) == {"fc1", "odd", "conv"} and not engine_costs.skipped


def test_check_config_names_layer_width_and_target():
    layers = [linear("fc1"), linear("fc2")]
    settings = target_settings("gguf", BitConfig(bits={}))
    check_config("gguf", dataclasses.replace(settings, bits={"fc1": 4, "fc2": 8}), layers)
    with pytest.raises(TargetWidthError, match=r"'fc2' at 6 bits: target 'gguf' holds 4, 5, 8"):
        check_config("gguf", dataclasses.replace(settings, bits={"fc1": 4, "fc2": 6}), layers)
    with pytest.raises(TargetWidthError, match=r"'fc1' at 4 bits \(asymmetric, group 128\)"):
        check_config("gguf", BitConfig(bits={"fc1": 4}), layers)  # not the gguf settings
    with pytest.raises(UnknownLayerError, match="'nope'"):
        check_config("engine", BitConfig(bits={"nope": 4}), layers)


def test_default_scheme_for_is_unchanged():
    w8a8, weight_only = BitConfig(bits={}), BitConfig(bits={}, activation_bits=None)
    assert scheme_for(w8a8, 8) == QuantScheme(8, symmetric=True, group_size=None)
    assert scheme_for(weight_only, 8) == QuantScheme(8, symmetric=False, group_size=None)
    sym = dataclasses.replace(weight_only, symmetric=True)
    assert scheme_for(sym, 8) == QuantScheme(8, symmetric=True, group_size=None)
    assert scheme_for(w8a8, 4) == QuantScheme(4, symmetric=False, group_size=128)
    assert w8a8.group_size_8bit is None and w8a8.symmetric_8bit is None


def test_8bit_overrides_validate_and_round_trip():
    cfg = BitConfig(bits={"a": 8}, activation_bits=None, group_size_8bit=32, symmetric_8bit=True)
    assert scheme_for(cfg, 8) == QuantScheme(8, symmetric=True, group_size=32)
    again = BitConfig.from_json(cfg.to_json())
    assert again == cfg and again.to_dict()["group_size_8bit"] == 32
    assert BitConfig.from_dict({"format": "allocator.bitconfig/1", "bits": {}}) == \
        BitConfig(bits={})
    with pytest.raises(InvalidSpecError, match="`group_size_8bit` 32 needs weight-only"):
        BitConfig(bits={}, group_size_8bit=32)  # W8A8 kernels are per channel
    with pytest.raises(InvalidSpecError, match="`symmetric_8bit` false needs weight-only"):
        BitConfig(bits={}, symmetric_8bit=False)
    with pytest.raises(InvalidSpecError, match="`group_size_8bit` must be one of"):
        BitConfig(bits={}, activation_bits=None, group_size_8bit=48)
    with pytest.raises(InvalidSpecError):
        BitConfig.from_dict({"format": "allocator.bitconfig/1", "bits": {},
                             "group_size_8bit": 48})


def test_engine_quantizes_8bit_blocks_of_32():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 16))
    settings = target_settings("gguf", BitConfig(bits={"0": 8}))
    layer = engine.apply(model, settings)[0]
    assert layer.scheme == QuantScheme(8, symmetric=True, group_size=32)
    assert tuple(layer.scales.shape) == (16, 2)
    assert engine.sqnr_db(model[0].weight, layer.dequantized_weight()) > 40
