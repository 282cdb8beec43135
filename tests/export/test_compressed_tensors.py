from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import engine
from allocator.export import (
    ExportCheckError,
    TargetWidthError,
    UnsupportedExportError,
    export_compressed_tensors,
    get_target,
    target_settings,
)
from engine import BitConfig, InvalidSpecError, UnknownLayerError
from tests.export import linear_names, mixed_bits, tiny_bert, tiny_llama

pytest.importorskip("compressed_tensors")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[nn.Module, Path]:
    folder = tmp_path_factory.mktemp("llama")
    return tiny_llama(folder), folder


def settings(bits: dict[str, int], **kwargs) -> BitConfig:
    base = BitConfig(bits=bits, group_size=32, activation_bits=None)
    return target_settings("compressed-tensors", dataclasses.replace(base, **kwargs))


def library_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every quantized layer as the compressed-tensors library decompresses it."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file

    doc = json.loads((folder / "config.json").read_text())
    qconfig = QuantizationConfig.model_validate(doc["quantization_config"])
    state = load_file(str(folder / "model.safetensors"))
    out = {}
    for scheme in qconfig.config_groups.values():
        compressor = BaseCompressor.get_value_from_registry(scheme.format)
        for name in scheme.targets:
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            out[name] = compressor.decompress(part, scheme)["weight"].float()
    return out


