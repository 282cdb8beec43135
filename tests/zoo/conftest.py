from __future__ import annotations

import os

import pytest

import zoo

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def need(name: str):
    """The shared spec of a registered model, or a clean skip where its extra is missing."""
    if not zoo.MODELS.entry(name).available():
        pytest.skip(f"model {name} not installed (models extra)")
    return zoo.get_model(name)
