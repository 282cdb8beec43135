from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from allocator import __version__
from allocator.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"allocator {__version__}"


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_unknown_command_is_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "frobnicate" in err and len(err.strip().splitlines()) == 1


SCRIPT = Path(sys.executable).parent / "allocator"


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed")
def test_installed_entry_point():
    proc = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("allocator ")


def test_evaluate_needs_bits_or_config(capsys):
    assert main(["evaluate", "--model", "digits-mlp"]) == 2
    assert "--bits" in capsys.readouterr().err


def test_evaluate_bad_bits_and_unknown_model(capsys):
    assert main(["evaluate", "--model", "digits-mlp", "--bits", "9"]) == 2
    assert "`--bits`" in capsys.readouterr().err
    assert main(["evaluate", "--model", "resnet", "--bits", "4"]) == 2
    assert "unknown model 'resnet'" in capsys.readouterr().err


def test_evaluate_json(capsys):
    import json

    pytest.importorskip("sklearn")
    assert main(["evaluate", "--model", "digits-mlp", "--bits", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "digits-mlp" and out["avg_bits"] == 8.0
    assert out["metrics"]["accuracy"] >= out["fp32_metrics"]["accuracy"] - 0.01
    assert out["config"]["format"] == "allocator.bitconfig/1"


def test_models_json(capsys):
    import json

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert {"digits-mlp", "digits-cnn", "minilm", "mobilenetv2"} <= set(rows)
    if rows["minilm"]["available"]:
        assert rows["minilm"]["quantizable_layers"] == 36
