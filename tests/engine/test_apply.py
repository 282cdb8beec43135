from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from allocator.testing import TinyCNN, TinyMLP
from engine import (
    BitConfig,
    InvalidSpecError,
    QuantConv2d,
    QuantLinear,
    UnknownLayerError,
    apply,
    discover_layers,
    kernel_report,
    load_quantized,
    model_size_bytes,
    save_quantized,
    sqnr_db,
)


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return TinyCNN().eval(), torch.randn(4, 3, 8, 8)


def test_apply_replaces_only_named_layers_and_leaves_original(cnn):
    model, x = cnn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = apply(model, BitConfig(bits={"stem": 8, "fc1": 4}), calibration=[x])
    assert isinstance(q.stem, QuantConv2d) and isinstance(q.fc1, QuantLinear)
    assert type(q.dw) is torch.nn.Conv2d and type(q.fc2) is torch.nn.Linear
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.stem) is torch.nn.Conv2d
    assert torch.equal(q.fc2.weight, model.fc2.weight)
    with torch.no_grad():
        assert sqnr_db(model(x), q(x)) > 15


def test_uniform_int8_is_close_and_smaller(cnn):
    model, x = cnn
    specs = discover_layers(model, x)
    q = apply(model, BitConfig.uniform(specs, 8), calibration=[x])
    with torch.no_grad():
        assert sqnr_db(model(x), q(x)) > 25
    assert model_size_bytes(q) < 0.3 * model_size_bytes(model)
    report = kernel_report(q)
    assert set(report) == {s.name for s in specs}
    assert all(r["kernel_calls"] for r in report.values())


def test_mlp_uniform_int4_runs_int4pack_or_dequant():
    model = TinyMLP().eval()
    x = torch.randn(5, 64)
    specs = discover_layers(model, x)
    q = apply(model, BitConfig.uniform(specs, 4, group_size=32))
    with torch.no_grad():
        y = q(x)
    assert sqnr_db(model(x), y) > 10
    assert q.shared.kernel_calls.total() == 2


def test_unknown_layer_and_bad_bits_are_clear(cnn):
    model, _ = cnn
    with pytest.raises(UnknownLayerError, match="'nope'.*quantizable layers are: stem"):
        apply(model, BitConfig(bits={"nope": 4}))
    with pytest.raises(UnknownLayerError, match="pool"):
        apply(model, BitConfig(bits={"pool": 4}))
    with pytest.raises(InvalidSpecError, match="bits"):
        apply(model, BitConfig(bits={"stem": 12}))


def test_save_load_round_trip_gives_identical_outputs(cnn, tmp_path):
    model, x = cnn
    cfg = BitConfig(bits={"stem": 8, "dw": 8, "pw": 3, "fc1": 4, "fc2": 6}, group_size=32)
    q = apply(model, cfg, calibration=[x])
    save_quantized(q, cfg, tmp_path / "q")
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < model_size_bytes(model)
    fresh = TinyCNN().eval()  # other random weights: all must come from the file
    loaded, cfg2 = load_quantized(fresh, tmp_path / "q")
    assert cfg2 == cfg
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))
    assert loaded.stem.calibrated


def test_load_rejects_corrupt_and_mismatched_files(cnn, tmp_path):
    model, x = cnn
    cfg = BitConfig(bits={"fc1": 4})
    save_quantized(apply(model, cfg), cfg, tmp_path)
    with pytest.raises(InvalidSpecError, match="missing"):
        load_quantized(model, tmp_path / "elsewhere")
    other = json.loads((tmp_path / "bitconfig.json").read_text())
    other["bits"] = {"fc2": 4}
    (tmp_path / "bitconfig.json").write_text(json.dumps(other))
    with pytest.raises(InvalidSpecError, match="does not fit"):
        load_quantized(model, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(InvalidSpecError, match="safetensors"):
        load_quantized(model, tmp_path)


def test_reference_kernel_matches_auto_closely(cnn):
    model, x = cnn
    cfg = BitConfig(bits={"fc1": 8, "fc2": 8})
    fast, ref = apply(model, cfg), apply(model, cfg, kernel="reference")
    with torch.no_grad():
        assert sqnr_db(ref(x), fast(x)) > 30
    assert ref.fc1.last_kernel == "dequant"


def test_no_deprecation_warning_reaches_the_user():
    code = (
        "import torch, engine\n"
        "from allocator.testing import TinyCNN\n"
        "m = TinyCNN().eval(); x = torch.randn(2, 3, 8, 8)\n"
        "cfg = engine.BitConfig.uniform(engine.discover_layers(m, x), 8)\n"
        "q = engine.apply(m, cfg); q(x)\n"
        "q = engine.apply(m, cfg, calibration=[x]); q(x)\n"
    )
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "deprecat" not in proc.stderr.lower(), proc.stderr
