from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import engine
from allocator.export import (
    ExportCheckError,
    TargetWidthError,
    UnsupportedExportError,
    export_gguf,
    get_target,
    target_settings,
)
from engine import BitConfig, UnknownLayerError
from tests.export import linear_names, mixed_bits, tiny_bert, tiny_llama

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

EXPECTED_TYPES = {(4, True): "Q4_0", (4, False): "Q4_1", (5, True): "Q5_0", (5, False): "Q5_1",
                  (8, True): "Q8_0", (8, False): "Q8_0"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[nn.Module, Path]:
    folder = tmp_path_factory.mktemp("llama")
    return tiny_llama(folder), folder


def gguf_settings(bits: dict[str, int], symmetric: bool) -> BitConfig:
    return target_settings("gguf", BitConfig(bits=bits, symmetric=symmetric))


def unpermute(values: np.ndarray, heads: int) -> np.ndarray:
    """transformers' reading of llama.cpp's q/k row order (an independent formula)."""
    dim = values.shape[0] // heads // 2
    return values.reshape(heads, dim, 2, *values.shape[1:]).swapaxes(2, 1).reshape(values.shape)


@pytest.mark.parametrize("symmetric", [True, False])
def test_mixed_llama_reads_back_as_the_engine_computed(llama, tmp_path, symmetric):
    model, _ = llama
    bits = mixed_bits(linear_names(model, skip=()), (4, 5, 8))
    config = gguf_settings(bits, symmetric)
    qmodel = engine.apply(model, config)
    out = tmp_path / "model.gguf"
    report = export_gguf(model, qmodel, config, out, tokenizer_pre="smollm")
    assert report.check["passed"] and report.check["layers_checked"] == len(bits)
    assert out.is_file() and report.size_bytes == out.stat().st_size
    assert not report.notes and report.extra["tokenizer"] == "gpt2"
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    tensors = {t.name: t for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "output_norm.weight",
            "blk.1.attn_q.weight", "blk.0.ffn_down.weight"} <= set(tensors)
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    layers = engine.quantized_layers(qmodel)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    target = get_target("gguf")
    for name, b in bits.items():
        if name == "lm_head":
            gname = "output.weight"
        else:
            block, leaf = name.split(".")[2], ".".join(name.split(".")[3:])
            gname = f"blk.{block}.{names[leaf]}.weight"
        t = tensors[gname]
        assert t.tensor_type.name == EXPECTED_TYPES[(b, symmetric)], name
        shape = tuple(model.get_submodule(name).weight.shape)
        assert int(t.n_bytes) == target.layer_bytes(shape, b, config) == \
            report.layers[name].size_bytes
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        if leaf_heads := {"attn_q": 4, "attn_k": 2}.get(gname.split(".")[-2]):
            values = unpermute(values, leaf_heads)
        ref = layers[name].dequantized_weight().numpy()
        assert np.abs(values - ref).max() <= np.abs(ref).max() * 2**-9, name


def test_transformers_reads_the_file_like_the_engine_runs(llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, source = llama
    bits = mixed_bits(linear_names(model), (4, 5, 8))
    config = gguf_settings(bits, symmetric=False)
    qmodel = engine.apply(model, config, kernel="reference")  # float matmuls, no bf16 kernel
    export_gguf(model, qmodel, config, tmp_path / "m.gguf", float_type="f32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf",
                                                  dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = qmodel(ids).logits, loaded(ids).logits
    assert (ours - theirs).abs().max() <= 1e-3 * ours.abs().max()
    ours_tok = AutoTokenizer.from_pretrained(source)
    their_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    text = "the lazy fox says hello world<|im_end|>"
    assert their_tok(text)["input_ids"] == ours_tok(text)["input_ids"]


def test_calibrated_rounding_with_bias_correction_is_exported(llama, tmp_path):
    model, _ = llama
    names = linear_names(model)
    config = target_settings("gguf", BitConfig.calibrated({names[0]: 4, names[3]: 8}))
    batches = [{"input_ids": torch.randint(0, 300, (2, 16),
                                           generator=torch.Generator().manual_seed(2))}]
    qmodel = engine.apply(model, config, calibration=batches)
    report = export_gguf(model, qmodel, config, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    biases = {t.name for t in reader.tensors if t.name.endswith(".bias")}
    assert biases == {"blk.0.attn_q.bias", "blk.0.attn_output.bias"}  # llama.cpp's slots
    assert report.check["tensors_checked"] == len(reader.tensors)


def test_tied_head_is_left_to_token_embd_and_no_tokenizer_is_noted(tmp_path):
    model = tiny_llama(tmp_path / "src", tie=True)
    (tmp_path / "src" / "tokenizer.json").unlink()
    bits = {n: 4 for n in linear_names(model)}
    config = gguf_settings(bits, symmetric=True)
    report = export_gguf(model, engine.apply(model, config), config, tmp_path / "m.gguf")
    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    assert report.extra["tokenizer"] == "no_vocab" and "no tokenizer.json" in report.notes[0]


def test_schemes_and_widths_gguf_cannot_hold_fail_before_writing(llama, tmp_path):
    model, _ = llama
    names = linear_names(model)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous export")
    g128 = BitConfig(bits={names[0]: 4}, group_size=64, activation_bits=None)
    with pytest.raises(TargetWidthError, match=rf"{names[0]}' at 4 bits \(asymmetric, group 64\)"):
        export_gguf(model, engine.apply(model, g128), g128, out)
    six = gguf_settings({names[1]: 6}, symmetric=True)
    with pytest.raises(TargetWidthError, match=rf"{names[1]}' at 6 bits: target 'gguf'"):
        export_gguf(model, engine.apply(model, six), six, out)
    ok = gguf_settings({names[0]: 4}, symmetric=True)
    bad = dataclasses.replace(ok, bits={**ok.bits, "model.layers.0.mlp.nope": 4})
    with pytest.raises(UnknownLayerError, match="model.layers.0.mlp.nope"):
        export_gguf(model, engine.apply(model, ok), bad, out)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_a_non_llama_model_is_refused(tmp_path):
    bert = tiny_bert(tmp_path / "bert")
    config = gguf_settings({"encoder.layer.0.attention.self.query": 4}, symmetric=True)
    with pytest.raises(UnsupportedExportError, match="Llama-family causal LMs.*'bert'"):
        export_gguf(bert, engine.apply(bert, config), config, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def test_a_failed_check_names_the_tensor_and_keeps_the_old_file(llama, tmp_path,
                                                                 monkeypatch):
    from allocator.export import _gguf

    model, _ = llama
    names = linear_names(model)
    config = gguf_settings({names[1]: 4, names[4]: 8}, symmetric=True)
    qmodel = engine.apply(model, config)
    real = _gguf.encode_blocks

    def corrupt(layer, codes=None):
        data, kind = real(layer, codes)
        if kind == "Q8_0":
            data = data.copy()
            data[:, 5] ^= 0x7F  # a code byte of each row's first block
        return data, kind

    monkeypatch.setattr(_gguf, "encode_blocks", corrupt)
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous export")
    with pytest.raises(ExportCheckError, match=rf"tensor 'blk.0.ffn_gate.weight' "
                                               rf"\(layer '{names[4]}.weight'\)"):
        export_gguf(model, qmodel, config, out)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
