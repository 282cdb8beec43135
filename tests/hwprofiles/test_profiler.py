from __future__ import annotations

import json
import math

import pytest
import torch

import engine
import engine._kernels as K
import hwprofiles
from hwprofiles import _profiler, additivity, predict_latency, profile_layers

from .conftest import FAST


def test_every_layer_and_bits_is_measured(tiny_cnn, cnn_table):
    model, layers, x = tiny_cnn
    assert cnn_table.batch == 4 and cnn_table.model is None
    for layer in layers:
        entry = cnn_table.entries[layer.shape_signature]
        assert layer.name in entry.layers
        assert set(entry.times) == {"fp32", "4", "8"}
        for key, m in entry.times.items():
            assert m.p50_us > 0 and m.p90_us >= m.p50_us and m.samples == 2
            assert m.kernel == "fp32" if key == "fp32" else m.kernel in {
                p.value for p in engine.KernelPath}
        if layer.kind == "conv2d":
            assert set(entry.transition) == {"fp32", "4", "8"}
            assert entry.depthwise == layer.is_depthwise
        else:
            assert entry.transition == {}
        for bits in (4, 8, "fp32"):
            assert cnn_table.lookup(layer, bits).interpolated is False
    # int8 convs are calibrated, so they run the static kernel as in a quantized model
    assert cnn_table.entries[layers[0].shape_signature].times["8"].kernel == "fbgemm-int8-static"
    assert cnn_table.overhead_us is not None and cnn_table.overhead_us >= 0
    assert [g.layer for g in cnn_table.gaps] == [x.name for x in layers]


def test_kernels_match_the_quantized_model(tiny_cnn, cnn_table):
    model, layers, x = tiny_cnn
    config = engine.BitConfig.uniform(layers, 8)
    qmodel = engine.apply(model, config, calibration=[x])
    with torch.inference_mode():
        engine.call_model(qmodel, x)
    ran = {n: r["last_kernel"] for n, r in engine.kernel_report(qmodel).items()}
    predicted = {x.name: cnn_table.lookup(x, 8).kernel for x in layers}
    assert ran == predicted


def test_shared_layer_counts_its_calls(tiny_mlp):
    model, layers, x = tiny_mlp
    table = profile_layers(model, layers, x, bits=(8,), **FAST)
    shared = next(x for x in layers if x.name == "shared")
    per_call = table.entries[shared.shape_signature].times["8"].p50_us
    assert shared.calls == 2
    assert table.lookup(shared, 8).latency_us == pytest.approx(2 * per_call)
    assert [g.layer for g in table.gaps] == ["inp", "shared", "shared", "out"]


def test_resume_skips_measured_entries(tiny_mlp, tmp_path, monkeypatch):
    model, layers, x = tiny_mlp
    path = tmp_path / "partial.json"
    calls = []
    real = _profiler.time_modules

    def counting(mods, inp, *, repeats):
        calls.append(1)
        if fail_after[0] is not None and len(calls) > fail_after[0]:
            raise KeyboardInterrupt  # an interrupted run
        return real(mods, inp, repeats=repeats)

    monkeypatch.setattr(_profiler, "time_modules", counting)
    fail_after = [3]  # 3 signatures x (fp32, 4, 8): dies in the second shape
    with pytest.raises(KeyboardInterrupt):
        profile_layers(model, layers, x, bits=(4, 8), resume_path=path, **FAST)
    saved = hwprofiles.LatencyTable.load(path)
    assert len(saved.entries) == 1
    stamps = {k: m.timestamp for k, m in next(iter(saved.entries.values())).times.items()}

    calls.clear()
    fail_after[0] = None
    table = profile_layers(model, layers, x, bits=(4, 8), resume_path=path, **FAST)
    assert len(calls) == 2 * 3  # only the two shapes left
    first = table.entries[next(iter(saved.entries))]
    assert {k: m.timestamp for k, m in first.times.items()} == stamps

    calls.clear()
    table = profile_layers(model, layers, x, bits=(2, 4, 8), resume_path=path, **FAST)
    assert len(calls) == 3  # just 2 bits, once per shape
    assert all(set(e.times) == {"fp32", "2", "4", "8"} for e in table.entries.values())
    assert json.loads(path.read_text())["overhead_us"] is not None


def test_resume_refuses_another_batch(tiny_mlp, tmp_path):
    model, layers, x = tiny_mlp
    path = tmp_path / "t.json"
    profile_layers(model, layers, x, bits=(8,), resume_path=path, **FAST)
    x2 = x[:4]
    with pytest.raises(engine.InvalidSpecError, match="batch"):
        profile_layers(model, engine.discover_layers(model, x2), x2, bits=(8,),
                       resume_path=path, **FAST)


def test_bad_bits_and_repeats(tiny_mlp):
    model, layers, x = tiny_mlp
    with pytest.raises(engine.InvalidSpecError, match="bits"):
        profile_layers(model, layers, x, bits=(9,), **FAST)
    with pytest.raises(engine.InvalidSpecError, match="repeats"):
        profile_layers(model, layers, x, bits=(8,), **(FAST | {"repeats": 0}))


def test_layout_correction_and_additivity_rows(tiny_cnn, cnn_table):
    model, layers, x = tiny_cnn
    int8 = engine.BitConfig.uniform(layers, 8)
    int4 = engine.BitConfig.uniform(layers, 4)
    p8 = predict_latency(cnn_table, layers, int8)
    p4 = predict_latency(cnn_table, layers, int4)
    assert p4.layout_correction_us == 0.0  # no int8 conv: layout never changes
    assert p8.layout_correction_us != 0.0
    linear8 = K.cpu_int8_linear_path(len(x)).value
    assert p8.kernels == {"fbgemm-int8-static": 3, linear8: 2}
    rows = additivity(model, cnn_table, {"int8": int8, "int4": int4}, inputs=x, repeats=2)
    assert [r.config for r in rows] == ["int8", "int4"]
    for r in rows:
        assert r.measured_us > 0 and math.isfinite(r.rel_err)
        assert r.kernels == r.measured_kernels
        assert r.noise_rel is not None and r.noise_rel >= 0.0
        json.dumps(r.to_dict(), allow_nan=False)


def test_noise_band_is_half_the_decile_spread_over_the_median():
    from hwprofiles._additivity import noise_band

    assert noise_band([100.0] * 10) == 0.0
    times = [float(t) for t in range(90, 111)]  # median 100, deciles 91.2 and 108.8
    assert noise_band(times) == pytest.approx(0.088)
    assert noise_band([5.0]) == 0.0
