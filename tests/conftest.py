from __future__ import annotations

from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def private_data_dir(path: Path) -> Path:
    """A data directory of its own at `path`: trained models and latency tables are links
    to the shared ones (deterministic, costly to remake), sensitivity tables start empty,
    so a job computes its table and takes as long on a warm machine as on a fresh one."""
    import engine

    shared = engine.data_dir()
    path.mkdir(parents=True, exist_ok=True)
    for name in ("models", "hwprofiles"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        if not (path / name).exists():
            (path / name).symlink_to(shared / name, target_is_directory=True)
    return path
