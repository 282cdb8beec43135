from __future__ import annotations

import pytest
import torch

from allocator.testing import TinyCNN, TinyMLP, gaussian
from hwprofiles import profile_layers


@pytest.fixture(autouse=True)
def _profiles_dir(tmp_path, monkeypatch):
    """Stored profiles go to a temporary folder, never the user's data dir."""
    import hwprofiles
    from hwprofiles import _registry

    folder = tmp_path / "profiles"
    folder.mkdir()
    monkeypatch.setattr(_registry, "profiles_dir", lambda: folder)
    monkeypatch.setattr(hwprofiles, "profiles_dir", lambda: folder)
    return folder


FAST = {"repeats": 2, "progress": False, "working_set_bytes": 1 << 16, "max_copies": 2}


@pytest.fixture(scope="session")
def tiny_cnn():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = gaussian(4, 3, 8, 8, seed=1)
    import engine

    return model, engine.discover_layers(model, x), x


@pytest.fixture(scope="session")
def tiny_mlp():
    torch.manual_seed(0)
    model = TinyMLP().eval()
    x = gaussian(8, 64, seed=2)
    import engine

    return model, engine.discover_layers(model, x), x


@pytest.fixture(scope="session")
def cnn_table(tiny_cnn):
    model, layers, x = tiny_cnn
    return profile_layers(model, layers, x, bits=(4, 8), **FAST)
