from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from allocator.testing import TinyMLP
from engine import BitConfig, InvalidSpecError
from zoo import get_model


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(40, 64)
    np.save(tmp_path / "x.npy", x.numpy())
    torch.save(x, tmp_path / "x.pt")
    return tmp_path, model


@pytest.mark.parametrize("data", ["x.npy", "x.pt"])
def test_user_model_round_trip(files, data):
    tmp, model = files
    spec = get_model("allocator.testing:TinyMLP", data=tmp / data, weights=tmp / "w.safetensors")
    assert torch.equal(spec.build().inp.weight, model.inp.weight)
    assert spec.baseline()["cosine"] > 0.9999
    q = spec.evaluate(spec.quantize(BitConfig.uniform(spec.layers(), 8)))
    assert q["cosine"] > 0.99


def test_user_model_errors_name_the_problem(files, tmp_path):
    tmp, _ = files
    with pytest.raises(InvalidSpecError, match="no callable 'Nope'"):
        get_model("allocator.testing:Nope", data=tmp / "x.npy").build()
    with pytest.raises(InvalidSpecError, match="cannot import"):
        get_model("no_such_pkg.mod:f", data=tmp / "x.npy").build()
    with pytest.raises(InvalidSpecError, match="needs `data`"):
        get_model("allocator.testing:TinyMLP")
    bad = tmp / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(InvalidSpecError, match="not a readable .npy"):
        get_model("allocator.testing:TinyMLP", data=bad).calibration_batches()
    np.save(tmp / "wrong.npy", np.zeros((10, 7), dtype=np.float32))
    with pytest.raises(InvalidSpecError, match="does not fit the model's input"):
        get_model("allocator.testing:TinyMLP", data=tmp / "wrong.npy").calibration_batches()
    save_file({"x": torch.zeros(3)}, str(tmp / "other.safetensors"))
    with pytest.raises(InvalidSpecError, match="do not fit the model"):
        get_model("allocator.testing:TinyMLP", data=tmp / "x.npy",
                  weights=tmp / "other.safetensors").build()


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(InvalidSpecError, match="not a readable .pt"):
        get_model("allocator.testing:TinyMLP", data=tmp_path / "evil.pt").calibration_batches()
