from __future__ import annotations

import dataclasses

import pytest
import torch

import engine
from engine import BitConfig
from hwprofiles import (
    DeviceFingerprint,
    LatencyTable,
    RuntimeMismatchError,
    check_onnxruntime_table,
    list_profiles,
    load_profile,
    onnxruntime_additivity,
    predict_latency,
    profile_onnxruntime,
    save_profile,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FAST = {"repeats": 2, "working_set_bytes": 1 << 16, "max_copies": 2}


def fp32_graph(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    """The float MLP as ONNX, written by hand (the exporter is tested in tests/export)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, value = [], [], "x"
    linears = [model.inp, model.shared, model.shared, model.out]
    for i, m in enumerate(linears):
        w = numpy_helper.from_array(m.weight.detach().numpy().T.copy(), f"w{i}")
        b = numpy_helper.from_array(m.bias.detach().numpy(), f"b{i}")
        inits += [w, b]
        nodes += [helper.make_node("MatMul", [value, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        value = f"a{i}"
        if i < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [value], [f"r{i}"]))
            value = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(x.shape))], [helper.make_tensor_value_info(
            value, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]) \
        .SerializeToString()


@pytest.fixture(scope="module")
def mlp_table(tiny_mlp):
    model, layers, x = tiny_mlp
    config = BitConfig(bits={}, activation_bits=None, group_size=32)
    return profile_onnxruntime(model, layers, x, bits=(4, 8), config=config,
                               fp32_model=fp32_graph(model, x), model_name="tiny-mlp", **FAST)


def test_table_times_every_shape_on_ort_kernels(tiny_mlp, mlp_table):
    _, layers, _ = tiny_mlp
    table = mlp_table
    assert table.device.runtime == "onnxruntime"
    assert table.device.runtime_version == ort.__version__
    assert table.device.gpu is None
    assert table.overhead_us is not None and table.overhead_us >= 0
    for layer in layers:
        entry = table.entries[layer.shape_signature]
        assert set(entry.times) == {"fp32", "4", "8"}
        assert entry.times["fp32"].kernel == "ort:MatMul"
        assert entry.times["4"].kernel == "ort:MatMulNBits"
        assert all(m.p50_us > 0 for m in entry.times.values())
    # the shared layer runs twice per pass: its lookup counts both calls
    shared = next(x for x in layers if x.name == "shared")
    per_call = table.entries[shared.shape_signature].times["8"].p50_us
    assert table.lookup(shared, 8).latency_us == pytest.approx(2 * per_call)


@pytest.mark.parametrize(("grid", "kernel"), [
    ("row", "ort:QuantizeLinear(per row)+MatMulIntegerToFloat"),
    ("tensor", "ort:DynamicQuantizeMatMul"),
])
def test_w8a8_linears_are_timed_on_int8_gemms(tiny_mlp, grid, kernel):
    model, layers, x = tiny_mlp
    table = profile_onnxruntime(model, layers, x, bits=(8,),
                                config=BitConfig(bits={}, activation_grid=grid), **FAST)
    kernels = {e.times["8"].kernel for e in table.entries.values()}
    assert kernels == {kernel}


def test_conv_shapes_are_timed(tiny_cnn):
    model, layers, x = tiny_cnn
    config = BitConfig(bits={}, activation_bits=None, group_size=None)
    table = profile_onnxruntime(model, layers, x, bits=(4, 8), config=config, **FAST)
    convs = [e for e in table.entries.values() if e.kind == "conv2d"]
    assert convs and all(e.times["8"].kernel == "ort:DequantizeLinear+Conv" for e in convs)
    assert all(e.times["fp32"].kernel == "ort:Conv" for e in convs)


def test_runtime_survives_json_and_engine_tables_keep_their_form(mlp_table):
    back = LatencyTable.from_json(mlp_table.to_json())
    assert back.device == mlp_table.device
    assert "runtime" in mlp_table.to_dict()["device"]
    engine_device = DeviceFingerprint.current().to_dict()
    assert "runtime" not in engine_device and "runtime_version" not in engine_device


def test_another_runtime_version_is_refused(tiny_mlp, mlp_table):
    model, layers, x = tiny_mlp
    old = dataclasses.replace(mlp_table.device, runtime_version="0.0.1")
    stale = LatencyTable.from_json(dataclasses.replace(mlp_table, device=old).to_json())
    with pytest.raises(RuntimeMismatchError, match="onnxruntime 0.0.1"):
        stale.lookup(layers[0], 4)
    with pytest.raises(RuntimeMismatchError):
        profile_onnxruntime(model, layers, x, bits=(4,), table=stale, **FAST)


def test_tables_do_not_cross_between_runtimes(tiny_mlp, mlp_table):
    model, layers, x = tiny_mlp
    ort_table = LatencyTable.from_json(mlp_table.to_json())
    with pytest.raises(RuntimeMismatchError, match="the engine"):
        ort_table.check_fingerprint(DeviceFingerprint.current())
    engine_table = LatencyTable(device=DeviceFingerprint.current(), batch=x.shape[0])
    with pytest.raises(RuntimeMismatchError, match="onnxruntime"):
        profile_onnxruntime(model, layers, x, bits=(4,), table=engine_table, **FAST)


def test_stored_table_of_another_version_is_set_aside_not_used(mlp_table):
    key = {"cache": "latency", "origin": "profiled", "runtime": "onnxruntime"}
    save_profile(mlp_table, "mlp-ort", key=key)
    assert load_profile("mlp-ort", key=key, check=check_onnxruntime_table).device.runtime
    (info,) = list_profiles()
    assert f"onnxruntime {ort.__version__}" in info.device
    old = dataclasses.replace(mlp_table.device, runtime_version="0.0.1")
    save_profile(dataclasses.replace(mlp_table, device=old), "mlp-ort", key=key)
    with pytest.warns(engine.CacheQuarantineWarning), \
            pytest.raises(engine.UnknownComponentError, match="no trusted stored profile"):
        load_profile("mlp-ort", key=key, check=check_onnxruntime_table)
    assert list_profiles() == []  # moved to quarantine: the caller profiles anew


def test_fingerprint_validates_runtime_fields():
    device = DeviceFingerprint.current()
    with pytest.raises(engine.InvalidSpecError, match="runtime"):
        dataclasses.replace(device, runtime="tensorrt", runtime_version="10")
    with pytest.raises(engine.InvalidSpecError, match="runtime_version"):
        dataclasses.replace(device, runtime="onnxruntime")


def test_additivity_predicts_from_the_table(tiny_mlp, mlp_table):
    model, layers, x = tiny_mlp
    config = BitConfig(bits={"inp": 4, "shared": 8, "out": 4}, activation_bits=None,
                       group_size=32)
    fp32 = fp32_graph(model, x)
    rows = onnxruntime_additivity(mlp_table, layers, fp32, {"fp32-as-config": (
        BitConfig(bits={}), fp32)}, x, repeats=3)
    (row,) = rows
    assert row.measured_us > 0 and row.predicted_us > 0
    assert row.measured_kernels == {"MatMul": 4}
    assert row.layout_correction_us == 0.0
    # the prediction is the table's sum plus the measured non-layer time
    pred = predict_latency(mlp_table, layers, config, overhead_us=row.overhead_us, gaps=())
    expected = sum(mlp_table.lookup(x_, config.bits.get(x_.name)).latency_us for x_ in layers)
    assert pred.latency_us == pytest.approx(expected + row.overhead_us)
