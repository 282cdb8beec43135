"""Deployment targets inside the solve: the target's widths and schemes, its file's bytes as
the size and bits costs, its tie rules, and the engine target leaving results unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import engine
from allocator import Problem, parse_budgets, solve
from allocator._pipeline import problem_for, quantization_settings
from allocator.export import export_gguf, get_target, target_costs, target_settings
from tests.export import tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_bits_budget_counts_stored_bytes_for_a_target() -> None:
    doc = {"format": "allocator.problem/1", "bits": [4, 8],
           "layers": [{"name": "a", "params": 64, "macs": 64, "omega": {"4": 1.0, "8": 0.0},
                       "size_bytes": {"4": 36.0, "8": 68.0}}]}
    params = Problem.from_dict(doc)
    stored = Problem.from_dict(doc | {"bits_cost": "size_bytes"})
    assert params.evaluate({"a": 4})[1]["avg_bits"] == 4.0
    assert stored.evaluate({"a": 4})[1]["avg_bits"] == 36 * 8 / 64  # 4.5: Q4_0's scale
    assert stored.to_dict()["bits_cost"] == "size_bytes"
    assert "bits_cost" not in params.to_dict()
    assert Problem.from_dict(stored.to_dict()).bits_cost == "size_bytes"
    budget = parse_budgets(["4.5bits"])[0]
    (unit,) = stored.units([budget])
    assert unit.costs["bits"] == {4: 288.0, 8: 544.0}
    assert stored.budget_rhs(budget) == 4.5 * 64


def test_engine_target_builds_todays_problem_and_config() -> None:
    import zoo

    spec = zoo.get_model("digits-mlp")
    settings = quantization_settings("rtn", 64, True)
    assert target_settings("engine", settings) == settings
    omega = {x.name: {b: 1.0 / b for b in (2, 4, 8)} for x in spec.layers()}
    problem = problem_for(spec, omega, (2, 4, 8), settings)
    assert problem.bits_cost == "params"
    for layer, x in zip(problem.layers, spec.layers(), strict=True):
        assert layer.allowed_bits is None
        assert layer.size_bytes == {b: float(engine.packed_weight_bytes(
            x.weight_shape, engine.scheme_for(settings, b))) for b in (2, 4, 8)}
    kw = {"bits": (2, 4, 8), "rounding": "rtn", "measure": False, "latency": False,
          "estimator": "hutchinson", "estimator_options": {"max_probes": 4, "min_probes": 2}}
    plain = solve("digits-mlp", ["5bits"], **kw)
    engine_target = solve("digits-mlp", ["5bits"], target="engine", **kw)
    assert plain.config.to_dict() == engine_target.config.to_dict()
    assert "target" not in plain.config.extra and plain.target == "engine"
    assert set(plain.to_dict()) == {"config", "measured", "uniform", "timings_s"}
    assert plain.config.cost["avg_bits"] == pytest.approx(
        sum(x.params * plain.config.bits[x.name] for x in spec.layers())
        / sum(x.params for x in spec.layers()))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(folder)
    return folder


def test_gguf_solve_gives_widths_gguf_holds_and_the_files_bytes(llama_dir: Path,
                                                                 tmp_path: Path) -> None:
    import zoo

    spec = zoo.get_model(f"hf:{llama_dir}")
    report = solve(spec, ["5bits"], target="gguf", bits=(2, 4, 5, 8), rounding="rtn",
                   measure=False, latency=False, estimator="hutchinson",
                   estimator_options={"max_probes": 2, "min_probes": 2})
    config = report.config
    assert report.target == "gguf" and config.extra["target"] == "gguf"
    assert config.status != "infeasible"
    assert (config.group_size, config.group_size_8bit, config.symmetric_8bit) == (32, 32, True)
    assert set(config.bits.values()) <= {4, 5, 8}  # 2 bits: no ggml type holds it
    assert report.problem.bits == (4, 5, 8) and report.problem.bits_cost == "size_bytes"
    layers = {x.name: x for x in spec.layers()}
    tc = target_costs("gguf", spec.layers(), (4, 5, 8), config)
    size = sum(tc.size_bytes[n][b] for n, b in config.bits.items())
    assert config.cost["size_bytes"] == pytest.approx(size)
    params = sum(layers[n].params for n in config.bits)
    assert config.cost["avg_bits"] == pytest.approx(size * 8 / params)
    assert config.cost["avg_bits"] <= 5.0 + 1e-9  # the file's bits per weight
    for name, bits in config.bits.items():  # asymmetric below 8 bits: Q4_1 5.0, Q5_1 6.0
        fmt = get_target("gguf").format_name(bits, config)
        assert fmt == {4: "Q4_1", 5: "Q5_1", 8: "Q8_0"}[bits], (name, fmt)
    out = tmp_path / "model.gguf"
    exported = export_gguf(spec.build(), spec.quantize(config), config, out)
    assert exported.quantized_bytes == config.cost["size_bytes"]
    assert exported.check["passed"]


def test_compressed_tensors_target_adds_its_fused_ties(llama_dir: Path) -> None:
    import zoo

    spec = zoo.get_model(f"hf:{llama_dir}")
    report = solve(spec, ["6bits"], target="compressed-tensors", bits=(4, 8), rounding="rtn",
                   measure=False, latency=False, estimator="hutchinson",
                   estimator_options={"max_probes": 2, "min_probes": 2})
    bits = report.config.bits
    assert report.rules is not None and report.rules["held"]
    for block in (0, 1):
        p = f"model.layers.{block}."
        assert len({bits[p + f"self_attn.{x}_proj"] for x in "qkv"}) == 1
        assert bits[p + "mlp.gate_proj"] == bits[p + "mlp.up_proj"]
    assert report.config.smoothing_alpha is None
    assert dataclasses.replace(report.settings, bits={}) == target_settings(
        "compressed-tensors", dataclasses.replace(report.settings, bits={}))


def test_latency_budget_for_onnx_is_in_onnxruntime_time() -> None:
    """`--target onnx` with a latency budget budgets ONNX Runtime's per-layer times (a table
    of its own, the runtime's version in the fingerprint), not the engine's; a stored table
    of another ONNX Runtime version is set aside and measured anew, never used."""
    pytest.importorskip("onnxruntime")
    import zoo
    from allocator._latency import ORT_RUNTIME, latency_costs
    from hwprofiles import DeviceFingerprint, LatencyTable, load_profile, save_profile

    spec = zoo.get_model("digits-mlp")
    kw = {"bits": (4, 8), "rounding": "rtn", "measure": False,
          "estimator": "hutchinson", "estimator_options": {"max_probes": 4, "min_probes": 2}}
    report = solve("digits-mlp", ["1s"], target="onnx", **kw)
    name = report.config.extra["reproducibility"]["latency_profile"]
    assert name.endswith("-onnxruntime")
    table = load_profile(name)
    assert table.device.runtime == ORT_RUNTIME
    assert table.device == DeviceFingerprint.current(ORT_RUNTIME)
    settings = target_settings("onnx", quantization_settings("rtn", None, False))
    costs = latency_costs(spec, (4, 8), runtime=ORT_RUNTIME, settings=settings)
    assert not costs.profiled_now and costs.profile == name
    for layer in report.problem.layers:
        assert layer.latency_us == costs.latency_us[layer.name]
    # the same table, as if measured by another ONNX Runtime version
    stale = dataclasses.replace(table, device=dataclasses.replace(
        table.device, runtime_version="0.0.1"))
    save_profile(stale, name, key={"cache": "latency", "origin": "profiled", "name": name,
                                   "model": spec.name, "batch": table.batch,
                                   "weight_only": False, "runtime": ORT_RUNTIME})
    with pytest.warns(engine.CacheQuarantineWarning):
        again = latency_costs(spec, (4, 8), runtime=ORT_RUNTIME, settings=settings)
    assert again.profiled_now
    assert isinstance(load_profile(name), LatencyTable)
    assert load_profile(name).device.runtime_version != "0.0.1"


def test_onnx_solve_measures_its_latency_in_onnxruntime() -> None:
    """A measured `--target onnx` solve times the exported graphs of its config and of the
    best uniform one in ONNX Runtime next to the FP32 export: predicted (the ONNX Runtime
    table) and measured latency are of the same runtime."""
    ort = pytest.importorskip("onnxruntime")
    kw = {"bits": (4, 8), "rounding": "rtn", "estimator": "hutchinson",
          "estimator_options": {"max_probes": 4, "min_probes": 2}}
    report = solve("digits-mlp", ["6bits"], target="onnx", **kw)
    measured = report.measured
    assert measured["latency_runtime"] == f"onnxruntime {ort.__version__}"
    assert measured["latency_us"] > 0 and measured["fp32_latency_us"] > 0
    assert measured["speedup_vs_fp32"] == pytest.approx(
        measured["fp32_latency_us"] / measured["latency_us"])
    assert measured["uniform"]["latency_us"] > 0
    assert report.config.cost["latency_us"] > 0  # the ONNX Runtime table's prediction
    engine_report = solve("digits-mlp", ["6bits"], **kw)
    assert engine_report.measured["latency_runtime"] == "engine"