@pytest.mark.parametrize("symmetric", [True, False])
def test_mixed_llama_round_trips_through_the_library(llama, tmp_path, symmetric):
    model, source = llama
    bits = mixed_bits(linear_names(model), (4, 8))
    config = settings(bits, symmetric=symmetric)
    qmodel = engine.apply(model, config)
    out = tmp_path / "ct"
    report = export_compressed_tensors(model, qmodel, config, out)
    assert report.check["passed"] and report.check["layers_checked"] == len(bits)
    doc = json.loads((out / "config.json").read_text())
    qc = doc["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    targets = [n for g in qc["config_groups"].values() for n in g["targets"]]
    assert sorted(targets) == sorted(bits)
    float_layers = set(linear_names(model, skip=())) - set(bits)
    assert set(qc["ignore"]) == float_layers and "lm_head" in qc["ignore"]
    by_bits = {g["weights"]["num_bits"]: g for g in qc["config_groups"].values()}
    assert by_bits[4]["weights"]["strategy"] == "group" and \
        by_bits[4]["weights"]["group_size"] == 32
    assert by_bits[8]["weights"]["strategy"] == "channel"
    assert all(g["weights"]["symmetric"] is symmetric for g in qc["config_groups"].values())
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    layers = engine.quantized_layers(qmodel)
    for name, weight in library_weights(out).items():
        ref = layers[name].dequantized_weight()
        assert (weight - ref).abs().max() <= ref.abs().max() * 2**-9, name
    # the library re-reads the engine's integers exactly: scales aside, codes are the same
    assert report.check["max_abs_diff"] < 1e-3


def test_transformers_loads_the_checkpoint_and_matches_the_engine(llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = llama
    bits = mixed_bits(linear_names(model), (4, 8))
    config = settings(bits, symmetric=True)
    qmodel = engine.apply(model, config, kernel="reference")  # float matmuls, no bf16 kernel
    export_compressed_tensors(model, qmodel, config, tmp_path / "ct", dtype="float32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = qmodel(ids).logits, loaded(ids).logits
    assert (ours - theirs).abs().max() <= 1e-3 * ours.abs().max()


def test_w8a8_layers_are_int_quantized_with_dynamic_token_activations(llama, tmp_path):
    model, _ = llama
    bits = mixed_bits(linear_names(model), (4, 8))
    config = target_settings("compressed-tensors",
                             BitConfig(bits=bits, group_size=32, activation_bits=8))
    qmodel = engine.apply(model, config)
    report = export_compressed_tensors(model, qmodel, config, tmp_path / "ct")
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision"
    int8 = [g for g in qc["config_groups"].values() if g["format"] == "int-quantized"]
    assert len(int8) == 1 and int8[0]["input_activations"]["strategy"] == "token"
    assert int8[0]["input_activations"]["dynamic"] is True
    assert {x.format for x in report.layers.values()} == {"int-quantized", "pack-quantized"}
    assert any("fused in vLLM" in n for n in report.notes)


def test_byte_costs_equal_the_written_tensors(llama, tmp_path):
    from safetensors import safe_open

    model, _ = llama
    bits = mixed_bits(linear_names(model), (4, 8))
    for sym in (True, False):
        config = settings(bits, symmetric=sym)
        out = tmp_path / f"ct{sym}"
        report = export_compressed_tensors(model, engine.apply(model, config), config, out)
        target = get_target("compressed-tensors")
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            stored = {k: f.get_tensor(k) for k in f.keys()}
        modules = dict(model.named_modules())
        for name, layer in report.layers.items():
            in_file = sum(t.numel() * t.element_size() for k, t in stored.items()
                          if k.startswith(name + ".weight"))
            predicted = target.layer_bytes(tuple(modules[name].weight.shape), layer.bits,
                                           config)
            assert layer.size_bytes == in_file == predicted, name
        assert report.size_bytes > report.quantized_bytes


def test_bert_inside_a_wrapper_is_written_with_its_own_names(tmp_path):
    from zoo._minilm import SentenceEncoder

    bert = tiny_bert(tmp_path / "bert")
    model = SentenceEncoder(bert).eval()
    names = [n for n in linear_names(model) if ".encoder." in n]
    bits = mixed_bits(names, (4, 8), every_float=3)
    config = settings(bits, symmetric=True)
    qmodel = engine.apply(model, config)
    report = export_compressed_tensors(model, qmodel, config, tmp_path / "ct")
    doc = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert doc["model_type"] == "bert"
    targets = {n for g in doc["quantization_config"]["config_groups"].values()
               for n in g["targets"]}
    assert targets == {n.removeprefix("bert.") for n in bits}
    assert set(report.layers) == set(bits) and report.check["passed"]


def test_a_plain_module_is_refused(tmp_path):
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    config = settings({"0": 4})
    with pytest.raises(UnsupportedExportError, match="no Hugging Face transformers model"):
        export_compressed_tensors(model, engine.apply(model, config), config, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_bad_configs_fail_before_anything_is_written(llama, tmp_path):
    model, _ = llama
    names = linear_names(model)
    config = settings({names[0]: 4, names[1]: 8})
    qmodel = engine.apply(model, config)
    out = tmp_path / "ct"
    with pytest.raises(UnknownLayerError, match="model.layers.9.mlp.up_proj"):
        export_compressed_tensors(
            model, qmodel, dataclasses.replace(config, bits={**config.bits,
                                                             "model.layers.9.mlp.up_proj": 4}),
            out)
    five = settings({names[0]: 5})
    with pytest.raises(TargetWidthError,
                       match=rf"{names[0]}' at 5 bits: target 'compressed-tensors' holds 4, 8"):
        export_compressed_tensors(model, engine.apply(model, five), five, out)
    g128 = settings({names[0]: 4}, group_size=128)  # 64 inputs: not whole groups of 128
    with pytest.raises(TargetWidthError, match="whole groups of 128"):
        export_compressed_tensors(model, engine.apply(model, g128), g128, out)
    assert not out.exists() and not list(tmp_path.glob(".ct.*"))
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidSpecError, match="is an existing folder that is not empty"):
        export_compressed_tensors(model, qmodel, config, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_failed_check_names_the_layer_and_leaves_nothing(llama, tmp_path, monkeypatch):
    from allocator.export import _compressed_tensors as ct

    model, _ = llama
    names = linear_names(model)
    config = settings({names[0]: 4, names[2]: 8})
    qmodel = engine.apply(model, config)
    real = ct._layer_tensors

    def corrupt(local, layer, w8a8):
        out = real(local, layer, w8a8)
        if local == names[2]:
            out[f"{local}.weight_scale"] = out[f"{local}.weight_scale"] * 1.01
        return out

    monkeypatch.setattr(ct, "_layer_tensors", corrupt)
    with pytest.raises(ExportCheckError, match=rf"layer '{names[2]}' \(pack-quantized\)"):
        export_compressed_tensors(model, qmodel, config, tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_packing_matches_the_library_packer(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from allocator.export._compressed_tensors import pack_int32

    g = torch.Generator().manual_seed(bits)
    for cols in (7, 32, 100, 256):
        codes = torch.randint(0, 2**bits, (5, cols), generator=g)
        signed = (codes - 2 ** (bits - 1)).to(torch.int8)  # the library's grid
        assert torch.equal(pack_int32(codes, bits), pack_to_int32(signed, bits)), cols
