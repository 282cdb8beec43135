from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import engine
from allocator.export import TargetWidthError
from allocator.testing import TinyCNN, TinyMLP, gaussian
from engine import BitConfig, UnknownLayerError
from tests.export import linear_names, mixed_bits, tiny_bert

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from allocator.export._onnx import (  # noqa: E402  (needs the optional packages above)
    OnnxCheckError,
    cosine,
    export_onnx,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyCNN().eval(), gaussian(8, 3, 8, 8, seed=1)


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyMLP().eval(), gaussian(16, 64, seed=2)


def run_file(path, inputs) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, dict):
        feed = {n: inputs[n].numpy() for n in names}
    else:
        feed = {names[0]: inputs.numpy()}
    return session.run(None, feed)


def unpack_low_first(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Integers packed `8 // bits` per byte, low bits first (an independent formula)."""
    flat = data.reshape(-1).astype(np.uint16)
    shifts = np.arange(0, 8, bits)
    values = (flat[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
    return values.reshape(-1)[:count].astype(np.int64)


def stored_codes(model: onnx.ModelProto, name: str, layer: engine.QuantizedLayer) -> np.ndarray:
    """The layer's integers as the ONNX file holds them, as engine codes (N, K)."""
    tensors = {t.name: t for t in model.graph.initializer}
    t = tensors[f"{name}.qweight"]
    n, k = layer.out_features, layer.reduction_size
    node = next(x for x in model.graph.node if x.name.startswith(f"{name}/")
                and x.op_type in ("MatMulNBits", "DequantizeLinear", "MatMulIntegerToFloat",
                                  "DynamicQuantizeMatMul"))
    scheme = layer.scheme
    if node.op_type == "MatMulNBits":
        blocks, blob = t.dims[1], t.dims[2]
        raw = np.frombuffer(t.raw_data, np.uint8).reshape(n, blocks * blob)
        return np.stack([unpack_low_first(row, scheme.bits, blocks * blob * 8 // scheme.bits)
                         for row in raw])[:, :k]
    if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        values = unpack_low_first(np.frombuffer(t.raw_data, np.uint8), 4, n * k)
        if t.data_type == onnx.TensorProto.INT4:
            values = np.where(values > 7, values - 16, values)
    else:
        values = onnx.numpy_helper.to_array(t).astype(np.int64).reshape(-1)
    values = values.reshape(t.dims)
    if isinstance(layer, engine.QuantLinear):
        values = values.T  # MatMul's right operand is (K, N)
    values = values.reshape(n, k)
    return values + (scheme.offset if scheme.symmetric else 0)


def assert_same_integers(path, qmodel: nn.Module, config: BitConfig) -> None:
    model = onnx.load(str(path))
    for name, layer in engine.quantized_layers(qmodel).items():
        assert name in config.bits
        codes = layer.quantized_weight().codes().numpy().astype(np.int64)
        np.testing.assert_array_equal(stored_codes(model, name, layer), codes, err_msg=name)


def test_mixed_weight_only_cnn_matches_engine_with_its_integers(cnn, tmp_path):
    model, x = cnn
    config = BitConfig.calibrated({"stem": 8, "dw": 4, "pw": 4, "fc1": 4, "fc2": 8},
                                  activation_bits=None, group_size=32)
    qmodel = engine.apply(model, config, calibration=[x])
    out = tmp_path / "cnn.onnx"
    report = export_onnx(model, qmodel, config, x, out)
    assert out.is_file() and report.size_bytes == out.stat().st_size
    assert report.format == "onnx" and report.check["passed"]
    assert report.check["min_cosine"] == 0.9999
    assert min(report.check["cosines"]) >= 0.9999
    assert set(report.layers) == set(config.bits)
    assert report.layers["fc1"].format == "MatMulNBits"  # 4-bit, groups of 32
    assert report.layers["stem"].format.startswith("DequantizeLinear-")
    (got,) = run_file(out, x)
    with torch.inference_mode():
        want = qmodel(x)
    assert cosine(got, want) >= 0.9999
    assert_same_integers(out, qmodel, config)
    assert not [p for p in tmp_path.iterdir() if p.name != "cnn.onnx"]


def test_symmetric_per_channel_mlp_with_shared_layer(mlp, tmp_path):
    model, x = mlp
    config = BitConfig(bits={"inp": 4, "shared": 8, "out": 4}, activation_bits=None,
                       group_size=None, symmetric=True)
    qmodel = engine.apply(model, config)
    report = export_onnx(model, qmodel, config, x, tmp_path / "mlp.onnx", accuracy_level=0)
    layers = report.extra["onnx_layers"]
    assert layers["shared"]["calls"] == 2
    assert {r.format for r in report.layers.values()} == {"MatMulNBits"}
    assert "per-channel scale repeated" in layers["inp"]["container"]
    assert_same_integers(tmp_path / "mlp.onnx", qmodel, config)
    # the dynamic batch dimension: another batch size runs and still matches
    other = gaussian(5, 64, seed=9)
    (got,) = run_file(tmp_path / "mlp.onnx", other)
    with torch.inference_mode():
        assert cosine(got, qmodel(other)) >= 0.9999


def test_w8a8_cnn_is_qdq_at_the_engine_scales(cnn, tmp_path):
    model, x = cnn
    config = BitConfig(bits={"stem": 8, "dw": 8, "pw": 8, "fc1": 8, "fc2": 4},
                       activation_bits=8, group_size=32)
    qmodel = engine.apply(model, config, calibration=[x])
    report = export_onnx(model, qmodel, config, x, tmp_path / "w8a8.onnx", accuracy_level=0)
    layers = report.extra["onnx_layers"]
    assert layers["fc1"]["activations"] == "int8 per row (dynamic)"
    assert layers["fc2"]["activations"] == "float"
    conv_acts = {layers[n]["activations"] for n in ("stem", "dw", "pw")}
    assert all(a.startswith(("uint8 static", "uint8 per call")) for a in conv_acts)
    assert report.check["min_cosine"] == 0.998
    assert min(report.check["cosines"]) >= 0.998
    saved = onnx.load(str(tmp_path / "w8a8.onnx"))
    ops = [n.op_type for n in saved.graph.node]
    quantizers = ops.count("QuantizeLinear") + ops.count("DynamicQuantizeLinear")
    assert quantizers >= 4 and "MatMulNBits" in ops  # 3 convs' inputs, fc1's rows
    assert "MatMulIntegerToFloat" in ops  # fc1 on ONNX Runtime's uint8 x int8 GEMM
    assert report.check["compared"] == "each layer on ONNX Runtime's input"
    assert report.check["worst_layer_cosine"] >= 0.998
    fp32 = report.check["fp32_cosines"]
    assert len(fp32["onnxruntime"]) == len(fp32["engine"]) == 1
    assert_same_integers(tmp_path / "w8a8.onnx", qmodel, config)


def test_w8a8_linears_on_one_grid_per_call_are_dynamic_quantize_matmul(mlp, tmp_path):
    """The onnx target's grid: DynamicQuantizeMatMul rounds its input as the engine did,
    so each layer agrees on the same input (exactly where both sum 8-bit codes exactly)."""
    model, x = mlp
    config = BitConfig(bits={"inp": 8, "shared": 8, "out": 4}, activation_bits=8,
                       group_size=32, activation_grid="tensor")
    qmodel = engine.apply(model, config, calibration=[x])
    report = export_onnx(model, qmodel, config, x, tmp_path / "grid.onnx")
    layers = report.extra["onnx_layers"]
    assert layers["inp"]["op"] == "DynamicQuantizeMatMul"
    assert layers["inp"]["activations"] == "uint8 per tensor (dynamic)"
    assert report.layers["inp"].format == "DynamicQuantizeMatMul"
    assert layers["out"]["op"] == "MatMulNBits"
    assert report.check["worst_layer_cosine"] >= 0.999
    saved = onnx.load(str(tmp_path / "grid.onnx"))
    assert [n.op_type for n in saved.graph.node].count("DynamicQuantizeMatMul") == 3  # shared x2
    assert_same_integers(tmp_path / "grid.onnx", qmodel, config)
    with torch.inference_mode():
        want = qmodel(x).numpy()
    assert cosine(run_file(tmp_path / "grid.onnx", x)[0], want) >= 0.999


def test_a_wrong_int8_layer_is_named_on_its_own_input(mlp, tmp_path, monkeypatch):
    from allocator.export import _onnx

    model, x = mlp
    config = BitConfig(bits={"inp": 8, "shared": 8, "out": 8}, activation_bits=8,
                       activation_grid="tensor")
    qmodel = engine.apply(model, config, calibration=[x])
    real = _onnx.layer_ops

    def skewed(site, layer, x_name, y_name, **kwargs):
        ops = real(site, layer, x_name, y_name, **kwargs)
        if site.name == "out":  # a wrong scale on one channel: a packing bug
            tensors = site.inits.tensors
            i = next(i for i, t in enumerate(tensors) if t.name == "out.scales")
            scales = onnx.numpy_helper.to_array(tensors[i]).copy()
            scales[0] *= 3.0
            tensors[i] = onnx.numpy_helper.from_array(scales, "out.scales")
        return ops

    monkeypatch.setattr(_onnx, "layer_ops", skewed)
    with pytest.raises(OnnxCheckError, match="'out': on the same input") as info:
        export_onnx(model, qmodel, config, x, tmp_path / "wrong.onnx")
    assert info.value.layer == "out"
    assert list(tmp_path.iterdir()) == []


def test_hugging_face_attention_is_exported_eager_and_switched_back(tmp_path):
    """PyTorch's fused attention exports with a NaN guard over every score tensor; the
    eager path is the same function without it. The model is left as it was."""
    pytest.importorskip("transformers")
    from allocator.export._onnx import float_onnx

    model = tiny_bert(tmp_path / "bert")
    model.set_attn_implementation("sdpa")
    batch = {"input_ids": torch.randint(0, 256, (2, 12)),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    ops = {n.op_type for n in float_onnx(model, batch).graph.node}
    assert "IsNaN" not in ops and "Softmax" in ops
    assert model.config._attn_implementation == "sdpa"


def test_tiny_bert_mixed_4_8(tmp_path):
    pytest.importorskip("transformers")
    model = tiny_bert(tmp_path / "bert")
    config = BitConfig(bits=mixed_bits(linear_names(model, skip=()), (4, 8)),
                       activation_bits=None, group_size=32)
    gen = torch.Generator().manual_seed(3)
    batch = {"input_ids": torch.randint(0, 256, (4, 12), generator=gen),
             "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    qmodel = engine.apply(model, config, calibration=[batch])
    report = export_onnx(model, qmodel, config, batch, tmp_path / "bert.onnx",
                         accuracy_level=0)
    assert min(report.check["cosines"]) >= 0.9999
    longer = {"input_ids": torch.randint(0, 256, (2, 20), generator=gen),
              "attention_mask": torch.ones(2, 20, dtype=torch.long)}
    got = run_file(tmp_path / "bert.onnx", longer)[0]
    with torch.inference_mode():
        want = qmodel(**longer).last_hidden_state
    assert cosine(got, want) >= 0.9999


def test_int8_compute_is_checked_at_the_int8_tolerance(mlp, tmp_path):
    model, x = mlp
    config = BitConfig(bits={"inp": 4, "shared": 8, "out": 4}, activation_bits=None,
                       group_size=32)
    qmodel = engine.apply(model, config)
    report = export_onnx(model, qmodel, config, x, tmp_path / "int8.onnx", accuracy_level=4)
    assert report.check["min_cosine"] == 0.998
    assert report.extra["onnx_layers"]["inp"]["activations"] == "int8 per block (ONNX Runtime)"
    saved = onnx.load(str(tmp_path / "int8.onnx"))
    levels = {a.i for n in saved.graph.node if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}


def test_unknown_layer_is_named_and_nothing_is_written(mlp, tmp_path):
    model, x = mlp
    config = BitConfig(bits={"inp": 4}, activation_bits=None)
    qmodel = engine.apply(model, config)
    bad = BitConfig(bits={"inp": 4, "nope": 8}, activation_bits=None)
    with pytest.raises(UnknownLayerError, match="nope"):
        export_onnx(model, qmodel, bad, x, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_width_the_target_cannot_hold_is_refused(mlp, tmp_path):
    model, x = mlp
    config = BitConfig(bits={"inp": 3, "out": 4}, activation_bits=None, group_size=32)
    qmodel = engine.apply(model, config)
    with pytest.raises(TargetWidthError, match="'inp' at 3 bits"):
        export_onnx(model, qmodel, config, x, tmp_path / "w3.onnx")
    assert list(tmp_path.iterdir()) == []


def test_quantized_model_of_another_config_is_refused(mlp, tmp_path):
    model, x = mlp
    qmodel = engine.apply(model, BitConfig(bits={"inp": 8}, activation_bits=None))
    config = BitConfig(bits={"inp": 4}, activation_bits=None)
    with pytest.raises(engine.InvalidSpecError, match="'inp'"):
        export_onnx(model, qmodel, config, x, tmp_path / "x.onnx")


def test_a_wrong_layer_is_found_and_named(cnn, tmp_path, monkeypatch):
    from allocator.export import _onnx

    model, x = cnn
    config = BitConfig(bits={"stem": 8, "pw": 4, "fc1": 4, "fc2": 8}, activation_bits=None,
                       group_size=32)
    qmodel = engine.apply(model, config)
    real = _onnx.layer_ops

    def skewed(site, layer, x_name, y_name, **kwargs):
        ops = real(site, layer, x_name, y_name, **kwargs)
        if site.name == "fc1":  # a wrong scale: what a packing bug would look like
            tensors = site.inits.tensors
            i = next(i for i, t in enumerate(tensors) if t.name == "fc1.scales")
            scales = onnx.numpy_helper.to_array(tensors[i]) * 1.5
            tensors[i] = onnx.numpy_helper.from_array(scales, "fc1.scales")
        return ops

    monkeypatch.setattr(_onnx, "layer_ops", skewed)
    out = tmp_path / "wrong.onnx"
    with pytest.raises(OnnxCheckError, match="'fc1'") as info:
        export_onnx(model, qmodel, config, x, out, accuracy_level=0)
    assert info.value.layer == "fc1" and info.value.cosine < 0.998  # caught at either tolerance
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_a_failed_export(mlp, tmp_path):
    model, x = mlp
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    config = BitConfig(bits={"inp": 4}, activation_bits=None)
    qmodel = engine.apply(model, config)
    with pytest.raises(UnknownLayerError):
        export_onnx(model, qmodel, BitConfig(bits={"missing": 4}), x, out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
