from __future__ import annotations

import warnings

import pytest

import engine
from engine import BitConfig
from tests.zoo.conftest import need
from zoo._digits import DigitsCNNSpec


def test_digits_cnn_baseline_and_int8():
    spec = need("digits-cnn")
    base = spec.baseline()["accuracy"]
    assert base >= 0.95
    q = spec.evaluate(spec.quantize(BitConfig.uniform(spec.layers(), 8)))["accuracy"]
    assert q >= base - 0.01


def test_digits_mlp_builds_with_three_layers():
    spec = need("digits-mlp")
    assert [x.name for x in spec.layers()] == ["fc1", "fc2", "fc3"]
    assert spec.baseline()["accuracy"] >= 0.93


def test_calibration_and_evaluation_are_disjoint():
    spec = need("digits-cnn")
    x_train, _, x_test, _ = spec.split()
    assert len(x_train) + len(x_test) == 1797
    calib = {tuple(r.flatten().tolist()) for b in spec.calibration_batches() for r in b.inputs}
    evals = {tuple(r.flatten().tolist()) for b in spec.evaluation_batches() for r in b.inputs}
    # scikit-learn's digits hold a few identical images; the splits share none by index
    assert len(calib & evals) <= 5


@pytest.mark.slow  # trains the digits CNN twice: 15 s on 2 idle cores, minutes when busy
def test_cached_weights_are_reused_and_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    need("digits-cnn")
    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(tmp_path))
    first = DigitsCNNSpec().build()
    files = list((tmp_path / "models").glob("digits-cnn-*.safetensors"))
    assert len(files) == 1
    again = DigitsCNNSpec().build()
    assert all((a == b).all() for a, b in zip(first.state_dict().values(),
                                               again.state_dict().values(), strict=True))
    files[0].write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = DigitsCNNSpec().build()
    assert any("retraining" in str(w.message) for w in caught)
    assert engine.discover_layers(rebuilt, DigitsCNNSpec().example_inputs())


@pytest.mark.parametrize("bits", [4, 2])
def test_lower_bits_cost_accuracy_or_nll(bits):
    spec = need("digits-cnn")
    m = spec.evaluate(spec.quantize(BitConfig.uniform(spec.layers(), bits)))
    base = spec.baseline()
    # rounding noise can lower the NLL of a small test set a little (4-bit RTN: 0.0474 vs
    # 0.0509), but not without a cost somewhere
    assert m["accuracy"] < base["accuracy"] or m["nll"] >= base["nll"] * 0.95
